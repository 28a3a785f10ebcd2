"""Test-set metrics computed with scikit-learn."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, precision_recall_fscore_support


def classification_metrics(
    true_ids: np.ndarray, predicted_ids: np.ndarray, classes: list[str]
) -> dict:
    """Return accuracy, and macro and per-class precision, recall and F1."""
    labels = list(range(len(classes)))
    precision, recall, f1, support = precision_recall_fscore_support(
        true_ids, predicted_ids, labels=labels, zero_division=0
    )
    macro = precision_recall_fscore_support(
        true_ids, predicted_ids, labels=labels, average="macro", zero_division=0
    )

    return {
        "n_images": int(len(true_ids)),
        "accuracy": float(accuracy_score(true_ids, predicted_ids)),
        "macro": {"precision": float(macro[0]), "recall": float(macro[1]), "f1": float(macro[2])},
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(classes)
        },
    }
