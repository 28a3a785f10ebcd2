"""Decode, orient, convert and resize raw images into a uniform RGB JPEG collection.

Every file is fully decoded with Pillow (`load()`, which catches truncated
files that `verify()` passes). A file that cannot be used is dropped with a
reason; raw files are only read, never modified.
"""

from __future__ import annotations

import hashlib
import logging
import os
import struct
import sys
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from imgclf.errors import StageError

log = logging.getLogger(__name__)

# Reasons for dropping a file, as they appear in dropped.csv and metrics/prepare.json.
EMPTY = "empty_file"
HIDDEN = "hidden_file"
NOT_AN_IMAGE = "not_an_image"
CORRUPT = "corrupt_or_truncated"
TOO_LARGE = "decompression_bomb"


@dataclass(frozen=True)
class Outcome:
    source: str  # relative to the raw folder: <class>/<file>
    label: str
    sha256: str
    output: str | None  # relative to the output folder; None when dropped
    reason: str | None  # why the file was dropped; None when kept


def output_name(source: Path) -> Path:
    """Name the JPEG written for a source file: `cat.jpg` stays, `cat.png` becomes `cat.png.jpg`.

    Two sources can still map to one name (`x.png` and `x.png.jpg`);
    `output_names` resolves those.
    """
    if source.suffix == ".jpg":
        return source
    return source.with_name(source.name + ".jpg")


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
    (65535); 32-bit ones by their maximum when it exceeds 255.
    """
    pixels = np.asarray(image, dtype=np.float64)
    if image.mode.startswith("I;16"):
        pixels = pixels / 257.0
    elif pixels.max(initial=0) > 255:
        pixels = pixels * (255.0 / pixels.max())
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), mode="L")


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB, compositing transparency onto white."""
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I") or image.mode == "F":
        return to_8bit(image).convert("RGB")
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (
        image.mode == "P" and "transparency" in image.info
    )
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def apply_orientation(image: Image.Image) -> Image.Image:
    """Rotate and flip as the EXIF orientation tag specifies; an unusable tag leaves the image as is."""
    try:
        return ImageOps.exif_transpose(image)
    except (OSError, ValueError, SyntaxError, TypeError, KeyError, struct.error) as error:
        log.debug("ignored unusable EXIF data: %s", error)
        return image


def to_model_image(image: Image.Image, image_size: int) -> Image.Image:
    """Turn a decoded image into the model's input: oriented, RGB, image_size x image_size.

    prepare uses this for the training data, and prediction for new images, so
    both see the same conversion.
    """
    image = apply_orientation(image)
    image = to_rgb(image)
    return image.resize((image_size, image_size), Image.Resampling.BICUBIC)


def prepare_image(source: Path, target: Path, image_size: int, jpeg_quality: int) -> str | None:
    """Write `source` as an RGB JPEG of image_size x image_size to `target`.

    Returns None on success, or the reason the file was dropped.
    """
    if source.stat().st_size == 0:
        return EMPTY

    try:
        with Image.open(source) as image:
            image.load()  # full decode: raises for truncated and corrupt data
            image = to_model_image(image, image_size)
    except Image.DecompressionBombError:
        return TOO_LARGE
    except UnidentifiedImageError:
        return NOT_AN_IMAGE
    except (OSError, SyntaxError, ValueError):
        return CORRUPT

    target.parent.mkdir(parents=True, exist_ok=True)
    image.save(target, format="JPEG", quality=jpeg_quality)
    return None


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
    image_size: int
    jpeg_quality: int


def _run_job(job: _Job) -> Outcome:
    source_path = job.raw_dir / job.source
    label = Path(job.source).parts[0]
    name = job.output
    if any(part.startswith(".") for part in Path(job.source).parts):
        reason = HIDDEN  # .DS_Store, ._resource forks, files in hidden folders
    else:
        reason = prepare_image(source_path, job.out_dir / name, job.image_size, job.jpeg_quality)
    return Outcome(
        source=job.source,
        label=label,
        sha256=sha256_of(source_path),
        output=None if reason else name.as_posix(),
        reason=reason,
    )


def list_sources(raw_dir: Path) -> list[str]:
    """List every file under `raw_dir/<class>/`, relative to raw_dir, in sorted order."""
    sources = []
    for path in sorted(raw_dir.rglob("*")):
        relative = path.relative_to(raw_dir)
        if path.is_file() and len(relative.parts) >= 2:
            sources.append(relative.as_posix())
    return sources


def prepare_all(
    raw_dir: Path, out_dir: Path, *, image_size: int, jpeg_quality: int, workers: int
) -> list[Outcome]:
    """Prepare every raw file on `workers` processes (0: one per usable CPU core), in sorted order."""
    from tqdm import tqdm

    sources = list_sources(raw_dir)
    if not sources:
        raise StageError(f"{raw_dir} contains no files in class folders; check data.source")

    names = output_names(sources)
    jobs = [
        _Job(raw_dir, out_dir, source, names[source], image_size, jpeg_quality)
        for source in sources
    ]
    processes = workers or usable_cpu_count()
    with ProcessPoolExecutor(max_workers=processes) as pool:
        results = pool.map(_run_job, jobs, chunksize=16)
        # Redraw at most every 2 s when stderr is a log file, as under `dvc repro`.
        interval = 0.1 if sys.stderr.isatty() else 2.0
        progress = tqdm(results, total=len(jobs), desc="prepare", unit="image", mininterval=interval)
        return list(progress)


def usable_cpu_count() -> int:
    """Count the CPU cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def summarize(outcomes: list[Outcome]) -> dict:
    """Count kept files per class and dropped files per class and reason."""
    kept_per_class: Counter[str] = Counter()
    dropped: dict[str, Counter[str]] = defaultdict(Counter)
    for outcome in outcomes:
        if outcome.reason is None:
            kept_per_class[outcome.label] += 1
        else:
            dropped[outcome.label][outcome.reason] += 1

    labels = sorted({outcome.label for outcome in outcomes})
    return {
        "kept": {label: kept_per_class[label] for label in labels},
        "dropped": {label: dict(sorted(dropped[label].items())) for label in labels},
        "total": {
            "kept": sum(kept_per_class.values()),
            "dropped": sum(sum(reasons.values()) for reasons in dropped.values()),
        },
    }
