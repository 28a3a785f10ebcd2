"""train_head: data/split/{train,val}.csv -> models/head.keras, dvclive/train_head/.

Trains a new head on the frozen ImageNet backbone.
"""

import logging

from imgclf import config
from imgclf.data import label_ids, make_dataset
from imgclf.files import save_model_atomic
from imgclf.manifest import class_names, read_entries
from imgclf.model import build_augmentation, build_classifier, check_unfreeze
from imgclf.stage import run_stage
from imgclf.train import class_weights, compile_classifier, fit, make_optimizer, set_seed

log = logging.getLogger("imgclf.stages.train_head")


def main() -> None:
    params = config.load_params()
    set_seed(params.seed)
    settings = params.train_head
    image_size = params.data.image_size

    train_entries = read_entries(config.split_manifest("train"))
    val_entries = read_entries(config.split_manifest("val"))
    classes = class_names(train_entries)
    sigmoid_head = params.model.head == "sigmoid"

    augmentation = build_augmentation(params.augment, seed=params.seed)
    train_data = make_dataset(
        train_entries, classes, image_size=image_size, batch_size=settings.batch_size,
        sigmoid_head=sigmoid_head, shuffle_seed=params.seed, augmentation=augmentation,
    )
    val_data = make_dataset(
        val_entries, classes, image_size=image_size, batch_size=settings.batch_size,
        sigmoid_head=sigmoid_head,
    )

    model = build_classifier(params.model, image_size=image_size, n_classes=len(classes))
    check_unfreeze(model, params.finetune.unfreeze)  # fail now, not after training the head
    compile_classifier(model, make_optimizer(settings.optimizer, settings.lr, settings.momentum))
    log.info(
        "training the %s head of %s on %d images of %d classes, validating on %d",
        params.model.head, params.model.backbone, len(train_entries), len(classes),
        len(val_entries),
    )

    fit(
        model, train_data, val_data,
        epochs=settings.epochs,
        patience=settings.patience,
        live_dir=config.DVCLIVE_DIR / "train_head",
        class_weight=class_weights(
            label_ids(train_entries, classes), len(classes), settings.class_weight
        ),
    )

    save_model_atomic(model, config.HEAD_MODEL)
    log.info("saved %s", config.HEAD_MODEL)


if __name__ == "__main__":
    run_stage(main)
