"""Shared fixtures: small labelled image collections generated with Pillow."""

from __future__ import annotations

import os
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
