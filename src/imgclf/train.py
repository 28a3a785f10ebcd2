"""Compile and fit a classifier with early stopping and DVCLive logging."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import keras
import numpy as np
from dvclive import Live
from dvclive.keras import DVCLiveCallback
from dvclive.utils import standardize_metric_name
from sklearn.utils.class_weight import compute_class_weight

from imgclf.errors import StageError

log = logging.getLogger(__name__)


def set_seed(seed: int) -> None:
    """Seed Python's, NumPy's and TensorFlow's random generators from one value."""
    keras.utils.set_random_seed(seed)


def make_optimizer(name: str, lr: float, momentum: float = 0.0) -> keras.optimizers.Optimizer:
    if name == "adam":
        return keras.optimizers.Adam(learning_rate=lr)
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate=lr, momentum=momentum)
    if name == "rmsprop":
        return keras.optimizers.RMSprop(learning_rate=lr, momentum=momentum)
    raise ValueError(f"optimizer {name!r} is not one of adam, sgd, rmsprop")


def compile_classifier(model: keras.Model, optimizer: keras.optimizers.Optimizer) -> None:
    """Compile with the loss that matches the head: one sigmoid unit or a softmax."""
    sigmoid_head = model.output_shape[-1] == 1
    loss = (
        keras.losses.BinaryCrossentropy()
        if sigmoid_head
        else keras.losses.SparseCategoricalCrossentropy()
    )
    model.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"])


def class_weights(ids: np.ndarray, n_classes: int, mode: str) -> dict[int, float] | None:
    """Return Keras class weights: None, or 'balanced' (inverse class frequency)."""
    if mode == "none":
        return None
    classes = np.arange(n_classes)
    weights = compute_class_weight(class_weight=mode, classes=classes, y=ids)
    return {int(c): float(w) for c, w in zip(classes, weights)}


def check_git_has_commits() -> None:
    """Raise StageError inside a git repository without commits.

    NOTE: DVCLive 3.49 crashes there with "SCMError: Empty git repo" as soon
    as a Live object is created, so the stage stops earlier with the fix.
    """
    try:
        inside = subprocess.run(
            ["git", "rev-parse", "--is-inside-work-tree"], capture_output=True, text=True
        )
        head = subprocess.run(
            ["git", "rev-parse", "--verify", "--quiet", "HEAD"], capture_output=True
        )
    except FileNotFoundError:
        return  # no git: DVCLive runs without it
    if inside.stdout.strip() == "true" and head.returncode != 0:
        raise StageError(
            "the git repository has no commits yet, and DVCLive needs one to log training; "
            "commit the project first (git add -A && git commit -m 'Start project'), "
            "then run dvc repro again"
        )


def fit(
    model: keras.Model,
    train_data,
    val_data,
    *,
    epochs: int,
    patience: int,
    live_dir: Path,
    class_weight: dict[int, float] | None = None,
) -> keras.callbacks.History:
    """Fit with early stopping on val_loss, keeping the best epoch's weights.

    DVCLive writes per-epoch metrics to `live_dir/plots/metrics/`. Its
    `live_dir/metrics.json` is rewritten at the end with the best epoch's
    values, which are the ones the returned model has.
    """
    check_git_has_commits()
    live = Live(dir=str(live_dir), dvcyaml=None, save_dvc_exp=False)
    callbacks = [
        keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=patience, restore_best_weights=True, verbose=1
        ),
        DVCLiveCallback(live=live),
    ]
    history = model.fit(
        train_data,
        validation_data=val_data,
        epochs=epochs,
        callbacks=callbacks,
        class_weight=class_weight,
        shuffle=False,  # the tf.data pipeline shuffles the training set itself
        verbose=2,
    )

    val_loss = np.asarray(history.history["val_loss"], dtype=np.float64)
    if np.isnan(val_loss).all():
        raise StageError(
            "val_loss was NaN in every epoch, so training diverged; lower the learning rate"
        )
    best = int(np.nanargmin(val_loss))  # EarlyStopping also skips NaN epochs
    for name, values in history.history.items():
        live.log_metric(standardize_metric_name(name, "dvclive.keras"), values[best], plot=False)
    live.summary["best_epoch"] = best + 1
    live.make_summary()
    log.info(
        "best epoch %d of %d: val_loss %.4f, val_accuracy %.4f",
        best + 1,
        len(history.history["val_loss"]),
        history.history["val_loss"][best],
        history.history["val_accuracy"][best],
    )
    return history
