"""The feature cache: where the backbone is cut, and models on cached activations equal the full model."""

import json

import keras
import numpy as np
import pytest
from PIL import Image

from conftest import write_class_images
from helpers import (
    TINY_PARAMS, copy_project, init_git, keras_home, run_stage, run_stages, set_params,
)
from imgclf.config import ModelParams
from imgclf.errors import StageError
from imgclf.features import (
    ViewBatches, block_boundaries, build_extractor, check_meta, find_cut, head_on_pooled,
    kept_rows, to_storage, top_on_cut,
)
from imgclf.manifest import Entry
from imgclf.model import build_classifier, find_backbone, unfreeze_top
from imgclf.train import compile_classifier, make_optimizer

# A randomly initialized MobileNetV2 gives the same output for every image, so the
# comparisons below would prove nothing. Its smallest ImageNet weights are used instead.
SIZE = 224
MODEL = ModelParams(
    backbone="mobilenet_v2", alpha=0.35, weights="imagenet", head="softmax",
    dropout=0.2, l1=0.0, l2=0.0,
)
WEIGHTS = "models/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"
needs_weights = pytest.mark.skipif(
    not (keras_home() / WEIGHTS).is_file(), reason=f"the Keras cache lacks {WEIGHTS}"
)


def residual_model() -> keras.Model:
    """input -> a -> b -> add(a, b) -> c: a single tensor crosses after a and after add."""
    inputs = keras.Input((4,), name="input")
    a = keras.layers.Dense(4, name="a")(inputs)
    b = keras.layers.Dense(4, name="b")(a)
    added = keras.layers.Add(name="add")([a, b])
    outputs = keras.layers.Dense(2, name="c")(added)
    return keras.Model(inputs, outputs)


def test_boundaries_skip_the_inside_of_a_residual_block():
    model = residual_model()
    names = [model.layers[i].name for i in block_boundaries(model)]
    assert names == ["input", "a", "add"]


@pytest.fixture(scope="module")
def classifier():
    if not (keras_home() / WEIGHTS).is_file():
        pytest.skip(f"the Keras cache lacks {WEIGHTS}")
    keras.utils.set_random_seed(0)
    return build_classifier(MODEL, image_size=SIZE, n_classes=3)


def test_cut_is_the_nearest_boundary_for_every_unfreeze(classifier):
    backbone = find_backbone(classifier)
    total = len(backbone.layers)
    boundaries = block_boundaries(backbone)

    for unfreeze in range(1, total):
        cut = find_cut(backbone, unfreeze)
        expected = total - unfreeze - 1
        assert cut.index in boundaries
        assert abs(cut.index - expected) == min(abs(b - expected) for b in boundaries)
        assert cut.trainable_layers == total - 1 - cut.index


def test_cut_inside_residual_block_moves(classifier):
    backbone = find_backbone(classifier)
    total = len(backbone.layers)
    inside = total - 1 - [layer.name for layer in backbone.layers].index("block_15_project")

    cut = find_cut(backbone, inside)

    assert cut.layer in ("block_14_add", "block_15_add")
    assert "nearest block boundary" in cut.describe()


@pytest.mark.parametrize("unfreeze", [0, 10_000])
def test_cut_out_of_range_names_limit(classifier, unfreeze):
    total = len(find_backbone(classifier).layers)
    with pytest.raises(StageError, match=rf"finetune.unfreeze = {unfreeze}.*1 to {total - 1}"):
        find_cut(find_backbone(classifier), unfreeze)


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (n, SIZE, SIZE, 3)).astype(np.float32)


@pytest.mark.parametrize("unfreeze", [10, 30, 60])
def test_models_on_the_cache_equal_the_full_model(classifier, unfreeze):
    cut = find_cut(find_backbone(classifier), unfreeze)
    batch = images(6)

    cut_activation, pooled = build_extractor(classifier, cut).predict(batch, verbose=0)
    full = classifier.predict(batch, verbose=0)

    assert full.std(axis=0).max() > 0.01  # the images get different probabilities
    np.testing.assert_allclose(head_on_pooled(classifier).predict(pooled, verbose=0), full,
                               atol=1e-5)
    np.testing.assert_allclose(
        top_on_cut(classifier, cut).predict(cut_activation, verbose=0), full, atol=1e-5
    )


def test_float16_cache_changes_probabilities_little(classifier):
    cut = find_cut(find_backbone(classifier), 30)
    cut_activation, _ = build_extractor(classifier, cut).predict(images(6), verbose=0)
    top = top_on_cut(classifier, cut)

    exact = top.predict(cut_activation, verbose=0)
    stored = top.predict(to_storage(cut_activation, "float16").astype(np.float32), verbose=0)

    np.testing.assert_allclose(stored, exact, atol=2e-3)


@needs_weights
def test_training_the_top_trains_the_saved_classifier(tmp_path):
    keras.utils.set_random_seed(1)
    model = build_classifier(MODEL, image_size=SIZE, n_classes=2)
    cut = find_cut(find_backbone(model), 30)
    batch = images(8, seed=2)
    cut_activation, _ = build_extractor(model, cut).predict(batch, verbose=0)
    before = model.predict(batch, verbose=0)

    unfreeze_top(model, cut.trainable_layers)
    top = top_on_cut(model, cut)
    compile_classifier(top, make_optimizer("adam", 0.01))
    top.fit(cut_activation, np.array([0, 1] * 4), epochs=2, verbose=0)
    model.save(tmp_path / "model.keras")
    reloaded = keras.models.load_model(tmp_path / "model.keras")

    after = reloaded.predict(batch, verbose=0)
    assert np.abs(after - before).max() > 1e-3  # fine-tuning changed the classifier
    np.testing.assert_allclose(top.predict(cut_activation, verbose=0), after, atol=1e-5)


def test_float16_overflow_names_the_fix():
    with pytest.raises(StageError, match="set features.dtype to float32"):
        to_storage(np.array([1.0, 70_000.0]), "float16")
    assert to_storage(np.array([1.0, 70_000.0]), "float32").dtype == np.float32


def test_view_batches_draw_views_per_epoch():
    views, n = 3, 10
    # Each value encodes its view and row: 100 * view + row.
    features = (100 * np.arange(views)[:, None] + np.arange(n)[None, :]).astype(np.float16)[..., None]
    batches = ViewBatches(features, np.arange(n), batch_size=4, seed=0, shuffle=True,
                          rows=np.arange(1, n))

    seen_views = set()
    for _ in range(5):
        values = np.concatenate([batches[i][0][:, 0] for i in range(len(batches))])
        labels = np.concatenate([batches[i][1] for i in range(len(batches))])
        assert sorted(labels) == list(range(1, n))  # every kept row once; row 0 excluded
        np.testing.assert_array_equal(values % 100, labels)  # features match their labels
        seen_views |= set((values // 100).astype(int))
        batches.on_epoch_end()
    assert seen_views == {0, 1, 2}

    ordered = ViewBatches(features, np.arange(n), batch_size=4, seed=0, shuffle=False)
    assert [float(v) for v in ordered[0][0][:, 0]] == [0, 1, 2, 3]  # view 0, manifest order


def test_view_batches_reject_a_cache_of_other_size():
    with pytest.raises(StageError, match="8 rows but the manifest lists 9"):
        ViewBatches(np.zeros((1, 8, 2)), np.zeros(9), batch_size=2, seed=0, shuffle=False)


def test_kept_rows_leave_out_excluded_paths():
    entries = [Entry(f"data/prepared/images/cats/{i}.jpg", "cats") for i in range(4)]
    assert list(kept_rows(entries, ["data/prepared/images/cats/2.jpg"])) == [0, 1, 3]


def test_kept_rows_reject_excluding_everything():
    entries = [Entry(f"data/prepared/images/cats/{i}.jpg", "cats") for i in range(2)]
    with pytest.raises(StageError, match="lists all 2 images of a split"):
        kept_rows(entries, [entry.path for entry in entries])


def test_stale_cache_explained(tmp_path):
    manifest = tmp_path / "train.csv"
    manifest.write_text("path,label\na.jpg,cats\n")
    meta = {"backbone": "mobilenet_v2", "splits": {"train": {"manifest_sha256": "0" * 64}}}

    with pytest.raises(StageError) as error:
        check_meta(meta, {"backbone": "resnet50"}, {"train": manifest})

    message = str(error.value)
    assert "backbone is 'mobilenet_v2' in the cache but 'resnet50' now" in message
    assert "train.csv changed after the cache was built" in message
    assert "dvc repro" in message


# --- The stages on generated images ---------------------------------------------------------


@pytest.fixture
def split_project(tmp_path):
    source = write_class_images(tmp_path / "images", {"cats": 12, "dogs": 12}, size=40)
    project = copy_project(tmp_path / "project")
    set_params(project, **TINY_PARAMS, **{"data.source": str(source), "features.train_views": 3})
    init_git(project, commit=True)
    run_stages(project, ["fetch", "prepare", "split"])
    return project


def test_features_stage_caches_every_split(split_project):
    project = split_project
    result = run_stage(project, "features")
    assert result.returncode == 0, result.output

    folder = project / "data" / "features"
    meta = json.loads((folder / "meta.json").read_text())
    rows = {split: len((project / "data" / "split" / f"{split}.csv").read_text().splitlines()) - 1
            for split in ("train", "val", "test")}
    assert meta["cut_layer"] in result.output
    for split, views in (("train", 3), ("val", 1), ("test", 1)):
        pooled = np.load(folder / f"{split}.pooled.npy")
        cut = np.load(folder / f"{split}.cut.npy")
        assert pooled.shape == (views, rows[split], *meta["pooled_shape"])
        assert cut.shape == (views, rows[split], *meta["cut_shape"])
        assert pooled.dtype == np.float16
    assert "images/s" in result.output


def test_cut_at_the_input_caches_the_preprocessed_images(split_project):
    project = split_project
    # The whole tiny MobileNetV2 (154 layers with its input) is fine-tuned, so the
    # cached activation is the preprocessed image itself.
    set_params(project, **{"finetune.unfreeze": 153, "features.dtype": "float32"})

    result = run_stage(project, "features")
    assert result.returncode == 0, result.output

    train = np.load(project / "data" / "features" / "train.cut.npy")
    first = (project / "data" / "split" / "train.csv").read_text().splitlines()[1].split(",")[0]
    pixels = np.asarray(Image.open(project / first), dtype=np.float32)
    np.testing.assert_allclose(train[0, 0], pixels / 127.5 - 1, atol=1e-6)  # view 0: as prepared
    assert np.abs(train[1] - train[0]).mean() > 0.01  # augmented views differ from the image
    assert np.abs(train[2] - train[1]).mean() > 0.01  # and from each other


def test_train_head_without_features_explains(split_project):
    result = run_stage(split_project, "train_head")

    assert result.returncode == 1
    assert "dvc repro features" in result.output
    assert "Traceback" not in result.output


def test_unknown_excluded_path_stops_training(split_project):
    set_params(split_project, **{"audit.exclude": ["data/prepared/images/cats/nope.jpg"]})
    assert run_stage(split_project, "features").returncode == 0

    result = run_stage(split_project, "train_head")

    assert result.returncode == 1
    assert "audit.exclude lists 1 path(s)" in result.output
    assert "nope.jpg" in result.output


def test_excluded_images_left_out_of_training(split_project):
    project = split_project
    train = (project / "data" / "split" / "train.csv").read_text().splitlines()[1:]
    test = (project / "data" / "split" / "test.csv").read_text().splitlines()[1:]
    excluded = [train[0].split(",")[0], test[0].split(",")[0]]
    set_params(project, **{"audit.exclude": excluded})
    assert run_stage(project, "features").returncode == 0

    result = run_stage(project, "train_head")

    assert result.returncode == 0, result.output
    assert f"cached features of {len(train) - 1} images" in result.output
    assert "1 left out by audit.exclude" in result.output  # the test split is never filtered
