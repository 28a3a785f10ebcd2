"""Export formats: each one loads back through the shared predictor and agrees with Keras."""

import numpy as np
import pytest

from imgclf.export import FORMATS, below_agreement, export_all, parity
from imgclf.inference import image_array, load_model, load_predictor, predict_arrays
from tiny_model import IMAGE_SIZE, photo_bytes, save_tiny_model

# Largest probability difference accepted per format on the tiny model: float
# formats differ by rounding only, int8 weights by more.
TOLERANCE = {"saved_model": 1e-5, "tflite_float32": 1e-5, "tflite_dynamic_range": 0.05, "h5": 1e-6}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    loaded = load_model(save_tiny_model(root / "model"))
    folder = root / "export"
    folder.mkdir()
    paths = export_all(loaded.predictor.model, folder)
    arrays = [image_array(photo_bytes(seed), IMAGE_SIZE) for seed in range(16)]
    reference = predict_arrays(loaded.predictor, arrays, batch_size=8)
    return {"paths": paths, "arrays": arrays, "reference": reference}


def test_every_format_written(exported):
    assert set(exported["paths"]) == set(FORMATS)
    for path in exported["paths"].values():
        assert path.exists()


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_format_loads_and_agrees(exported, name):
    predictor = load_predictor(exported["paths"][name])
    probabilities = predict_arrays(predictor, exported["arrays"], batch_size=8)
    assert probabilities.shape == exported["reference"].shape
    result = parity(exported["reference"], probabilities, np.zeros(len(probabilities), dtype=int))
    assert result["top1_agreement"] == 1.0
    assert result["max_probability_difference"] <= TOLERANCE[name]


def test_parity_counts_disagreements():
    reference = np.array([[0.9, 0.1], [0.4, 0.6], [0.7, 0.3]])
    candidate = np.array([[0.8, 0.2], [0.6, 0.4], [0.7, 0.3]])
    result = parity(reference, candidate, np.array([0, 1, 1]))
    assert result["top1_agreement"] == pytest.approx(2 / 3)
    assert result["max_probability_difference"] == pytest.approx(0.2)
    assert result["accuracy"] == pytest.approx(1 / 3)


def test_only_lossless_formats_fail_the_gate():
    agreements = {"saved_model": 1.0, "tflite_float32": 0.99, "tflite_dynamic_range": 0.93, "h5": 1.0}

    quantized, lossless = below_agreement(agreements, 0.995)

    assert quantized == {"tflite_dynamic_range": 0.93}
    assert lossless == {"tflite_float32": 0.99}
    assert below_agreement({"tflite_dynamic_range": 0.999}, 0.995) == ({}, {})
