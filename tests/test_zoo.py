import keras
import numpy as np
import pytest

from imgclf import zoo
from imgclf.model import Preprocess

# Each family's own preprocessing, which the Preprocess layer must reproduce.
KERAS_PREPROCESSING = {
    "mobilenet": keras.applications.mobilenet.preprocess_input,
    "mobilenet_v2": keras.applications.mobilenet_v2.preprocess_input,
    # MobileNetV3's built-in preprocessing is Rescaling(1 / 127.5, offset=-1), switched off here.
    "mobilenet_v3_small": keras.layers.Rescaling(1 / 127.5, offset=-1),
    "mobilenet_v3_large": keras.layers.Rescaling(1 / 127.5, offset=-1),
    "resnet50": keras.applications.resnet50.preprocess_input,
    "vgg16": keras.applications.vgg16.preprocess_input,
    "efficientnet_b0": keras.applications.efficientnet.preprocess_input,
}


def test_every_backbone_has_reference():
    assert set(KERAS_PREPROCESSING) == set(zoo.BACKBONE_NAMES)


@pytest.mark.parametrize("name", zoo.BACKBONE_NAMES)
def test_backbone_builds_headless(name):
    alpha = 0.5 if name in ("mobilenet", "mobilenet_v2") else 1.0

    backbone = zoo.build_backbone(name, image_size=64, alpha=alpha, weights="none")

    output = backbone(np.zeros((1, 64, 64, 3), dtype="float32"))
    assert len(output.shape) == 4  # (batch, h, w, channels): no pooling, no top
    assert output.shape[0] == 1


@pytest.mark.parametrize("name", zoo.BACKBONE_NAMES)
def test_preprocess_matches_family(name):
    images = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    reference = keras.ops.convert_to_numpy(KERAS_PREPROCESSING[name](images.copy()))

    ours = keras.ops.convert_to_numpy(Preprocess(zoo.BACKBONES[name].preprocessing)(images))

    np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize(
    ("name", "size", "alpha", "message"),
    [
        ("mobilenet", 96, 1.0, "sizes {128, 160, 192, 224}"),
        ("mobilenet", 224, 0.35, "alpha in {0.25, 0.5, 0.75, 1}"),
        ("mobilenet_v3_small", 224, 0.5, "alpha in {0.75, 1}"),
        ("vgg16", 224, 0.5, "vgg16 has no width multiplier"),
    ],
)
def test_invalid_settings_named(name, size, alpha, message):
    with pytest.raises(ValueError, match=message.replace("{", r"\{").replace("}", r"\}")):
        zoo.check_settings(name, image_size=size, alpha=alpha, weights="imagenet")


def test_random_weights_allow_any_alpha_and_size():
    zoo.check_settings("mobilenet_v2", image_size=72, alpha=0.6, weights="none")
