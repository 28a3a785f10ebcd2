"""finetune: models/head.keras, data/split/{train,val}.csv -> models/model.keras, dvclive/finetune/.

Unfreezes the top finetune.unfreeze backbone layers (BatchNormalization stays
frozen) and trains them with the head at a low learning rate.
"""

import logging

import keras

from imgclf import config
from imgclf.data import make_dataset
from imgclf.files import save_model_atomic
from imgclf.manifest import class_names, read_entries
from imgclf.model import build_augmentation, unfreeze_top
from imgclf.stage import run_stage
from imgclf.train import compile_classifier, fit, make_optimizer, set_seed

log = logging.getLogger("imgclf.stages.finetune")


def main() -> None:
    params = config.load_params()
    set_seed(params.seed)
    settings = params.finetune
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

    model = keras.models.load_model(config.HEAD_MODEL)
    unfrozen = unfreeze_top(model, settings.unfreeze)
    # Recompile after changing `trainable`, or Keras keeps training the old set of weights.
    compile_classifier(model, make_optimizer("adam", settings.lr))
    log.info(
        "fine-tuning %d backbone layers with weights (%s ... %s) at lr %g",
        len(unfrozen), unfrozen[0] if unfrozen else "-", unfrozen[-1] if unfrozen else "-",
        settings.lr,
    )

    fit(
        model, train_data, val_data,
        epochs=settings.epochs,
        patience=settings.patience,
        live_dir=config.DVCLIVE_DIR / "finetune",
    )

    save_model_atomic(model, config.FINAL_MODEL)
    log.info("saved %s", config.FINAL_MODEL)


if __name__ == "__main__":
    run_stage(main)
