"""Manifests: CSV files that list images with their labels, passed from stage to stage."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from imgclf.errors import StageError


@dataclass(frozen=True)
class Entry:
    path: str  # relative to the repository root
    label: str
    sha256: str = ""  # of the raw file's bytes, in prepare's and split's manifests
    group: str = ""  # images of one class that look alike and must share a split


def read_entries(path: Path) -> list[Entry]:
    """Read a manifest with at least the columns `path` and `label`."""
    if not path.is_file():
        raise StageError(f"manifest {path} not found; run `dvc repro` to build it")

    with path.open(newline="", encoding="utf-8") as file:
        reader = csv.DictReader(file)
        missing = {"path", "label"} - set(reader.fieldnames or ())
        if missing:
            raise StageError(f"manifest {path} lacks the column(s) {sorted(missing)}")
        entries = [
            Entry(row["path"], row["label"], row.get("sha256") or "", row.get("split_group") or "")
            for row in reader
        ]

    if not entries:
        raise StageError(f"manifest {path} lists no images")
    return entries


def class_names(entries: list[Entry]) -> list[str]:
    """Return the sorted class names; a label's index in this list is its class id."""
    return sorted({entry.label for entry in entries})
