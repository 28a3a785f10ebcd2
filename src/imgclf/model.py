"""The classifier: raw RGB -> backbone preprocessing -> frozen ImageNet backbone -> new head.

The model takes float RGB in [0, 255] of shape (batch, size, size, 3) and
scales it itself, so callers never apply a backbone's preprocess_input. Saved models need this module
imported before `keras.models.load_model`, because `Preprocess` is a custom
layer registered here.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers, ops

from imgclf import zoo
from imgclf.config import AugmentParams, ModelParams
from imgclf.errors import StageError

# ImageNet channel means in BGR order, as subtracted by the "caffe" preprocessing
# of keras.applications (ResNet50, VGG16).
_CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)


@keras.saving.register_keras_serializable(package="imgclf")
class Preprocess(layers.Layer):
    """A backbone family's `preprocess_input` as a layer, so it is saved with the model."""

    def __init__(self, mode: str, **kwargs):
        super().__init__(**kwargs)
        if mode not in ("tf", "caffe", "none"):
            raise ValueError(f"Preprocess mode {mode!r} is not one of 'tf', 'caffe', 'none'")
        self.mode = mode

    def call(self, images):
        images = ops.cast(images, "float32")
        if self.mode == "tf":
            return images / 127.5 - 1.0
        if self.mode == "caffe":
            return ops.flip(images, axis=-1) - ops.convert_to_tensor(_CAFFE_BGR_MEAN)
        return images

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


def build_classifier(params: ModelParams, *, image_size: int, n_classes: int) -> keras.Model:
    """Build the classifier with a frozen backbone and an untrained head."""
    if n_classes < 2:
        raise StageError(f"a classifier needs at least 2 classes, got {n_classes}")
    if params.head == "sigmoid" and n_classes != 2:
        raise StageError(
            f"model.head = 'sigmoid' works for 2 classes only, but the data has {n_classes}; "
            "set model.head to softmax"
        )

    backbone = zoo.build_backbone(
        params.backbone, image_size=image_size, alpha=params.alpha, weights=params.weights
    )
    backbone.trainable = False

    # (batch, size, size, 3) raw RGB in [0, 255]
    inputs = keras.Input(shape=(image_size, image_size, 3), name="image")
    x = Preprocess(zoo.BACKBONES[params.backbone].preprocessing, name="preprocess")(inputs)

    # training=False keeps BatchNormalization in inference mode even after the
    # top of the backbone is unfrozen for fine-tuning.
    x = backbone(x, training=False)  # (batch, h, w, channels)
    x = layers.GlobalAveragePooling2D(name="pool")(x)  # (batch, channels)
    x = layers.Dropout(params.dropout, name="dropout")(x)

    # The classifier computes in float32 under any policy: a float16 softmax loses
    # the small probabilities that log loss and calibration depend on.
    regularizer = keras.regularizers.L1L2(l1=params.l1, l2=params.l2)
    if params.head == "sigmoid":
        outputs = layers.Dense(
            1, activation="sigmoid", kernel_regularizer=regularizer, dtype="float32",
            name="classifier",
        )(x)  # (batch, 1): probability of the second class
    else:
        outputs = layers.Dense(
            n_classes, activation="softmax", kernel_regularizer=regularizer, dtype="float32",
            name="classifier",
        )(x)  # (batch, n_classes)

    return keras.Model(inputs, outputs, name=f"imgclf_{params.backbone}")


def find_backbone(model: keras.Model) -> keras.Model:
    """Return the nested keras.applications model inside a classifier."""
    nested = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    if len(nested) != 1:
        raise StageError(
            f"expected one nested backbone in model {model.name!r}, found {len(nested)}; "
            "was it built by imgclf.model.build_classifier?"
        )
    return nested[0]


def check_unfreeze(model: keras.Model, n_layers: int) -> None:
    """Raise StageError unless the backbone has at least `n_layers` layers."""
    backbone = find_backbone(model)
    total = len(backbone.layers)
    if not 1 <= n_layers <= total:
        raise StageError(
            f"finetune.unfreeze = {n_layers}: the backbone {backbone.name!r} has {total} layers; "
            f"choose a value from 1 to {total}"
        )


def unfreeze_top(model: keras.Model, n_layers: int) -> list[str]:
    """Make the top `n_layers` backbone layers trainable, except BatchNormalization.

    Every Keras layer counts (convolutions, activations, padding), as in
    `backbone.layers[-n_layers:]`. Returns the names of the layers with weights
    that became trainable.
    """
    check_unfreeze(model, n_layers)
    backbone = find_backbone(model)
    total = len(backbone.layers)

    backbone.trainable = True
    unfrozen = []
    for index, layer in enumerate(backbone.layers):
        in_top = index >= total - n_layers
        keep_frozen = isinstance(layer, layers.BatchNormalization)
        layer.trainable = in_top and not keep_frozen
        if layer.trainable and layer.weights:
            unfrozen.append(layer.name)
    return unfrozen


def build_augmentation(params: AugmentParams, seed: int) -> keras.Sequential | None:
    """Build the training-only augmentation for raw RGB in [0, 255], or None if all are off.

    Each layer gets its own seed: with one shared seed the layers draw the same
    random numbers, so, for example, every flipped image would also be darkened.
    """
    steps: list[layers.Layer] = []
    if params.flip != "none":
        steps.append(layers.RandomFlip(params.flip, seed=seed))
    if params.rotation > 0:
        steps.append(layers.RandomRotation(params.rotation, seed=seed + 1))
    if params.zoom > 0:
        steps.append(layers.RandomZoom(params.zoom, seed=seed + 2))
    if params.brightness > 0:
        steps.append(
            layers.RandomBrightness(params.brightness, value_range=(0, 255), seed=seed + 3)
        )
    if params.contrast > 0:
        steps.append(layers.RandomContrast(params.contrast, value_range=(0, 255), seed=seed + 4))

    if not steps:
        return None
    return keras.Sequential(steps, name="augmentation")


def predict_probabilities(model: keras.Model, dataset) -> np.ndarray:
    """Run the model and return class probabilities of shape (n, n_classes).

    A sigmoid head's single output p becomes the two columns [1 - p, p].
    """
    probabilities = model.predict(dataset, verbose=0)
    if probabilities.shape[-1] == 1:
        positive = probabilities[:, 0]
        probabilities = np.stack([1.0 - positive, positive], axis=1)
    return probabilities
