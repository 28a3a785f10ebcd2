import hashlib

import pytest

from imgclf.manifest import Entry
from imgclf.split import (
    SplitError,
    count_by_class,
    allowed_miss,
    hash_position,
    min_class_size,
    stratified_split,
)

DEFAULTS = {"val": 0.15, "test": 0.15, "seed": 42, "tolerance_sd": 3.0}


def make_entries(counts: dict[str, int], start: int = 0) -> list[Entry]:
    """Entries with distinct file hashes, numbered from `start` within each class."""
    return [
        Entry(
            f"data/prepared/images/{label}/{i:05d}.jpg", label,
            sha256=hashlib.sha256(f"{label}/{i}".encode()).hexdigest(),
        )
        for label, count in counts.items()
        for i in range(start, start + count)
    ]


def split_of(splits: dict[str, list[Entry]]) -> dict[str, str]:
    return {entry.path: name for name, items in splits.items() for entry in items}


def split(entries, **settings):
    return stratified_split(entries, **{**DEFAULTS, **settings})


def test_shares_stay_within_the_tolerance():
    sizes = {"cats": 1000, "dogs": 600, "birds": 40}

    result = split(make_entries(sizes), tolerance_sd=1.0)

    counts = count_by_class(result.splits)
    for label, n in sizes.items():
        for name in ("val", "test"):
            miss = abs(counts[name]["per_class"][label] - round(0.15 * n))
            assert miss <= allowed_miss(n, 0.15, 1.0), (label, name)


def test_allowed_miss_is_three_binomial_sds():
    assert allowed_miss(1000, 0.15, 3.0) == 33  # 3 x sqrt(1000 x 0.15 x 0.85) = 33.9
    assert allowed_miss(30, 0.15, 3.0) == 5
    assert allowed_miss(1000, 0.15, 0.0) == 0


def test_split_is_a_partition():
    entries = make_entries({"cats": 37, "dogs": 23, "birds": 11})

    splits = split(entries, val=0.2, test=0.1).splits

    paths = [e.path for items in splits.values() for e in items]
    assert sorted(paths) == sorted(e.path for e in entries)


def test_order_of_the_manifest_does_not_matter():
    entries = make_entries({"cats": 50, "dogs": 50})
    assert split(entries) == split(list(reversed(entries)))


def test_other_seed_other_split():
    entries = make_entries({"cats": 50, "dogs": 50})
    assert split(entries, seed=7).splits["test"] != split(entries, seed=8).splits["test"]


def test_split_follows_the_pixels_not_the_path():
    entries = make_entries({"cats": 200, "dogs": 200})
    renamed = [Entry(e.path.replace(".jpg", "-renamed.jpg"), e.label, e.sha256) for e in entries]

    before, after = split_of(split(entries).splits), split_of(split(renamed).splits)

    assert all(before[e.path] == after[r.path] for e, r in zip(entries, renamed, strict=True))


@pytest.mark.parametrize("size", [30, 100, 300, 1000])
def test_adding_ten_percent_moves_no_existing_image(size):
    existing = make_entries({"cats": size, "dogs": size // 2 + 3})
    added = make_entries({"cats": size // 10, "dogs": (size // 2 + 3) // 10}, start=5000)

    first = split(existing)
    second = split(existing + added)

    # No class needed a correction at the default tolerance, so nothing moved.
    assert first.corrections == []
    assert second.corrections == []
    before, after = split_of(first.splits), split_of(second.splits)
    assert {path: after[path] for path in before} == before


def test_correction_moves_only_images_near_cuts():
    # At 0.5 standard deviations most classes are corrected, before and after.
    existing = make_entries({"cats": 1000, "birds": 300})
    added = make_entries({"cats": 100, "birds": 30}, start=5000)

    first = split(existing, tolerance_sd=0.5)
    second = split(existing + added, tolerance_sd=0.5)

    before, after = split_of(first.splits), split_of(second.splits)
    moved = [path for path in before if after[path] != before[path]]
    corrected = sum(fix.moved for fix in first.corrections + second.corrections)
    assert 0 < len(moved) <= corrected


def test_hashed_split_without_correction_is_a_pure_threshold():
    entries = make_entries({"cats": 1000, "dogs": 1000})
    result = split(entries)
    assert result.corrections == []
    for entry in entries:
        position = hash_position(entry.sha256, 42)
        if position < 0.15:
            expected = "test"
        elif position < 0.30:
            expected = "val"
        else:
            expected = "train"
        assert split_of(result.splits)[entry.path] == expected


def test_correction_moves_the_fewest_images():
    # With no tolerance, every class is corrected to the exact rounded counts.
    entries = make_entries({"cats": 500, "dogs": 300})

    loose = split(entries, tolerance_sd=10.0)
    tight = split(entries, tolerance_sd=0.0)

    counts = count_by_class(tight.splits)
    for label, n in (("cats", 500), ("dogs", 300)):
        for name in ("val", "test"):
            assert counts[name]["per_class"][label] == round(0.15 * n)
    assert loose.corrections == []
    moved = sum(fix.moved for fix in tight.corrections)
    changed = sum(
        split_of(loose.splits)[path] != where for path, where in split_of(tight.splits).items()
    )
    assert moved == changed
    for fix in tight.corrections:
        hashed_val, hashed_test = fix.hashed[1], fix.hashed[2]
        corrected_val, corrected_test = fix.corrected[1], fix.corrected[2]
        # Moving the cut points by k images moves k images; no more.
        assert fix.moved <= abs(hashed_test - corrected_test) + abs(
            (hashed_test + hashed_val) - (corrected_test + corrected_val)
        )


def test_duplicate_groups_stay_in_one_split():
    entries = make_entries({"cats": 200, "dogs": 200})
    grouped = [
        Entry(e.path, e.label, e.sha256, group=f"g{i // 4}") if i < 80 else e
        for i, e in enumerate(entries)
    ]

    where = split_of(split(grouped).splits)

    for group in {e.group for e in grouped if e.group}:
        members = {where[e.path] for e in grouped if e.group == group}
        assert len(members) == 1, group


def test_every_class_in_every_split():
    entries = make_entries({"cats": 3, "dogs": 40})

    splits = split(entries, val=0.1, test=0.1).splits

    for name, items in splits.items():
        assert {e.label for e in items} == {"cats", "dogs"}, name


def test_small_class_message_says_how_many():
    entries = make_entries({"cats": 2, "dogs": 40})
    with pytest.raises(SplitError) as raised:
        split(entries)
    message = str(raised.value)
    assert f"at least {min_class_size(0.15, 0.15)} images" in message
    assert "'cats' has 2" in message


def test_one_big_group_cannot_be_split():
    entries = make_entries({"cats": 10, "dogs": 40})
    grouped = [Entry(e.path, e.label, e.sha256, group="g1" if e.label == "cats" else "")
               for e in entries]
    with pytest.raises(SplitError, match="class 'cats' \\(10 images\\)"):
        split(grouped)


def test_single_class_rejected():
    with pytest.raises(SplitError, match="at least 2"):
        split(make_entries({"cats": 30}))


def test_min_class_size_leaves_one_train_image():
    assert min_class_size(0.15, 0.15) == 3
    assert min_class_size(0.4, 0.4) == 5  # 4 images split 0/2/2
    assert min_class_size(0.45, 0.45) == 9  # 8 images split 0/4/4


def test_rounding_gap_class_rejected():
    # 4 images with val = test = 0.45 round to 0 train, 2 val, 2 test.
    with pytest.raises(SplitError, match="at least 9 images"):
        split(make_entries({"cats": 4, "dogs": 40}), val=0.45, test=0.45)
