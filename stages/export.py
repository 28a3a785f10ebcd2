"""export: models/model.keras, data/split/{train,test}.csv -> models/export/, models/metadata.json, metrics/export.json.

Writes the model as a SavedModel, float32 and dynamic-range TFLite files and a
legacy .h5, each with metadata.json (class names, image size, backbone) beside
it, then checks each format against the Keras model on the test split.
"""

import logging
from pathlib import Path

import numpy as np

from imgclf import config
from imgclf.data import label_ids
from imgclf.errors import StageError
from imgclf.export import FORMATS, below_agreement, export_all, parity
from imgclf.files import staged_directory, write_json_atomic
from imgclf.inference import KerasPredictor, ModelMetadata, image_array, load_predictor, predict_arrays, write_metadata
from imgclf.manifest import class_names, read_entries
from imgclf.stage import run_stage

log = logging.getLogger("imgclf.stages.export")


def main() -> None:
    params = config.load_params()
    settings = params.export
    image_size = params.data.image_size

    classes = class_names(read_entries(config.split_manifest("train")))
    test_entries = read_entries(config.split_manifest("test"))
    true_ids = label_ids(test_entries, classes)
    metadata = ModelMetadata(
        classes=classes, image_size=image_size,
        backbone=params.model.backbone, head=params.model.head,
        resize=params.prepare.resize, background=params.prepare.background,
    )

    # The same decoding and conversion as `imgclf predict` and the service.
    images = [
        image_array(Path(entry.path).read_bytes(), image_size, **metadata.conversion())
        for entry in test_entries
    ]
    keras_model = KerasPredictor(config.FINAL_MODEL)
    reference = predict_arrays(keras_model, images, settings.batch_size)  # (n_test, n_classes)

    report = {"n_images": len(images), "formats": {}}
    with staged_directory(config.EXPORT_DIR) as folder:
        paths = export_all(keras_model.model, folder)
        write_metadata(folder, metadata)

        for name, path in paths.items():
            probabilities = predict_arrays(load_predictor(path), images, settings.batch_size)
            report["formats"][name] = {
                **parity(reference, probabilities, true_ids),
                "size_bytes": _size(path),
            }
            log.info("%s: %s", name, report["formats"][name])

        agreements = {name: result["top1_agreement"] for name, result in report["formats"].items()}
        quantized, lossless_failed = below_agreement(agreements, settings.min_agreement)
        for name, value in sorted(quantized.items()):
            log.warning(
                "%s agrees with %s on %.2f %% of the test images, below export.min_agreement "
                "= %s: rounding the weights changes this model's answers. Serve "
                "model_float32.tflite instead, or accept the loss", name, config.FINAL_MODEL,
                100 * value, settings.min_agreement,
            )
        if lossless_failed:
            raise StageError(
                f"top-1 agreement with {config.FINAL_MODEL} is below export.min_agreement = "
                f"{settings.min_agreement} for {lossless_failed}, formats that should match it "
                "exactly; check the converter warnings above"
            )

    write_metadata(config.MODELS_DIR, metadata)
    report["keras_accuracy"] = float(np.mean(np.argmax(reference, axis=1) == true_ids))
    write_json_atomic(config.METRICS_DIR / "export.json", report)
    log.info("exported %s to %s", ", ".join(FORMATS), config.EXPORT_DIR)


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(file.stat().st_size for file in path.rglob("*") if file.is_file())
    return path.stat().st_size


if __name__ == "__main__":
    run_stage(main)
