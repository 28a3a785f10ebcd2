"""Conversion of the trained Keras model to other formats, and the parity check between them.

The export stage writes into a folder from `imgclf.files.staged_directory`, so
the files here are written in place and the whole folder appears at once.

Formats written into one folder, each loadable by `imgclf.inference.load_predictor`:

- `saved_model/`: TensorFlow SavedModel from `keras.Model.export`, with a `serve` endpoint.
- `model_float32.tflite`: TensorFlow Lite, float32 weights and activations.
- `model_dynamic_range.tflite`: TensorFlow Lite with int8 weights (dynamic-range quantization).
- `model.h5`: Keras' legacy HDF5 format, for tools that cannot read `.keras`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

SAVED_MODEL = "saved_model"
TFLITE_FLOAT32 = "model_float32.tflite"
TFLITE_DYNAMIC_RANGE = "model_dynamic_range.tflite"
LEGACY_H5 = "model.h5"

# Format name in metrics/export.json -> path inside the export folder.
FORMATS = {
    "saved_model": SAVED_MODEL,
    "tflite_float32": TFLITE_FLOAT32,
    "tflite_dynamic_range": TFLITE_DYNAMIC_RANGE,
    "h5": LEGACY_H5,
}
# Formats whose weights are rounded on purpose: disagreeing with the Keras model is a
# property of the model (how close its decisions are), not an export fault.
QUANTIZED = {"tflite_dynamic_range"}


def below_agreement(
    agreements: dict[str, float], min_agreement: float
) -> tuple[dict[str, float], dict[str, float]]:
    """Return the formats below `min_agreement`: (quantized ones, lossless ones)."""
    below = {name: value for name, value in agreements.items() if value < min_agreement}
    quantized = {name: value for name, value in below.items() if name in QUANTIZED}
    lossless = {name: value for name, value in below.items() if name not in QUANTIZED}
    return quantized, lossless


def export_saved_model(model, folder: Path) -> Path:
    path = folder / SAVED_MODEL
    model.export(str(path), format="tf_saved_model", verbose=False)
    return path


def export_tflite(saved_model: Path, path: Path, *, quantize: bool) -> Path:
    """Convert a SavedModel to TFLite; with `quantize`, weights become int8 (dynamic range)."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    if quantize:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    flat_buffer = converter.convert()
    path.write_bytes(flat_buffer)
    return path


def export_h5(model, path: Path) -> Path:
    # Keras 3 writes the legacy HDF5 format for a path ending in .h5 (and warns that it is legacy).
    model.save(str(path))
    return path


def export_all(model, folder: Path) -> dict[str, Path]:
    """Write every format into `folder`; returns format name -> path."""
    saved_model = export_saved_model(model, folder)
    paths = {
        "saved_model": saved_model,
        "tflite_float32": export_tflite(saved_model, folder / TFLITE_FLOAT32, quantize=False),
        "tflite_dynamic_range": export_tflite(
            saved_model, folder / TFLITE_DYNAMIC_RANGE, quantize=True
        ),
        "h5": export_h5(model, folder / LEGACY_H5),
    }
    for name, path in paths.items():
        log.info("wrote %s (%s)", path.name, name)
    return paths


def parity(reference: np.ndarray, candidate: np.ndarray, true_ids: np.ndarray) -> dict:
    """Compare (n, n_classes) probabilities of a converted model with the Keras model's."""
    reference_top1 = np.argmax(reference, axis=1)
    candidate_top1 = np.argmax(candidate, axis=1)
    return {
        "top1_agreement": float(np.mean(reference_top1 == candidate_top1)),
        "max_probability_difference": float(np.max(np.abs(reference - candidate))),
        "accuracy": float(np.mean(candidate_top1 == true_ids)),
    }
