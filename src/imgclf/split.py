"""Stratified, seeded train/val/test split of a manifest."""

from __future__ import annotations

import math
from collections import defaultdict

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


def stratified_split(
    entries: list[Entry], *, val: float, test: float, seed: int
) -> dict[str, list[Entry]]:
    """Split each class separately so every split keeps the class proportions.

    The split is a seeded shuffle per class: the same manifest and seed always
    give the same split. Raises SplitError if a class is too small to appear
    in every split.
    """
    by_class: dict[str, list[Entry]] = defaultdict(list)
    for entry in entries:
        by_class[entry.label].append(entry)

    if len(by_class) < 2:
        raise SplitError(f"found {len(by_class)} class(es); a classifier needs at least 2")

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

    rng = np.random.default_rng(seed)
    splits: dict[str, list[Entry]] = {"train": [], "val": [], "test": []}
    for label in sorted(by_class):
        items = sorted(by_class[label], key=lambda entry: entry.path)
        order = rng.permutation(len(items))
        n_train, n_val, _ = split_counts(len(items), val, test)
        shuffled = [items[index] for index in order]
        splits["train"] += shuffled[:n_train]
        splits["val"] += shuffled[n_train : n_train + n_val]
        splits["test"] += shuffled[n_train + n_val :]

    for name in splits:
        splits[name].sort(key=lambda entry: entry.path)
    return splits


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

