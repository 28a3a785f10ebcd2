"""finetune: models/head.keras, data/features/*.cut.npy -> models/model.keras, dvclive/finetune/.

Trains the backbone layers above the cached cut (BatchNormalization stays
frozen) together with the head at a low learning rate, on the cached cut
activations, then saves the full classifier.
"""

import logging

from imgclf import config
from imgclf.compute import for_saving, setup_compute
from imgclf.features import (
    check_exclusions, check_meta, find_cut, read_meta, top_on_cut, training_batches,
)
from imgclf.files import save_model_atomic
from imgclf.manifest import class_names, read_entries
from imgclf.model import build_classifier, find_backbone, unfreeze_top
from imgclf.stage import run_stage
from imgclf.train import compile_classifier, fit, make_optimizer, set_seed

log = logging.getLogger("imgclf.stages.finetune")


def main() -> None:
    params = config.load_params()
    compute = setup_compute(params.compute)  # before any other TensorFlow operation
    set_seed(params.seed)
    settings = params.finetune
    sigmoid_head = params.model.head == "sigmoid"

    entries = {split: read_entries(config.split_manifest(split)) for split in config.SPLITS}
    classes = class_names(entries["train"])
    check_exclusions(params.audit.exclude, entries)

    with compute.strategy.scope():
        # Built under the compute policy, then given the trained head's weights.
        model = build_classifier(
            params.model.model_copy(update={"weights": "none"}),
            image_size=params.data.image_size, n_classes=len(classes),
        )
        model.load_weights(config.HEAD_MODEL)
        cut = find_cut(find_backbone(model), settings.unfreeze)
        check_meta(
            read_meta(config.FEATURES_DIR),
            {"cut_layer": cut.layer, "classes": classes},
            {split: config.split_manifest(split) for split in ("train", "val")},
        )

        unfrozen = unfreeze_top(model, cut.trainable_layers)
        top = top_on_cut(model, cut)  # cut activation (batch, h, w, c) -> probabilities
        # Compile after changing `trainable`, or Keras keeps training the old set of weights.
        compile_classifier(top, make_optimizer("adam", settings.lr))
    log.info(
        "%s: %d with weights (%s ... %s), at lr %g",
        cut.describe(), len(unfrozen), unfrozen[0] if unfrozen else "-",
        unfrozen[-1] if unfrozen else "-", settings.lr,
    )

    batches = training_batches(
        "cut", entries, classes, sigmoid_head=sigmoid_head, batch_size=settings.batch_size,
        seed=params.seed, exclude=params.audit.exclude,
    )
    fit(
        top, batches["train"], batches["val"],
        epochs=settings.epochs,
        patience=settings.patience,
        live_dir=config.DVCLIVE_DIR / "finetune",
    )

    save_model_atomic(for_saving(model, compute), config.FINAL_MODEL)
    log.info("saved %s", config.FINAL_MODEL)


if __name__ == "__main__":
    run_stage(main)
