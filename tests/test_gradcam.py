"""Grad-CAM on real Keras classifiers with a nested MobileNetV2 backbone."""

import numpy as np
import pytest

from imgclf.config import ModelParams
from imgclf.errors import StageError
from imgclf.gradcam import GradCam, upsample
from imgclf.model import build_classifier

# 96 pixels give MobileNetV2 a 3 x 3 feature map, small enough to build quickly.
SIZE = 96


def classifier(head: str, n_classes: int, seed: int = 3):
    import keras

    keras.utils.set_random_seed(seed)
    params = ModelParams(
        backbone="mobilenet_v2", alpha=0.35, weights="none", head=head,
        dropout=0.2, l1=0.0, l2=0.0,
    )
    return build_classifier(params, image_size=SIZE, n_classes=n_classes)


def images(count: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 255, size=(count, SIZE, SIZE, 3)).astype(np.float32)


@pytest.mark.parametrize(("head", "n_classes"), [("softmax", 3), ("sigmoid", 2)])
def test_split_model_matches_full_model(head, n_classes):
    model = classifier(head, n_classes)
    batch = images(4)

    expected = model.predict(batch, verbose=0)
    if head == "sigmoid":
        expected = np.concatenate([1 - expected, expected], axis=1)

    np.testing.assert_allclose(GradCam(model).probabilities(batch), expected, atol=1e-5)


def test_heatmap_shape_and_range():
    model = classifier("softmax", 3)
    batch = images(4)

    maps = GradCam(model).heatmaps(batch, np.array([0, 1, 2, 0]))

    assert maps.shape == (4, 3, 3)
    assert maps.min() >= 0.0
    assert maps.max() <= 1.0


def test_heatmap_equals_class_activation_map():
    model = classifier("softmax", 3)
    cam = GradCam(model)
    batch = images(4)
    class_ids = np.array([0, 1, 2, 0])
    kernel = np.random.default_rng(1).normal(size=cam.classifier.kernel.shape)
    cam.classifier.kernel.assign(kernel.astype(np.float32))

    maps = cam.heatmaps(batch, class_ids)

    # Behind global average pooling and a Dense layer, the gradient of a logit is
    # the class's kernel column divided by the h * w locations. So Grad-CAM is
    # relu(sum over channels of features * kernel), scaled to a peak of 1.
    features = cam.features(batch).numpy()  # (4, 3, 3, channels)
    expected = np.maximum(np.einsum("nhwc,cn->nhw", features, kernel[:, class_ids]), 0)
    expected /= expected.max(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(maps, expected, atol=1e-4)
    for heatmap in maps:
        assert heatmap.max() == pytest.approx(1.0)
        assert heatmap.std() > 0.01


def test_heatmap_depends_on_class():
    model = classifier("softmax", 3)
    batch = images(1)
    cam = GradCam(model)

    first = cam.heatmaps(batch, np.array([0]))
    second = cam.heatmaps(batch, np.array([1]))

    assert not np.allclose(first, second)


def test_sigmoid_classes_mirror():
    model = classifier("sigmoid", 2)
    batch = images(2)
    cam = GradCam(model)

    # The two class logits are z and -z, so their gradients have opposite signs.
    positive = cam.heatmaps(batch, np.array([1, 1]))
    negative = cam.heatmaps(batch, np.array([0, 0]))

    assert positive.shape == (2, 3, 3)
    assert not np.allclose(positive, negative)


def test_upsample_to_image_size():
    maps = np.zeros((2, 3, 3), dtype=np.float32)
    maps[:, 1, 1] = 1.0

    resized = upsample(maps, SIZE)

    assert resized.shape == (2, SIZE, SIZE)
    assert resized[0, SIZE // 2, SIZE // 2] == pytest.approx(1.0, abs=0.05)
    assert resized[0, 0, 0] == pytest.approx(0.0, abs=0.05)


def test_model_without_backbone_rejected():
    import keras

    inputs = keras.Input((8,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))

    with pytest.raises(StageError, match="expected one nested backbone"):
        GradCam(model)
