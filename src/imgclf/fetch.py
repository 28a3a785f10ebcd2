"""Fetch a labelled image collection into `<dest>/<class>/<file>`.

A source is an http(s) URL of a .zip or .tar(.gz) archive, a local archive, or
a local folder. The collection contains one folder per class, or split folders
(train/, validation/, test/ ...) with one folder per class in each. Split
folders are merged per class. Wrapper folders with a single child
(`cats_and_dogs_filtered/`) are looked through.
"""

from __future__ import annotations

import logging
import shutil
import tarfile
import tempfile
import unicodedata
import zipfile
import zlib
from collections import Counter
from pathlib import Path
from urllib.parse import urlparse

from imgclf.errors import StageError

log = logging.getLogger(__name__)

SPLIT_FOLDER_NAMES = frozenset(
    {"train", "training", "val", "valid", "validation", "test", "testing", "eval"}
)
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")


class FetchError(StageError):
    """The source cannot be fetched or does not look like a labelled collection."""


def is_url(source: str) -> bool:
    return urlparse(source).scheme in ("http", "https")


def is_archive(name: str) -> bool:
    return name.lower().endswith(ARCHIVE_SUFFIXES)


def fetch(source: str, dest: Path, sha256: str | None = None) -> Counter[str]:
    """Fetch `source` into `dest` and return the number of files per class.

    `sha256` is the expected hash of a downloaded archive (None: not checked).
    `dest` is replaced only when the whole collection has been copied.
    """
    from imgclf.files import staged_directory

    with tempfile.TemporaryDirectory(prefix="imgclf-fetch-") as scratch:
        root = _materialize(source, Path(scratch), sha256)
        with staged_directory(dest) as staging:
            counts = merge_classes(root, staging)
    return counts


def _materialize(source: str, scratch: Path, sha256: str | None) -> Path:
    """Return a local folder with the source's contents, extracting archives into `scratch`."""
    if is_url(source):
        archive = _download(source, sha256)
        return _extract(archive, scratch)

    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if path.is_file():
        if not is_archive(path.name):
            raise FetchError(
                f"data.source = {source!r} is a file but not a .zip or .tar archive; "
                "point it at an archive or at a folder with one subfolder per class"
            )
        return _extract(path, scratch)
    raise FetchError(
        f"data.source = {source!r} ({path.absolute()}) is neither an http(s) URL nor an "
        "existing file or folder"
    )


def _download(url: str, sha256: str | None) -> Path:
    """Download `url` through the Keras cache ($KERAS_HOME/datasets), reusing a cached copy.

    Keras keys the cache by file name alone, so two URLs ending in the same name
    share one cached archive. With `sha256`, a cached file with another hash is
    downloaded again.
    """
    import keras

    name = Path(urlparse(url).path).name
    if not is_archive(name):
        raise FetchError(
            f"data.source = {url!r} does not end in one of {', '.join(ARCHIVE_SUFFIXES)}; "
            "only archives can be downloaded"
        )
    try:
        archive = Path(
            keras.utils.get_file(
                fname=name, origin=url, cache_subdir="datasets", file_hash=sha256,
                hash_algorithm="sha256",
            )
        )
    except ValueError as error:
        # get_file raises ValueError when the downloaded file fails the hash check.
        raise FetchError(
            f"the archive downloaded from {url} does not match data.sha256 = {sha256}: "
            f"{error}. Check the hash, or set data.sha256 to null to accept any archive"
        ) from error
    except Exception as error:  # get_file raises bare Exception for HTTP and URL errors
        raise FetchError(
            f"download of {url} failed: {error}. Offline, put {name} into "
            "$KERAS_HOME/datasets/ (default ~/.keras/datasets/) and run again"
        ) from error
    if sha256 is None:
        log.info(
            "using %s; it is reused for every URL ending in %s, so set data.sha256 to detect "
            "a different archive", archive, name,
        )
    return archive


def _extract(archive: Path, scratch: Path) -> Path:
    target = scratch / "extracted"
    target.mkdir()
    log.info("extracting %s", archive)
    try:
        if archive.name.lower().endswith(".zip"):
            # zipfile drops absolute paths and ".." components from member names.
            with zipfile.ZipFile(archive) as bundle:
                bundle.extractall(target)
        else:
            # The "data" filter rejects links and paths that leave the target.
            with tarfile.open(archive) as bundle:
                bundle.extractall(target, filter="data")
    except tarfile.FilterError as error:
        raise FetchError(
            f"archive {archive} contains an unsafe member (a link or a path outside the "
            f"archive): {error}; repack it without that member"
        ) from error
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, OSError) as error:
        raise FetchError(f"archive {archive} is damaged or not an archive: {error}") from error
    return target


def _visible(path: Path) -> bool:
    return not path.name.startswith(".") and path.name != "__MACOSX"


def _subfolders(folder: Path) -> list[Path]:
    """List visible subfolders; symlinked folders are skipped with a warning."""
    folders = []
    for path in sorted(folder.iterdir()):
        if not path.is_dir() or not _visible(path):
            continue
        if path.is_symlink():
            log.warning("skipped %s: symlinked folders are not followed", path)
            continue
        folders.append(path)
    return folders


def find_collection_root(folder: Path) -> Path:
    """Look through wrapper folders that contain exactly one visible subfolder."""
    current = folder
    while True:
        children = _subfolders(current)
        if len(children) == 1 and children[0].name.lower() not in SPLIT_FOLDER_NAMES:
            # A lone folder is a wrapper unless it is already a class folder of images.
            if _subfolders(children[0]):
                current = children[0]
                continue
        return current


def class_folders(root: Path) -> dict[str, list[Path]]:
    """Map each class name to the folders that contribute images to it."""
    children = _subfolders(root)
    splits = [child for child in children if child.name.lower() in SPLIT_FOLDER_NAMES]

    if not splits:
        classes = {child.name: [child] for child in children}
        _reject_case_variants(classes)
        return classes

    others = [child.name for child in children if child not in splits]
    if others:
        raise FetchError(
            f"{root} mixes split folders ({', '.join(s.name for s in splits)}) with other "
            f"folders ({', '.join(others)}); use either split folders or class folders"
        )
    classes: dict[str, list[Path]] = {}
    for split in splits:
        for child in _subfolders(split):
            classes.setdefault(child.name, []).append(child)
    _reject_case_variants(classes)
    return classes


def _reject_case_variants(classes: dict[str, list[Path]]) -> None:
    # "ñ" can be one code point (NFC, usual on Linux and Windows) or "n" and a
    # combining tilde (NFD, written by macOS). Both print alike but are different names.
    by_folded: dict[str, list[str]] = {}
    for name in classes:
        by_folded.setdefault(unicodedata.normalize("NFC", name).casefold(), []).append(name)
    variants = [names for names in by_folded.values() if len(names) > 1]
    if variants:
        listed = "; ".join(" and ".join(ascii(name) for name in names) for names in variants)
        raise FetchError(
            f"class folders {listed} differ only in letter case or Unicode normalization; "
            "rename them to one spelling so they form one class"
        )


def merge_classes(source_root: Path, dest: Path) -> Counter[str]:
    """Copy every file of every class folder into `dest/<class>/`, keeping sub-paths."""
    root = find_collection_root(source_root)
    classes = class_folders(root)
    empty = sorted(label for label, folders in classes.items() if not _has_files(folders))
    for label in empty:
        log.warning("skipped class folder %r: it contains no files", label)
        del classes[label]
    if len(classes) < 2:
        found = ", ".join(classes) or "none"
        skipped = f" (empty folders skipped: {', '.join(empty)})" if empty else ""
        raise FetchError(
            f"{root} must contain one folder per class and at least 2 classes with files; "
            f"found: {found}{skipped}"
        )

    loose = [p.name for p in root.iterdir() if p.is_file() and _visible(p)]
    if loose:
        log.warning("skipped %d file(s) outside class folders in %s: %s", len(loose), root,
                    ", ".join(sorted(loose)[:5]))

    counts: Counter[str] = Counter()
    for label, folders in sorted(classes.items()):
        for folder in folders:
            for path in sorted(folder.rglob("*")):
                if path.is_symlink() and not path.exists():
                    log.warning("skipped %s: the symlink target does not exist", path)
                    continue
                if path.is_dir():
                    continue
                if path.is_symlink() and not _resolves_inside(path, folder):
                    log.warning("skipped symlink %s: it points outside %s", path, folder)
                    continue
                if not path.is_file():
                    log.warning("skipped %s: not a regular file (a pipe, socket or device)", path)
                    continue
                try:
                    source_file = path.open("rb")
                except OSError as error:
                    log.warning("skipped %s: it could not be opened (%s)", path, error.strerror)
                    continue
                target = _unique_target(dest / label / path.relative_to(folder), folder.parent.name)
                target.parent.mkdir(parents=True, exist_ok=True)
                with source_file, target.open("wb") as copy:
                    shutil.copyfileobj(source_file, copy)
                counts[label] += 1
    return counts


def _has_files(folders: list[Path]) -> bool:
    return any(path.is_file() for folder in folders for path in folder.rglob("*"))


def _resolves_inside(link: Path, folder: Path) -> bool:
    return link.resolve().is_relative_to(folder.resolve())


def _unique_target(target: Path, split_name: str) -> Path:
    """Prefix the split folder's name when two splits hold a file of the same name."""
    if not target.exists():
        return target
    renamed = target.with_name(f"{split_name}__{target.name}")
    if renamed.exists():
        raise FetchError(f"two source files both map to {renamed}; rename one of them")
    return renamed
