"""Exact and near-duplicate images, and the same image under two labels.

Two images are near duplicates when their 64-bit perceptual hashes differ in at
most `max_distance` bits and their 4x4 colour thumbnails match within
MAX_COLOUR_DIFFERENCE. Resized and re-encoded copies of a photo land within a
few bits of each other. The perceptual hash is computed from brightness only.
The colour check keeps apart images that differ only in colour (a red and a
green traffic light, flat fills), because colour can be what tells classes apart.
Duplicates form groups through any chain of such pairs.
A group inside one class keeps one copy; a group that spans classes is a label
conflict, and every copy is dropped because no one can say which label is right.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

# Reasons for dropping a copy, as they appear in dropped.csv and metrics/prepare.json.
DUPLICATE = "duplicate"  # same decoded pixels as the kept copy
NEAR_DUPLICATE = "near_duplicate"  # a resized, re-encoded or slightly edited copy
LABEL_CONFLICT = "label_conflict"  # the same picture in more than one class

_BLOCK_ROWS = 256  # rows of the pairwise distance matrix computed at a time
# Mean absolute difference of the thumbnails' 48 channel values, out of 255. Re-encoded
# and resized copies differ by a few levels; a recoloured copy differs by far more.
MAX_COLOUR_DIFFERENCE = 16
_COLOUR_CELL = 8  # images with one hash and thumbnails equal after // this are one node


@dataclass(frozen=True)
class Member:
    source: str  # <class>/<file> under data/raw
    label: str
    content: str  # SHA-256 of the decoded pixels
    phash: str  # 16 hex digits
    colour: str  # 4x4 RGB thumbnail, 96 hex digits
    pixels: int


@dataclass(frozen=True)
class Group:
    id: str  # "g" and the start of the smallest content hash: stable across runs
    members: tuple[Member, ...]  # sorted by source
    kept: Member | None  # the copy that stays; None for a label conflict

    @property
    def labels(self) -> list[str]:
        return sorted({member.label for member in self.members})

    @property
    def exact(self) -> bool:
        """True when every copy has the same decoded pixels."""
        return len({member.content for member in self.members}) == 1

    def reason(self, member: Member) -> str | None:
        """Why `member` is dropped, or None for the kept copy."""
        if self.kept is None:
            return LABEL_CONFLICT
        if member == self.kept:
            return None
        return DUPLICATE if member.content == self.kept.content else NEAR_DUPLICATE


def hamming_pairs(phashes: list[str], max_distance: int) -> tuple[np.ndarray, np.ndarray]:
    """Return index pairs (i < j) whose hashes differ in at most `max_distance` bits.

    Compares every pair in blocks of rows, so memory stays near
    _BLOCK_ROWS x n x 8 bytes; n = 100,000 hashes take seconds, not minutes.
    """
    hashes = np.array([int(value, 16) for value in phashes], dtype=np.uint64)
    firsts, seconds = [], []
    for start in range(0, len(hashes), _BLOCK_ROWS):
        block = hashes[start : start + _BLOCK_ROWS, None]  # (rows, 1)
        distances = np.bitwise_count(block ^ hashes[None, start:])  # (rows, n - start)
        rows, columns = np.nonzero(distances <= max_distance)
        keep = columns > rows  # upper triangle: each pair once, no self-pairs
        firsts.append(rows[keep] + start)
        seconds.append(columns[keep] + start)
    if not firsts:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    return np.concatenate(firsts), np.concatenate(seconds)


def _components(members: list[Member], node_keys: list, max_distance: int, accept) -> np.ndarray:
    """Label each member with its connected component under the near-duplicate relation.

    Members with equal node keys are one node from the start, so a thousand
    blank frames cost one comparison, not half a million. Two nodes are joined
    when their hashes are within `max_distance` bits and accept(first, second)
    holds for their first members' indices.
    """
    node_index: dict = {}
    node_of_member = np.array([node_index.setdefault(key, len(node_index)) for key in node_keys])
    first_member = np.unique(node_of_member, return_index=True)[1]  # in node order

    first, second = hamming_pairs([members[i].phash for i in first_member], max_distance)
    joined = accept(first_member[first], first_member[second])
    n_nodes = len(node_index)
    graph = coo_matrix(
        (np.ones(joined.sum()), (first[joined], second[joined])), shape=(n_nodes, n_nodes)
    )
    _, component_of_node = connected_components(graph, directed=False)
    return component_of_node[node_of_member]


def find_groups(members: list[Member], max_distance: int) -> list[Group]:
    """Group near-duplicate members (two or more copies each) and choose the copy to keep.

    Within one class the copy with the most pixels stays (ties: the first by
    source path). A group that spans classes keeps nothing.
    """
    if len(members) < 2:
        return []

    colours = np.array([np.frombuffer(bytes.fromhex(m.colour), np.uint8) for m in members])
    node_keys = [(m.phash, (c // _COLOUR_CELL).tobytes()) for m, c in zip(members, colours, strict=True)]

    def similar_colour(first: np.ndarray, second: np.ndarray) -> np.ndarray:
        difference = np.abs(colours[first].astype(np.int16) - colours[second]).mean(axis=1)
        return difference <= MAX_COLOUR_DIFFERENCE

    component = _components(members, node_keys, max_distance, similar_colour)
    by_component: dict[int, list[Member]] = defaultdict(list)
    for member, index in zip(members, component, strict=True):
        by_component[index].append(member)

    groups = []
    for copies in by_component.values():
        if len(copies) < 2:
            continue
        copies.sort(key=lambda member: member.source)
        one_class = len({member.label for member in copies}) == 1
        kept = min(copies, key=lambda member: (-member.pixels, member.source)) if one_class else None
        group_id = "g" + min(member.content for member in copies)[:12]
        groups.append(Group(id=group_id, members=tuple(copies), kept=kept))
    return sorted(groups, key=lambda group: group.members[0].source)


def lookalike_groups(members: list[Member], max_distance: int) -> dict[str, str]:
    """Map each member that has look-alikes in its class to a group id shared with them.

    Look-alikes are near duplicates by the perceptual hash alone, whatever their
    colours: a black-and-white copy of a photo, or a recoloured one. They are
    kept, but split keeps each group in one split, so that no copy of a test
    image is trained on. Members without look-alikes are left out.
    """
    if len(members) < 2:
        return {}
    labels = [member.label for member in members]
    node_keys = [(member.label, member.phash) for member in members]

    def same_class(first: np.ndarray, second: np.ndarray) -> np.ndarray:
        return np.array([labels[a] == labels[b] for a, b in zip(first, second, strict=True)], bool)

    component = _components(members, node_keys, max_distance, same_class)
    by_component: dict[int, list[Member]] = defaultdict(list)
    for member, index in zip(members, component, strict=True):
        by_component[index].append(member)

    groups = {}
    for copies in by_component.values():
        if len(copies) > 1:
            group_id = "s" + min(member.content for member in copies)[:12]
            groups.update({member.source: group_id for member in copies})
    return groups


def summarize_groups(groups: list[Group]) -> dict:
    """Count groups and dropped copies for metrics/prepare.json."""
    conflicts = [group for group in groups if group.kept is None]
    return {
        "groups": len(groups),
        "exact_groups": sum(group.exact for group in groups),
        "label_conflict_groups": len(conflicts),
        "dropped": {
            reason: sum(group.reason(m) == reason for group in groups for m in group.members)
            for reason in (DUPLICATE, NEAR_DUPLICATE, LABEL_CONFLICT)
        },
    }
