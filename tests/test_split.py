import pytest

from imgclf.manifest import Entry
from imgclf.split import SplitError, count_by_class, min_class_size, stratified_split


def make_entries(counts: dict[str, int]) -> list[Entry]:
    return [
        Entry(f"data/prepared/images/{label}/{i:04d}.jpg", label)
        for label, count in counts.items()
        for i in range(count)
    ]


def test_split_is_stratified():
    entries = make_entries({"cats": 100, "dogs": 60})

    splits = stratified_split(entries, val=0.15, test=0.15, seed=1)

    counts = count_by_class(splits)
    assert counts["val"]["per_class"] == {"cats": 15, "dogs": 9}
    assert counts["test"]["per_class"] == {"cats": 15, "dogs": 9}
    assert counts["train"]["per_class"] == {"cats": 70, "dogs": 42}


def test_split_is_a_partition():
    entries = make_entries({"cats": 37, "dogs": 23, "birds": 11})

    splits = stratified_split(entries, val=0.2, test=0.1, seed=3)

    paths = [e.path for items in splits.values() for e in items]
    assert sorted(paths) == sorted(e.path for e in entries)


def test_same_seed_same_split():
    entries = make_entries({"cats": 50, "dogs": 50})
    first = stratified_split(entries, val=0.15, test=0.15, seed=7)
    second = stratified_split(list(reversed(entries)), val=0.15, test=0.15, seed=7)
    assert first == second


def test_other_seed_other_split():
    entries = make_entries({"cats": 50, "dogs": 50})
    first = stratified_split(entries, val=0.15, test=0.15, seed=7)
    second = stratified_split(entries, val=0.15, test=0.15, seed=8)
    assert first["test"] != second["test"]


def test_every_class_in_every_split():
    entries = make_entries({"cats": 3, "dogs": 40})

    splits = stratified_split(entries, val=0.1, test=0.1, seed=0)

    for name, items in splits.items():
        assert {e.label for e in items} == {"cats", "dogs"}, name


def test_small_class_message_says_how_many():
    entries = make_entries({"cats": 2, "dogs": 40})
    with pytest.raises(SplitError) as raised:
        stratified_split(entries, val=0.15, test=0.15, seed=0)
    message = str(raised.value)
    assert f"at least {min_class_size(0.15, 0.15)} images" in message
    assert "'cats' has 2" in message


def test_single_class_rejected():
    with pytest.raises(SplitError, match="at least 2"):
        stratified_split(make_entries({"cats": 30}), val=0.15, test=0.15, seed=0)


def test_min_class_size_leaves_one_train_image():
    assert min_class_size(0.15, 0.15) == 3
    assert min_class_size(0.4, 0.4) == 5  # 4 images split 0/2/2
    assert min_class_size(0.45, 0.45) == 9  # 8 images split 0/4/4


def test_rounding_gap_class_rejected():
    # 4 images with val = test = 0.45 round to 0 train, 2 val, 2 test.
    with pytest.raises(SplitError, match="at least 9 images"):
        stratified_split(make_entries({"cats": 4, "dogs": 40}), val=0.45, test=0.45, seed=0)
