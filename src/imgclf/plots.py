"""Plot data for `dvc plots`: written through DVCLive, drawn by dvc.yaml's `plots:` section.

Files under the evaluate stage's DVCLive folder (`dvclive/evaluate/plots/`):

- sklearn/confusion_matrix.json, sklearn/confusion_matrix_normalized.json
- sklearn/roc/<class>.json, sklearn/precision_recall/<class>.json: the
  positive class for two classes, one-vs-rest for every class otherwise
- sklearn/calibration/{final,head}.json: the reliability diagram of each model
- training/{train_head,finetune}.csv: both training phases on one step axis
- images/errors.png, images/gradcam.png: the error gallery
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from dvclive import Live

from imgclf.errors import StageError
from imgclf.files import write_csv_atomic



def log_classification_plots(
    live: Live,
    true_ids: np.ndarray,
    probabilities: dict[str, np.ndarray],
    classes: list[str],
    *,
    positive_id: int | None,
    n_bins: int,
) -> None:
    """Log confusion matrices, ROC and precision-recall curves of the `final` model,
    and a reliability diagram of every model in `probabilities`, each (n, n_classes).
    """
    final = probabilities["final"]
    true_names = [classes[i] for i in true_ids]
    predicted_names = [classes[i] for i in final.argmax(axis=1)]
    live.log_sklearn_plot(
        "confusion_matrix", true_names, predicted_names, name="confusion_matrix.json"
    )
    live.log_sklearn_plot(
        "confusion_matrix", true_names, predicted_names,
        name="confusion_matrix_normalized.json", normalized=True,
    )

    curve_ids = [positive_id] if positive_id is not None else range(len(classes))
    for class_id in curve_ids:
        is_class = (true_ids == class_id).astype(int)
        score = final[:, class_id]
        name = classes[class_id]
        live.log_sklearn_plot("roc", is_class, score, name=f"roc/{name}.json")
        live.log_sklearn_plot(
            "precision_recall", is_class, score, name=f"precision_recall/{name}.json"
        )

    # Reliability of the top label: per bin of the highest probability, how often
    # that class is right.
    for model_name, model_probabilities in probabilities.items():
        correct = (model_probabilities.argmax(axis=1) == true_ids).astype(int)
        live.log_sklearn_plot(
            "calibration", correct, model_probabilities.max(axis=1),
            name=f"calibration/{model_name}.json", n_bins=n_bins, pos_label=1,
        )


def read_training_log(live_dir: Path) -> dict[str, list[float]]:
    """Read a DVCLive training log's curves into {"train_loss": [...], "eval_accuracy": ...}.

    Each curve is `live_dir/plots/metrics/<split>/<metric>.tsv` with one row per epoch.
    """
    metrics_dir = live_dir / "plots" / "metrics"
    files = sorted(metrics_dir.glob("*/*.tsv"))
    if not files:
        raise StageError(
            f"no training curves found under {metrics_dir}; run train_head and finetune "
            "first (dvc repro)"
        )

    curves = {}
    for path in files:
        with path.open(newline="", encoding="utf-8") as file:
            rows = list(csv.DictReader(file, delimiter="\t"))
        curves[f"{path.parent.name}_{path.stem}"] = [float(row[path.stem]) for row in rows]
    return curves


def write_training_curves(output_dir: Path, live_dirs: dict[str, Path]) -> None:
    """Write one CSV per phase, numbering epochs on one step axis across the phases.

    Each phase's DVCLive log starts at step 0, so the second phase's steps are
    shifted by the number of epochs the first one ran. Rows carry a `phase` field.
    """
    first_step = 0
    for phase, live_dir in live_dirs.items():
        curves = read_training_log(live_dir)
        epochs = max(len(values) for values in curves.values())
        rows = [
            {
                "step": first_step + epoch,
                "phase": phase,
                **{name: values[epoch] for name, values in curves.items() if epoch < len(values)},
            }
            for epoch in range(epochs)
        ]
        write_csv_atomic(output_dir / f"{phase}.csv", ["step", "phase", *sorted(curves)], rows)
        first_step += epochs
