"""features: data/split/*.csv, data/prepared/images -> data/features/.

Runs the frozen backbone once over val, test and features.train_views views of
train, and caches its pooled output and the activation at the fine-tune cut.
"""

import json
import logging
import time

from imgclf import config
from imgclf.compute import setup_compute
from imgclf.features import (
    BACKBONE_WEIGHTS, META_FILE, build_extractor, file_sha256, find_cut, write_split,
)
from imgclf.files import staged_directory
from imgclf.manifest import class_names, read_entries
from imgclf.model import build_augmentation, build_classifier, find_backbone
from imgclf.stage import run_stage
from imgclf.train import set_seed

log = logging.getLogger("imgclf.stages.features")


def main() -> None:
    params = config.load_params()
    compute = setup_compute(params.compute)  # before any other TensorFlow operation
    set_seed(params.seed)
    settings = params.features
    image_size = params.data.image_size

    entries = {split: read_entries(config.split_manifest(split)) for split in config.SPLITS}
    classes = class_names(entries["train"])

    with compute.strategy.scope():
        model = build_classifier(params.model, image_size=image_size, n_classes=len(classes))
        backbone = find_backbone(model)
        cut = find_cut(backbone, params.finetune.unfreeze)
        extractor = build_extractor(model, cut)
    cut_shape, pooled_shape = (list(output.shape[1:]) for output in extractor.outputs)
    log.info("%s; cut activation %s, pooled %s", cut.describe(), cut_shape, pooled_shape)

    # View 0 is the image as prepared; each later view has its own augmentation seeds.
    train_views = [None] + [
        build_augmentation(params.augment, seed=params.seed + 100 * view)
        for view in range(1, settings.train_views)
    ]

    started = time.perf_counter()
    with staged_directory(config.FEATURES_DIR) as folder:
        for split in config.SPLITS:
            write_split(
                extractor, entries[split], classes,
                folder=folder, split=split,
                augmentations=train_views if split == "train" else [None],
                image_size=image_size, batch_size=settings.batch_size, dtype=settings.dtype,
            )
        backbone.save_weights(folder / BACKBONE_WEIGHTS)
        meta = {
            "backbone": params.model.backbone,
            "alpha": params.model.alpha,
            "weights": params.model.weights,
            "image_size": image_size,
            "classes": classes,
            "cut_layer": cut.layer,
            "cut_shape": cut_shape,
            "pooled_shape": pooled_shape,
            "dtype": settings.dtype,
            "train_views": settings.train_views,
            "splits": {
                split: {
                    "rows": len(entries[split]),
                    "manifest_sha256": file_sha256(config.split_manifest(split)),
                }
                for split in config.SPLITS
            },
        }
        (folder / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")

    seconds = time.perf_counter() - started
    n_images = settings.train_views * len(entries["train"]) + len(entries["val"]) + len(
        entries["test"]
    )
    log.info(
        "features: %d images in %.1f s (%.1f images/s); train %d x %d views, val %d, test %d",
        n_images, seconds, n_images / seconds, len(entries["train"]), settings.train_views,
        len(entries["val"]), len(entries["test"]),
    )


if __name__ == "__main__":
    run_stage(main)
