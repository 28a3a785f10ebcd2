"""Test metrics against scikit-learn's own functions on the same predictions."""

import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    f1_score,
    log_loss,
    precision_recall_fscore_support,
    roc_auc_score,
    top_k_accuracy_score,
)

from helpers import random_predictions
from imgclf.errors import StageError
from imgclf.metrics import (
    calibration_bins,
    expected_calibration_error,
    gain,
    most_confused_pair,
    normalized,
    positive_class_id,
    score_probabilities,
)


def score(true_ids, probabilities, classes, positive_id=None, top_k=5, n_bins=10):
    return score_probabilities(
        true_ids, probabilities, classes, positive_id=positive_id, top_k=top_k, n_bins=n_bins
    )


def test_multiclass_scores_match_sklearn():
    classes = [f"c{i}" for i in range(7)]
    labels = list(range(7))
    true_ids, probabilities = random_predictions(200, 7)
    predicted = probabilities.argmax(axis=1)

    scores = score(true_ids, probabilities, classes)

    assert scores["accuracy"] == pytest.approx(accuracy_score(true_ids, predicted))
    assert scores["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(true_ids, predicted))
    assert scores["log_loss"] == pytest.approx(log_loss(true_ids, probabilities, labels=labels))
    assert scores["top_5_accuracy"] == pytest.approx(
        top_k_accuracy_score(true_ids, probabilities, k=5, labels=labels)
    )
    assert scores["roc_auc"] == pytest.approx(
        roc_auc_score(true_ids, probabilities, multi_class="ovr", labels=labels)
    )
    for average in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(true_ids, predicted, average=average)
        assert scores[average]["precision"] == pytest.approx(p)
        assert scores[average]["recall"] == pytest.approx(r)
        assert scores[average]["f1"] == pytest.approx(f)
    p, r, f, support = precision_recall_fscore_support(true_ids, predicted, labels=labels)
    for i, name in enumerate(classes):
        assert scores["per_class"][name]["precision"] == pytest.approx(p[i])
        assert scores["per_class"][name]["recall"] == pytest.approx(r[i])
        assert scores["per_class"][name]["f1"] == pytest.approx(f[i])
        assert scores["per_class"][name]["support"] == support[i]


def test_binary_scores_use_positive_class():
    true_ids, probabilities = random_predictions(60, 2, seed=1)

    first = score(true_ids, probabilities, ["cats", "dogs"], positive_id=0)
    second = score(true_ids, probabilities, ["cats", "dogs"], positive_id=1)

    assert first["roc_auc"] == pytest.approx(roc_auc_score(true_ids == 0, probabilities[:, 0]))
    assert second["roc_auc"] == pytest.approx(roc_auc_score(true_ids, probabilities[:, 1]))
    assert second["macro"]["f1"] == pytest.approx(
        f1_score(true_ids, probabilities.argmax(axis=1), average="macro")
    )


def test_top_k_only_above_k_classes():
    true_ids, probabilities = random_predictions(50, 5)

    scores = score(true_ids, probabilities, list("abcde"), top_k=5)

    assert not [key for key in scores if key.startswith("top_")]
    assert "top_4_accuracy" in score(true_ids, probabilities, list("abcde"), top_k=4)


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_roc_auc_left_out_for_missing_class():
    true_ids, probabilities = random_predictions(9, 3)
    true_ids[true_ids == 2] = 0

    scores = score(true_ids, probabilities, ["a", "b", "c"])

    assert "roc_auc" not in scores
    assert scores["per_class"]["c"]["support"] == 0


def test_class_never_predicted_scores_zero():
    probabilities = np.array([[0.9, 0.1], [0.8, 0.2]])

    scores = score(np.array([0, 1]), probabilities, ["a", "b"], positive_id=1)

    assert scores["per_class"]["b"]["precision"] == 0.0
    assert scores["per_class"]["b"]["recall"] == 0.0


def test_ece_hand_computed():
    # Two bins, [0, 0.5] and (0.5, 1]. High bin: confidence 0.9 and 0.8, one
    # right: gap |0.5 - 0.85| = 0.35. Low bin: 0.4 and 0.45, one right: gap
    # |0.5 - 0.425| = 0.075. ECE = (2 * 0.35 + 2 * 0.075) / 4 = 0.2125.
    probabilities = np.array([
        [0.9, 0.05, 0.05],
        [0.8, 0.1, 0.1],
        [0.4, 0.3, 0.3],
        [0.2, 0.45, 0.35],
    ])
    true_ids = np.array([0, 1, 0, 2])

    assert expected_calibration_error(true_ids, probabilities, n_bins=2) == pytest.approx(0.2125)


def test_ece_zero_when_confidence_is_accuracy():
    # Confidence 0.75 everywhere and 3 of 4 right.
    probabilities = np.array([[0.75, 0.25]] * 4)
    true_ids = np.array([0, 0, 0, 1])

    assert expected_calibration_error(true_ids, probabilities, n_bins=10) == pytest.approx(0.0)


@pytest.mark.parametrize("n_bins", [5, 10, 15])
def test_calibration_bins_match_sklearn(n_bins):
    true_ids, probabilities = random_predictions(300, 4, seed=2)
    correct = probabilities.argmax(axis=1) == true_ids
    confidence = probabilities.max(axis=1)

    counts, mean_confidence, accuracy = calibration_bins(true_ids, probabilities, n_bins)
    prob_true, prob_pred = calibration_curve(correct, confidence, n_bins=n_bins, pos_label=True)

    filled = counts > 0
    np.testing.assert_allclose(accuracy[filled], prob_true)
    np.testing.assert_allclose(mean_confidence[filled], prob_pred)
    assert counts.sum() == 300
    expected_ece = np.sum(counts[filled] / 300 * np.abs(prob_true - prob_pred))
    assert expected_calibration_error(true_ids, probabilities, n_bins) == pytest.approx(expected_ece)


def test_confidence_on_bin_edge_goes_below():
    # 0.5 sits on the edge of [0, 0.5] and (0.5, 1]: it belongs to the lower bin.
    counts, _, _ = calibration_bins(np.array([0]), np.array([[0.5, 0.5]]), n_bins=2)

    assert counts.tolist() == [1, 0]


def test_normalized_rows_sum_to_one():
    rows = normalized(np.array([[0.2, 0.7000001], [1.0, 1.0]], dtype=np.float32))

    assert rows.dtype == np.float64
    np.testing.assert_allclose(rows.sum(axis=1), 1.0)


def test_positive_class_default_is_second():
    assert positive_class_id(None, ["cats", "dogs"]) == 1


def test_positive_class_by_name():
    assert positive_class_id("cats", ["cats", "dogs"]) == 0


def test_positive_class_unknown_rejected():
    with pytest.raises(StageError, match=r"'cat' is not a class.*\['cats', 'dogs'\]"):
        positive_class_id("cat", ["cats", "dogs"])


def test_positive_class_multiclass():
    assert positive_class_id(None, ["a", "b", "c"]) is None
    with pytest.raises(StageError, match="two classes only.*set evaluate.positive_class to null"):
        positive_class_id("a", ["a", "b", "c"])


def test_most_confused_pair():
    true_ids = np.array([0, 0, 1, 1, 1, 2, 2])
    predicted = np.array([0, 2, 2, 2, 1, 1, 2])

    assert most_confused_pair(true_ids, predicted, ["a", "b", "c"]) == ("b", "c", 2)


def test_most_confused_pair_none_when_all_right():
    assert most_confused_pair(np.array([0, 1]), np.array([0, 1]), ["a", "b"]) is None


def test_gain_is_final_minus_head():
    true_ids, head_probabilities = random_predictions(40, 3, seed=3)
    final_probabilities = 0.5 * head_probabilities + 0.5 * np.eye(3)[true_ids]
    head = score(true_ids, head_probabilities, ["a", "b", "c"])
    final = score(true_ids, final_probabilities, ["a", "b", "c"])

    difference = gain(final, head)

    assert difference["accuracy"] == pytest.approx(final["accuracy"] - head["accuracy"])
    assert difference["macro_f1"] == pytest.approx(final["macro"]["f1"] - head["macro"]["f1"])
    assert difference["log_loss"] < 0
    assert set(difference) == {"accuracy", "balanced_accuracy", "macro_f1", "log_loss", "ece"}
