import keras
import numpy as np
import pytest

from imgclf.config import AugmentParams, ModelParams
from imgclf.errors import StageError
from imgclf.model import (
    Preprocess,
    build_augmentation,
    build_classifier,
    find_backbone,
    predict_probabilities,
    unfreeze_top,
)

SIZE = 32


def model_params(**overrides) -> ModelParams:
    values = {
        "backbone": "mobilenet_v2",
        "alpha": 0.35,
        "weights": "none",
        "head": "softmax",
        "dropout": 0.2,
        "l1": 0.0,
        "l2": 1e-4,
    }
    return ModelParams(**{**values, **overrides})


def random_images(n: int, size: int = SIZE) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.uniform(0, 255, size=(n, size, size, 3)).astype("float32")


@pytest.mark.parametrize(
    ("mode", "reference"),
    [
        ("tf", keras.applications.mobilenet_v2.preprocess_input),
        ("caffe", keras.applications.resnet50.preprocess_input),
    ],
)
def test_preprocess_matches_keras(mode, reference):
    images = random_images(2)
    ours = keras.ops.convert_to_numpy(Preprocess(mode)(images))
    np.testing.assert_allclose(ours, reference(images.copy()), rtol=1e-5, atol=1e-4)


def test_preprocess_rejects_unknown_mode():
    with pytest.raises(ValueError, match="not one of"):
        Preprocess("torch")


def test_softmax_head_shapes():
    model = build_classifier(model_params(), image_size=SIZE, n_classes=3)

    probabilities = model.predict(random_images(4), verbose=0)

    assert probabilities.shape == (4, 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_sigmoid_head_becomes_two_columns():
    model = build_classifier(model_params(head="sigmoid"), image_size=SIZE, n_classes=2)
    assert model.output_shape == (None, 1)

    images = random_images(3)

    probabilities = predict_probabilities(model, images)

    assert probabilities.shape == (3, 2)
    positive = model.predict(images, verbose=0)[:, 0]
    np.testing.assert_allclose(probabilities[:, 1], positive, rtol=1e-6)
    np.testing.assert_allclose(probabilities[:, 0], 1.0 - positive, rtol=1e-6)


def test_sigmoid_head_needs_two_classes():
    with pytest.raises(StageError, match="2 classes only"):
        build_classifier(model_params(head="sigmoid"), image_size=SIZE, n_classes=3)


def test_backbone_frozen_head_trainable():
    model = build_classifier(model_params(), image_size=SIZE, n_classes=2)

    trainable = {weight.path for weight in model.trainable_weights}

    assert trainable == {"classifier/kernel", "classifier/bias"}
    assert not find_backbone(model).trainable


def test_unfreeze_top_keeps_batchnorm_frozen():
    model = build_classifier(model_params(), image_size=SIZE, n_classes=2)
    backbone = find_backbone(model)

    unfrozen = unfreeze_top(model, 20)

    top = backbone.layers[-20:]
    expected = [
        layer.name for layer in top
        if layer.weights and not isinstance(layer, keras.layers.BatchNormalization)
    ]
    assert expected
    assert unfrozen == expected
    for name in expected:
        assert backbone.get_layer(name).trainable, name
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            assert not layer.trainable, layer.name
    for layer in backbone.layers[:-20]:
        assert not layer.trainable, layer.name


def test_unfreeze_out_of_range_names_limit():
    model = build_classifier(model_params(), image_size=SIZE, n_classes=2)
    total = len(find_backbone(model).layers)
    with pytest.raises(StageError, match=f"choose a value from 1 to {total}"):
        unfreeze_top(model, total + 1)


def test_saved_model_round_trip(tmp_path):
    model = build_classifier(model_params(backbone="mobilenet"), image_size=SIZE, n_classes=2)
    images = random_images(2)
    path = tmp_path / "model.keras"

    model.save(path)
    loaded = keras.models.load_model(path)  # safe mode: no Lambda layers to trust

    np.testing.assert_allclose(
        loaded.predict(images, verbose=0), model.predict(images, verbose=0), rtol=1e-5
    )
    assert loaded.get_layer("preprocess").mode == "tf"


def test_augmentation_off_when_all_zero():
    params = AugmentParams(flip="none", rotation=0.0, zoom=0.0, brightness=0.0, contrast=0.0)
    assert build_augmentation(params, seed=0) is None


def test_augmentation_keeps_shape_and_range():
    params = AugmentParams(
        flip="horizontal", rotation=0.1, zoom=0.1, brightness=0.2, contrast=0.2
    )
    augmentation = build_augmentation(params, seed=0)
    images = random_images(4)

    augmented = keras.ops.convert_to_numpy(augmentation(images, training=True))

    assert augmented.shape == images.shape
    assert augmented.min() >= 0.0
    assert augmented.max() <= 255.0
    assert not np.allclose(augmented, images)
    # At inference the augmentation layers pass images through unchanged.
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(augmentation(images, training=False)), images
    )


def test_augmentation_layers_seeded_apart():
    params = AugmentParams(
        flip="horizontal", rotation=0.1, zoom=0.1, brightness=0.2, contrast=0.2
    )

    augmentation = build_augmentation(params, seed=7)

    seeds = [layer.seed for layer in augmentation.layers]
    assert len(seeds) == 5
    assert len(set(seeds)) == 5
