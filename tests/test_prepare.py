import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import write_class_images
from imgclf.prepare import (
    CORRUPT,
    EMPTY,
    HIDDEN,
    NOT_AN_IMAGE,
    output_name,
    output_names,
    prepare_all,
    prepare_image,
    summarize,
)

SIZE = 32


def prepare_one(tmp_path: Path, source: Path) -> tuple[str | None, Path]:
    target = tmp_path / "out" / "image.jpg"
    return prepare_image(source, target, SIZE, 95), target


def test_rgb_jpeg_resized(tmp_path):
    source = tmp_path / "a.jpg"
    Image.new("RGB", (80, 50), (10, 200, 30)).save(source)

    reason, target = prepare_one(tmp_path, source)

    assert reason is None
    with Image.open(target) as image:
        assert image.size == (SIZE, SIZE)
        assert image.mode == "RGB"
        assert image.format == "JPEG"


def test_transparent_png_composited_on_white(tmp_path):
    source = tmp_path / "a.png"
    Image.new("RGBA", (40, 40), (255, 0, 0, 0)).save(source)

    reason, target = prepare_one(tmp_path, source)

    assert reason is None
    with Image.open(target) as image:
        pixel = np.asarray(image)[SIZE // 2, SIZE // 2]
    assert (pixel > 240).all(), pixel


@pytest.mark.parametrize("mode", ["L", "P", "CMYK", "1", "LA"])
def test_other_modes_become_rgb(tmp_path, mode):
    source = tmp_path / ("a.png" if mode != "CMYK" else "a.jpg")
    Image.new(mode, (40, 40)).save(source)

    reason, target = prepare_one(tmp_path, source)

    assert reason is None
    with Image.open(target) as image:
        assert image.mode == "RGB"


def test_exif_orientation_applied(tmp_path):
    # A 60x30 landscape image tagged "rotate 90 degrees" (orientation 6) displays as portrait.
    source = tmp_path / "rotated.jpg"
    pixels = np.zeros((30, 60, 3), dtype=np.uint8)
    pixels[:, :30] = (255, 0, 0)  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(source, exif=exif)

    target = tmp_path / "out.jpg"
    assert prepare_image(source, target, 60, 95) is None

    with Image.open(target) as image:
        array = np.asarray(image)
    # After a clockwise turn the red left half is at the top.
    assert array[5, 30, 0] > 200
    assert array[55, 30, 0] < 60


def test_invalid_exif_orientation_left_as_is(tmp_path):
    source = tmp_path / "odd.jpg"
    exif = Image.Exif()
    exif[0x0112] = 9
    Image.new("RGB", (40, 20), (0, 0, 255)).save(source, exif=exif)

    reason, _ = prepare_one(tmp_path, source)

    assert reason is None


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data:UserWarning")
def test_garbage_exif_left_as_is(tmp_path):
    source = tmp_path / "garbage.jpg"
    Image.new("RGB", (40, 20), (0, 0, 255)).save(source, exif=b"Exif\x00\x00MM\x00*garbage")

    reason, target = prepare_one(tmp_path, source)

    assert reason is None
    with Image.open(target) as image:
        assert image.size == (SIZE, SIZE)


def test_empty_file_dropped(tmp_path):
    source = tmp_path / "empty.jpg"
    source.touch()
    assert prepare_one(tmp_path, source)[0] == EMPTY


def test_text_file_dropped(tmp_path):
    source = tmp_path / "notes.jpg"
    source.write_text("not an image")
    assert prepare_one(tmp_path, source)[0] == NOT_AN_IMAGE


def test_truncated_jpeg_dropped(tmp_path):
    source = tmp_path / "cut.jpg"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (200, 200, 3), dtype=np.uint8)).save(source)
    data = source.read_bytes()
    source.write_bytes(data[: len(data) // 2])

    reason, target = prepare_one(tmp_path, source)

    assert reason == CORRUPT
    assert not target.exists()


def test_output_name_appends_jpg():
    assert output_name(Path("cats/a.jpg")) == Path("cats/a.jpg")
    assert output_name(Path("cats/a.png")) == Path("cats/a.png.jpg")
    assert output_name(Path("cats/a.JPG")) == Path("cats/a.JPG.jpg")


def test_prepare_all_reports_each_file(tmp_path):
    raw = write_class_images(tmp_path / "raw", {"cats": 3, "dogs": 3})
    (raw / "cats" / "empty.jpg").touch()
    (raw / "dogs" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (raw / "dogs" / "readme.txt").write_text("hello")
    before = {p: p.read_bytes() for p in raw.rglob("*") if p.is_file()}

    outcomes = prepare_all(raw, tmp_path / "out", image_size=SIZE, jpeg_quality=90, workers=2)

    reasons = {o.source: o.reason for o in outcomes}
    assert reasons["cats/empty.jpg"] == EMPTY
    assert reasons["dogs/.DS_Store"] == HIDDEN
    assert reasons["dogs/readme.txt"] == NOT_AN_IMAGE
    assert reasons["cats/cats_000.jpg"] is None

    kept_outcomes = [o for o in outcomes if o.reason is None]
    assert all((tmp_path / "out" / o.output).is_file() for o in kept_outcomes)
    first = next(o for o in outcomes if o.source == "cats/cats_000.jpg")
    assert first.sha256 == hashlib.sha256(before[raw / "cats" / "cats_000.jpg"]).hexdigest()

    after = {p: p.read_bytes() for p in raw.rglob("*") if p.is_file()}
    assert after == before  # raw data is never modified

    summary = summarize(outcomes)
    assert summary["kept"] == {"cats": 3, "dogs": 3}
    assert summary["dropped"]["dogs"] == {HIDDEN: 1, NOT_AN_IMAGE: 1}
    assert summary["total"] == {"kept": 6, "dropped": 3}


def test_output_names_resolve_clashes():
    names = output_names(["cat/x.png", "cat/x.png.jpg", "cat/x.png~2.jpg", "cat/y.jpg"])

    assert names["cat/x.png"] == Path("cat/x.png.jpg")
    assert names["cat/x.png~2.jpg"] == Path("cat/x.png~2.jpg")
    # The second claimant of x.png.jpg skips ~2, which another source owns.
    assert names["cat/x.png.jpg"] == Path("cat/x.png~3.jpg")
    assert names["cat/y.jpg"] == Path("cat/y.jpg")
    assert len(set(names.values())) == 4


def test_clashing_sources_both_kept(tmp_path):
    raw = tmp_path / "raw"
    (raw / "cat").mkdir(parents=True)
    Image.new("RGB", (40, 40), (255, 0, 0)).save(raw / "cat" / "x.png")
    Image.new("RGB", (40, 40), (0, 0, 255)).save(raw / "cat" / "x.png.jpg", format="JPEG")

    outcomes = prepare_all(raw, tmp_path / "out", image_size=SIZE, jpeg_quality=90, workers=1)

    outputs = {o.source: o.output for o in outcomes}
    assert len(set(outputs.values())) == 2
    for source, output in outputs.items():
        with Image.open(tmp_path / "out" / output) as image:
            red = np.asarray(image)[..., 0].mean()
        assert (red > 200) == source.endswith(".png"), source


@pytest.mark.parametrize("mode", ["I;16", "I", "F"])
def test_high_bit_depth_scaled_not_clipped(tmp_path, mode):
    # A horizontal ramp over the full range of the mode: the result must be a ramp too.
    top = {"I;16": 65535, "I": 65535, "F": 1000.0}[mode]
    ramp = np.tile(np.linspace(0, top, 64), (64, 1))
    dtype = {"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode]
    source = tmp_path / "a.tif"
    image = Image.fromarray(ramp.astype(dtype))
    assert image.mode == mode
    image.save(source)

    target = tmp_path / "out.jpg"
    assert prepare_image(source, target, 64, 95) is None

    with Image.open(target) as image:
        row = np.asarray(image)[32, :, 0].astype(int)
    assert row[2] < 30
    assert 100 < row[32] < 160
    assert row[-3] > 225
