"""Choice of tf.distribute strategy and Keras dtype policy from params.compute.

In: `ComputeParams` (compute.distribute, compute.mixed_precision), the GPUs
visible to TensorFlow and the TF_CONFIG environment variable. Out: a `Compute` with the
strategy to build and train models under (`with compute.strategy.scope(): ...`),
the global dtype policy that was set ("float32" or "mixed_float16") and the
number of replicas. `choose_compute` makes the decision without touching
TensorFlow, so every rule can be tested without GPUs; `setup_compute` applies it.

`float32_copy` turns a model built under mixed_float16 into a float32 model with
the same weights, for saving, serving on CPUs and TFLite conversion.

The batch size that a stage passes to `fit` or `tf.data` is the global batch:
each replica gets batch_size / replicas examples per step.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from imgclf.config import ComputeParams
from imgclf.errors import StageError

if TYPE_CHECKING:
    import keras
    import tensorflow as tf

log = logging.getLogger(__name__)

StrategyKind = Literal["default", "mirrored", "multi_worker"]
PolicyName = Literal["float32", "mixed_float16"]

# GPUs of compute capability 7.0 and up have Tensor Cores for float16 matrix multiplies
# and convolutions. On older GPUs float16 saves memory and bandwidth but no arithmetic
# time (TensorFlow's mixed precision guide, "Supported hardware").
MIN_MIXED_CAPABILITY = (7, 0)

_TF_CONFIG_EXAMPLE = (
    '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
    '"task": {"type": "worker", "index": 0}}'
)


@dataclass(frozen=True)
class GpuInfo:
    """A GPU visible to TensorFlow."""

    name: str  # TensorFlow's device name, e.g. "/physical_device:GPU:0"
    model: str | None = None  # e.g. "NVIDIA H200"; None when the driver does not report it
    # (major, minor) CUDA compute capability; None when unknown (e.g. ROCm GPUs).
    compute_capability: tuple[int, int] | None = None

    def label(self) -> str:
        return f"{self.name} ({self.model})" if self.model else self.name


@dataclass(frozen=True)
class ComputeChoice:
    """The strategy kind and dtype policy chosen, each with the reason for the log line."""

    strategy: StrategyKind
    policy: PolicyName
    strategy_reason: str
    policy_reason: str


@dataclass(frozen=True)
class Compute:
    """The applied compute settings that stages build, train and predict under."""

    strategy: tf.distribute.Strategy
    policy: PolicyName
    replicas: int  # strategy.num_replicas_in_sync, across all workers
    description: str  # one line for the log


# --- Pure selection -----------------------------------------------------------


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def parse_tf_config(raw: str) -> tuple[str, int, int]:
    """Validate a TF_CONFIG value and return (task type, task index, number of workers).

    The number of workers counts the chief too, when the cluster has one.
    Raise StageError naming the problem and the expected form.
    """
    fix = f"set it on each worker to JSON such as {_TF_CONFIG_EXAMPLE}"
    try:
        parsed = json.loads(raw)
    except json.JSONDecodeError as error:
        raise StageError(f"TF_CONFIG is not valid JSON ({error}): {raw!r}; {fix}") from None

    cluster = parsed.get("cluster") if isinstance(parsed, dict) else None
    task = parsed.get("task") if isinstance(parsed, dict) else None
    if not isinstance(cluster, dict) or not cluster:
        raise StageError(f"TF_CONFIG is missing the \"cluster\" mapping: {raw!r}; {fix}")
    if not isinstance(task, dict):
        raise StageError(f"TF_CONFIG is missing the \"task\" mapping: {raw!r}; {fix}")

    task_type = task.get("type")
    task_index = task.get("index")
    members = cluster.get(task_type) if isinstance(task_type, str) else None
    if not isinstance(members, list):
        raise StageError(
            f"TF_CONFIG task type {task_type!r} is not a job in its cluster "
            f"{sorted(cluster)}; {fix}"
        )
    valid_index = isinstance(task_index, int) and not isinstance(task_index, bool)
    if not valid_index or not 0 <= task_index < len(members):
        raise StageError(
            f"TF_CONFIG task index {task_index!r} is out of range for the {len(members)} "
            f"address(es) of job {task_type!r}; use an index from 0 to {len(members) - 1}"
        )

    workers = sum(len(cluster.get(job) or []) for job in ("chief", "worker"))
    return task_type, task_index, workers


def choose_strategy(
    distribute: str, gpus: Sequence[GpuInfo], tf_config: str | None
) -> tuple[StrategyKind, str]:
    """Return the strategy kind for compute.distribute and the reason for it."""
    gpu_count = _count(len(gpus), "GPU") + " visible" if gpus else "no GPU visible"
    ignored = (
        "; TF_CONFIG is set but ignored, set compute.distribute to multi_worker to use it"
        if tf_config is not None and distribute != "multi_worker"
        else ""
    )

    if distribute == "auto":
        if len(gpus) > 1:
            return "mirrored", f"compute.distribute=auto, {gpu_count}{ignored}"
        return "default", f"compute.distribute=auto, {gpu_count}{ignored}"
    if distribute == "none":
        return "default", f"compute.distribute=none, {gpu_count}{ignored}"
    if distribute == "mirrored":
        return "mirrored", f"compute.distribute=mirrored, {gpu_count}{ignored}"
    if distribute == "multi_worker":
        if tf_config is None:
            raise StageError(
                "compute.distribute = 'multi_worker' needs the TF_CONFIG environment variable, "
                "which is not set, so this process would be the only worker. Set TF_CONFIG on "
                f"each worker to JSON such as {_TF_CONFIG_EXAMPLE} (same cluster everywhere, "
                "each worker its own index), or set compute.distribute to mirrored or auto "
                "to train on this machine's GPUs alone"
            )
        task_type, task_index, workers = parse_tf_config(tf_config)
        if workers > 1:
            # NOTE: Keras 3.15's Model.fit (TensorFlow backend) passes each (x, y) batch
            # to strategy.reduce to learn its shapes, and MultiWorkerMirroredStrategy
            # cannot reduce a tuple across workers, so fit stops with "Attempt to convert
            # a value (PerReplica...)". tests/test_compute.py checks that this still
            # happens; remove this check when that test fails after a Keras upgrade.
            raise StageError(
                f"compute.distribute = 'multi_worker' with {workers} workers in TF_CONFIG: "
                "Keras 3.15's Model.fit fails under MultiWorkerMirroredStrategy with more "
                "than one worker (ValueError on a PerReplica batch), so training cannot run. "
                "Set compute.distribute to mirrored or auto to train on every GPU of one "
                "machine"
            )
        return "multi_worker", (
            f"compute.distribute=multi_worker, TF_CONFIG task {task_type} {task_index} "
            f"of {_count(workers, 'worker')}, {gpu_count} here"
        )
    raise ValueError(f"compute.distribute {distribute!r} is not one of auto, none, mirrored, "
                     "multi_worker")


def _below_capability(gpus: Sequence[GpuInfo]) -> list[str]:
    """Describe each GPU whose compute capability is unknown or below 7.0."""
    problems = []
    for gpu in gpus:
        capability = gpu.compute_capability
        if capability is None:
            problems.append(f"{gpu.label()} reports no compute capability")
        elif capability < MIN_MIXED_CAPABILITY:
            problems.append(
                f"{gpu.label()} has compute capability {capability[0]}.{capability[1]}, below 7.0"
            )
    return problems


def choose_policy(mixed_precision: str, gpus: Sequence[GpuInfo]) -> tuple[PolicyName, str]:
    """Return the Keras dtype policy for compute.mixed_precision and the reason for it."""
    problems = _below_capability(gpus)

    if mixed_precision == "off":
        return "float32", "compute.mixed_precision=off"
    if mixed_precision == "on":
        if not gpus:
            raise StageError(
                "compute.mixed_precision = 'on' but no GPU is visible; float16 on a CPU is "
                "slower than float32, not faster. Set compute.mixed_precision to auto (float16 "
                "only with capable GPUs) or off, or make a GPU visible to TensorFlow"
            )
        if problems:
            # The setting is explicit, so it is applied, and the log line states the risk.
            return "mixed_float16", (
                "compute.mixed_precision=on, although " + "; ".join(problems)
                + ", so float16 may give little speed-up"
            )
        return "mixed_float16", "compute.mixed_precision=on"
    if mixed_precision == "auto":
        if not gpus:
            return "float32", "no GPU visible"
        if problems:
            return "float32", "; ".join(problems)
        return "mixed_float16", (
            f"every visible GPU ({len(gpus)}) has compute capability >= 7.0"
        )
    raise ValueError(f"compute.mixed_precision {mixed_precision!r} is not one of auto, on, off")


def choose_compute(
    params: ComputeParams, gpus: Sequence[GpuInfo], tf_config: str | None
) -> ComputeChoice:
    """Decide the strategy kind and dtype policy without touching TensorFlow.

    `gpus` are the GPUs visible to TensorFlow and `tf_config` the TF_CONFIG
    environment variable (None when unset). Raise StageError for settings that
    cannot work here (multi_worker without TF_CONFIG, mixed precision without a GPU).
    """
    strategy, strategy_reason = choose_strategy(params.distribute, gpus, tf_config)
    policy, policy_reason = choose_policy(params.mixed_precision, gpus)
    return ComputeChoice(strategy, policy, strategy_reason, policy_reason)


# --- Applying the choice ------------------------------------------------------


def visible_gpus() -> list[GpuInfo]:
    """List the GPUs TensorFlow will use, with model names and compute capabilities."""
    import tensorflow as tf

    gpus = []
    for device in tf.config.get_visible_devices("GPU"):
        details = tf.config.experimental.get_device_details(device)
        capability = details.get("compute_capability")
        gpus.append(GpuInfo(
            name=device.name,
            model=details.get("device_name"),
            compute_capability=tuple(capability) if capability else None,
        ))
    return gpus


def build_strategy(kind: StrategyKind) -> tf.distribute.Strategy:
    """Create the tf.distribute strategy of this kind."""
    import tensorflow as tf

    if kind == "default":
        return tf.distribute.get_strategy()
    if kind == "mirrored":
        return tf.distribute.MirroredStrategy()  # every visible GPU, or the CPU when none
    try:
        return tf.distribute.MultiWorkerMirroredStrategy()  # the cluster from TF_CONFIG
    except RuntimeError as error:
        # TensorFlow configures collective ops once, when its runtime starts.
        raise RuntimeError(
            f"MultiWorkerMirroredStrategy could not be created ({error}); call "
            "imgclf.compute.setup_compute before any other TensorFlow operation"
        ) from error


def describe(choice: ComputeChoice, replicas: int) -> str:
    """Return the log line, e.g. 'compute: default strategy, float32 (no GPU visible) ...'."""
    names = {
        "default": "default strategy",
        "mirrored": "MirroredStrategy",
        "multi_worker": "MultiWorkerMirroredStrategy",
    }
    return (
        f"compute: {names[choice.strategy]} with {_count(replicas, 'replica')} "
        f"({choice.strategy_reason}), {choice.policy} ({choice.policy_reason})"
    )


def setup_compute(params: ComputeParams) -> Compute:
    """Read the devices, set the global Keras dtype policy and create the strategy.

    Call it at the start of a stage, before any other TensorFlow operation:
    MultiWorkerMirroredStrategy fails once TensorFlow's runtime has started.
    Models built afterwards, inside `strategy.scope()`, take the policy.
    """
    import keras

    choice = choose_compute(params, visible_gpus(), os.environ.get("TF_CONFIG"))
    keras.mixed_precision.set_dtype_policy(choice.policy)
    strategy = build_strategy(choice.strategy)
    replicas = int(strategy.num_replicas_in_sync)

    description = describe(choice, replicas)
    log.info("%s", description)
    return Compute(strategy, choice.policy, replicas, description)


# --- float32 copies -----------------------------------------------------------


def _with_float32_policies(config: Any) -> Any:
    """Return a copy of a serialized Keras object with each mixed dtype policy set to float32.

    Policies appear as {"class_name": "DTypePolicy", "config": {"name": "mixed_float16"}}
    under a layer's "dtype" key (Keras 3). Input dtypes ("float32", "uint8") are kept.
    """
    if isinstance(config, list):
        return [_with_float32_policies(item) for item in config]
    if not isinstance(config, dict):
        return config

    is_policy = config.get("class_name") in ("DTypePolicy", "FloatDTypePolicy")
    name = config.get("config", {}).get("name") if is_policy else None
    if isinstance(name, str) and name.startswith("mixed_"):
        return {**config, "config": {**config["config"], "name": "float32"}}
    if config.get("dtype") in ("mixed_float16", "mixed_bfloat16"):
        config = {**config, "dtype": "float32"}
    return {key: _with_float32_policies(value) for key, value in config.items()}


def float32_copy(model: keras.Model) -> keras.Model:
    """Return an uncompiled float32 copy of a model built under a mixed precision policy.

    The copy has the same architecture, names, `trainable` flags and weights,
    with every layer, nested models' layers included, computing in float32.
    Weights are copied as they are: under mixed_float16 they are float32 already.
    Custom layers must be registered with Keras (as `imgclf.model.Preprocess` is).
    """
    import keras

    serialized = keras.saving.serialize_keras_object(model)
    serialized.pop("compile_config", None)  # a LossScaleOptimizer belongs to mixed training
    float32_config = _with_float32_policies(serialized)

    # Layers whose config names no dtype take the global policy while they are built.
    previous = keras.mixed_precision.dtype_policy()
    keras.mixed_precision.set_dtype_policy("float32")
    try:
        copy = keras.saving.deserialize_keras_object(float32_config)
    finally:
        keras.mixed_precision.set_dtype_policy(previous)

    copy.set_weights(model.get_weights())
    return copy


def for_saving(model: keras.Model, compute: Compute) -> keras.Model:
    """Return the model to save: itself under float32, a float32 copy under mixed precision."""
    return model if compute.policy == "float32" else float32_copy(model)
