"""The error gallery: choosing the most confident mistakes and drawing them."""

import numpy as np
import pytest

from imgclf.config import ModelParams
from imgclf.gallery import draw_gallery, draw_grid, most_confident_mistakes
from imgclf.model import build_classifier
from imgclf.summary import render_summary


def test_mistakes_ranked_by_confidence():
    true_ids = np.array([0, 1, 1, 0, 1])
    probabilities = np.array([
        [0.9, 0.1],  # right
        [0.7, 0.3],  # wrong, 0.7
        [0.95, 0.05],  # wrong, 0.95
        [0.4, 0.6],  # wrong, 0.6
        [0.2, 0.8],  # right
    ])

    mistakes = most_confident_mistakes(true_ids, probabilities, ["cats", "dogs"], limit=2)

    assert [m.index for m in mistakes] == [2, 1]
    assert mistakes[0].true_label == "dogs"
    assert mistakes[0].predicted_label == "cats"
    assert mistakes[0].probability == pytest.approx(0.95)


def test_no_mistakes_empty():
    probabilities = np.array([[0.9, 0.1], [0.2, 0.8]])

    assert most_confident_mistakes(np.array([0, 1]), probabilities, ["a", "b"], limit=5) == []


def test_heatmap_drawn_over_image():
    images = np.full((2, 32, 32, 3), 128, dtype=np.float32)
    heatmaps = np.zeros((2, 32, 32), dtype=np.float32)
    heatmaps[:, :16] = 1.0

    plain = np.asarray(draw_grid(images, ["a", "b"]))
    overlaid = np.asarray(draw_grid(images, ["a", "b"], heatmaps))

    assert plain.shape == overlaid.shape
    assert plain.shape[2] == 3
    assert not np.array_equal(plain, overlaid)


def test_gallery_of_classifier_mistakes():
    import keras

    keras.utils.set_random_seed(0)
    params = ModelParams(
        backbone="mobilenet_v2", alpha=0.35, weights="none", head="softmax",
        dropout=0.2, l1=0.0, l2=0.0,
    )
    model = build_classifier(params, image_size=64, n_classes=2)
    images = np.random.default_rng(0).uniform(0, 255, (5, 64, 64, 3)).astype(np.float32)
    probabilities = model.predict(images, verbose=0)
    true_ids = 1 - probabilities.argmax(axis=1)  # every image a mistake
    mistakes = most_confident_mistakes(true_ids, probabilities, ["a", "b"], limit=5)

    errors, gradcam = draw_gallery(model, images[[m.index for m in mistakes]], mistakes, ["a", "b"])

    assert len(mistakes) == 5
    for grid in (errors, gradcam):
        assert grid.size[0] > 4 * 64  # four columns
        assert grid.size[1] > 2 * 64  # two rows


def test_gallery_without_mistakes_message():
    errors, gradcam = draw_gallery(None, np.zeros((0, 8, 8, 3)), [], ["a", "b"])

    assert errors.size[0] > errors.size[1]
    assert gradcam is errors


def summary_report():
    per_class = {"precision": 0.9, "recall": 0.8, "f1": 0.85, "support": 10}
    final = {
        "accuracy": 0.9, "balanced_accuracy": 0.88, "log_loss": 0.3, "ece": 0.05,
        "roc_auc": 0.95, "top_5_accuracy": 0.99,
        "macro": {"precision": 0.9, "recall": 0.88, "f1": 0.87},
        "per_class": {"cats": per_class, "dogs": per_class},
    }
    head = {**final, "accuracy": 0.8, "top_5_accuracy": 0.97}
    return {"n_images": 20, "final": final, "head": head}


def test_summary_headline_and_gallery():
    text = render_summary(
        summary_report(), ["cats", "dogs"], n_bins=10, confused=("cats", "dogs", 3),
        gallery_paths=["../dvclive/evaluate/plots/images/errors.png"],
    )

    assert "| accuracy | 0.9000 | 0.8000 | +0.1000 | higher |" in text
    assert "| top-5 accuracy | 0.9900 | 0.9700 | +0.0200 | higher |" in text
    assert "expected calibration error (10 bins)" in text
    assert "3 of the 10 `cats` test images were predicted as `dogs`." in text
    assert "![error gallery](../dvclive/evaluate/plots/images/errors.png)" in text


def test_summary_without_confusion():
    text = render_summary(summary_report(), ["cats", "dogs"], n_bins=10, confused=None, gallery_paths=[])

    assert "classified every test image correctly" in text
