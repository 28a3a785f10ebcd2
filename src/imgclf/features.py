"""Cached backbone activations: computed once by the features stage, read by training.

The frozen backbone is split at a block boundary near where fine-tuning starts:

    image (size, size, 3) -> Preprocess -> bottom -> cut (h, w, c) -> top -> pool -> pooled (C,)

train_head trains the head on `pooled`; finetune trains `top` and the head on
`cut`. Both arrays are stored per split with a leading view axis, row i being
row i of the split's manifest:

    data/features/{split}.pooled.npy  (views, n, C)
    data/features/{split}.cut.npy     (views, n, h, w, c)

Train has `features.train_views` views (view 0 is the image itself, the rest
are augmented); val and test have one. `meta.json` records what produced the
arrays, and `backbone.weights.h5` the exact backbone weights, so that the
models trained on the cache are built around the backbone that computed it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from numpy.lib.format import open_memmap

from imgclf import config
from imgclf.data import label_ids, make_dataset
from imgclf.errors import StageError
from imgclf.manifest import Entry
from imgclf.model import find_backbone

META_FILE = "meta.json"
BACKBONE_WEIGHTS = "backbone.weights.h5"
KINDS = ("pooled", "cut")


def array_path(folder: Path, split: str, kind: str) -> Path:
    return folder / f"{split}.{kind}.npy"


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- Where the backbone is cut -------------------------------------------------------------


@dataclass(frozen=True)
class Cut:
    """A position in the backbone's layer list that a single tensor crosses."""

    index: int  # of the last frozen layer; its output is the cached activation
    layer: str  # that layer's name
    requested: int  # finetune.unfreeze
    trainable_layers: int  # layers above the cut, which fine-tuning may train

    def describe(self) -> str:
        return (
            f"finetune.unfreeze = {self.requested} cut at '{self.layer}', the nearest block "
            f"boundary; the {self.trainable_layers} layers above it are fine-tuned"
        )


def _parents(layer: keras.layers.Layer) -> list[keras.layers.Layer]:
    """Return the layers whose outputs `layer` takes as input in the backbone's graph."""
    nodes = layer._inbound_nodes
    if not nodes:
        return []
    return [tensor._keras_history.operation for tensor in nodes[0].input_tensors]


def block_boundaries(backbone: keras.Model) -> list[int]:
    """Indices i where only layer i's output is used by layers after i.

    These are the places where the backbone can be cut into bottom and top
    with one tensor between them: between residual blocks, never inside one.
    """
    layers = backbone.layers
    position = {id(layer): index for index, layer in enumerate(layers)}
    last_use = [-1] * len(layers)
    for index, layer in enumerate(layers):
        for parent in _parents(layer):
            last_use[position[id(parent)]] = index

    boundaries = []
    open_outputs: set[int] = set()  # layers at or before i whose output is used after i
    for index in range(len(layers) - 1):
        open_outputs.add(index)
        open_outputs = {j for j in open_outputs if last_use[j] > index}
        if open_outputs == {index}:
            boundaries.append(index)
    return boundaries


def find_cut(backbone: keras.Model, unfreeze: int) -> Cut:
    """Cut at the block boundary nearest to where `unfreeze` top layers begin.

    Ties go to the higher boundary, which leaves fewer layers to train.
    """
    total = len(backbone.layers)
    if not 1 <= unfreeze < total:
        raise StageError(
            f"finetune.unfreeze = {unfreeze}: the backbone {backbone.name!r} has {total} layers, "
            f"including its input; choose a value from 1 to {total - 1}"
        )
    last_frozen = total - unfreeze - 1
    index = min(block_boundaries(backbone), key=lambda i: (abs(i - last_frozen), -i))
    return Cut(
        index=index,
        layer=backbone.layers[index].name,
        requested=unfreeze,
        trainable_layers=total - 1 - index,
    )


# --- Models around the cut ---------------------------------------------------------------


def backbone_top(backbone: keras.Model, cut: Cut) -> keras.Model:
    """Build the backbone above the cut: (batch, h, w, c) -> (batch, H, W, channels).

    It shares its layers, and so its weights, with `backbone`.
    """
    cut_output = backbone.layers[cut.index].output
    return keras.Model(cut_output, backbone.output, name=f"{backbone.name}_top")


def build_extractor(classifier: keras.Model, cut: Cut) -> keras.Model:
    """Build the extractor: raw RGB (batch, size, size, 3) -> [cut, pooled].

    cut: (batch, h, w, c) at the cut layer; pooled: (batch, C) after pooling.
    """
    backbone = find_backbone(classifier)
    bottom = keras.Model(backbone.input, backbone.layers[cut.index].output)
    images = keras.Input(shape=classifier.input_shape[1:], name="image")
    x = classifier.get_layer("preprocess")(images)
    cut_activation = bottom(x, training=False)
    top = backbone_top(backbone, cut)(cut_activation, training=False)
    pooled = classifier.get_layer("pool")(top)
    return keras.Model(images, [cut_activation, pooled], name="extractor")


def head_on_pooled(classifier: keras.Model) -> keras.Model:
    """Build the classifier's head alone: pooled (batch, C) -> probabilities.

    Training it trains the classifier's own head layers.
    """
    pooled = keras.Input(shape=classifier.get_layer("pool").output.shape[1:], name="pooled")
    x = classifier.get_layer("dropout")(pooled)
    outputs = classifier.get_layer("classifier")(x)
    return keras.Model(pooled, outputs, name="head_on_pooled")


def top_on_cut(classifier: keras.Model, cut: Cut) -> keras.Model:
    """Build the classifier above the cut: activation (batch, h, w, c) -> probabilities.

    BatchNormalization runs in inference mode, as in the full classifier.
    """
    backbone = find_backbone(classifier)
    top = backbone_top(backbone, cut)
    activation = keras.Input(shape=top.input_shape[1:], name="cut_activation")
    x = top(activation, training=False)
    x = classifier.get_layer("pool")(x)
    x = classifier.get_layer("dropout")(x)
    outputs = classifier.get_layer("classifier")(x)
    return keras.Model(activation, outputs, name="top_on_cut")


# --- Writing the cache -------------------------------------------------------------------


FLOAT16_MAX = float(np.finfo(np.float16).max)


def to_storage(values: np.ndarray, dtype: str) -> np.ndarray:
    """Cast activations for storage; raise StageError if float16 cannot hold them."""
    if dtype == "float16":
        largest = float(np.abs(values).max(initial=0.0))
        if not largest < FLOAT16_MAX:
            raise StageError(
                f"an activation of {largest:g} is beyond float16's range (+-{FLOAT16_MAX:g}); "
                "set features.dtype to float32"
            )
    return values.astype(dtype)


def _augmented(dataset: tf.data.Dataset, augmentation: keras.Sequential) -> tf.data.Dataset:
    def augment(images, labels):
        return augmentation(images, training=True), labels

    return dataset.map(augment, num_parallel_calls=tf.data.AUTOTUNE)


def write_split(
    extractor: keras.Model,
    entries: list[Entry],
    classes: list[str],
    *,
    folder: Path,
    split: str,
    augmentations: list[keras.Sequential | None],
    image_size: int,
    batch_size: int,
    dtype: str,
    chunk: int = 1024,
) -> None:
    """Write `split`'s pooled and cut arrays, one view per entry of `augmentations`.

    Images are decoded once per chunk of `chunk` images and reused by every view,
    so memory contains one chunk of decoded images and its activations at a time.
    """
    n, views = len(entries), len(augmentations)
    cut_shape, pooled_shape = (tuple(output.shape[1:]) for output in extractor.outputs)
    files = {
        "cut": open_memmap(array_path(folder, split, "cut"), "w+", dtype, (views, n, *cut_shape)),
        "pooled": open_memmap(
            array_path(folder, split, "pooled"), "w+", dtype, (views, n, *pooled_shape)
        ),
    }
    for start in range(0, n, chunk):
        part = entries[start : start + chunk]
        images = make_dataset(part, classes, image_size=image_size, batch_size=batch_size)
        for view, augmentation in enumerate(augmentations):
            data = images if augmentation is None else _augmented(images, augmentation)
            cut, pooled = extractor.predict(data, verbose=0)
            files["cut"][view, start : start + len(part)] = to_storage(cut, dtype)
            files["pooled"][view, start : start + len(part)] = to_storage(pooled, dtype)
    for array in files.values():
        array.flush()


# --- Reading the cache -------------------------------------------------------------------


def read_meta(folder: Path) -> dict:
    path = folder / META_FILE
    if not path.is_file():
        raise StageError(f"{path} not found; run `dvc repro features` to build the feature cache")
    return json.loads(path.read_text(encoding="utf-8"))


def check_meta(meta: dict, expected: dict[str, object], manifests: dict[str, Path]) -> None:
    """Raise StageError when the cache was built from other settings or other manifests."""
    stale = [
        f"{key} is {meta.get(key)!r} in the cache but {value!r} now"
        for key, value in expected.items()
        if meta.get(key) != value
    ]
    for split, manifest in manifests.items():
        recorded = meta.get("splits", {}).get(split, {}).get("manifest_sha256")
        if recorded != file_sha256(manifest):
            stale.append(f"{manifest} changed after the cache was built")
    if stale:
        raise StageError(
            "the feature cache in data/features is out of date: " + "; ".join(stale)
            + "; run `dvc repro` (or `dvc repro features`) to rebuild it"
        )


def load_array(folder: Path, split: str, kind: str) -> np.ndarray:
    """Memory-map one cached array; see the module docstring for its shape."""
    path = array_path(folder, split, kind)
    if not path.is_file():
        raise StageError(f"{path} not found; run `dvc repro features` to build the feature cache")
    return np.load(path, mmap_mode="r")


class ViewBatches(keras.utils.PyDataset):
    """Batches of (cached features, labels) for Keras `fit`.

    Each epoch draws one view per image at random (or always view 0 with
    `shuffle=False`) and, with `shuffle`, a new order of the images.
    features: (views, n, ...) array; labels: (n,) int class ids, or (n, 1)
    floats for a sigmoid head. `rows` limits the batches to those images.
    """

    def __init__(
        self,
        features: np.ndarray,
        labels: np.ndarray,
        *,
        batch_size: int,
        seed: int,
        shuffle: bool,
        rows: np.ndarray | None = None,
    ):
        super().__init__()
        if features.shape[1] != len(labels):
            raise StageError(
                f"the feature cache has {features.shape[1]} rows but the manifest lists "
                f"{len(labels)} images; run `dvc repro features` to rebuild it"
            )
        self.features = features
        self.labels = labels
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.rows = np.arange(len(labels)) if rows is None else np.asarray(rows)
        self._rng = np.random.default_rng(seed)
        self._draw()

    def _draw(self) -> None:
        n_views = self.features.shape[0]
        if self.shuffle:
            self.order = self._rng.permutation(self.rows)
            self.views = self._rng.integers(0, n_views, size=len(self.order))
        else:
            self.order = self.rows
            self.views = np.zeros(len(self.order), dtype=np.int64)

    def __len__(self) -> int:
        return -(-len(self.order) // self.batch_size)

    def __getitem__(self, index: int):
        batch = slice(index * self.batch_size, (index + 1) * self.batch_size)
        rows, views = self.order[batch], self.views[batch]
        # Sorted reads are faster from a memory-mapped file; the batch order does not matter.
        sort = np.lexsort((rows, views))
        rows, views = rows[sort], views[sort]
        features = np.asarray(self.features[views, rows], dtype=np.float32)
        return features, self.labels[rows]

    def on_epoch_end(self) -> None:
        self._draw()


def labels_for(entries: list[Entry], classes: list[str], *, sigmoid_head: bool) -> np.ndarray:
    """Class ids (n,) int32, or (n, 1) float32 targets for a sigmoid head."""
    ids = label_ids(entries, classes)
    return ids.astype(np.float32)[:, None] if sigmoid_head else ids


def check_exclusions(exclude: list[str], manifests: dict[str, list[Entry]]) -> None:
    """Raise StageError for an excluded path that no split lists."""
    listed = {entry.path for entries in manifests.values() for entry in entries}
    unknown = [path for path in exclude if path not in listed]
    if unknown:
        raise StageError(
            f"audit.exclude lists {len(unknown)} path(s) that no split manifest has, e.g. "
            f"{unknown[0]!r}; copy paths from metrics/audit.json (data/prepared/images/...)"
        )


def kept_rows(entries: list[Entry], exclude: list[str]) -> np.ndarray:
    """Indices of the entries that `exclude` does not list."""
    excluded = set(exclude)
    rows = [i for i, entry in enumerate(entries) if entry.path not in excluded]
    if not rows:
        raise StageError(
            f"audit.exclude lists all {len(entries)} images of a split, which leaves nothing "
            "to train or validate on; remove some paths from audit.exclude"
        )
    return np.array(rows, dtype=np.int64)


def training_batches(
    kind: str,
    entries: dict[str, list[Entry]],
    classes: list[str],
    *,
    sigmoid_head: bool,
    batch_size: int,
    seed: int,
    exclude: list[str],
) -> dict[str, ViewBatches]:
    """Build the train (shuffled, one random view) and val (view 0) batches of one cached kind.

    Images that `exclude` lists are left out of both splits.
    """
    return {
        split: ViewBatches(
            load_array(config.FEATURES_DIR, split, kind),
            labels_for(entries[split], classes, sigmoid_head=sigmoid_head),
            batch_size=batch_size, seed=seed, shuffle=split == "train",
            rows=kept_rows(entries[split], exclude),
        )
        for split in ("train", "val")
    }
