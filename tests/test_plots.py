"""Plot files for `dvc plots`, written through a real DVCLive Live object."""

import csv
import json

import numpy as np
import pytest
from dvclive import Live
from sklearn.calibration import calibration_curve
from sklearn.metrics import precision_recall_curve, roc_curve

from helpers import random_predictions
from imgclf.errors import StageError
from imgclf.plots import log_classification_plots, read_training_log, write_training_curves


def write_plots(tmp_path, n_classes, positive_id):
    true_ids, final = random_predictions(60, n_classes, margin=1.5)
    _, head = random_predictions(60, n_classes, seed=1, margin=1.5)
    classes = [f"class{i}" for i in range(n_classes)]
    live = Live(dir=str(tmp_path / "live"), dvcyaml=None, save_dvc_exp=False)
    log_classification_plots(
        live, true_ids, {"final": final, "head": head}, classes,
        positive_id=positive_id, n_bins=10,
    )
    return tmp_path / "live" / "plots" / "sklearn", true_ids, final, head


def rows(path):
    content = json.loads(path.read_text())
    return next(iter(content.values())) if isinstance(content, dict) else content


def test_binary_curves_for_positive_class_only(tmp_path):
    folder, true_ids, final, _ = write_plots(tmp_path, 2, positive_id=0)

    assert [p.name for p in (folder / "roc").iterdir()] == ["class0.json"]
    assert [p.name for p in (folder / "precision_recall").iterdir()] == ["class0.json"]
    fpr, tpr, _ = roc_curve(true_ids == 0, final[:, 0])
    roc = rows(folder / "roc" / "class0.json")
    np.testing.assert_allclose([row["fpr"] for row in roc], fpr)
    np.testing.assert_allclose([row["tpr"] for row in roc], tpr)


def test_multiclass_curves_one_vs_rest(tmp_path):
    folder, true_ids, final, _ = write_plots(tmp_path, 3, positive_id=None)

    names = ["class0.json", "class1.json", "class2.json"]
    assert sorted(p.name for p in (folder / "roc").iterdir()) == names
    assert sorted(p.name for p in (folder / "precision_recall").iterdir()) == names
    precision, recall, thresholds = precision_recall_curve(true_ids == 2, final[:, 2])
    curve = rows(folder / "precision_recall" / "class2.json")
    # DVCLive stores one row per threshold, so the last point (recall 0,
    # precision 1), which has no threshold, is left out.
    np.testing.assert_allclose([row["precision"] for row in curve], precision[:-1])
    np.testing.assert_allclose([row["recall"] for row in curve], recall[:-1])
    np.testing.assert_allclose([row["threshold"] for row in curve], thresholds)


def test_confusion_matrices_list_every_image(tmp_path):
    folder, true_ids, final, _ = write_plots(tmp_path, 3, positive_id=None)

    counts = rows(folder / "confusion_matrix.json")
    normalized = rows(folder / "confusion_matrix_normalized.json")

    assert len(counts) == len(true_ids)
    assert counts == normalized  # DVC normalizes the rows when it draws the plot
    assert counts[0] == {"actual": "class0", "predicted": f"class{final[0].argmax()}"}


def test_reliability_per_model_matches_sklearn(tmp_path):
    folder, true_ids, final, head = write_plots(tmp_path, 3, positive_id=None)

    for name, probabilities in (("final", final), ("head", head)):
        correct = probabilities.argmax(axis=1) == true_ids
        prob_true, prob_pred = calibration_curve(correct, probabilities.max(axis=1), n_bins=10)
        diagram = rows(folder / "calibration" / f"{name}.json")
        np.testing.assert_allclose([row["prob_true"] for row in diagram], prob_true)
        np.testing.assert_allclose([row["prob_pred"] for row in diagram], prob_pred)


def write_training_log(live_dir, curves):
    """Write DVCLive-style TSVs: curves maps "train/loss" to per-epoch values."""
    for name, values in curves.items():
        split, metric = name.split("/")
        path = live_dir / "plots" / "metrics" / split / f"{metric}.tsv"
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = [f"step\t{metric}"] + [f"{i}\t{value}" for i, value in enumerate(values)]
        path.write_text("\n".join(lines) + "\n")


def test_training_curves_share_one_step_axis(tmp_path):
    head, finetune = tmp_path / "train_head", tmp_path / "finetune"
    write_training_log(head, {"train/loss": [0.9, 0.5, 0.4], "eval/loss": [0.8, 0.6, 0.5]})
    write_training_log(finetune, {"train/loss": [0.3, 0.2], "eval/loss": [0.45, 0.4]})

    write_training_curves(tmp_path / "out", {"train_head": head, "finetune": finetune})

    with (tmp_path / "out" / "finetune.csv").open() as file:
        finetune_rows = list(csv.DictReader(file))
    with (tmp_path / "out" / "train_head.csv").open() as file:
        head_rows = list(csv.DictReader(file))
    assert [row["step"] for row in head_rows] == ["0", "1", "2"]
    assert [row["step"] for row in finetune_rows] == ["3", "4"]
    assert {row["phase"] for row in finetune_rows} == {"finetune"}
    assert float(finetune_rows[1]["eval_loss"]) == pytest.approx(0.4)
    assert float(head_rows[0]["train_loss"]) == pytest.approx(0.9)


def test_training_log_read_by_split_and_metric(tmp_path):
    write_training_log(tmp_path, {"train/accuracy": [0.5, 0.7], "eval/accuracy": [0.6, 0.65]})

    curves = read_training_log(tmp_path)

    assert curves == {"train_accuracy": [0.5, 0.7], "eval_accuracy": [0.6, 0.65]}


def test_missing_training_log_explained(tmp_path):
    with pytest.raises(StageError, match="no training curves found.*run train_head and finetune"):
        read_training_log(tmp_path / "finetune")
