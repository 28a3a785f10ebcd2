"""Shared fixtures: small labelled image collections generated with Pillow."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# Quiet TensorFlow's start-up banner in test output; errors still show.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# One mean colour per class: a classifier can separate them after a few steps.
CLASS_COLOURS = {"cats": (200, 60, 40), "dogs": (40, 80, 200), "birds": (60, 190, 70)}


def write_class_images(
    root: Path, classes: dict[str, int], *, size: int = 48, seed: int = 0, suffix: str = ".jpg"
) -> Path:
    """Write `classes[name]` noisy images of that class's colour into root/<name>/."""
    rng = np.random.default_rng(seed)
    for name, count in classes.items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        colour = np.array(CLASS_COLOURS.get(name, (128, 128, 128)), dtype=np.float32)
        for index in range(count):
            noise = rng.normal(0, 25, size=(size, size, 3))
            pixels = np.clip(colour + noise, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{name}_{index:03d}{suffix}")
    return root


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """Two classes of 20 images each, 48x48 RGB JPEG."""
    return write_class_images(tmp_path / "images", {"cats": 20, "dogs": 20})


def noise_image(seed: int, size: tuple[int, int] = (64, 48), mode: str = "RGB") -> Image.Image:
    """A random picture: distinct seeds give images that are not near duplicates."""
    rng = np.random.default_rng(seed)
    # Smooth blobs rather than pixel noise, so resized copies keep their perceptual hash.
    small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize(size, Image.Resampling.BICUBIC)
    return image.convert(mode) if mode != "RGB" else image


def ycck_jpeg(path: Path, size: tuple[int, int] = (64, 48)) -> None:
    """Write a JPEG whose Adobe marker declares YCCK colour (transform 2)."""
    buffer = io.BytesIO()
    noise_image(99, size).convert("CMYK").save(buffer, format="JPEG")
    data = bytearray(buffer.getvalue())
    marker = data.find(b"Adobe")
    data[marker + 11] = 2  # "Adobe", version (2), flags0 (2), flags1 (2), transform
    path.write_bytes(bytes(data))


def oversized_png_header(path: Path, width: int, height: int) -> None:
    """Write a PNG that claims width x height pixels but contains almost no data."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    pixels = zlib.compress(bytes(4 * 3 + 1))  # one short row; the rest is missing
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


def write_messy_folder(root: Path) -> dict[str, str | None]:
    """Write a class folder collection with every kind of trouble prepare handles.

    Returns the expected outcome per file (<class>/<file>): None when kept,
    otherwise the drop reason, as it appears in dropped.csv.
    """
    expected: dict[str, str | None] = {}

    def put(relative: str, outcome: str | None, writer) -> None:
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        writer(path)
        expected[relative] = outcome

    # Twelve plain photos per class, so the classes can be split after the drops.
    for label, offset in (("cats", 1000), ("dogs", 1100), ("bird ñandú", 1200)):
        for index in range(12):
            put(f"{label}/photo {index:02d}.jpg", None,
                lambda p, s=offset + index: noise_image(s).save(p, format="JPEG"))

    # Lying and upper-case extensions, animations.
    put("cats/png named.jpg", None, lambda p: noise_image(1).save(p, format="PNG"))
    put("cats/gif named.jpg", None, lambda p: noise_image(2).convert("P").save(p, format="GIF"))
    put("cats/webp named.jpg", None, lambda p: noise_image(3).save(p, format="WEBP"))
    put("cats/bmp named.jpg", None, lambda p: noise_image(4).save(p, format="BMP"))
    put("cats/tiff named.jpg", None, lambda p: noise_image(5).save(p, format="TIFF"))
    put("cats/UPPER.JPEG", None, lambda p: noise_image(6).save(p, format="JPEG"))
    put("cats/UPPER.PNG", None, lambda p: noise_image(7).save(p, format="PNG"))
    frames = [noise_image(8), noise_image(9)]
    put("dogs/animated.gif", None,
        lambda p: frames[0].save(p, save_all=True, append_images=frames[1:], duration=50))
    put("dogs/animated.webp", None,
        lambda p: frames[0].save(p, save_all=True, append_images=frames[1:], duration=50))

    # Every mode.
    for index, mode in enumerate(["L", "LA", "P", "RGBA", "CMYK", "1", "I", "F"]):
        suffix = {"CMYK": "jpg", "I": "tif", "F": "tif"}.get(mode, "png")
        put(f"dogs/mode {mode}.{suffix}", None, lambda p, m=mode, s=20 + index: noise_image(s, mode=m).save(p))
    put("dogs/mode I16.png", None,
        lambda p: Image.fromarray((np.asarray(noise_image(30).convert("L"), np.uint16) * 257)).save(p))
    put("dogs/mode P transparent.png", None,
        lambda p: noise_image(31).convert("P").save(p, transparency=0))
    put("dogs/ycck.jpg", None, ycck_jpeg)

    # EXIF orientation: every valid value, plus invalid ones.
    for value in range(0, 10):
        def tagged(p, v=value):
            exif = Image.Exif()
            exif[0x0112] = v
            noise_image(40 + v).save(p, format="JPEG", exif=exif)
        put(f"bird ñandú/orientation {value}.jpg", None, tagged)
    put("bird ñandú/garbage exif.jpg", None,
        lambda p: noise_image(50).save(p, format="JPEG", exif=b"Exif\x00\x00MM\x00*garbage"))

    # Files that are dropped.
    put("cats/empty.jpg", "empty_file", lambda p: p.touch())
    put("cats/notes.txt", "not_an_image", lambda p: p.write_text("a note"))
    put("cats/Thumbs.db", "not_an_image", lambda p: p.write_bytes(b"\xd0\xcf\x11\xe0" + bytes(500)))
    put("cats/.DS_Store", "hidden_file", lambda p: p.write_bytes(b"\x00\x00\x00\x01Bud1"))
    put("cats/.hidden folder/a.jpg", "hidden_file", lambda p: noise_image(60).save(p, format="JPEG"))
    put("dogs/truncated.jpg", "corrupt_or_truncated", lambda p: _truncated_jpeg(p))
    put("dogs/tiny.png", "too_small", lambda p: noise_image(61, (16, 200)).save(p))
    put("dogs/bomb.png", "too_many_pixels", lambda p: oversized_png_header(p, 9_000, 9_000))
    put("dogs/huge.png", "too_many_pixels", lambda p: oversized_png_header(p, 100_000, 100_000))

    # Duplicates: an exact copy, a resized re-encoded copy, and one picture in two classes.
    put("cats/dup 1.png", None, lambda p: noise_image(70, (96, 72)).save(p))
    put("cats/dup 2.png", "duplicate", lambda p: noise_image(70, (96, 72)).save(p))
    put("cats/dup 3 small.jpg", "near_duplicate",
        lambda p: noise_image(70, (96, 72)).resize((48, 36)).save(p, format="JPEG", quality=70))
    put("cats/conflict.jpg", "label_conflict", lambda p: noise_image(80).save(p, format="JPEG"))
    put("dogs/conflict.jpg", "label_conflict", lambda p: noise_image(80).save(p, format="JPEG"))
    return expected


def add_folder_traps(source: Path, outside: Path) -> None:
    """Add what fetch must skip to a class folder collection: an empty class and symlinks.

    The links point out of `source` (to a file in `outside`) and nowhere (dangling).
    """
    (source / "empty class").mkdir()
    outside.mkdir(parents=True, exist_ok=True)
    secret = outside / "secret.jpg"
    noise_image(90).save(secret, format="JPEG")
    (source / "cats" / "link out.jpg").symlink_to(secret)
    (source / "cats" / "dangling.jpg").symlink_to(outside / "missing.jpg")
    (source / "linked class").symlink_to(outside, target_is_directory=True)


def _truncated_jpeg(path: Path) -> None:
    noise_image(62, (200, 150)).save(path, format="JPEG")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
