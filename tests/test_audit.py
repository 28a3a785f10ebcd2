"""The data audit: planted mislabels and outliers in synthetic pooled features, and the stage."""

import csv
import hashlib
import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import PROJECT_ROOT, copy_project, run_stage, set_params
from imgclf import audit
from imgclf.errors import StageError

CLASSES = ["birds", "cats", "dogs"]
DIMS = 48  # channels of the synthetic pooled features
BLOCK = 8  # channels that each class, and each odd image, is strong in
THRESHOLD = 4.5  # audit.outlier_threshold in params.yaml


def clustered(rng: np.random.Generator, per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (features (n, DIMS), label ids (n,)): one cluster per class, non-negative like ReLU outputs."""
    centers = np.full((len(CLASSES), DIMS), 0.2)
    for class_id in range(len(CLASSES)):
        centers[class_id, class_id * BLOCK:(class_id + 1) * BLOCK] = 2.0
    label_ids = np.repeat(np.arange(len(CLASSES)), per_class)
    features = np.abs(centers[label_ids] + rng.normal(0, 0.25, (len(label_ids), DIMS)))
    return features, label_ids


def odd_rows(rng: np.random.Generator, count: int) -> np.ndarray:
    """Return (count, DIMS) features strong in channels that no class uses, each in its own block."""
    first_free = len(CLASSES) * BLOCK
    assert first_free + count * BLOCK <= DIMS
    features = np.full((count, DIMS), 0.2)
    for row in range(count):
        start = first_free + row * BLOCK
        features[row, start:start + BLOCK] = 2.0
    return np.abs(features + rng.normal(0, 0.25, features.shape))


def planted(seed: int = 0, per_class: int = 40):
    """Return (features, label ids, mislabelled rows, outlier rows) of a synthetic data set.

    Rows 3, 45 and 90 carry the label of the next class; the last three rows
    are odd images labelled birds, cats and dogs.
    """
    rng = np.random.default_rng(seed)
    features, label_ids = clustered(rng, per_class)
    mislabelled = np.array([3, per_class + 5, 2 * per_class + 10])
    label_ids[mislabelled] = (label_ids[mislabelled] + 1) % len(CLASSES)
    odd = odd_rows(rng, 3)
    outliers = np.arange(len(features), len(features) + len(odd))
    return (
        np.concatenate([features, odd]), np.concatenate([label_ids, np.arange(3)]),
        mislabelled, outliers,
    )


def audited_images(label_ids: np.ndarray) -> audit.AuditedImages:
    splits = ["train" if i % 3 else "test" for i in range(len(label_ids))]
    return audit.AuditedImages(
        paths=[f"data/prepared/images/{CLASSES[c]}/img_{i:03d}.jpg" for i, c in enumerate(label_ids)],
        splits=splits, label_ids=label_ids, classes=CLASSES,
    )


def run_audit(features, label_ids, *, folds=5, confidence=0.9, threshold=THRESHOLD) -> dict:
    images = audited_images(label_ids)
    fit = audit.out_of_fold_probabilities(features, label_ids, CLASSES, folds=folds, seed=0)
    scores = audit.outlier_scores(features, label_ids, CLASSES)
    return audit.build_report(
        images, fit, audit.find_mislabels(fit.probabilities, label_ids, confidence),
        audit.find_outliers(scores, label_ids, threshold), settings={"folds": folds},
    )


def row_of(path: str) -> int:
    return int(re.search(r"img_(\d+)", path).group(1))


# --- out-of-fold probabilities and mislabels -------------------------------------------


def test_mislabels_found_exactly():
    rng = np.random.default_rng(1)
    features, label_ids = clustered(rng, 40)
    flipped = np.array([0, 50, 100])
    label_ids[flipped] = (label_ids[flipped] + 1) % 3

    fit = audit.out_of_fold_probabilities(features, label_ids, CLASSES, folds=5, seed=0)
    suspects = audit.find_mislabels(fit.probabilities, label_ids, 0.9)

    assert sorted(s.index for s in suspects) == flipped.tolist()
    for suspect in suspects:
        true_id = (label_ids[suspect.index] - 1) % 3
        assert suspect.suggested_id == true_id
        assert suspect.label_probability < 0.1
    assert fit.accuracy == pytest.approx(1 - len(flipped) / len(label_ids))


def test_probabilities_are_out_of_fold_rows():
    features, label_ids, _, _ = planted()

    first = audit.out_of_fold_probabilities(features, label_ids, CLASSES, folds=5, seed=3)
    second = audit.out_of_fold_probabilities(features, label_ids, CLASSES, folds=5, seed=3)

    assert first.probabilities.shape == (len(label_ids), len(CLASSES))
    np.testing.assert_allclose(first.probabilities.sum(axis=1), 1.0)
    np.testing.assert_array_equal(first.probabilities, second.probabilities)
    assert first.regularization in audit.REGULARIZATION_GRID


def test_mislabels_ranked_and_scored():
    label_ids = np.array([0, 1, 2, 0, 1])
    probabilities = np.array([
        [0.05, 0.93, 0.02],  # label 0, class 1 at 0.93
        [0.10, 0.80, 0.10],  # label agrees
        [0.97, 0.01, 0.02],  # label 2, class 0 at 0.97
        [0.00, 0.50, 0.50],  # no other class reaches 0.9
        [0.01, 0.09, 0.90],  # exactly at the confidence
    ])

    suspects = audit.find_mislabels(probabilities, label_ids, 0.9)

    assert [s.index for s in suspects] == [2, 0, 4]
    assert suspects[0].suggested_id == 0
    assert suspects[0].suggested_probability == pytest.approx(0.97)
    assert suspects[0].label_probability == pytest.approx(0.02)


def test_class_smaller_than_folds_rejected():
    features, label_ids = clustered(np.random.default_rng(0), 10)
    keep = np.flatnonzero(label_ids != 2)[:-7]  # cats keep 3 images
    keep = np.concatenate([keep, np.flatnonzero(label_ids == 2)])

    with pytest.raises(StageError) as raised:
        audit.out_of_fold_probabilities(features[keep], label_ids[keep], CLASSES, folds=5, seed=0)

    assert "'cats' has 3" in str(raised.value)
    assert "audit.folds=3" in str(raised.value)


def test_single_image_class_rejected():
    label_ids = np.array([0, 0, 0, 1, 2, 2, 2])

    with pytest.raises(StageError, match="a class needs at least 2 images"):
        audit.check_class_sizes(label_ids, CLASSES, folds=2)


def test_one_class_rejected():
    with pytest.raises(StageError, match="at least two classes"):
        audit.check_class_sizes(np.zeros(10, dtype=int), ["cats"], folds=5)


# --- outliers ---------------------------------------------------------------------------


def test_outliers_found_exactly():
    features, label_ids, mislabelled, outliers = planted()

    scores = audit.outlier_scores(features, label_ids, CLASSES)
    suspects = audit.find_outliers(scores, label_ids, THRESHOLD)

    assert sorted(s.index for s in suspects) == outliers.tolist()
    clean_max = np.delete(scores.scores, outliers).max()
    assert clean_max < THRESHOLD
    assert scores.scores[mislabelled].max() < THRESHOLD


def test_outliers_found_with_one_neighbor():
    # With one neighbour, an image counted as its own neighbour would score 0 for its class.
    features, label_ids, _, outliers = planted()

    scores = audit.outlier_scores(features, label_ids, CLASSES, neighbors=1)

    flagged = audit.find_outliers(scores, label_ids, THRESHOLD)
    assert sorted(s.index for s in flagged) == outliers.tolist()


def test_mislabelled_row_nearest_its_true_class():
    features, label_ids, mislabelled, _ = planted()

    scores = audit.outlier_scores(features, label_ids, CLASSES)

    true_ids = (label_ids[mislabelled] - 1) % 3
    np.testing.assert_array_equal(scores.nearest_ids[mislabelled], true_ids)


def test_outlier_score_ignores_scale():
    features, label_ids, _, _ = planted()
    scaled = features.copy()
    scaled[::7] *= 25.0

    np.testing.assert_allclose(
        audit.outlier_scores(scaled, label_ids, CLASSES).scores,
        audit.outlier_scores(features, label_ids, CLASSES).scores,
        rtol=1e-4, atol=1e-4,
    )


def test_blocks_give_same_scores(monkeypatch):
    features, label_ids, _, _ = planted()
    whole = audit.outlier_scores(features, label_ids, CLASSES).scores

    monkeypatch.setattr(audit, "ROW_BLOCK", 7)  # 123 rows in 18 blocks, the last one short
    blocked = audit.outlier_scores(features, label_ids, CLASSES).scores

    np.testing.assert_allclose(blocked, whole, rtol=0, atol=1e-9)


def test_identical_class_gives_finite_scores():
    features, label_ids = clustered(np.random.default_rng(0), 6)
    features[label_ids == 0] = features[0]  # every bird has the same features

    scores = audit.outlier_scores(features, label_ids, CLASSES).scores

    assert np.isfinite(scores).all()


def test_outliers_need_two_per_class():
    label_ids = np.array([0, 0, 1, 2, 2])

    with pytest.raises(StageError, match="'cats': 1"):
        audit.outlier_scores(np.ones((5, 4)), label_ids, CLASSES)


def test_zero_row_stays_zero():
    rows = audit.normalize_rows(np.array([[0.0, 0.0], [3.0, 4.0]]))

    np.testing.assert_array_equal(rows[0], [0.0, 0.0])
    np.testing.assert_allclose(rows[1], [0.6, 0.8])


# --- report and grid --------------------------------------------------------------------


@pytest.fixture(scope="module")
def planted_report() -> dict:
    features, label_ids, _, _ = planted()
    return run_audit(features, label_ids)


def test_report_lists_planted_rows_only(planted_report):
    _, label_ids, mislabelled, outliers = planted()
    report = planted_report

    assert sorted(row_of(s["path"]) for s in report["mislabel_suspects"]) == mislabelled.tolist()
    assert sorted(row_of(s["path"]) for s in report["outlier_suspects"]) == outliers.tolist()
    assert report["n_images"] == len(label_ids)
    assert report["n_mislabel_suspects"] == len(mislabelled)
    assert report["n_outlier_suspects"] == len(outliers)


def test_report_entries_and_order(planted_report):
    _, label_ids, _, _ = planted()
    report = planted_report

    mislabel = report["mislabel_suspects"][0]
    assert set(mislabel) == {
        "path", "split", "label", "suggested_label", "suggested_probability", "label_probability",
    }
    assert mislabel["label"] == CLASSES[label_ids[row_of(mislabel["path"])]]
    assert mislabel["suggested_label"] != mislabel["label"]
    probabilities = [s["suggested_probability"] for s in report["mislabel_suspects"]]
    assert probabilities == sorted(probabilities, reverse=True)
    scores = [s["score"] for s in report["outlier_suspects"]]
    assert scores == sorted(scores, reverse=True)
    assert report["outlier_suspects"][0]["nearest_class"] in CLASSES
    json.dumps(report)  # plain JSON types only


def test_report_counts_per_split(planted_report):
    report = planted_report

    per_split = report["per_split"]
    assert set(per_split) == {"train", "test"}
    for key in ("n_images", "n_mislabel_suspects", "n_outlier_suspects"):
        assert sum(counts[key] for counts in per_split.values()) == report[key]
    for suspect in report["mislabel_suspects"] + report["outlier_suspects"]:
        assert suspect["split"] == ("train" if row_of(suspect["path"]) % 3 else "test")


def test_outlier_not_listed_as_mislabel():
    features, label_ids, _, outliers = planted()
    fit = audit.out_of_fold_probabilities(features, label_ids, CLASSES, folds=5, seed=0)
    alone = {s.index for s in audit.find_mislabels(fit.probabilities, label_ids, 0.34)}
    assert alone & set(outliers.tolist()), "no odd image reaches 0.34; the check below is void"

    report = run_audit(features, label_ids, confidence=0.34)

    mislabel_rows = {row_of(s["path"]) for s in report["mislabel_suspects"]}
    assert not mislabel_rows & set(outliers.tolist())
    assert {row_of(s["path"]) for s in report["outlier_suspects"]} == set(outliers.tolist())


def test_grid_alternates_kinds():
    report = {
        "mislabel_suspects": [{"path": f"m{i}"} for i in range(5)],
        "outlier_suspects": [{"path": "o0"}],
    }

    chosen = audit.grid_suspects(report, 4)

    assert [s["path"] for s in chosen] == ["m0", "o0", "m1", "m2"]
    assert [s["kind"] for s in chosen] == ["mislabel", "outlier", "mislabel", "mislabel"]
    assert audit.grid_suspects({"mislabel_suspects": [], "outlier_suspects": []}, 4) == []


def test_tile_caption_names_verdict():
    mislabel = {
        "kind": "mislabel", "path": "data/prepared/images/cats/cat.1.jpg", "label": "cats",
        "suggested_label": "dogs", "suggested_probability": 0.9731,
    }
    outlier = {
        "kind": "outlier", "path": "data/prepared/images/dogs/" + "x" * 60 + ".jpg",
        "label": "dogs", "score": 7.25,
    }

    assert audit.tile_caption(mislabel) == "cat.1.jpg\nlabel: cats\nlikely dogs (p=0.973)"
    name, label, verdict = audit.tile_caption(outlier).split("\n")
    assert len(name) == 28
    assert name.endswith("xx.jpg")
    assert verdict == "outlier (score 7.2)"


# --- stage ------------------------------------------------------------------------------


def write_fake_cache(project: Path, features: np.ndarray, label_ids: np.ndarray,
                     counts: dict[str, int]) -> dict[str, list[str]]:
    """Write split manifests, tiny JPEGs and data/features/ for rows taken in split order.

    Returns the manifest paths per split.
    """
    rng = np.random.default_rng(0)
    paths: dict[str, list[str]] = {}
    start = 0
    (project / "data" / "split").mkdir(parents=True)
    (project / "data" / "features").mkdir(parents=True)
    for split, count in counts.items():
        rows = range(start, start + count)
        paths[split] = [f"data/prepared/images/{CLASSES[label_ids[i]]}/img_{i:03d}.jpg" for i in rows]
        for path in paths[split]:
            (project / path).parent.mkdir(parents=True, exist_ok=True)
            pixels = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(project / path)
        with (project / "data" / "split" / f"{split}.csv").open("w", newline="") as file:
            writer = csv.writer(file)
            writer.writerow(["path", "label", "sha256"])
            for i, path in zip(rows, paths[split]):
                writer.writerow([path, CLASSES[label_ids[i]], f"{i:064x}"])

        views = 2 if split == "train" else 1
        block = features[start:start + count].astype(np.float16)  # (count, DIMS)
        augmented = np.stack([block] + [block + np.float16(0.5)] * (views - 1))  # (views, count, DIMS)
        np.save(project / "data" / "features" / f"{split}.pooled.npy", augmented)
        start += count

    meta = {
        "backbone": "mobilenet_v2", "alpha": 1.0, "image_size": 224, "cut_layer": "block_13_expand",
        "cut_shape": [14, 14, 576], "pooled_size": DIMS, "dtype": "float16", "train_views": 2,
        "splits": {split: {"rows": count} for split, count in counts.items()},
    }
    (project / "data" / "features" / "meta.json").write_text(json.dumps(meta))
    return paths


def tree_digest(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*")) if path.is_file()
    }


# Rows of planted() per split: train gets mislabelled rows 3 and 45, val row 90, and test
# the three odd images at its end.
SPLIT_ROWS = {"train": 80, "val": 20, "test": 23}


@pytest.fixture
def project(tmp_path):
    return copy_project(tmp_path / "project")


def test_stage_reports_planted_suspects(project):
    features, label_ids, mislabelled, outliers = planted()
    paths = write_fake_cache(project, features, label_ids, SPLIT_ROWS)
    listed = [path for split in SPLIT_ROWS for path in paths[split]]
    before = tree_digest(project / "data")

    result = run_stage(project, "audit")

    assert result.returncode == 0, result.output
    report = json.loads((project / "metrics" / "audit.json").read_text())
    assert {s["path"] for s in report["mislabel_suspects"]} == {listed[i] for i in mislabelled}
    assert {s["path"] for s in report["outlier_suspects"]} == {listed[i] for i in outliers}
    assert {s["split"] for s in report["outlier_suspects"]} == {"test"}
    assert report["per_split"]["val"]["n_images"] == SPLIT_ROWS["val"]
    assert report["settings"]["outlier_threshold"] == THRESHOLD
    with Image.open(project / "metrics" / "audit.png") as grid:
        assert grid.format == "PNG"
        assert grid.width > 600  # four tiles across
    assert tree_digest(project / "data") == before
    assert "audit.exclude=[" in result.output
    assert listed[outliers[0]] in result.output


def test_stage_without_suspects_draws_note(project):
    features, label_ids = clustered(np.random.default_rng(2), 12)
    write_fake_cache(project, features, label_ids, {"train": 24, "val": 6, "test": 6})

    result = run_stage(project, "audit")

    assert result.returncode == 0, result.output
    report = json.loads((project / "metrics" / "audit.json").read_text())
    assert report["mislabel_suspects"] == []
    assert report["outlier_suspects"] == []
    with Image.open(project / "metrics" / "audit.png") as note:
        assert note.height < 200
    assert "audit.exclude" not in result.output


def test_stage_without_features_fails(project):
    features, label_ids = clustered(np.random.default_rng(2), 12)
    write_fake_cache(project, features, label_ids, {"train": 24, "val": 6, "test": 6})
    for path in (project / "data" / "features").iterdir():
        path.unlink()
    (project / "data" / "features").rmdir()

    result = run_stage(project, "audit")

    assert result.returncode == 1
    assert "data/features not found; run `dvc repro features`" in result.output
    assert not (project / "metrics" / "audit.json").exists()


def test_stage_small_class_fails(project):
    features, label_ids = clustered(np.random.default_rng(2), 12)
    write_fake_cache(project, features, label_ids, {"train": 24, "val": 6, "test": 6})
    set_params(project, **{"audit.folds": 13})

    result = run_stage(project, "audit")

    assert result.returncode == 1
    assert "audit.folds = 13 needs at least 13 images per class" in result.output
    assert "Traceback" not in result.output


@pytest.fixture(scope="module")
def stage_module():
    """stages/audit.py imported in this process, to check its input validation directly."""
    spec = importlib.util.spec_from_file_location("audit_stage", PROJECT_ROOT / "stages" / "audit.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_stale_meta_rows_rejected(tmp_path, stage_module):
    features, label_ids = clustered(np.random.default_rng(2), 12)
    write_fake_cache(tmp_path, features, label_ids, {"train": 24, "val": 6, "test": 6})
    meta = stage_module.read_meta(tmp_path / "data" / "features")

    with pytest.raises(StageError) as raised:
        stage_module.read_view0(tmp_path / "data" / "features", "val", 7, meta)

    assert "lists 6 val rows but data/split/val.csv lists 7 images" in str(raised.value)
    assert "dvc repro features" in str(raised.value)


def test_array_rows_rejected(tmp_path, stage_module):
    features, label_ids = clustered(np.random.default_rng(2), 12)
    write_fake_cache(tmp_path, features, label_ids, {"train": 24, "val": 6, "test": 6})
    folder = tmp_path / "data" / "features"
    np.save(folder / "val.pooled.npy", np.zeros((1, 5, DIMS), dtype=np.float16))

    with pytest.raises(StageError, match=r"has shape \(1, 5, 48\), but \(views, 6, channels\)"):
        stage_module.read_view0(folder, "val", 6, stage_module.read_meta(folder))


def test_nonfinite_feature_rejected(tmp_path, stage_module):
    features, label_ids = clustered(np.random.default_rng(2), 12)
    features[27, 3] = np.inf
    write_fake_cache(tmp_path, features, label_ids, {"train": 24, "val": 6, "test": 6})
    folder = tmp_path / "data" / "features"

    with pytest.raises(StageError, match="1 of 6 rows .* the first is row 3; .* features.dtype to float32"):
        stage_module.read_view0(folder, "val", 6, stage_module.read_meta(folder))


def test_view0_read_from_views(tmp_path, stage_module):
    features, label_ids = clustered(np.random.default_rng(2), 12)
    write_fake_cache(tmp_path, features, label_ids, {"train": 24, "val": 6, "test": 6})
    folder = tmp_path / "data" / "features"

    view0 = stage_module.read_view0(folder, "train", 24, stage_module.read_meta(folder))

    assert view0.dtype == np.float32
    np.testing.assert_array_equal(view0, features[:24].astype(np.float16).astype(np.float32))
