"""`imgclf predict` as a user runs it: a subprocess on real files, with a real saved model."""

import csv
import io
import json
import shutil
import sys
import tomllib

import numpy as np
import pytest

from helpers import PROJECT_ROOT, run, tool_env
from imgclf.inference import load_model, predict_bytes
from tiny_model import CLASSES, IMAGE_SIZE, photo_bytes, save_tiny_model


def imgclf(*args, cwd):
    return run(
        [sys.executable, "-m", "imgclf.cli", *map(str, args)], cwd,
        env=tool_env(PYTHONPATH=str(PROJECT_ROOT / "src")), check=False, timeout=300,
    )


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A model, three good images in nested folders, and one file that is not an image."""
    root = tmp_path_factory.mktemp("cli")
    model = save_tiny_model(root / "model")
    photos = root / "photos"
    (photos / "nested").mkdir(parents=True)
    (photos / "a.jpg").write_bytes(photo_bytes(1))
    (photos / "b.png").write_bytes(photo_bytes(2, format="PNG"))
    (photos / "nested" / "c.jpg").write_bytes(photo_bytes(3))
    (photos / "notes.txt").write_text("skipped in folders: not an image extension")
    (root / "broken.jpg").write_bytes(b"these bytes are no JPEG")
    return {"root": root, "model": model, "photos": photos}


def predictions_by_name(stdout):
    return {row["path"].rsplit("/", 1)[-1]: row for row in json.loads(stdout)}


def test_folder_json_matches_shared_function(workspace):
    result = imgclf("predict", workspace["photos"], "--model", workspace["model"],
                    "--format", "json", "--batch-size", "2", cwd=workspace["root"])
    assert result.returncode == 0, result.output
    rows = predictions_by_name(result.stdout)
    assert sorted(rows) == ["a.jpg", "b.png", "c.jpg"]

    loaded = load_model(workspace["model"])
    for name in ("a.jpg", "b.png", "c.jpg"):
        path = next(workspace["photos"].rglob(name))
        expected = predict_bytes(loaded.predictor, [path.read_bytes()], image_size=IMAGE_SIZE)[0]
        got = np.array([rows[name]["probabilities"][c] for c in CLASSES])
        np.testing.assert_allclose(got, expected, atol=1e-6)
        assert rows[name]["top"][0]["class"] == CLASSES[int(np.argmax(expected))]
        assert rows[name]["error"] is None


def test_bad_file_gets_row_and_exit_1(workspace):
    result = imgclf("predict", workspace["root"] / "broken.jpg", workspace["photos"] / "a.jpg",
                    "--model", workspace["model"], "--format", "json", cwd=workspace["root"])
    assert result.returncode == 1, result.output
    rows = predictions_by_name(result.stdout)
    assert rows["broken.jpg"]["error"].startswith("not_an_image")
    assert rows["a.jpg"]["error"] is None
    assert "1 of 2 files could not be classified" in result.stderr


def test_glob_and_csv_output(workspace):
    result = imgclf("predict", "photos/**/*.jpg", "--model", workspace["model"],
                    "--format", "csv", "--top-k", "2", cwd=workspace["root"])
    assert result.returncode == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert sorted(row["path"] for row in rows) == ["photos/a.jpg", "photos/nested/c.jpg"]
    assert set(rows[0]) == {"path", "error", "class_1", "probability_1", "class_2", "probability_2"}
    assert float(rows[0]["probability_1"]) >= float(rows[0]["probability_2"])


def test_table_output_lists_top_classes(workspace):
    result = imgclf("predict", workspace["photos"] / "a.jpg", "--model", workspace["model"],
                    "--top-k", "3", cwd=workspace["root"])
    assert result.returncode == 0, result.output
    line = result.stdout.strip()
    assert line.startswith(str(workspace["photos"] / "a.jpg"))
    for name in CLASSES:
        assert name in line


def test_unmatched_path_gets_error_row(workspace):
    result = imgclf("predict", "absent/*.jpg", "photos/a.jpg", "--model", workspace["model"],
                    cwd=workspace["root"])
    assert result.returncode == 1, result.output
    assert "absent/*.jpg  ERROR not_found" in result.stdout


def test_no_files_is_usage_error(workspace):
    result = imgclf("predict", "absent.jpg", "--model", workspace["model"], cwd=workspace["root"])
    assert result.returncode == 2, result.output
    assert "no files to classify" in result.stderr


def test_model_without_metadata_rejected(workspace, tmp_path):
    shutil.copy(workspace["model"], tmp_path / "model.keras")
    result = imgclf("predict", workspace["photos"], "--model", tmp_path / "model.keras",
                    cwd=workspace["root"])
    assert result.returncode == 2, result.output
    assert f"{tmp_path / 'metadata.json'} not found" in result.stderr


def test_bad_top_k_rejected(workspace):
    result = imgclf("predict", "photos", "--top-k", "0", cwd=workspace["root"])
    assert result.returncode == 2
    assert "--top-k" in result.stderr


def test_console_script_and_web_files_packaged():
    pyproject = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["scripts"]["imgclf"] == "imgclf.cli:main"
    assert pyproject["tool"]["setuptools"]["package-data"]["imgclf"] == ["web/*"]
    web = PROJECT_ROOT / "src" / "imgclf" / "web"
    assert {"index.html", "app.js", "style.css"} <= {path.name for path in web.iterdir()}
