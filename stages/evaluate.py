"""evaluate: models/{model,head}.keras, data/split/test.csv -> metrics/, dvclive/evaluate/.

Scores the fine-tuned and the head-only model on the test split only and writes
metrics/evaluate.json (schema in the README) and metrics/summary.md. The plots
under dvclive/evaluate/plots/ (confusion matrices, ROC and precision-recall
curves, reliability diagrams, both training phases on one step axis, and the
error gallery with Grad-CAM) are drawn by the `plots:` section of dvc.yaml.
"""

import logging
from pathlib import Path

import keras
import numpy as np
from dvclive import Live

from imgclf import config
from imgclf.config import Params
from imgclf.data import label_ids
from imgclf.files import staged_directory, write_json_atomic, write_text_atomic
from imgclf.gallery import draw_gallery, most_confident_mistakes
from imgclf.inference import KerasPredictor, image_array, predict_bytes
from imgclf.manifest import Entry, class_names, read_entries
from imgclf.metrics import (
    gain, most_confused_pair, normalized, positive_class_id, score_probabilities,
)
from imgclf.plots import log_classification_plots, write_training_curves
from imgclf.stage import run_stage
from imgclf.summary import render_summary

log = logging.getLogger("imgclf.stages.evaluate")

MODELS = {"final": config.FINAL_MODEL, "head": config.HEAD_MODEL}
LIVE_DIR = config.DVCLIVE_DIR / "evaluate"
GALLERY = ("errors.png", "gradcam.png")


def predict_images(model_path, entries: list[Entry], params: Params) -> np.ndarray:
    """Return the model's class probabilities on `entries`, (n, n_classes).

    The same decoding, conversion and model call as `imgclf predict` and `imgclf serve`.
    """
    images = [Path(entry.path).read_bytes() for entry in entries]
    return predict_bytes(
        KerasPredictor(model_path), images, image_size=params.data.image_size,
        batch_size=params.evaluate.batch_size,
        resize=params.prepare.resize, background=params.prepare.background,
    )


def load_images(entries: list[Entry], params: Params) -> np.ndarray:
    """Return the prepared images as the model saw them, (n, size, size, 3) float RGB in [0, 255]."""
    size = params.data.image_size
    arrays = [
        image_array(Path(entry.path).read_bytes(), size, resize=params.prepare.resize,
                    background=params.prepare.background)
        for entry in entries
    ]
    return np.stack(arrays) if arrays else np.zeros((0, size, size, 3), dtype=np.float32)


def main() -> None:
    params = config.load_params()
    settings = params.evaluate

    classes = class_names(read_entries(config.split_manifest("train")))
    positive_id = positive_class_id(settings.positive_class, classes)
    test_entries = read_entries(config.split_manifest("test"))
    true_ids = label_ids(test_entries, classes)

    # float64 rows that sum to 1, (n_test, n_classes), for scikit-learn and JSON
    probabilities = {
        name: normalized(predict_images(path, test_entries, params))
        for name, path in MODELS.items()
    }
    scores = {
        name: score_probabilities(
            true_ids, values, classes, positive_id=positive_id,
            top_k=settings.top_k, n_bins=settings.calibration_bins,
        )
        for name, values in probabilities.items()
    }
    report = {
        "n_images": len(test_entries),
        **scores,
        "gain": gain(scores["final"], scores["head"]),
    }
    write_json_atomic(config.METRICS_DIR / "evaluate.json", report)

    mistakes = most_confident_mistakes(
        true_ids, probabilities["final"], classes, settings.gallery_size
    )
    images = load_images([test_entries[m.index] for m in mistakes], params)
    gallery = draw_gallery(keras.models.load_model(config.FINAL_MODEL), images, mistakes, classes)

    # Every plot file is written into a staging folder that replaces LIVE_DIR when complete.
    # live.end() is not called, because it would add a metrics.json beside the declared outputs.
    with staged_directory(LIVE_DIR) as staging:
        live = Live(dir=str(staging), dvcyaml=None, save_dvc_exp=False)
        log_classification_plots(
            live, true_ids, probabilities, classes,
            positive_id=positive_id, n_bins=settings.calibration_bins,
        )
        for name, image in zip(GALLERY, gallery):
            live.log_image(name, image)
        write_training_curves(
            staging / "plots" / "training",
            {phase: config.DVCLIVE_DIR / phase for phase in ("train_head", "finetune")},
        )

    confused = most_confused_pair(true_ids, probabilities["final"].argmax(axis=1), classes)
    summary = render_summary(
        report, classes, n_bins=settings.calibration_bins, confused=confused,
        gallery_paths=[f"../{LIVE_DIR.as_posix()}/plots/images/{name}" for name in GALLERY],
    )
    write_text_atomic(config.METRICS_DIR / "summary.md", summary)

    final, head = scores["final"], scores["head"]
    log.info(
        "test accuracy %.4f (head only %.4f), macro F1 %.4f, ECE %.4f on %d images; "
        "read metrics/summary.md",
        final["accuracy"], head["accuracy"], final["macro"]["f1"], final["ece"], len(test_entries),
    )


if __name__ == "__main__":
    run_stage(main)
