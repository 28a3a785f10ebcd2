import numpy as np
import pytest
from sklearn.metrics import f1_score, precision_score, recall_score

from imgclf.metrics import classification_metrics


def test_metrics_match_sklearn():
    true_ids = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    predicted = np.array([0, 1, 0, 1, 1, 2, 0, 2, 1])

    metrics = classification_metrics(true_ids, predicted, ["a", "b", "c"])

    assert metrics["n_images"] == 9
    assert metrics["accuracy"] == pytest.approx(6 / 9)
    assert metrics["macro"]["precision"] == pytest.approx(precision_score(true_ids, predicted, average="macro"))
    assert metrics["macro"]["recall"] == pytest.approx(recall_score(true_ids, predicted, average="macro"))
    assert metrics["macro"]["f1"] == pytest.approx(f1_score(true_ids, predicted, average="macro"))
    assert metrics["per_class"]["c"]["recall"] == pytest.approx(2 / 4)
    assert metrics["per_class"]["b"]["precision"] == pytest.approx(2 / 4)
    assert metrics["per_class"]["a"]["support"] == 3


def test_class_never_predicted_scores_zero():
    metrics = classification_metrics(np.array([0, 1]), np.array([0, 0]), ["a", "b"])
    assert metrics["per_class"]["b"]["precision"] == 0.0
    assert metrics["per_class"]["b"]["recall"] == 0.0
