from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from conftest import write_class_images
from imgclf.data import label_ids, make_dataset
from imgclf.errors import StageError
from imgclf.inference import image_array
from imgclf.manifest import Entry, class_names


def entries_for(root) -> list[Entry]:
    return [
        Entry(str(path), path.parent.name) for path in sorted(root.rglob("*.jpg"))
    ]


def test_dataset_shapes_and_dtypes(tmp_path):
    entries = entries_for(write_class_images(tmp_path, {"cats": 5, "dogs": 4}, size=32))
    classes = class_names(entries)

    batches = list(make_dataset(entries, classes, image_size=32, batch_size=4))

    images, labels = batches[0]
    assert images.shape == (4, 32, 32, 3)
    assert images.dtype.name == "float32"
    assert labels.dtype.name == "int32"
    assert sum(len(b[1]) for b in batches) == 9
    assert float(images.numpy().max()) > 1.0  # raw [0, 255] pixels, not rescaled


def test_sigmoid_labels_are_float_columns(tmp_path):
    entries = entries_for(write_class_images(tmp_path, {"cats": 2, "dogs": 2}, size=32))

    _, labels = next(iter(make_dataset(
        entries, ["cats", "dogs"], image_size=32, batch_size=4, sigmoid_head=True
    )))

    assert labels.shape == (4, 1)
    assert labels.dtype.name == "float32"
    assert sorted(labels.numpy()[:, 0].tolist()) == [0.0, 0.0, 1.0, 1.0]


def test_shuffle_changes_order_each_epoch(tmp_path):
    entries = entries_for(write_class_images(tmp_path, {"cats": 10, "dogs": 10}, size=32))
    dataset = make_dataset(entries, ["cats", "dogs"], image_size=32, batch_size=20, shuffle_seed=1)

    first = next(iter(dataset))[0].numpy()
    second = next(iter(dataset))[0].numpy()

    assert not np.array_equal(first, second)
    np.testing.assert_array_equal(np.sort(first.sum(axis=(1, 2, 3))), np.sort(second.sum(axis=(1, 2, 3))))


def test_wrong_image_size_fails(tmp_path):
    entries = entries_for(write_class_images(tmp_path, {"cats": 1, "dogs": 1}, size=40))
    with pytest.raises(tf.errors.InvalidArgumentError, match="40"):
        list(make_dataset(entries, ["cats", "dogs"], image_size=32, batch_size=2))


def test_unknown_label_rejected():
    with pytest.raises(StageError, match=r"\['birds'\] are not among the training classes"):
        label_ids([Entry("x.jpg", "birds")], ["cats", "dogs"])


def test_training_pixels_match_prediction_pixels(tmp_path):
    # Noisy JPEGs, where TensorFlow's default fast DCT and libjpeg's accurate one differ.
    entries = entries_for(write_class_images(tmp_path, {"cats": 3, "dogs": 3}, size=48))
    classes = class_names(entries)

    batches = make_dataset(entries, classes, image_size=48, batch_size=len(entries))
    trained_on = next(iter(batches))[0].numpy()  # (6, 48, 48, 3)

    served = np.stack([image_array(Path(e.path).read_bytes(), 48) for e in entries])
    np.testing.assert_array_equal(trained_on, served)
