"""evaluate: models/model.keras, data/split/test.csv -> metrics/evaluate.json, dvclive/evaluate/.

Scores the fine-tuned model on the test split only and logs the confusion
matrix for `dvc plots show`.
"""

import logging
from pathlib import Path

import numpy as np
from dvclive import Live

from imgclf import config
from imgclf.data import label_ids
from imgclf.files import write_json_atomic
from imgclf.inference import KerasPredictor, predict_bytes
from imgclf.manifest import class_names, read_entries
from imgclf.metrics import classification_metrics
from imgclf.stage import run_stage

log = logging.getLogger("imgclf.stages.evaluate")


def main() -> None:
    params = config.load_params()

    classes = class_names(read_entries(config.split_manifest("train")))
    test_entries = read_entries(config.split_manifest("test"))

    # The same decoding, conversion and model call as `imgclf predict` and `imgclf serve`.
    model = KerasPredictor(config.FINAL_MODEL)
    test_images = [Path(entry.path).read_bytes() for entry in test_entries]
    probabilities = predict_bytes(
        model, test_images, image_size=params.data.image_size,
        batch_size=params.evaluate.batch_size,
    )  # (n_test, n_classes)
    true_ids = label_ids(test_entries, classes)
    predicted_ids = np.argmax(probabilities, axis=1)

    metrics = classification_metrics(true_ids, predicted_ids, classes)
    write_json_atomic(config.METRICS_DIR / "evaluate.json", metrics)

    # log_sklearn_plot writes the plot file at once. live.end() is not called
    # because it would add an empty metrics.json beside the declared outputs.
    live = Live(dir=str(config.DVCLIVE_DIR / "evaluate"), dvcyaml=None, save_dvc_exp=False)
    live.log_sklearn_plot(
        "confusion_matrix",
        [classes[i] for i in true_ids],
        [classes[i] for i in predicted_ids],
        name="confusion_matrix.json",
    )

    log.info(
        "test accuracy %.4f, macro F1 %.4f on %d images",
        metrics["accuracy"], metrics["macro"]["f1"], metrics["n_images"],
    )


if __name__ == "__main__":
    run_stage(main)
