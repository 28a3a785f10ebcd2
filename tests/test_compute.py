import json
import os
import socket
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from helpers import PROJECT_ROOT
from imgclf.compute import (
    GpuInfo,
    choose_compute,
    choose_policy,
    choose_strategy,
    float32_copy,
    parse_tf_config,
    setup_compute,
)
from imgclf.config import ComputeParams
from imgclf.errors import StageError
from imgclf.model import Preprocess

SIZE = 32

V100 = GpuInfo("/physical_device:GPU:0", "Tesla V100-SXM2-16GB", (7, 0))
H200 = GpuInfo("/physical_device:GPU:1", "NVIDIA H200", (9, 0))
P100 = GpuInfo("/physical_device:GPU:1", "Tesla P100-PCIE-16GB", (6, 0))
ROCM = GpuInfo("/physical_device:GPU:0", None, None)

# These tests expect the CPU-only results (default strategy, float32, one replica).
cpu_only = pytest.mark.skipif(
    bool(tf.config.list_physical_devices("GPU")), reason="expects a machine without GPUs"
)


def tf_config(workers: int = 2, index: int = 0) -> str:
    addresses = [f"127.0.0.1:{20000 + i}" for i in range(workers)]
    return json.dumps({"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}})


@pytest.fixture(autouse=True)
def restore_dtype_policy():
    """Put back the global Keras dtype policy that a test changed."""
    previous = keras.mixed_precision.dtype_policy()
    yield
    keras.mixed_precision.set_dtype_policy(previous)


# --- choose_strategy ------------------------------------------------------------


@pytest.mark.parametrize(
    ("distribute", "gpus", "expected"),
    [
        ("auto", [], "default"),
        ("auto", [V100], "default"),
        ("auto", [V100, H200], "mirrored"),
        ("none", [], "default"),
        ("none", [V100, H200], "default"),
        ("mirrored", [], "mirrored"),
        ("mirrored", [V100], "mirrored"),
        ("mirrored", [V100, H200], "mirrored"),
    ],
)
def test_strategy_choice_by_gpu_count(distribute, gpus, expected):
    kind, reason = choose_strategy(distribute, gpus, tf_config=None)

    assert kind == expected
    assert f"compute.distribute={distribute}" in reason


def test_strategy_reason_counts_gpus():
    _, none_visible = choose_strategy("auto", [], tf_config=None)
    _, two_visible = choose_strategy("auto", [V100, H200], tf_config=None)

    assert "no GPU visible" in none_visible
    assert "2 GPUs visible" in two_visible


def test_strategy_multi_worker_reads_tf_config():
    kind, reason = choose_strategy("multi_worker", [V100], tf_config(workers=1, index=0))

    assert kind == "multi_worker"
    assert "task worker 0 of 1 worker," in reason


def test_strategy_multi_worker_rejects_several_workers():
    with pytest.raises(StageError) as raised:
        choose_strategy("multi_worker", [V100], tf_config(workers=3, index=2))

    message = str(raised.value)
    assert "with 3 workers in TF_CONFIG" in message
    assert "Model.fit fails under MultiWorkerMirroredStrategy" in message
    assert "Set compute.distribute to mirrored or auto" in message


def test_strategy_multi_worker_without_tf_config():
    with pytest.raises(StageError) as raised:
        choose_strategy("multi_worker", [V100, H200], tf_config=None)

    message = str(raised.value)
    assert "compute.distribute = 'multi_worker'" in message
    assert "TF_CONFIG" in message
    assert "only worker" in message
    assert "set compute.distribute to mirrored or auto" in message


def test_strategy_mentions_ignored_tf_config():
    kind, reason = choose_strategy("auto", [V100, H200], tf_config())

    assert kind == "mirrored"
    assert "TF_CONFIG is set but ignored" in reason


# --- parse_tf_config --------------------------------------------------------------


def test_tf_config_counts_chief_as_worker():
    raw = json.dumps({
        "cluster": {"chief": ["a:1"], "worker": ["b:1", "c:1"]},
        "task": {"type": "chief", "index": 0},
    })

    assert parse_tf_config(raw) == ("chief", 0, 3)


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ("{not json", "not valid JSON"),
        ('["a:1"]', 'missing the "cluster" mapping'),
        ('{"task": {"type": "worker", "index": 0}}', 'missing the "cluster" mapping'),
        ('{"cluster": {"worker": ["a:1"]}}', 'missing the "task" mapping'),
        ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "ps", "index": 0}}',
         "task type 'ps' is not a job"),
        ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 1}}',
         "task index 1 is out of range"),
        ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": "0"}}',
         "task index '0' is out of range"),
        ('{"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": true}}',
         "task index True is out of range"),
    ],
)
def test_tf_config_rejects_malformed(raw, fragment):
    with pytest.raises(StageError, match="TF_CONFIG") as raised:
        parse_tf_config(raw)

    assert fragment in str(raised.value)


# --- choose_policy ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("mixed_precision", "gpus", "expected"),
    [
        ("auto", [], "float32"),
        ("auto", [V100], "mixed_float16"),
        ("auto", [V100, H200], "mixed_float16"),
        ("auto", [V100, P100], "float32"),
        ("auto", [ROCM], "float32"),
        ("off", [], "float32"),
        ("off", [H200], "float32"),
        ("on", [H200], "mixed_float16"),
        ("on", [P100], "mixed_float16"),
    ],
)
def test_policy_choice(mixed_precision, gpus, expected):
    policy, _ = choose_policy(mixed_precision, gpus)

    assert policy == expected


def test_policy_auto_names_slow_gpu():
    _, reason = choose_policy("auto", [V100, P100])

    assert "Tesla P100-PCIE-16GB" in reason
    assert "compute capability 6.0, below 7.0" in reason


def test_policy_auto_names_unknown_capability():
    _, reason = choose_policy("auto", [ROCM])

    assert "/physical_device:GPU:0 reports no compute capability" in reason


def test_policy_on_with_slow_gpu_warns():
    _, reason = choose_policy("on", [P100])

    assert "may give little speed-up" in reason


def test_policy_on_without_gpu():
    with pytest.raises(StageError) as raised:
        choose_policy("on", [])

    message = str(raised.value)
    assert "compute.mixed_precision = 'on'" in message
    assert "no GPU is visible" in message
    assert "Set compute.mixed_precision to auto" in message
    assert "or off" in message


def test_compute_choice_combines_both():
    params = ComputeParams(distribute="auto", mixed_precision="auto")

    choice = choose_compute(params, [V100, H200], tf_config=None)

    assert choice.strategy == "mirrored"
    assert choice.policy == "mixed_float16"
    assert "every visible GPU (2) has compute capability >= 7.0" in choice.policy_reason


# --- setup_compute on this machine ----------------------------------------------


@cpu_only
def test_setup_auto_on_cpu(caplog, monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    keras.mixed_precision.set_dtype_policy("mixed_float16")  # setup_compute must reset it

    with caplog.at_level("INFO", logger="imgclf.compute"):
        compute = setup_compute(ComputeParams(distribute="auto", mixed_precision="auto"))

    assert compute.strategy is tf.distribute.get_strategy()
    assert compute.policy == "float32"
    assert keras.mixed_precision.dtype_policy().name == "float32"
    assert compute.replicas == 1
    assert compute.description == (
        "compute: default strategy with 1 replica (compute.distribute=auto, no GPU visible), "
        "float32 (no GPU visible)"
    )
    assert compute.description in caplog.messages


@cpu_only
def test_setup_mixed_on_without_gpu():
    with pytest.raises(StageError, match="no GPU is visible"):
        setup_compute(ComputeParams(distribute="auto", mixed_precision="on"))


def test_setup_multi_worker_without_tf_config(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)

    with pytest.raises(StageError, match="TF_CONFIG environment variable, which is not set"):
        setup_compute(ComputeParams(distribute="multi_worker", mixed_precision="auto"))


@cpu_only
def test_setup_mirrored_on_cpu_fits():
    compute = setup_compute(ComputeParams(distribute="mirrored", mixed_precision="off"))

    assert isinstance(compute.strategy, tf.distribute.MirroredStrategy)
    assert compute.replicas == 1

    keras.utils.set_random_seed(0)
    with compute.strategy.scope():
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
        model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    kernel_before = model.get_weights()[0]

    history = model.fit(np.ones((8, 4), "float32"), np.zeros(8, "int32"), batch_size=8, verbose=0)

    assert isinstance(model.weights[0].value, tf.distribute.DistributedValues)
    assert np.isfinite(history.history["loss"][0])
    assert not np.allclose(model.get_weights()[0], kernel_before)


# --- distributed training in fresh processes --------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_job(case: str, addresses: list[str] | None = None, index: int = 0) -> subprocess.Popen:
    """Start tests/multi_worker_job.py; with addresses, as worker `index` of that cluster."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(PROJECT_ROOT / "src"), env.get("PYTHONPATH", "")])
    env.pop("TF_CONFIG", None)
    if addresses is not None:
        env["TF_CONFIG"] = json.dumps(
            {"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}}
        )
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return subprocess.Popen(
        [sys.executable, str(PROJECT_ROOT / "tests" / "multi_worker_job.py"), case],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def job_result(process: subprocess.Popen) -> dict:
    try:
        stdout, stderr = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
    assert process.returncode == 0, f"job exited {process.returncode}:\n{stderr[-3000:]}"
    return json.loads(stdout.strip().splitlines()[-1])


@cpu_only
def test_multi_worker_single_worker_fits():
    result = job_result(start_job("setup", [f"127.0.0.1:{free_port()}"]))

    assert "error" not in result, result.get("error")
    assert result["multi_worker"] is True
    assert result["replicas"] == 1
    assert result["policy"] == "float32"
    assert np.isfinite(result["loss"])
    assert "task worker 0 of 1 worker" in result["description"]


def test_multi_worker_after_tensorflow_started():
    result = job_result(start_job("late", [f"127.0.0.1:{free_port()}"]))

    assert "Collective ops must be configured at program startup" in result["error"]
    assert "call imgclf.compute.setup_compute before any other TensorFlow" in result["error"]


def test_keras_fit_fails_with_two_workers():
    """The Keras failure that choose_strategy guards against still happens."""
    addresses = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]

    workers = [start_job("keras_fit", addresses, index) for index in range(2)]
    results = [job_result(process) for process in workers]

    for result in results:
        assert result["replicas"] == 2
        assert "error" in result, (
            "Model.fit now works under MultiWorkerMirroredStrategy with two workers; remove "
            "the check for more than one worker in imgclf.compute.choose_strategy"
        )
        assert "PerReplica" in result["error"]


def test_mirrored_two_replicas_use_global_batch():
    result = job_result(start_job("mirrored2"))

    assert result["replicas"] == 2
    # Each replica takes half of the batch, and the gradients are summed, so one
    # step equals the step of a single device on the whole batch.
    np.testing.assert_allclose(result["mirrored"]["loss"], result["default"]["loss"], rtol=1e-5)
    np.testing.assert_allclose(
        result["mirrored"]["kernel"], result["default"]["kernel"], rtol=1e-5, atol=1e-6
    )
    assert not np.allclose(result["default"]["kernel"], 0.0)


# --- mixed precision models -------------------------------------------------------


def random_images(n: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(n, SIZE, SIZE, 3)).astype("float32")


def all_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The model's layers, with those of nested models, recursively."""
    found = []
    for layer in model.layers:
        found.append(layer)
        if isinstance(layer, keras.Model):
            found.extend(all_layers(layer))
    return found


def build_classifier_like(backbone: keras.Model, n_classes: int = 3) -> keras.Model:
    """Input -> Preprocess -> nested backbone -> pooling -> dropout -> float32 softmax."""
    inputs = keras.Input(shape=(SIZE, SIZE, 3), name="image")
    x = Preprocess("tf", name="preprocess")(inputs)
    x = backbone(x, training=False)  # (batch, h, w, channels)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)  # (batch, channels)
    x = keras.layers.Dropout(0.2, name="dropout")(x)
    outputs = keras.layers.Dense(
        n_classes, activation="softmax", dtype="float32", name="classifier"
    )(x)  # (batch, n_classes)
    return keras.Model(inputs, outputs, name="classifier_like")


def mobilenet_classifier(images: np.ndarray) -> keras.Model:
    """A classifier around a random-weight MobileNetV2 whose activations keep their scale.

    With random weights and BatchNormalization's initial statistics the
    backbone's output is about 1e-12, which is 0 in float16. Its statistics are
    therefore set from `images`, so features differ from image to image.
    """
    keras.utils.set_random_seed(1)
    backbone = keras.applications.MobileNetV2(
        input_shape=(SIZE, SIZE, 3), include_top=False, weights=None, alpha=0.35
    )
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.0  # the moving statistics become those of this one batch
    backbone(images / 127.5 - 1.0, training=True)  # while trainable: frozen BN ignores training

    backbone.trainable = False
    return build_classifier_like(backbone)


def small_backbone_classifier() -> keras.Model:
    """A classifier around a three-layer functional backbone, shallow enough for float16."""
    keras.utils.set_random_seed(2)
    inputs = keras.Input(shape=(SIZE, SIZE, 3))
    x = keras.layers.Conv2D(16, 3, strides=2, activation="relu")(inputs)  # (batch, 15, 15, 16)
    x = keras.layers.Conv2D(32, 3, strides=2, activation="relu")(x)  # (batch, 7, 7, 32)
    x = keras.layers.Conv2D(32, 3, activation="relu")(x)  # (batch, 5, 5, 32)
    model = build_classifier_like(keras.Model(inputs, x, name="small_backbone"))

    # Larger head weights spread the probabilities, so that images differ visibly.
    classifier = model.get_layer("classifier")
    kernel, bias = classifier.get_weights()
    classifier.set_weights([kernel * 20, bias])
    return model


def test_float32_output_layer_under_mixed():
    keras.mixed_precision.set_dtype_policy("mixed_float16")
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(8, activation="relu", name="hidden")(inputs)
    model = keras.Model(inputs, [
        keras.layers.Dense(2, activation="softmax", name="default")(hidden),
        keras.layers.Dense(2, activation="softmax", dtype="float32", name="float32")(hidden),
    ])

    default_output, float32_output = model(np.ones((2, 4), "float32"))

    assert model.get_layer("hidden").compute_dtype == "float16"
    assert default_output.dtype == "float16"
    assert float32_output.dtype == "float32"


def test_float32_copy_of_mobilenet_classifier():
    images = random_images(4)
    keras.mixed_precision.set_dtype_policy("mixed_float16")
    mixed = mobilenet_classifier(images)
    mixed_layers = all_layers(mixed)
    assert any(layer.dtype_policy.name == "mixed_float16" for layer in mixed_layers)
    assert mixed.predict(images, verbose=0).dtype == "float32"

    copy = float32_copy(mixed)

    assert keras.mixed_precision.dtype_policy().name == "mixed_float16", "global policy changed"
    copy_layers = all_layers(copy)
    assert [layer.name for layer in copy_layers] == [layer.name for layer in mixed_layers]
    for layer in copy_layers:
        assert layer.compute_dtype == "float32", layer.name
        assert layer.variable_dtype == "float32", layer.name
    assert {variable.dtype for variable in copy.weights} == {"float32"}
    assert copy.get_layer("mobilenetv2_0.35_32").trainable is False

    # The copy computes exactly what a model built under float32 computes.
    keras.mixed_precision.set_dtype_policy("float32")
    reference = build_classifier_like(
        keras.applications.MobileNetV2(
            input_shape=(SIZE, SIZE, 3), include_top=False, weights=None, alpha=0.35
        )
    )
    reference.set_weights(mixed.get_weights())
    expected = reference.predict(images, verbose=0)
    assert expected.std(axis=0).max() > 0.01, "images should give different probabilities"
    np.testing.assert_allclose(copy.predict(images, verbose=0), expected, rtol=1e-5, atol=1e-6)


def test_float32_copy_close_to_mixed():
    images = random_images(8)
    keras.mixed_precision.set_dtype_policy("mixed_float16")
    mixed = small_backbone_classifier()
    mixed_probabilities = mixed.predict(images, verbose=0)

    copy = float32_copy(mixed)
    copy_probabilities = copy.predict(images, verbose=0)

    mixed_backbone = mixed.get_layer("small_backbone").layers
    copy_backbone = copy.get_layer("small_backbone").layers
    assert {layer.compute_dtype for layer in mixed_backbone[1:]} == {"float16"}  # after Input
    assert {layer.compute_dtype for layer in copy_backbone} == {"float32"}
    assert mixed_probabilities.std(axis=0).max() > 0.05, "images should give different outputs"
    # float16 has a relative precision of about 1e-3. This model differed by at most 5e-5 here.
    np.testing.assert_allclose(copy_probabilities, mixed_probabilities, atol=1e-3)
    assert not np.array_equal(copy_probabilities, mixed_probabilities), "no float16 rounding seen"


def test_float32_copy_saves_and_loads(tmp_path):
    keras.mixed_precision.set_dtype_policy("mixed_float16")
    mixed = small_backbone_classifier()
    mixed.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    assert isinstance(mixed.optimizer, keras.mixed_precision.LossScaleOptimizer)
    images = random_images(2)

    float32_copy(mixed).save(tmp_path / "model.keras")
    keras.mixed_precision.set_dtype_policy("float32")
    loaded = keras.models.load_model(tmp_path / "model.keras", compile=False)

    assert {layer.compute_dtype for layer in all_layers(loaded)} == {"float32"}
    np.testing.assert_allclose(
        loaded.predict(images, verbose=0), float32_copy(mixed).predict(images, verbose=0),
        rtol=1e-5, atol=1e-6,
    )
