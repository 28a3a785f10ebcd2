"""Stable, stratified train/val/test split of a manifest."""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from imgclf.errors import StageError
from imgclf.manifest import Entry


class SplitError(StageError):
    """The data cannot be split with the requested fractions."""


def split_counts(n_images: int, val: float, test: float) -> tuple[int, int, int]:
    """Return (train, val, test) counts for one class: rounded, with at least one per split."""
    n_val = max(1, round(n_images * val))
    n_test = max(1, round(n_images * test))
    return n_images - n_val - n_test, n_val, n_test


def min_class_size(val: float, test: float) -> int:
    """Return the class size from which every larger class also gets one image per split.

    Rounding makes this non-monotonic near the bound: with val = test = 0.45,
    3 images split 1/1/1 but 4 split 0/2/2, so the last failing size counts.
    """
    last_failing = 2
    # Past 2 / (1 - val - test) images, rounding can no longer empty the train split.
    upper = math.ceil(2 / (1 - val - test)) + 3
    for n_images in range(3, upper + 1):
        if split_counts(n_images, val, test)[0] < 1:
            last_failing = n_images
    return last_failing + 1


@dataclass(frozen=True)
class Correction:
    """A class whose hashed split missed the requested shares by more than the tolerance."""

    label: str
    hashed: tuple[int, int, int]  # (train, val, test) images as the hashes fell
    corrected: tuple[int, int, int]
    moved: int  # images assigned to another split than their hash gave


@dataclass(frozen=True)
class SplitResult:
    splits: dict[str, list[Entry]]
    corrections: list[Correction]


def hash_position(key: str, seed: int) -> float:
    """Map a file hash to a number in [0, 1) that depends only on it and the seed."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _units(items: list[Entry], seed: int) -> list[tuple[float, list[Entry]]]:
    """Group a class's entries into units that stay together, sorted by hash position.

    Entries that share a duplicate group form one unit. Every other entry is its
    own unit, keyed by its file hash, or by its path when the manifest has none.
    """
    by_unit: dict[str, list[Entry]] = defaultdict(list)
    for entry in items:
        by_unit[entry.group or entry.sha256 or entry.path].append(entry)
    units = []
    for members in by_unit.values():
        # A unit goes where its first member by position goes.
        position = min(hash_position(member.sha256 or member.path, seed) for member in members)
        units.append((position, sorted(members, key=lambda e: e.path)))
    return sorted(units, key=lambda unit: (unit[0], unit[1][0].path))


def _nearest_cut(
    cumulative: np.ndarray, nominal: int, low: int, high: int, accept
) -> int | None:
    """Return the cut index in [low, high] nearest `nominal` for which accept(images) holds."""
    for offset in range(0, len(cumulative)):
        for cut in (nominal - offset, nominal + offset):
            if low <= cut <= high and accept(cumulative[cut]):
                return cut
    return None


def allowed_miss(n_images: int, fraction: float, tolerance_sd: float) -> int:
    """Return how many images a hashed split count may miss its target by.

    Hashing puts each image in a split independently, so a class's count in a
    split of `fraction` has the binomial standard deviation
    sqrt(n * fraction * (1 - fraction)). A miss beyond `tolerance_sd` of them
    is corrected. At 3, about 1 count in 370 is corrected.
    """
    return math.floor(tolerance_sd * math.sqrt(n_images * fraction * (1 - fraction)))


def stratified_split(
    entries: list[Entry], *, val: float, test: float, seed: int, tolerance_sd: float
) -> SplitResult:
    """Split each class into train, val and test by a seeded hash of each image's file.

    An image's split depends only on its file's bytes and the seed, so adding
    images moves no existing one unless a correction is needed. A class's
    hashed val or test count may miss its target by more than `allowed_miss`,
    or leave a split empty. Then the cut points move just far enough, which
    moves the fewest images, and the class is returned as a correction.
    Duplicate groups never cross splits.
    """
    by_class: dict[str, list[Entry]] = defaultdict(list)
    for entry in entries:
        by_class[entry.label].append(entry)

    if len(by_class) < 2:
        raise SplitError(f"found {len(by_class)} class(es); a classifier needs at least 2")
    _check_class_sizes(by_class, val, test)

    splits: dict[str, list[Entry]] = {"train": [], "val": [], "test": []}
    corrections = []
    for label in sorted(by_class):
        units = _units(by_class[label], seed)
        positions = np.array([position for position, _ in units])
        sizes = np.array([len(members) for _, members in units])
        cumulative = np.concatenate([[0], np.cumsum(sizes)])  # images in the first i units
        n_images = int(cumulative[-1])
        _, target_val, target_test = split_counts(n_images, val, test)
        val_slack = allowed_miss(n_images, val, tolerance_sd)
        test_slack = allowed_miss(n_images, test, tolerance_sd)

        # Units below `test` go to test, the next ones up to `test + val` to val.
        hashed_test = int(np.searchsorted(positions, test))
        hashed_val_end = int(np.searchsorted(positions, test + val))
        test_cut = _nearest_cut(
            cumulative, hashed_test, 1, len(units) - 2,
            lambda images: images >= 1 and abs(images - target_test) <= test_slack,
        )
        if test_cut is None:
            raise _unsplittable(label, n_images, "test")
        val_cut = _nearest_cut(
            cumulative, max(hashed_val_end, test_cut + 1), test_cut + 1, len(units) - 1,
            lambda images: images - cumulative[test_cut] >= 1
            and abs(images - cumulative[test_cut] - target_val) <= val_slack,
        )
        if val_cut is None:
            raise _unsplittable(label, n_images, "val")

        assigned = {"test": units[:test_cut], "val": units[test_cut:val_cut], "train": units[val_cut:]}
        for name, chosen in assigned.items():
            splits[name] += [entry for _, members in chosen for entry in members]

        hashed = _counts(cumulative, hashed_test, hashed_val_end)
        corrected = _counts(cumulative, test_cut, val_cut)
        if (test_cut, val_cut) != (hashed_test, hashed_val_end):
            moved = _moved(cumulative, (hashed_test, hashed_val_end), (test_cut, val_cut))
            corrections.append(Correction(label, hashed, corrected, moved))

    for name in splits:
        splits[name].sort(key=lambda entry: entry.path)
    return SplitResult(splits, corrections)


def _counts(cumulative: np.ndarray, test_cut: int, val_cut: int) -> tuple[int, int, int]:
    total = int(cumulative[-1])
    n_test = int(cumulative[test_cut])
    n_val = int(cumulative[val_cut]) - n_test
    return total - n_test - n_val, n_val, n_test


def _moved(cumulative: np.ndarray, hashed: tuple[int, int], chosen: tuple[int, int]) -> int:
    """Count images whose split differs between two sets of cut points."""
    def split_of(index: int, cuts: tuple[int, int]) -> int:
        # 0 test, 1 val, 2 train: units are ordered by hash position.
        if index < cuts[0]:
            return 0
        if index < cuts[1]:
            return 1
        return 2

    sizes = np.diff(cumulative)
    return int(sum(size for i, size in enumerate(sizes) if split_of(i, hashed) != split_of(i, chosen)))


def _check_class_sizes(by_class: dict[str, list[Entry]], val: float, test: float) -> None:
    needed = min_class_size(val, test)
    too_small = {
        label: len(items)
        for label, items in by_class.items()
        if len(items) < 3 or split_counts(len(items), val, test)[0] < 1
    }
    if too_small:
        listed = ", ".join(f"{label!r} has {count}" for label, count in sorted(too_small.items()))
        raise SplitError(
            f"with split.val = {val:g} and split.test = {test:g} every class needs at least "
            f"{needed} images so that train, val and test each get one; {listed}. "
            "Add images or remove the class"
        )


def _unsplittable(label: str, n_images: int, split: str) -> SplitError:
    return SplitError(
        f"class {label!r} ({n_images} images) cannot give the {split} split its share within "
        "split.tolerance_sd without splitting a duplicate group or leaving a split empty. "
        "Add images to the class, or raise split.tolerance_sd"
    )


def count_by_class(splits: dict[str, list[Entry]]) -> dict[str, dict]:
    """Count images per class in each split, with a total."""
    labels = sorted({entry.label for items in splits.values() for entry in items})
    counts = {}
    for name, items in splits.items():
        per_class = {label: 0 for label in labels}
        for entry in items:
            per_class[entry.label] += 1
        counts[name] = {"total": len(items), "per_class": per_class}
    return counts

