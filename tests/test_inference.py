"""The shared prediction path: decoding limits, metadata, predictors and batching."""

import json
import struct
import zlib
from io import BytesIO

import numpy as np
import pytest
from PIL import Image

from imgclf.inference import (
    ImageError, ModelError, decode_image, image_array, load_metadata, load_model,
    load_predictor, predict_arrays, predict_bytes, top_k,
)
from imgclf.prepare import to_model_image
from tiny_model import CLASSES, IMAGE_SIZE, photo_bytes, save_tiny_model


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height RGB pixels but contains no pixel data at all."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return load_model(save_tiny_model(tmp_path_factory.mktemp("model")))


def test_decode_rejects_random_bytes():
    with pytest.raises(ImageError) as caught:
        decode_image(np.random.default_rng(0).bytes(4000))
    assert caught.value.kind == "not_an_image"


def test_decode_rejects_empty_file():
    with pytest.raises(ImageError) as caught:
        decode_image(b"")
    assert caught.value.kind == "not_an_image"


def test_decode_rejects_postscript():
    # Pillow identifies EPS, but decoding it would run Ghostscript.
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    with pytest.raises(ImageError) as caught:
        decode_image(eps)
    assert caught.value.kind == "not_an_image"


def test_decode_truncated_jpeg_is_undecodable():
    data = photo_bytes(1, size=256)
    with pytest.raises(ImageError) as caught:
        decode_image(data[: len(data) // 2])
    assert caught.value.kind == "undecodable"


def test_bomb_rejected_before_decoding():
    # The file has no pixel data: a decoder would fail as truncated, so the
    # "too_large" kind shows that the header check ran before load().
    with pytest.raises(ImageError) as caught:
        decode_image(png_header_only(10_000, 10_000))  # 100 M pixels
    assert caught.value.kind == "too_large"
    assert "10000x10000" in str(caught.value)


def test_extreme_bomb_rejected_by_pillow_check():
    with pytest.raises(ImageError) as caught:
        decode_image(png_header_only(60_000, 60_000))
    assert caught.value.kind == "too_large"


def test_max_pixels_is_adjustable():
    data = photo_bytes(2, size=64)
    assert decode_image(data, max_pixels=64 * 64).size == (64, 64)
    with pytest.raises(ImageError) as caught:
        decode_image(data, max_pixels=64 * 64 - 1)
    assert caught.value.kind == "too_large"


def test_image_array_uses_prepare_conversion():
    data = photo_bytes(3, size=50, format="PNG")
    expected = np.asarray(to_model_image(Image.open(BytesIO(data)), 24), dtype=np.float32)
    array = image_array(data, 24)
    assert array.shape == (24, 24, 3)
    assert array.dtype == np.float32
    np.testing.assert_array_equal(array, expected)


def test_image_array_applies_exif_orientation():
    image = Image.fromarray(np.zeros((20, 40, 3), dtype=np.uint8))  # 40 wide, 20 high
    image.paste((255, 0, 0), (0, 0, 20, 20))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    buffer = BytesIO()
    image.save(buffer, format="JPEG", exif=exif, quality=95)
    array = image_array(buffer.getvalue(), 32)
    assert array[2, 16, 0] > 200  # red went to the top
    assert array[29, 16, 0] < 60


def test_missing_metadata_names_file(tmp_path):
    model = tmp_path / "model.keras"
    model.write_bytes(b"")
    with pytest.raises(ModelError) as caught:
        load_metadata(model)
    assert str(tmp_path / "metadata.json") in str(caught.value)


def test_invalid_metadata_rejected(tmp_path):
    (tmp_path / "metadata.json").write_text(json.dumps({"classes": ["a", "b"], "image_size": 32}))
    with pytest.raises(ModelError) as caught:
        load_metadata(tmp_path / "model.keras")
    assert "backbone" in str(caught.value)


def test_unknown_model_format_rejected(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"x")
    with pytest.raises(ModelError) as caught:
        load_predictor(path)
    assert "model.onnx" in str(caught.value)


def test_missing_model_rejected(tmp_path):
    with pytest.raises(ModelError) as caught:
        load_predictor(tmp_path / "absent.keras")
    assert "not found" in str(caught.value)


def test_predict_bytes_matches_keras(tiny):
    images = [photo_bytes(seed) for seed in range(5)]
    probabilities = predict_bytes(tiny.predictor, images, image_size=IMAGE_SIZE, batch_size=2)
    arrays = np.stack([image_array(data, IMAGE_SIZE) for data in images])
    expected = tiny.predictor.model.predict(arrays, verbose=0)
    assert probabilities.shape == (5, len(CLASSES))
    np.testing.assert_allclose(probabilities, expected, atol=1e-6)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


def test_predict_bytes_images_differ(tiny):
    # Guards the other tests: a model with one output for every image would prove little.
    probabilities = predict_bytes(tiny.predictor, [photo_bytes(s) for s in range(5)], image_size=IMAGE_SIZE)
    assert np.ptp(probabilities[:, 0]) > 0.05


def test_predict_arrays_batches_agree(tiny):
    arrays = [image_array(photo_bytes(seed), IMAGE_SIZE) for seed in range(7)]
    one_call = predict_arrays(tiny.predictor, arrays, batch_size=7)
    single = predict_arrays(tiny.predictor, arrays, batch_size=1)
    np.testing.assert_allclose(one_call, single, atol=1e-6)


def test_sigmoid_head_gives_two_columns(tmp_path):
    loaded = load_model(save_tiny_model(tmp_path, classes=["cats", "dogs"], head="sigmoid"))
    probabilities = predict_bytes(loaded.predictor, [photo_bytes(0), photo_bytes(1)], image_size=IMAGE_SIZE)
    assert probabilities.shape == (2, 2)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-6)


def test_top_k_orders_by_probability():
    pairs = top_k(np.array([0.2, 0.5, 0.3]), ["a", "b", "c"], 2)
    assert [name for name, _ in pairs] == ["b", "c"]
    assert pairs[0][1] == pytest.approx(0.5)
