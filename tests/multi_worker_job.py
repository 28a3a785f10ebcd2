"""Distributed training steps that need a fresh process, run by test_compute.py.

MultiWorkerMirroredStrategy and logical CPU devices must be set up before
TensorFlow's runtime starts, so they cannot be tested inside the pytest process.
argv[1] picks the case; the script prints one JSON line with the result:

- setup: setup_compute with compute.distribute=multi_worker (TF_CONFIG set),
  then one training step.
- late: as setup, but a TensorFlow operation runs first.
- keras_fit: MultiWorkerMirroredStrategy created directly, then one training step.
- mirrored2: one training step on two logical CPUs under MirroredStrategy and
  the same step under the default strategy.
"""

from __future__ import annotations

import json
import sys

import keras
import numpy as np
import tensorflow as tf

from imgclf.compute import setup_compute
from imgclf.config import ComputeParams
from imgclf.errors import StageError

GLOBAL_BATCH = 8


def train_step(strategy: tf.distribute.Strategy) -> dict:
    """Fit a seeded Dense model for one step of GLOBAL_BATCH examples; return loss and kernel."""
    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
        model.compile(optimizer=keras.optimizers.SGD(0.5), loss="sparse_categorical_crossentropy")

    rng = np.random.default_rng(0)
    features = rng.normal(size=(GLOBAL_BATCH, 4)).astype("float32")
    labels = rng.integers(0, 2, size=GLOBAL_BATCH).astype("int32")
    dataset = tf.data.Dataset.from_tensor_slices((features, labels)).batch(GLOBAL_BATCH)
    history = model.fit(dataset, epochs=1, verbose=0)
    return {
        "loss": history.history["loss"][0],
        "kernel": model.get_weights()[0].tolist(),
    }


def run_setup(late: bool) -> dict:
    if late:
        tf.constant(1.0) + 1.0  # starts the runtime

    try:
        compute = setup_compute(ComputeParams(distribute="multi_worker", mixed_precision="auto"))
    except (RuntimeError, StageError) as error:
        return {"error": str(error)}
    return {
        "multi_worker": isinstance(compute.strategy, tf.distribute.MultiWorkerMirroredStrategy),
        "replicas": compute.replicas,
        "policy": compute.policy,
        "description": compute.description,
        **train_step(compute.strategy),
    }


def run_keras_fit() -> dict:
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    try:
        result = train_step(strategy)
    except ValueError as error:
        return {"replicas": strategy.num_replicas_in_sync, "error": str(error)[:500]}
    return {"replicas": strategy.num_replicas_in_sync, **result}


def run_mirrored_on_two_cpus() -> dict:
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    return {
        "replicas": mirrored.num_replicas_in_sync,
        "mirrored": train_step(mirrored),
        "default": train_step(tf.distribute.get_strategy()),
    }


def main(case: str) -> None:
    if case in ("setup", "late"):
        result = run_setup(late=case == "late")
    elif case == "keras_fit":
        result = run_keras_fit()
    elif case == "mirrored2":
        result = run_mirrored_on_two_cpus()
    else:
        raise SystemExit(f"unknown case {case!r}; use setup, late, keras_fit or mirrored2")
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1])
