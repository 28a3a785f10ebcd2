"""Baseline: head training and fine-tuning in one script that recomputes the backbone every epoch.

In: a project root with params.yaml and the split manifests data/split/{train,val,test}.csv
of prepared JPEGs. Out: a JSON summary on stdout and, with --output, in a file. It lists
the seconds of the head phase, the fine-tuning phase, the test evaluation and the whole
run, the epochs run per phase, and test accuracy. The whole run counts from argument
parsing on, so TensorFlow's import is included.

This is the pattern of the TensorFlow transfer-learning tutorial, applied to the
project's data and settings. Every epoch reads and decodes the JPEGs again (no cache),
the augmentation layers run inside the model, and the frozen backbone runs on every
training and validation image in every epoch. The pipeline's features stage computes
the backbone once instead, so this script is what the cached stages are compared with.
It uses the same params.yaml values as the pipeline: backbone, alpha, weights, image
size, head type, dropout, L1/L2, augmentation, seed, and per phase the optimizer, learning
rate, batch size, epochs, patience (EarlyStopping with restore_best_weights) and the
head's class weights. Fine-tuning unfreezes the layers above the block boundary nearest
to finetune.unfreeze, the same layers as the pipeline's finetune stage. Pixels are
decoded with libjpeg's accurate DCT, as the pipeline does.

Run from the repository root:
  PYTHONPATH=src python bench/tutorial_pattern.py --output bench/results/tutorial.json
Quick check on 64 images per split (the first 32 of each of two classes):
  PYTHONPATH=src python bench/tutorial_pattern.py --limit 64
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from machine import describe_machine

ROOT = Path(__file__).resolve().parents[1]


def first_per_class(entries: list, limit: int) -> list:
    """Return the first `limit` entries, taken from the classes in turn (manifest order in each).

    Manifests are sorted by class, so their first rows alone would hold one class only.
    """
    by_class: dict[str, list] = {}
    for entry in entries:
        by_class.setdefault(entry.label, []).append(entry)
    chosen = []
    for rank in range(max(len(group) for group in by_class.values())):
        chosen.extend(group[rank] for group in by_class.values() if rank < len(group))
    return chosen[:limit]


def load_split(root: Path, split: str, classes: list[str] | None, limit: int | None):
    """Return (absolute paths, class ids, classes) of a split manifest, at most `limit` rows.

    `classes` None takes the sorted labels of all rows of this manifest.
    """
    from imgclf import config
    from imgclf.data import label_ids
    from imgclf.manifest import class_names, read_entries

    entries = read_entries(root / config.split_manifest(split))
    classes = classes or class_names(entries)
    if limit is not None:
        entries = first_per_class(entries, limit)
    paths = [str(root / entry.path) for entry in entries]
    return paths, label_ids(entries, classes), classes


def image_dataset(paths, ids, *, image_size: int, sigmoid_head: bool, shuffle_seed: int | None):
    """Return an unbatched dataset of (image, label) that decodes each JPEG every epoch.

    image: (size, size, 3) float32 RGB in [0, 255]. label: () int32, or (1,) float32
    for a sigmoid head.
    """
    import tensorflow as tf

    def decode(path, label):
        image = tf.io.decode_jpeg(tf.io.read_file(path), channels=3, dct_method="INTEGER_ACCURATE")
        image = tf.ensure_shape(image, (image_size, image_size, 3))  # prepare resized it
        if sigmoid_head:
            label = tf.cast(tf.reshape(label, (1,)), tf.float32)
        return tf.cast(image, tf.float32), label

    dataset = tf.data.Dataset.from_tensor_slices((paths, ids))
    if shuffle_seed is not None:
        dataset = dataset.shuffle(len(paths), seed=shuffle_seed, reshuffle_each_iteration=True)
    return dataset.map(decode, num_parallel_calls=tf.data.AUTOTUNE)


def batched(dataset, batch_size: int):
    import tensorflow as tf

    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def build_model(params, n_classes: int):
    """Return (model, base): augmentation, Preprocess, frozen base, pool, dropout, Dense."""
    import keras
    from keras import layers

    from imgclf import zoo
    from imgclf.model import Preprocess, build_augmentation

    size = params.data.image_size
    base = zoo.build_backbone(params.model.backbone, image_size=size, alpha=params.model.alpha,
                              weights=params.model.weights)
    base.trainable = False

    # (batch, size, size, 3) raw RGB in [0, 255]
    inputs = keras.Input(shape=(size, size, 3))
    x = inputs
    augmentation = build_augmentation(params.augment, seed=params.seed)
    if augmentation is not None:
        x = augmentation(x)  # active in fit() only
    x = Preprocess(zoo.BACKBONES[params.model.backbone].preprocessing)(x)
    # training=False keeps BatchNormalization in inference mode, also after unfreezing.
    x = base(x, training=False)  # (batch, h, w, channels)
    x = layers.GlobalAveragePooling2D()(x)  # (batch, channels)
    x = layers.Dropout(params.model.dropout)(x)
    regularizer = keras.regularizers.L1L2(l1=params.model.l1, l2=params.model.l2)
    units, activation = (1, "sigmoid") if params.model.head == "sigmoid" else (n_classes, "softmax")
    outputs = layers.Dense(units, activation=activation, kernel_regularizer=regularizer)(x)
    return keras.Model(inputs, outputs), base


def unfreeze_top(base, n_layers: int) -> int:
    """Make the top `n_layers` layers of `base` trainable, except BatchNormalization.

    Returns the number of layers with weights that became trainable.
    """
    from keras import layers

    total = len(base.layers)
    if not 1 <= n_layers <= total:
        raise SystemExit(
            f"finetune.unfreeze = {n_layers}: {base.name} has {total} layers; "
            f"choose a value from 1 to {total} in params.yaml"
        )
    base.trainable = True
    for index, layer in enumerate(base.layers):
        layer.trainable = index >= total - n_layers and not isinstance(
            layer, layers.BatchNormalization)
    return sum(1 for layer in base.layers if layer.trainable and layer.weights)


def fit_phase(model, train, val, *, epochs: int, patience: int, class_weight=None) -> dict:
    """Fit with EarlyStopping(val_loss, restore_best_weights).

    Returns the seconds, the epochs run and the best epoch with its val loss and accuracy.
    """
    import keras
    import numpy as np

    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience,
                                         restore_best_weights=True)
    started = time.perf_counter()
    history = model.fit(train, validation_data=val, epochs=epochs, callbacks=[stop],
                        class_weight=class_weight, shuffle=False, verbose=2)
    seconds = time.perf_counter() - started
    val_loss = np.asarray(history.history["val_loss"], dtype=np.float64)
    best = int(np.nanargmin(val_loss)) if not np.isnan(val_loss).all() else None
    return {
        "seconds": round(seconds, 2),
        "epochs_run": len(history.epoch),
        "best_epoch": None if best is None else best + 1,
        "best_val_loss": None if best is None else round(float(val_loss[best]), 4),
        "best_val_accuracy": (None if best is None
                              else round(float(history.history["val_accuracy"][best]), 4)),
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=ROOT,
                        help="project root with data/split/ and params.yaml "
                             "(default: this repository)")
    parser.add_argument("--params", type=Path,
                        help="params file to read (default: ROOT/params.yaml)")
    parser.add_argument("--limit", type=int,
                        help="use only N images of each split, taken from the classes in turn, "
                             "for quick checks")
    parser.add_argument("--lr", type=float,
                        help="learning rate of the head phase (default: train_head.lr)")
    parser.add_argument("--output", type=Path, help="write the JSON summary here as well")
    args = parser.parse_args()
    if args.limit is not None and args.limit < 1:
        parser.error(f"--limit = {args.limit}: use 1 or more images per split")
    if args.lr is not None and not 0 < args.lr <= 1:
        parser.error(f"--lr = {args.lr}: use a learning rate in (0, 1], e.g. 0.001")
    return args


def main() -> int:
    args = parse_args()
    started = time.perf_counter()

    import keras

    from imgclf import config
    from imgclf.errors import StageError
    from imgclf.features import find_cut
    from imgclf.train import class_weights, compile_classifier, make_optimizer

    root = args.root.resolve()
    params = config.load_params(args.params or root / "params.yaml")
    keras.utils.set_random_seed(params.seed)
    head, tune = params.train_head, params.finetune
    head_lr = args.lr if args.lr is not None else head.lr
    size = params.data.image_size
    sigmoid_head = params.model.head == "sigmoid"

    train_paths, train_ids, classes = load_split(root, "train", None, args.limit)
    val_paths, val_ids, _ = load_split(root, "val", classes, args.limit)
    test_paths, test_ids, _ = load_split(root, "test", classes, args.limit)
    train = image_dataset(train_paths, train_ids, image_size=size, sigmoid_head=sigmoid_head,
                          shuffle_seed=params.seed)
    val = image_dataset(val_paths, val_ids, image_size=size, sigmoid_head=sigmoid_head,
                        shuffle_seed=None)
    test = image_dataset(test_paths, test_ids, image_size=size, sigmoid_head=sigmoid_head,
                         shuffle_seed=None)

    model, base = build_model(params, len(classes))
    # The pipeline moves finetune.unfreeze to the nearest block boundary of the backbone,
    # so the same layers are unfrozen here. A bad value stops the run before training.
    try:
        cut = find_cut(base, tune.unfreeze)
    except StageError as error:
        raise SystemExit(str(error)) from None
    compile_classifier(model, make_optimizer(head.optimizer, head_lr, head.momentum))
    head_phase = fit_phase(
        model, batched(train, head.batch_size), batched(val, head.batch_size),
        epochs=head.epochs, patience=head.patience,
        class_weight=class_weights(train_ids, len(classes), head.class_weight),
    )

    unfrozen = unfreeze_top(base, cut.trainable_layers)
    # Recompile after changing `trainable`, or Keras keeps training the old set of weights.
    compile_classifier(model, make_optimizer("adam", tune.lr))
    finetune_phase = fit_phase(
        model, batched(train, tune.batch_size), batched(val, tune.batch_size),
        epochs=tune.epochs, patience=tune.patience,
    )

    evaluate_started = time.perf_counter()
    scores = model.evaluate(batched(test, params.evaluate.batch_size), verbose=0,
                            return_dict=True)
    evaluate_s = time.perf_counter() - evaluate_started

    summary = {
        "benchmark": "tutorial_pattern",
        "root": str(root),
        "images": {"train": len(train_paths), "val": len(val_paths), "test": len(test_paths)},
        "classes": classes,
        "backbone": params.model.backbone,
        "image_size": size,
        "head_lr": head_lr,
        "finetune_lr": tune.lr,
        "finetune_unfreeze_requested": tune.unfreeze,
        "finetune_layers_unfrozen": cut.trainable_layers,
        "finetune_layers_with_weights": unfrozen,
        "head": head_phase,
        "finetune": finetune_phase,
        "evaluate_s": round(evaluate_s, 2),
        "total_s": round(time.perf_counter() - started, 2),
        "test_accuracy": round(float(scores["accuracy"]), 4),
        "machine": describe_machine(),
    }
    text = json.dumps(summary, indent=2)
    print(text)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
