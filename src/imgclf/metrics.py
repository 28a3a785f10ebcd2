"""Test-set metrics of one model's class probabilities, computed with scikit-learn.

`score_probabilities` returns the block that `metrics/evaluate.json` stores once
for the fine-tuned model (`final`) and once for the head-only model (`head`).
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    log_loss,
    precision_recall_fscore_support,
    roc_auc_score,
    top_k_accuracy_score,
)

from imgclf.errors import StageError

# Keys of `gain`: the fine-tuned model's value minus the head-only model's.
GAIN_KEYS = ("accuracy", "balanced_accuracy", "macro_f1", "log_loss", "ece")


def positive_class_id(positive_class: str | None, classes: list[str]) -> int | None:
    """Return the id of `evaluate.positive_class` for two classes, None for more.

    None for two classes picks the second class in sorted order, as scikit-learn
    takes label 1 of the labels 0 and 1 as positive.
    """
    if len(classes) > 2:
        if positive_class is not None:
            raise StageError(
                f"evaluate.positive_class = {positive_class!r} applies to two classes only, "
                f"but the data has {len(classes)} ({', '.join(classes)}), which get one "
                "one-vs-rest curve each; set evaluate.positive_class to null"
            )
        return None
    if positive_class is None:
        return 1
    if positive_class not in classes:
        raise StageError(
            f"evaluate.positive_class = {positive_class!r} is not a class of the training "
            f"split; set it to one of {classes}, or to null for {classes[1]!r}"
        )
    return classes.index(positive_class)


def normalized(probabilities: np.ndarray) -> np.ndarray:
    """Return float64 probabilities whose rows sum to 1.

    float32 softmax rows sum to 1 only within rounding, which scikit-learn's
    log_loss warns about.
    """
    values = np.asarray(probabilities, dtype=np.float64)
    return values / values.sum(axis=1, keepdims=True)


def calibration_bins(
    true_ids: np.ndarray, probabilities: np.ndarray, n_bins: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bin the top-label confidence into `n_bins` equal-width bins over [0, 1].

    Returns per bin: the number of images, their mean confidence (the highest
    class probability) and their accuracy, with NaN for empty bins. A bin is
    (low, high], and the first also contains 0, as in sklearn's calibration_curve.
    """
    confidence = probabilities.max(axis=1)
    correct = (probabilities.argmax(axis=1) == true_ids).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bin_ids = np.searchsorted(edges[1:-1], confidence)

    counts = np.bincount(bin_ids, minlength=n_bins)
    confidence_sums = np.bincount(bin_ids, weights=confidence, minlength=n_bins)
    correct_sums = np.bincount(bin_ids, weights=correct, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        return counts, confidence_sums / counts, correct_sums / counts


def expected_calibration_error(
    true_ids: np.ndarray, probabilities: np.ndarray, n_bins: int
) -> float:
    """Return the ECE: the mean |accuracy - confidence| over bins, weighted by bin size."""
    counts, confidence, accuracy = calibration_bins(true_ids, probabilities, n_bins)
    filled = counts > 0
    gaps = np.abs(accuracy[filled] - confidence[filled])
    return float(np.sum(counts[filled] * gaps) / counts.sum())


def score_probabilities(
    true_ids: np.ndarray,
    probabilities: np.ndarray,
    classes: list[str],
    *,
    positive_id: int | None,
    top_k: int,
    n_bins: int,
) -> dict:
    """Return every test metric of one model; `probabilities` has shape (n, n_classes).

    Keys: accuracy, balanced_accuracy, log_loss, ece, roc_auc (of the positive
    class for two classes, the macro one-vs-rest mean for more; left out when
    a class has no test image), top_<k>_accuracy (only for more than `top_k`
    classes), and macro, weighted and per_class precision, recall and F1.
    """
    probabilities = normalized(probabilities)
    labels = list(range(len(classes)))
    predicted_ids = probabilities.argmax(axis=1)

    precision, recall, f1, support = precision_recall_fscore_support(
        true_ids, predicted_ids, labels=labels, zero_division=0
    )
    scores = {
        "accuracy": float(accuracy_score(true_ids, predicted_ids)),
        "balanced_accuracy": float(balanced_accuracy_score(true_ids, predicted_ids)),
        "log_loss": float(log_loss(true_ids, probabilities, labels=labels)),
        "ece": expected_calibration_error(true_ids, probabilities, n_bins),
    }

    if np.all(np.bincount(true_ids, minlength=len(classes)) > 0):
        if positive_id is not None:
            positives = (true_ids == positive_id).astype(int)
            scores["roc_auc"] = float(roc_auc_score(positives, probabilities[:, positive_id]))
        else:
            scores["roc_auc"] = float(
                roc_auc_score(true_ids, probabilities, multi_class="ovr", labels=labels)
            )

    if len(classes) > top_k:
        scores[f"top_{top_k}_accuracy"] = float(
            top_k_accuracy_score(true_ids, probabilities, k=top_k, labels=labels)
        )

    for average in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(
            true_ids, predicted_ids, labels=labels, average=average, zero_division=0
        )
        scores[average] = {"precision": float(p), "recall": float(r), "f1": float(f)}

    scores["per_class"] = {
        name: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(classes)
    }
    return scores


def gain(final: dict, head: dict) -> dict:
    """Return the fine-tuned model's scores minus the head-only model's, for GAIN_KEYS.

    A positive gain is better for accuracy and F1; for log_loss and ece a
    negative one is.
    """
    def flat(scores: dict) -> dict:
        return {**scores, "macro_f1": scores["macro"]["f1"]}

    final_flat, head_flat = flat(final), flat(head)
    return {key: final_flat[key] - head_flat[key] for key in GAIN_KEYS}


def most_confused_pair(
    true_ids: np.ndarray, predicted_ids: np.ndarray, classes: list[str]
) -> tuple[str, str, int] | None:
    """Return (true class, predicted class, count) of the largest off-diagonal cell, or None."""
    matrix = confusion_matrix(true_ids, predicted_ids, labels=list(range(len(classes))))
    np.fill_diagonal(matrix, 0)
    if matrix.max() == 0:
        return None
    true_id, predicted_id = np.unravel_index(np.argmax(matrix), matrix.shape)
    return classes[true_id], classes[predicted_id], int(matrix[true_id, predicted_id])
