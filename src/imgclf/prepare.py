"""Decode, orient, convert and resize raw images into a uniform RGB JPEG collection.

Every file is fully decoded with Pillow (`load()`, which catches truncated
files that `verify()` passes), after its size has been checked from the
header alone. A file that cannot be used is dropped with a reason; raw files
are only read, never modified. Each kept image also gets two fingerprints for
duplicate detection: a SHA-256 of its decoded pixels and a perceptual hash.
"""

from __future__ import annotations

import hashlib
import logging
import os
import struct
import sys
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from imgclf import duplicates
from imgclf.errors import StageError

log = logging.getLogger(__name__)

# Reasons for dropping a file, as they appear in dropped.csv and metrics/prepare.json.
EMPTY = "empty_file"
HIDDEN = "hidden_file"
NOT_AN_IMAGE = "not_an_image"
CORRUPT = "corrupt_or_truncated"
TOO_SMALL = "too_small"
TOO_MANY_PIXELS = "too_many_pixels"
UNREADABLE = "unreadable"  # the file could not be opened or read (permissions, I/O error)
INVALID_NAME = "invalid_file_name"  # the path is not valid UTF-8, so no manifest can name it

MAX_NAME_BYTES = 255  # the limit on one path component on Linux, macOS and Windows file systems

RESIZE_POLICIES = ("squash", "center_crop", "pad")


@dataclass(frozen=True)
class Settings:
    """Conversion settings for every image, from the `prepare` and `data` params."""

    image_size: int
    resize: str = "squash"
    background: str = "#ffffff"
    min_size: int = 1
    max_pixels: int = 50_000_000
    jpeg_quality: int = 95


@dataclass(frozen=True)
class Fingerprint:
    content: str  # SHA-256 of the oriented RGB pixels and their width and height
    phash: str  # 64-bit perceptual hash as 16 hex digits
    colour: str  # a 4x4 RGB thumbnail as 96 hex digits; pHash ignores colour
    pixels: int  # width x height before resizing


@dataclass(frozen=True)
class Outcome:
    source: str  # relative to the raw folder: <class>/<file>
    label: str
    sha256: str  # of the raw file's bytes
    output: str | None  # relative to the output folder; None when dropped
    reason: str | None  # why the file was dropped; None when kept
    fingerprint: Fingerprint | None = None  # None when dropped while decoding
    group: str | None = None  # duplicate group, when the image has copies
    kept_copy: str | None = None  # for a dropped duplicate: the source that stays
    split_group: str | None = None  # look-alikes in its class that must share its split


def output_name(source: Path) -> Path:
    """Name the JPEG written for a source file: `cat.jpg` stays, `cat.png` becomes `cat.png.jpg`.

    Two sources can still map to one name (`x.png` and `x.png.jpg`);
    `output_names` resolves those.
    """
    name = source.name if source.suffix == ".jpg" else source.name + ".jpg"
    if len(os.fsencode(name)) > MAX_NAME_BYTES:
        # Keep the start of the name and make it unique with a hash of the whole path.
        digest = hashlib.sha256(os.fsencode(source.as_posix())).hexdigest()[:12]
        start = os.fsencode(source.name)[: MAX_NAME_BYTES - 32].decode(errors="ignore")
        name = f"{start}~{digest}.jpg"
    return source.with_name(name)


def output_names(sources: list[str]) -> dict[str, Path]:
    """Map each source to a distinct output name; later duplicates get `~2`, `~3` ... before `.jpg`.

    A renamed file never takes the natural name of another source.
    """
    natural = {source: output_name(Path(source)) for source in sources}
    reserved = set(natural.values())
    used: set[Path] = set()
    assigned: dict[str, Path] = {}
    for source in sources:
        name = natural[source]
        counter = 2
        while name in used or (name != natural[source] and name in reserved):
            name = natural[source].with_name(f"{natural[source].stem}~{counter}.jpg")
            counter += 1
        assigned[source] = name
        used.add(name)
    return assigned


def to_8bit(image: Image.Image) -> Image.Image:
    """Scale 16-bit, 32-bit integer and float grayscale to 8-bit "L".

    Pillow's own convert() clips these modes at 255 instead of scaling, which
    turns most 16-bit photos white. 16-bit images are scaled by their full range
    (65535). Float images within [0, 1] are scaled to [0, 255]. Other 32-bit
    images are scaled by their maximum when it exceeds 255. NaN and infinite
    values become 0.
    """
    pixels = np.asarray(image, dtype=np.float32)
    pixels = np.where(np.isfinite(pixels), pixels, 0)
    top = pixels.max(initial=0)
    if image.mode.startswith("I;16"):
        pixels = pixels / 257.0
    elif image.mode == "F" and pixels.min(initial=0) >= 0 and top <= 1:
        pixels = pixels * 255.0
    elif top > 255:
        pixels = pixels * (255.0 / top)
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), mode="L")


def to_rgb(image: Image.Image, background: str = "#ffffff") -> Image.Image:
    """Convert any Pillow mode to RGB, compositing transparency onto `background` ("#rrggbb")."""
    if image.mode.startswith("I") or image.mode == "F":
        return to_8bit(image).convert("RGB")
    # "transparency" marks one transparent colour (a PNG tRNS chunk) in P, L and RGB images.
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    if image.mode == "RGB" and not has_alpha:
        return image
    if has_alpha:
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, background)
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image.convert("RGB")


def apply_orientation(image: Image.Image) -> Image.Image:
    """Rotate and flip as the EXIF orientation tag specifies.

    A missing tag, a value outside 1-8 or unreadable EXIF data leaves the image as is.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # Pillow only warns about corrupt EXIF data
            return ImageOps.exif_transpose(image)
    except (OSError, ValueError, SyntaxError, TypeError, KeyError, struct.error, UserWarning) as error:
        log.debug("ignored unusable EXIF data: %s", error)
        return image


def fit(image: Image.Image, image_size: int, resize: str, background: str) -> Image.Image:
    """Resize an RGB image to image_size x image_size by the `resize` policy.

    squash stretches the whole image; center_crop keeps the aspect ratio and
    cuts the longer side; pad keeps the aspect ratio and fills with `background`.
    """
    size = (image_size, image_size)
    if resize == "squash":
        return image.resize(size, Image.Resampling.BICUBIC)
    if resize == "center_crop":
        return ImageOps.fit(image, size, Image.Resampling.BICUBIC)
    if resize == "pad":
        return ImageOps.pad(image, size, Image.Resampling.BICUBIC, color=background)
    raise ValueError(f"resize = {resize!r}; use one of {', '.join(RESIZE_POLICIES)}")


def to_model_image(
    image: Image.Image, image_size: int, *, resize: str = "squash", background: str = "#ffffff"
) -> Image.Image:
    """Turn a decoded image into the model's input: oriented, RGB, image_size x image_size.

    prepare uses this for the training data, and prediction for new images, so
    both see the same conversion.
    """
    return fit(to_rgb(apply_orientation(image), background), image_size, resize, background)


def fingerprint(image: Image.Image) -> Fingerprint:
    """Fingerprint an oriented RGB image for exact and near-duplicate detection."""
    digest = hashlib.sha256(f"{image.width}x{image.height}:".encode())
    digest.update(image.tobytes())
    return Fingerprint(
        content=digest.hexdigest(),
        phash=str(imagehash.phash(image)),  # DCT of a 32x32 grayscale copy, 8x8 bits
        colour=image.resize((4, 4), Image.Resampling.BOX).tobytes().hex(),
        pixels=image.width * image.height,
    )


@contextmanager
def _quiet_exif_warnings() -> Iterator[None]:
    """Silence Pillow's warning about corrupt EXIF data; apply_orientation ignores such data."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Corrupt EXIF data", UserWarning)
        yield


def prepare_image(
    source: Path, target: Path, settings: Settings
) -> tuple[str | None, Fingerprint | None]:
    """Write `source` as an RGB JPEG of the configured size to `target`.

    Returns (None, fingerprint) on success, or (the reason the file was dropped, None).
    Sizes are checked from the header before any pixel is decoded.
    """
    try:
        if source.stat().st_size == 0:
            return EMPTY, None
        file = source.open("rb")
    except OSError:
        return UNREADABLE, None

    # NOTE: libjpeg only warns about some damage, such as a JPEG cut short and
    # closed with an end marker. Pillow does not raise for those warnings, so
    # such a file is kept, with its missing part filled in grey.
    try:
        with file, _quiet_exif_warnings(), Image.open(file) as image:
            width, height = image.size  # from the header; nothing decoded yet
            if width * height > settings.max_pixels:
                return TOO_MANY_PIXELS, None
            if min(width, height) < settings.min_size:
                return TOO_SMALL, None

            image.load()  # full decode of the first frame: raises for truncated data
            image = to_rgb(apply_orientation(image), settings.background)
    except Image.DecompressionBombError:
        return TOO_MANY_PIXELS, None
    except UnidentifiedImageError:
        return NOT_AN_IMAGE, None
    except (OSError, SyntaxError, ValueError):
        return CORRUPT, None

    prints = fingerprint(image)
    image = fit(image, settings.image_size, settings.resize, settings.background)
    target.parent.mkdir(parents=True, exist_ok=True)
    image.save(target, format="JPEG", quality=settings.jpeg_quality)
    return None, prints


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class _Job:
    raw_dir: Path
    out_dir: Path
    source: str
    output: Path
    settings: Settings


def _run_job(job: _Job) -> Outcome:
    source_path = job.raw_dir / job.source
    source = printable(job.source)
    label = Path(source).parts[0]
    prints = None
    if source != job.source:
        reason = INVALID_NAME
    elif any(part.startswith(".") for part in Path(job.source).parts):
        reason = HIDDEN  # .DS_Store, ._resource forks, files in hidden folders
    else:
        reason, prints = prepare_image(source_path, job.out_dir / job.output, job.settings)

    try:
        sha256 = sha256_of(source_path)
    except OSError:
        (job.out_dir / job.output).unlink(missing_ok=True)  # written before the read failed
        sha256, reason, prints = "", UNREADABLE, None
    return Outcome(
        source=source,
        label=label,
        sha256=sha256,
        output=None if reason else job.output.as_posix(),
        reason=reason,
        fingerprint=prints,
    )


def printable(source: str) -> str:
    """Return `source` as valid UTF-8, with any undecodable bytes of its name written as \\xNN."""
    return os.fsencode(source).decode("utf-8", errors="backslashreplace")


def _die_with_parent() -> None:
    """End this worker process when the stage process dies, even by SIGKILL (Linux only)."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        pr_set_pdeathsig = 1  # from <sys/prctl.h>
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def list_sources(raw_dir: Path) -> list[str]:
    """List every file under `raw_dir/<class>/`, relative to raw_dir, in sorted order."""
    sources = []
    for path in sorted(raw_dir.rglob("*")):
        relative = path.relative_to(raw_dir)
        if path.is_file() and len(relative.parts) >= 2:
            sources.append(relative.as_posix())
    return sources


def prepare_all(raw_dir: Path, out_dir: Path, settings: Settings, *, workers: int) -> list[Outcome]:
    """Prepare every raw file on `workers` processes (0: one per usable CPU core), in sorted order."""
    from tqdm import tqdm

    sources = list_sources(raw_dir)
    if not sources:
        raise StageError(f"{raw_dir} contains no files in class folders; check data.source")

    names = output_names(sources)
    jobs = [_Job(raw_dir, out_dir, source, names[source], settings) for source in sources]
    processes = workers or usable_cpu_count()
    with ProcessPoolExecutor(max_workers=processes, initializer=_die_with_parent) as pool:
        results = pool.map(_run_job, jobs, chunksize=16)
        # Redraw at most every 2 s when stderr is a log file, as under `dvc repro`.
        interval = 0.1 if sys.stderr.isatty() else 2.0
        progress = tqdm(results, total=len(jobs), desc="prepare", unit="image", mininterval=interval)
        return list(progress)


def drop_duplicates(
    outcomes: list[Outcome], max_distance: int
) -> tuple[list[Outcome], list[duplicates.Group]]:
    """Mark every copy but one in each duplicate group as dropped, and every label conflict.

    Kept images that still look alike within their class get a shared
    `split_group`. Returns the outcomes in the same order, and the duplicate groups.
    """
    members = [_member(o) for o in outcomes if o.reason is None and o.fingerprint is not None]
    groups = duplicates.find_groups(members, max_distance)

    decided = {o.source: o for o in outcomes}
    for group in groups:
        kept_source = group.kept.source if group.kept else None
        for member in group.members:
            reason = group.reason(member)
            decided[member.source] = replace(
                decided[member.source],
                output=None if reason else decided[member.source].output,
                reason=reason,
                group=group.id,
                kept_copy=kept_source if reason else None,
            )

    kept = [_member(o) for o in decided.values() if o.reason is None and o.fingerprint is not None]
    for source, split_group in duplicates.lookalike_groups(kept, max_distance).items():
        decided[source] = replace(decided[source], split_group=split_group)
    return [decided[o.source] for o in outcomes], groups


def _member(outcome: Outcome) -> duplicates.Member:
    prints = outcome.fingerprint
    return duplicates.Member(
        outcome.source, outcome.label, prints.content, prints.phash, prints.colour, prints.pixels
    )


def usable_cpu_count() -> int:
    """Count the CPU cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def summarize(outcomes: list[Outcome], groups: list[duplicates.Group]) -> dict:
    """Count kept files per class, dropped files per class and reason, and duplicate groups."""
    kept_per_class: Counter[str] = Counter()
    dropped: dict[str, Counter[str]] = defaultdict(Counter)
    by_reason: Counter[str] = Counter()
    for outcome in outcomes:
        if outcome.reason is None:
            kept_per_class[outcome.label] += 1
        else:
            dropped[outcome.label][outcome.reason] += 1
            by_reason[outcome.reason] += 1

    labels = sorted({outcome.label for outcome in outcomes})
    return {
        "kept": {label: kept_per_class[label] for label in labels},
        "dropped": {label: dict(sorted(dropped[label].items())) for label in labels},
        "total": {
            "kept": sum(kept_per_class.values()),
            "dropped": sum(by_reason.values()),
            "dropped_by_reason": dict(sorted(by_reason.items())),
        },
        "duplicates": duplicates.summarize_groups(groups),
    }
