"""A small saved classifier with metadata, for tests of prediction, the CLI and the service.

The stages' random-init MobileNetV2 gives nearly the same output for every
image, so parity checks on it prove little. This model keeps the saved
`Preprocess` layer but uses one seeded convolution, so its probabilities
differ from image to image.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np

from imgclf.inference import ModelMetadata, write_metadata
from imgclf.model import Preprocess

IMAGE_SIZE = 32
CLASSES = ["birds", "cats", "dogs"]


def save_tiny_model(folder: Path, *, classes: list[str] = CLASSES, head: str = "softmax") -> Path:
    """Save `folder/model.keras` and `folder/metadata.json`; returns the model path."""
    keras.utils.set_random_seed(7)
    inputs = keras.Input(shape=(IMAGE_SIZE, IMAGE_SIZE, 3), name="image")
    x = Preprocess("tf", name="preprocess")(inputs)
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(x)  # (batch, 15, 15, 8)
    x = keras.layers.GlobalAveragePooling2D()(x)  # (batch, 8)
    if head == "sigmoid":
        outputs = keras.layers.Dense(1, activation="sigmoid")(x)
    else:
        outputs = keras.layers.Dense(len(classes), activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    # Larger head weights spread the probabilities, so that images disagree visibly.
    dense = model.layers[-1]
    kernel, bias = dense.get_weights()
    dense.set_weights([kernel * 20, bias])

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.keras"
    model.save(path)
    write_metadata(folder, ModelMetadata(
        classes=classes, image_size=IMAGE_SIZE, backbone="test_conv", head=head,
    ))
    return path


def photo_bytes(seed: int, *, size: int = 48, format: str = "JPEG") -> bytes:
    """Encode a random smooth colour image, different for every seed."""
    from io import BytesIO

    from PIL import Image

    rng = np.random.default_rng(seed)
    corners = rng.uniform(0, 255, size=(2, 2, 3))
    pixels = np.asarray(Image.fromarray(corners.astype(np.uint8)).resize((size, size), Image.BILINEAR))
    noise = rng.normal(0, 10, size=pixels.shape)
    image = Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8))
    buffer = BytesIO()
    image.save(buffer, format=format)
    return buffer.getvalue()
