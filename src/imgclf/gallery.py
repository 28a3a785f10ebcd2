"""The error gallery: the test images the model got wrong with the most confidence.

Two PNG grids are drawn with matplotlib: the images with their true label,
predicted label and predicted probability, and the same images with a Grad-CAM
heat map of the predicted class on top.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")  # draws into memory; no display is needed

import keras  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import pyplot as plt  # noqa: E402
from PIL import Image  # noqa: E402

from imgclf.gradcam import GradCam, upsample  # noqa: E402

COLUMNS = 4
HEATMAP_OPACITY = 0.45


@dataclass(frozen=True)
class Mistake:
    index: int  # row in the test manifest
    true_label: str
    predicted_label: str
    probability: float  # of the predicted class


def most_confident_mistakes(
    true_ids: np.ndarray, probabilities: np.ndarray, classes: list[str], limit: int
) -> list[Mistake]:
    """Return up to `limit` misclassified images, highest predicted probability first."""
    predicted_ids = probabilities.argmax(axis=1)
    confidence = probabilities.max(axis=1)
    wrong = np.flatnonzero(predicted_ids != true_ids)
    # A stable sort keeps manifest order among equal probabilities.
    ranked = wrong[np.argsort(-confidence[wrong], kind="stable")][:limit]
    return [
        Mistake(
            index=int(i),
            true_label=classes[true_ids[i]],
            predicted_label=classes[predicted_ids[i]],
            probability=float(confidence[i]),
        )
        for i in ranked
    ]


def draw_grid(
    images: np.ndarray, captions: list[str], heatmaps: np.ndarray | None = None
) -> Image.Image:
    """Draw images, (n, size, size, 3) RGB in [0, 255], in a grid with a caption each.

    With `heatmaps`, (n, size, size) in [0, 1], each one is drawn over its image.
    """
    rows = math.ceil(len(images) / COLUMNS)
    columns = min(len(images), COLUMNS)
    figure, axes = plt.subplots(
        rows, columns, figsize=(3 * columns, 3.4 * rows), squeeze=False
    )
    for position, axis in enumerate(axes.flat):
        axis.axis("off")
        if position >= len(images):
            continue
        axis.imshow(images[position].astype(np.uint8))
        if heatmaps is not None:
            axis.imshow(heatmaps[position], cmap="jet", alpha=HEATMAP_OPACITY, vmin=0, vmax=1)
        axis.set_title(captions[position], fontsize=9)
    return _to_image(figure)


def draw_message(text: str) -> Image.Image:
    """Draw a small image with one line of text, for a gallery with nothing to show."""
    figure = plt.figure(figsize=(5, 1))
    figure.text(0.5, 0.5, text, ha="center", va="center", fontsize=12)
    return _to_image(figure)


def _to_image(figure) -> Image.Image:
    buffer = io.BytesIO()
    # bbox_inches="tight" grows the canvas to fit multi-line titles instead of clipping them.
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    buffer.seek(0)
    with Image.open(buffer) as image:
        return image.convert("RGB")


def draw_gallery(
    model: keras.Model, images: np.ndarray, mistakes: list[Mistake], classes: list[str]
) -> tuple[Image.Image, Image.Image]:
    """Return (errors grid, Grad-CAM grid) for the mistakes and their images, (n, size, size, 3)."""
    if not mistakes:
        message = draw_message("No misclassified test images")
        return message, message

    captions = [
        f"true: {m.true_label}\npredicted: {m.predicted_label} ({m.probability:.3f})"
        for m in mistakes
    ]
    predicted_ids = np.array([classes.index(m.predicted_label) for m in mistakes])
    heatmaps = GradCam(model).heatmaps(images, predicted_ids)  # (n, h, w)
    heatmaps = upsample(heatmaps, images.shape[1])  # (n, size, size)

    errors = draw_grid(images, captions)
    gradcam_captions = [
        f"{caption}\nGrad-CAM of {m.predicted_label}" for caption, m in zip(captions, mistakes)
    ]
    gradcam = draw_grid(images, gradcam_captions, heatmaps)
    return errors, gradcam
