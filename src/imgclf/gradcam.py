"""Grad-CAM heat maps: where in an image the backbone's features drove a class score.

The classifier wraps its keras.applications backbone as one nested functional
model. A gradient model cut from the outer model at a backbone layer fails with
"Graph disconnected", because the nested model's layers belong to its own
graph. So the classifier is split into three parts instead. The layers before
the backbone do the preprocessing. A gradient model is built from the
backbone's own inputs and outputs. The head layers are applied to the
backbone's feature map inside a GradientTape.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from imgclf.errors import StageError
from imgclf.model import find_backbone


class GradCam:
    """Grad-CAM for a classifier built by `imgclf.model.build_classifier`.

    The class score is the classifier's logit, before softmax or sigmoid,
    because a probability near 1 has almost no gradient. For a sigmoid head,
    the logit of the second class is z and that of the first class is -z.
    """

    def __init__(self, model: keras.Model):
        backbone = find_backbone(model)
        chain = [layer for layer in model.layers if not isinstance(layer, layers.InputLayer)]
        position = chain.index(backbone)
        self.before = chain[:position]
        self.after = chain[position + 1:]
        self.features_model = keras.Model(
            backbone.inputs, backbone.outputs, name=f"{backbone.name}_features"
        )

        self.classifier = self.after[-1] if self.after else None
        if not isinstance(self.classifier, layers.Dense):
            raise StageError(
                f"model {model.name!r} does not end in a Dense classifier layer, so Grad-CAM "
                "cannot find its logits; was it built by imgclf.model.build_classifier?"
            )

    def features(self, images) -> tf.Tensor:
        """Return the backbone's feature map, (n, h, w, channels), for raw RGB images."""
        x = tf.convert_to_tensor(images, dtype=tf.float32)  # (n, size, size, 3) in [0, 255]
        for layer in self.before:
            x = layer(x)
        return self.features_model(x, training=False)

    def logits(self, features) -> tf.Tensor:
        """Return the class logits, (n, n_classes), from a feature map."""
        x = features
        for layer in self.after[:-1]:
            x = layer(x, training=False)  # pooling and dropout: (n, channels)
        z = tf.matmul(x, self.classifier.kernel) + self.classifier.bias  # (n, units)
        if z.shape[-1] == 1:
            z = tf.concat([-z, z], axis=1)  # (n, 2): sigmoid(-z) and sigmoid(z)
        return z

    def probabilities(self, images) -> np.ndarray:
        """Return class probabilities, (n, n_classes), through the split model."""
        return tf.nn.softmax(self.logits(self.features(images)), axis=1).numpy()

    def heatmaps(self, images, class_ids: np.ndarray) -> np.ndarray:
        """Return one heat map per image for its class in `class_ids`, (n, h, w) in [0, 1].

        h and w are the feature map's size, e.g. 7 x 7 for MobileNetV2 at 224
        pixels; `upsample` scales the maps to the image size. A map is all
        zeros where no location raises the class score.
        """
        features = self.features(images)  # (n, h, w, channels)
        with tf.GradientTape() as tape:
            tape.watch(features)
            logits = self.logits(features)  # (n, n_classes)
            scores = tf.gather(logits, class_ids, axis=1, batch_dims=1)  # (n,)
        gradients = tape.gradient(scores, features)  # (n, h, w, channels)

        channel_weights = tf.reduce_mean(gradients, axis=(1, 2))  # (n, channels)
        maps = tf.nn.relu(tf.einsum("nhwc,nc->nhw", features, channel_weights))  # (n, h, w)
        peaks = tf.reduce_max(maps, axis=(1, 2), keepdims=True)  # (n, 1, 1)
        return tf.math.divide_no_nan(maps, peaks).numpy()


def upsample(heatmaps: np.ndarray, size: int) -> np.ndarray:
    """Resize heat maps from (n, h, w) to (n, size, size) bilinearly."""
    resized = tf.image.resize(heatmaps[..., np.newaxis], (size, size), method="bilinear")
    return np.clip(resized.numpy()[..., 0], 0.0, 1.0)
