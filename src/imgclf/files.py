"""Atomic writes: an output appears complete at its final path or not at all."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _remove_stale_partials(final: Path) -> None:
    """Remove what a killed run (SIGKILL, power loss) left beside `final`."""
    for stale in final.parent.glob(f".{final.name}.*.partial"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> None:
    """Write UTF-8 text to a temporary file beside `path`, then rename it over `path`."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write bytes to a temporary file beside `path`, then rename it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(path)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        # mkstemp creates the file readable by its owner only; use the usual umask instead.
        os.chmod(temporary, 0o666 & ~_current_umask())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, data: object) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def write_csv_atomic(path: Path, fieldnames: Sequence[str], rows: Iterable[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fieldnames, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, buffer.getvalue())


@contextmanager
def staged_directory(final: Path) -> Iterator[Path]:
    """Yield an empty folder to fill; on success it replaces `final`, on error it is removed.

    The staging folder sits beside `final` (same file system, so the rename is
    atomic) and ends in `.partial`, which .gitignore and later stages never read.
    Files created inside it keep the permissions their writer gives them.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(final)
    staging = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".partial"))
    # mkdtemp creates the folder private to its owner; use the usual umask instead.
    os.chmod(staging, 0o777 & ~_current_umask())
    try:
        yield staging
        if final.exists():
            # Move the old output aside first, so an interruption leaves either
            # the old or the new folder at `final`, and the rest as `.partial`.
            retired = Path(
                tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".partial")
            )
            os.replace(final, retired / final.name)
            os.replace(staging, final)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def save_model_atomic(model, path: Path) -> None:
    """Save a Keras model to a temporary `.keras` file beside `path`, then rename it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.stem}.partial.keras")
    try:
        model.save(temporary)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
