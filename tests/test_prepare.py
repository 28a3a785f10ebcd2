import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import (
    noise_image,
    oversized_png_header,
    write_class_images,
    write_messy_folder,
    ycck_jpeg,
)
from imgclf.prepare import (
    CORRUPT,
    EMPTY,
    HIDDEN,
    NOT_AN_IMAGE,
    INVALID_NAME,
    TOO_MANY_PIXELS,
    TOO_SMALL,
    UNREADABLE,
    output_name,
    output_names,
    Settings,
    drop_duplicates,
    prepare_all,
    prepare_image,
    summarize,
)

SIZE = 32


def prepare_one(tmp_path: Path, source: Path, **settings) -> tuple[str | None, Path]:
    target = tmp_path / "out" / "image.jpg"
    reason, _ = prepare_image(source, target, Settings(SIZE, **settings))
    return reason, target


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
    assert prepare_image(source, target, Settings(60))[0] is None

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

    outcomes = prepare_all(raw, tmp_path / "out", Settings(SIZE, jpeg_quality=90), workers=2)

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

    summary = summarize(outcomes, [])
    assert summary["kept"] == {"cats": 3, "dogs": 3}
    assert summary["dropped"]["dogs"] == {HIDDEN: 1, NOT_AN_IMAGE: 1}
    assert summary["total"] == {
        "kept": 6, "dropped": 3, "dropped_by_reason": {EMPTY: 1, HIDDEN: 1, NOT_AN_IMAGE: 1}
    }


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

    outcomes = prepare_all(raw, tmp_path / "out", Settings(SIZE, jpeg_quality=90), workers=1)

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
    assert prepare_image(source, target, Settings(64))[0] is None

    with Image.open(target) as image:
        row = np.asarray(image)[32, :, 0].astype(int)
    assert row[2] < 30
    assert 100 < row[32] < 160
    assert row[-3] > 225


# --- every kind of file a real folder contains -------------------------------------------

@pytest.mark.parametrize("fmt", ["PNG", "GIF", "WEBP", "BMP", "TIFF"])
def test_extension_that_lies_is_read_by_content(tmp_path, fmt):
    source = tmp_path / "photo.jpg"
    noise_image(1).save(source, format=fmt)

    reason, target = prepare_one(tmp_path, source)

    assert reason is None
    with Image.open(target) as image:
        assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (SIZE, SIZE))


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_animation_gives_its_first_frame(tmp_path, fmt):
    red, blue = Image.new("RGB", (40, 40), (255, 0, 0)), Image.new("RGB", (40, 40), (0, 0, 255))
    source = tmp_path / f"animated.{fmt.lower()}"
    red.save(source, format=fmt, save_all=True, append_images=[blue], duration=50)

    reason, target = prepare_one(tmp_path, source)

    assert reason is None
    with Image.open(target) as image:
        r, _, b = np.asarray(image)[SIZE // 2, SIZE // 2]
    assert r > 200
    assert b < 60


MODES = ["RGB", "L", "LA", "P", "RGBA", "CMYK", "1", "I", "F", "I;16"]


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_becomes_rgb(tmp_path, mode):
    suffix = {"CMYK": ".jpg", "I": ".tif", "F": ".tif"}.get(mode, ".png")
    source = tmp_path / f"a{suffix}"
    if mode == "I;16":
        grey = np.asarray(noise_image(2).convert("L"), dtype=np.uint16) * 257
        image = Image.fromarray(grey)
    else:
        image = noise_image(2, mode=mode)
    assert image.mode == mode
    image.save(source)

    reason, target = prepare_one(tmp_path, source)

    assert reason is None
    with Image.open(target) as result:
        assert result.mode == "RGB"
        assert np.asarray(result).std() > 5  # a picture, not a flat or clipped field


def test_ycck_jpeg_becomes_rgb(tmp_path):
    source = tmp_path / "ycck.jpg"
    ycck_jpeg(source)
    with Image.open(source) as image:
        assert (image.mode, image.info.get("adobe_transform")) == ("CMYK", 2)

    reason, target = prepare_one(tmp_path, source)

    assert reason is None
    with Image.open(target) as result:
        assert result.mode == "RGB"


@pytest.mark.parametrize(
    ("mode", "save_options"),
    [("RGBA", {}), ("LA", {}), ("P", {"transparency": 0})],
    ids=["RGBA", "LA", "P with transparency"],
)
def test_transparency_goes_onto_the_background_param(tmp_path, mode, save_options):
    source = tmp_path / "clear.png"
    if mode == "P":
        image = Image.new("P", (40, 40), 0)  # every pixel is palette entry 0, the transparent one
    else:
        image = Image.new(mode, (40, 40))  # all channels 0: fully transparent
    image.save(source, **save_options)

    reason, target = prepare_one(tmp_path, source, background="#00ff00")

    assert reason is None
    with Image.open(target) as result:
        r, g, b = np.asarray(result)[SIZE // 2, SIZE // 2]
    assert g > 230
    assert r < 30
    assert b < 30


def _marked(orientation: int | None) -> Image.Image:
    """A 60x30 image, red in its top-left 10x10 corner, tagged with `orientation`."""
    pixels = np.zeros((30, 60, 3), dtype=np.uint8)
    pixels[:10, :10] = (255, 0, 0)
    image = Image.fromarray(pixels)
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        image.info["exif"] = exif.tobytes()
    return image


# Where the red corner ends up after each orientation, and the displayed size.
ORIENTED = {
    1: ("top left", (60, 30)), 2: ("top right", (60, 30)), 3: ("bottom right", (60, 30)),
    4: ("bottom left", (60, 30)), 5: ("top left", (30, 60)), 6: ("top right", (30, 60)),
    7: ("bottom right", (30, 60)), 8: ("bottom left", (30, 60)),
}


@pytest.mark.parametrize("orientation", [None, 0, *range(1, 10)])
def test_exif_orientation(tmp_path, orientation):
    source = tmp_path / "tagged.png"
    image = _marked(orientation)
    image.save(source, exif=image.info.get("exif", b""))
    # Keep the aspect ratio visible: pad to a square, then look at the content box.
    reason, target = prepare_one(tmp_path, source, resize="pad", background="#0000ff")

    assert reason is None
    corner, size = ORIENTED.get(orientation, ("top left", (60, 30)))  # invalid: as stored
    with Image.open(target) as result:
        pixels = np.asarray(result).astype(int)
    content = pixels[..., 2] < 128  # not the blue padding
    rows, columns = np.nonzero(content.any(axis=1))[0], np.nonzero(content.any(axis=0))[0]
    height, width = np.ptp(rows) + 1, np.ptp(columns) + 1
    assert (width > height) == (size[0] > size[1])
    box = pixels[rows[0] : rows[-1] + 1, columns[0] : columns[-1] + 1, 0]
    red_row, red_column = np.unravel_index(np.argmax(box), box.shape)
    vertical = "top" if red_row < box.shape[0] / 2 else "bottom"
    horizontal = "left" if red_column < box.shape[1] / 2 else "right"
    assert f"{vertical} {horizontal}" == corner


def test_image_below_min_size_dropped(tmp_path):
    source = tmp_path / "narrow.png"
    noise_image(3, (20, 200)).save(source)
    assert prepare_one(tmp_path, source, min_size=32)[0] == TOO_SMALL
    assert prepare_one(tmp_path, source, min_size=20)[0] is None


@pytest.mark.parametrize("width", [9_000, 100_000])
def test_too_many_pixels_rejected_before_decoding(tmp_path, width):
    # The header claims width x width pixels, and the data contains one short row. Decoding
    # would fail as truncated, so too_many_pixels shows the header check came first.
    source = tmp_path / "bomb.png"
    oversized_png_header(source, width, width)

    reason, target = prepare_one(tmp_path, source, max_pixels=50_000_000)

    assert reason == TOO_MANY_PIXELS
    assert not target.exists()


def test_max_pixels_is_a_limit_on_real_images(tmp_path):
    source = tmp_path / "big.png"
    noise_image(4, (100, 100)).save(source)
    assert prepare_one(tmp_path, source, max_pixels=9_999)[0] == TOO_MANY_PIXELS
    assert prepare_one(tmp_path, source, max_pixels=10_000)[0] is None


def test_resize_policies(tmp_path):
    # 80x40: left half black, right half white, a red 10-pixel band at each short end.
    pixels = np.zeros((40, 80, 3), dtype=np.uint8)
    pixels[:, 40:] = 255
    pixels[:, :10] = pixels[:, -10:] = (255, 0, 0)
    source = tmp_path / "wide.png"
    Image.fromarray(pixels).save(source)

    def rgb(resize: str, row: int, column: int) -> np.ndarray:
        _, target = prepare_one(tmp_path, source, resize=resize, background="#00ff00")
        with Image.open(target) as image:
            return np.asarray(image)[row, column].astype(int)

    # squash keeps the red ends; center_crop cuts them; pad adds green above and below.
    assert rgb("squash", SIZE // 2, 1)[0] > 200  # red
    assert rgb("squash", SIZE // 2, 1)[1] < 60
    assert rgb("center_crop", SIZE // 2, 1).max() < 60  # black, not red
    assert rgb("pad", 1, SIZE // 2)[1] > 200  # green padding on top
    assert rgb("pad", SIZE // 2, 1)[0] > 200  # the red end is still there


def test_fingerprint_ignores_file_format_but_not_pixels(tmp_path):
    image = noise_image(5)
    image.save(tmp_path / "a.png")
    image.save(tmp_path / "b.bmp")
    noise_image(6).save(tmp_path / "c.png")

    prints = [prepare_image(tmp_path / name, tmp_path / "out" / f"{name}.jpg", Settings(SIZE))[1]
              for name in ("a.png", "b.bmp", "c.png")]

    assert prints[0].content == prints[1].content
    assert prints[0].content != prints[2].content
    assert prints[0].pixels == 64 * 48


def test_messy_folder_gets_its_expected_outcomes(tmp_path):
    raw = tmp_path / "raw"
    expected = write_messy_folder(raw)
    before = {p: p.read_bytes() for p in raw.rglob("*") if p.is_file()}

    decoded = prepare_all(raw, tmp_path / "out", Settings(SIZE, min_size=32), workers=2)
    outcomes, groups = drop_duplicates(decoded, max_distance=4)

    assert {o.source: o.reason for o in outcomes} == expected
    assert {p: p.read_bytes() for p in raw.rglob("*") if p.is_file()} == before
    conflict = next(g for g in groups if g.kept is None)
    assert [m.source for m in conflict.members] == ["cats/conflict.jpg", "dogs/conflict.jpg"]
    merged = {o.source: o.kept_copy for o in outcomes if o.reason in ("duplicate", "near_duplicate")}
    assert merged == {"cats/dup 2.png": "cats/dup 1.png", "cats/dup 3 small.jpg": "cats/dup 1.png"}

    summary = summarize(outcomes, groups)
    assert summary["duplicates"] == {
        "groups": 2, "exact_groups": 1, "label_conflict_groups": 1,
        "dropped": {"duplicate": 1, "near_duplicate": 1, "label_conflict": 2},
    }


def test_long_file_name_shortened(tmp_path):
    raw = tmp_path / "raw"
    (raw / "cats").mkdir(parents=True)
    long_name = "y" * 250 + ".png"  # 254 bytes: valid, but 258 with ".jpg" added
    noise_image(10).save(raw / "cats" / long_name)
    noise_image(11).save(raw / "cats" / ("y" * 250 + ".gif"), format="GIF")

    outcomes = prepare_all(raw, tmp_path / "out", Settings(SIZE), workers=1)

    outputs = [o.output for o in outcomes]
    assert all(o.reason is None for o in outcomes)
    assert len(set(outputs)) == 2
    assert all(len(Path(output).name.encode()) <= 255 for output in outputs)
    assert all((tmp_path / "out" / output).is_file() for output in outputs)


def test_file_name_not_utf8_dropped(tmp_path):
    raw = tmp_path / "raw"
    (raw / "cats").mkdir(parents=True)
    noise_image(12).save(raw / "cats" / os.fsdecode(b"caf\xe9.jpg"), format="JPEG")
    noise_image(13).save(raw / "cats" / "fine.jpg", format="JPEG")

    outcomes = prepare_all(raw, tmp_path / "out", Settings(SIZE), workers=1)

    reasons = {o.source: o.reason for o in outcomes}
    assert reasons == {"cats/caf\\xe9.jpg": INVALID_NAME, "cats/fine.jpg": None}


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_file_dropped(tmp_path):
    source = tmp_path / "locked.jpg"
    noise_image(14).save(source, format="JPEG")
    source.chmod(0)
    assert prepare_one(tmp_path, source)[0] == UNREADABLE


@pytest.mark.parametrize(
    ("values", "expected_mean"),
    [((0.0, 1.0), 127.5), ((0.0, 1000.0), 127.5), ((0.0, 100.0), 50.0)],
    ids=["float in 0-1", "float above 255", "float in 0-255"],
)
def test_float_image_scaled(tmp_path, values, expected_mean):
    ramp = np.tile(np.linspace(*values, 64, dtype=np.float32), (64, 1))
    source = tmp_path / "float.tif"
    Image.fromarray(ramp, mode="F").save(source)

    reason, target = prepare_one(tmp_path, source)

    assert reason is None
    with Image.open(target) as image:
        assert abs(np.asarray(image).mean() - expected_mean) < 4


def test_float_image_with_nan_kept(tmp_path):
    pixels = np.full((40, 40), 0.5, dtype=np.float32)
    pixels[:10] = np.nan
    pixels[10:20] = np.inf
    source = tmp_path / "nan.tif"
    Image.fromarray(pixels, mode="F").save(source)

    assert prepare_one(tmp_path, source)[0] is None


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_transparent_colour_goes_onto_background(tmp_path, mode):
    source = tmp_path / "keyed.png"
    black = (0, 0, 0) if mode == "RGB" else 0
    Image.new(mode, (40, 40), black).save(source, transparency=black)  # a tRNS chunk

    reason, target = prepare_one(tmp_path, source, background="#00ff00")

    assert reason is None
    with Image.open(target) as result:
        assert np.asarray(result)[SIZE // 2, SIZE // 2, 1] > 230
