"""train_head: data/features/*.pooled.npy, data/split/{train,val}.csv -> models/head.keras, dvclive/train_head/.

Trains a new head on the cached pooled backbone output, then saves it inside
the full classifier (the backbone that computed the cache, plus the head).
"""

import logging

from imgclf import config
from imgclf.compute import for_saving, setup_compute
from imgclf.features import (
    BACKBONE_WEIGHTS, check_exclusions, check_meta, head_on_pooled, labels_for, read_meta,
    training_batches,
)
from imgclf.files import save_model_atomic
from imgclf.manifest import class_names, read_entries
from imgclf.model import build_classifier, find_backbone
from imgclf.stage import run_stage
from imgclf.train import class_weights, compile_classifier, fit, make_optimizer, set_seed

log = logging.getLogger("imgclf.stages.train_head")


def main() -> None:
    params = config.load_params()
    compute = setup_compute(params.compute)  # before any other TensorFlow operation
    set_seed(params.seed)
    settings = params.train_head
    sigmoid_head = params.model.head == "sigmoid"

    entries = {split: read_entries(config.split_manifest(split)) for split in config.SPLITS}
    classes = class_names(entries["train"])
    check_exclusions(params.audit.exclude, entries)
    meta = read_meta(config.FEATURES_DIR)
    check_meta(
        meta,
        {"backbone": params.model.backbone, "alpha": params.model.alpha,
         "weights": params.model.weights, "image_size": params.data.image_size,
         "classes": classes},
        {split: config.split_manifest(split) for split in ("train", "val")},
    )

    with compute.strategy.scope():
        # The full classifier, around the exact backbone weights that computed the cache.
        model = build_classifier(
            params.model.model_copy(update={"weights": "none"}),
            image_size=params.data.image_size, n_classes=len(classes),
        )
        find_backbone(model).load_weights(config.FEATURES_DIR / BACKBONE_WEIGHTS)
        head = head_on_pooled(model)  # pooled (batch, C) -> probabilities; shares the head
        compile_classifier(
            head, make_optimizer(settings.optimizer, settings.lr, settings.momentum)
        )

    batches = training_batches(
        "pooled", entries, classes, sigmoid_head=sigmoid_head, batch_size=settings.batch_size,
        seed=params.seed, exclude=params.audit.exclude,
    )
    train_ids = labels_for(entries["train"], classes, sigmoid_head=False)
    left_out = sum(len(entries[split]) - len(batches[split].rows) for split in batches)
    log.info(
        "training the %s head of %s on the cached features of %d images (%d views) of %d "
        "classes, validating on %d; %d left out by audit.exclude",
        params.model.head, params.model.backbone, len(batches["train"].rows),
        meta["train_views"], len(classes), len(batches["val"].rows), left_out,
    )

    fit(
        head, batches["train"], batches["val"],
        epochs=settings.epochs,
        patience=settings.patience,
        live_dir=config.DVCLIVE_DIR / "train_head",
        class_weight=class_weights(
            train_ids[batches["train"].rows], len(classes), settings.class_weight
        ),
    )

    save_model_atomic(for_saving(model, compute), config.HEAD_MODEL)
    log.info("saved %s", config.HEAD_MODEL)


if __name__ == "__main__":
    run_stage(main)
