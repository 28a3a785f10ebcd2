"""tf.data input pipelines over manifests of prepared JPEGs."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from imgclf.errors import StageError
from imgclf.manifest import Entry


def label_ids(entries: list[Entry], classes: list[str]) -> np.ndarray:
    """Map labels to class ids; raise StageError for a label the model was not trained on."""
    index = {name: i for i, name in enumerate(classes)}
    unknown = sorted({entry.label for entry in entries} - index.keys())
    if unknown:
        raise StageError(
            f"labels {unknown} are not among the training classes {classes}; "
            "every class must appear in the train split"
        )
    return np.array([index[entry.label] for entry in entries], dtype=np.int32)


def make_dataset(
    entries: list[Entry],
    classes: list[str],
    *,
    image_size: int,
    batch_size: int,
    sigmoid_head: bool = False,
    shuffle_seed: int | None = None,
    augmentation: keras.Sequential | None = None,
) -> tf.data.Dataset:
    """Build a batched dataset of (images, labels).

    images: (batch, image_size, image_size, 3) float32 RGB in [0, 255].
    labels: (batch,) int32 class ids, or (batch, 1) float32 for a sigmoid head.
    Decoded images are cached in memory after the first epoch. With
    `shuffle_seed`, the order changes every epoch; `augmentation` runs on
    batches and belongs to the training set only.
    """
    ids = label_ids(entries, classes)
    paths = [entry.path for entry in entries]

    def load(path, label):
        # INTEGER_ACCURATE is libjpeg's default DCT, the one Pillow uses, so training sees
        # the pixels that evaluate, `imgclf predict` and the service see. TensorFlow's
        # default, INTEGER_FAST, differs by up to about 17 levels.
        image = tf.io.decode_jpeg(tf.io.read_file(path), channels=3, dct_method="INTEGER_ACCURATE")
        image = tf.ensure_shape(image, (image_size, image_size, 3))  # prepare resized it
        if sigmoid_head:
            label = tf.cast(tf.reshape(label, (1,)), tf.float32)
        return image, label

    dataset = tf.data.Dataset.from_tensor_slices((paths, ids))
    dataset = dataset.map(load, num_parallel_calls=tf.data.AUTOTUNE).cache()
    if shuffle_seed is not None:
        dataset = dataset.shuffle(len(paths), seed=shuffle_seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size)
    dataset = dataset.map(
        lambda images, labels: (tf.cast(images, tf.float32), labels),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    if augmentation is not None:
        dataset = dataset.map(
            lambda images, labels: (augmentation(images, training=True), labels),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    return dataset.prefetch(tf.data.AUTOTUNE)
