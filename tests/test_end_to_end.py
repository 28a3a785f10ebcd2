"""The default pipeline on the real cats_and_dogs_filtered set with real ImageNet weights.

Runs only when the Keras cache ($KERAS_HOME, default ~/.keras) already contains
the archive and the MobileNetV2 weights, because this test must not download.
It trains fewer epochs than the defaults to fit in CI.
"""

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    log_loss,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
)

from helpers import copy_project, init_dvc, keras_home, run, set_params

pytestmark = pytest.mark.slow

ARCHIVE = "datasets/cats_and_dogs_filtered.zip"
WEIGHTS = "models/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"


def test_cats_and_dogs_reaches_97_percent(tmp_path):
    missing = [name for name in (ARCHIVE, WEIGHTS) if not (keras_home() / name).is_file()]
    if missing:
        pytest.skip(f"the Keras cache {keras_home()} lacks {', '.join(missing)}")

    project = copy_project(tmp_path / "project")
    set_params(project, **{"train_head.epochs": 2, "finetune.epochs": 1})
    run(["git", "init", "-q"], project)
    init_dvc(project)
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "project"], project)

    run(["dvc", "repro"], project)

    prepared = json.loads((project / "metrics" / "prepare.json").read_text())
    # The archive has 1,500 photos per class; prepare may drop a few copies.
    assert prepared["total"]["kept"] + prepared["total"]["dropped"] == 3000
    assert set(prepared["total"]["dropped_by_reason"]) <= {"duplicate", "near_duplicate"}
    assert prepared["total"]["dropped"] <= 10
    metrics = json.loads((project / "metrics" / "evaluate.json").read_text())
    split = json.loads((project / "metrics" / "split.json").read_text())
    assert metrics["n_images"] == split["test"]["total"]
    assert metrics["final"]["accuracy"] >= 0.97, metrics["final"]
    check_against_sklearn(project, metrics)

    # The export stage fails below export.min_agreement; check the recorded figures too.
    export = json.loads((project / "metrics" / "export.json").read_text())
    assert export["n_images"] == metrics["n_images"]
    for name, result in export["formats"].items():
        assert result["top1_agreement"] >= 0.995, (name, result)


def predict(project: Path, model_file: str):
    """Return (true ids, probabilities, class names) of a saved model on the test split."""
    from imgclf.data import label_ids
    from imgclf.inference import KerasPredictor, predict_bytes
    from imgclf.manifest import class_names, read_entries

    classes = class_names(read_entries(project / "data" / "split" / "train.csv"))
    entries = read_entries(project / "data" / "split" / "test.csv")
    images = [(project / entry.path).read_bytes() for entry in entries]
    probabilities = predict_bytes(KerasPredictor(project / model_file), images, image_size=224)
    return label_ids(entries, classes), probabilities.astype(np.float64), classes


def check_against_sklearn(project: Path, metrics: dict) -> None:
    """Recompute every metric in evaluate.json with scikit-learn on fresh predictions."""
    for name, model_file in (("final", "models/model.keras"), ("head", "models/head.keras")):
        scores = metrics[name]
        true_ids, probabilities, classes = predict(project, model_file)
        probabilities /= probabilities.sum(axis=1, keepdims=True)
        predicted = probabilities.argmax(axis=1)
        close = {"abs": 1e-5}

        assert scores["accuracy"] == pytest.approx(accuracy_score(true_ids, predicted), **close)
        assert scores["balanced_accuracy"] == pytest.approx(
            balanced_accuracy_score(true_ids, predicted), **close
        )
        assert scores["log_loss"] == pytest.approx(log_loss(true_ids, probabilities), **close)
        # "dogs", the second class, is the positive class by default.
        assert scores["roc_auc"] == pytest.approx(
            roc_auc_score(true_ids, probabilities[:, 1]), **close
        )
        assert not [key for key in scores if key.startswith("top_")]  # only 2 classes

        correct = predicted == true_ids
        confidence = probabilities.max(axis=1)
        prob_true, prob_pred = calibration_curve(correct, confidence, n_bins=10, pos_label=True)
        bin_ids = np.searchsorted(np.linspace(0, 1, 11)[1:-1], confidence)
        counts = np.bincount(bin_ids, minlength=10)
        ece = np.sum(counts[counts > 0] * np.abs(prob_true - prob_pred)) / len(true_ids)
        assert scores["ece"] == pytest.approx(ece, **close)

        for average in ("macro", "weighted"):
            p, r, f, _ = precision_recall_fscore_support(true_ids, predicted, average=average)
            assert scores[average] == pytest.approx({"precision": p, "recall": r, "f1": f}, **close)
        p, r, f, support = precision_recall_fscore_support(true_ids, predicted)
        for i, label in enumerate(classes):
            assert scores["per_class"][label] == pytest.approx(
                {"precision": p[i], "recall": r[i], "f1": f[i], "support": support[i]}, **close
            )

        if name == "final":
            fpr, tpr, _ = roc_curve(true_ids, probabilities[:, 1])
            path = project / "dvclive" / "evaluate" / "plots" / "sklearn" / "roc" / "dogs.json"
            roc = json.loads(path.read_text())["roc"]
            np.testing.assert_allclose([row["fpr"] for row in roc], fpr, atol=1e-5)
            np.testing.assert_allclose([row["tpr"] for row in roc], tpr, atol=1e-5)

    for name in ("accuracy", "log_loss", "ece"):
        assert metrics["gain"][name] == pytest.approx(
            metrics["final"][name] - metrics["head"][name]
        )
