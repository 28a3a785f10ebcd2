"""Stage scripts run as DVC runs them: a subprocess in the project root."""

import csv
import functools
import http.server
import json
import shutil
import threading
import zipfile

import pytest

from conftest import add_folder_traps, write_class_images, write_messy_folder
from helpers import TINY_PARAMS, copy_project, init_git, run, run_stage, run_stages, set_params


@pytest.fixture
def project(tmp_path):
    return copy_project(tmp_path / "project")


@pytest.fixture
def archive_server(tmp_path):
    """Serve a zip of two classes over HTTP on 127.0.0.1; yields (url, stop)."""
    served = tmp_path / "served"
    tree = write_class_images(tmp_path / "tree", {"cats": 3, "dogs": 3})
    served.mkdir()
    with zipfile.ZipFile(served / "pets.zip", "w") as bundle:
        for path in tree.rglob("*.jpg"):
            bundle.write(path, path.relative_to(tree))

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def stop():
        server.shutdown()
        server.server_close()

    yield f"http://127.0.0.1:{server.server_address[1]}/pets.zip", stop
    if thread.is_alive():
        stop()


def test_fetch_downloads_into_keras_cache(project, tmp_path, archive_server):
    url, stop = archive_server
    keras_home = tmp_path / "keras-home"
    set_params(project, **{"data.source": url})

    first = run_stage(project, "fetch", KERAS_HOME=str(keras_home))
    assert first.returncode == 0, first.output
    assert (keras_home / "datasets" / "pets.zip").is_file()
    assert sorted(p.name for p in (project / "data" / "raw").iterdir()) == ["cats", "dogs"]

    # With the server gone, the cached archive is used: this is how offline runs work.
    stop()
    shutil.rmtree(project / "data" / "raw")
    second = run_stage(project, "fetch", KERAS_HOME=str(keras_home))
    assert second.returncode == 0, second.output
    assert len(list((project / "data" / "raw" / "cats").iterdir())) == 3


def test_fetch_offline_error_explains_cache(project, tmp_path, archive_server):
    url, stop = archive_server
    stop()
    set_params(project, **{"data.source": url})

    result = run_stage(project, "fetch", KERAS_HOME=str(tmp_path / "empty-home"))

    assert result.returncode == 1
    assert "download of" in result.output
    assert "KERAS_HOME" in result.output
    assert "Traceback" not in result.output
    assert not (project / "data" / "raw").exists()


def test_typo_in_params_stops_stage(project):
    text = (project / "params.yaml").read_text().replace("  lr: 0.001", "  lrr: 0.001")
    (project / "params.yaml").write_text(text)

    result = run_stage(project, "fetch")

    assert result.returncode == 1
    assert "train_head.lrr: unknown key" in result.output
    assert "Traceback" not in result.output


def test_prepare_and_split_outputs(project, tmp_path):
    source = write_class_images(tmp_path / "images", {"cats": 10, "dogs": 10})
    whole = (source / "dogs" / "dogs_000.jpg").read_bytes()
    (source / "dogs" / "broken.jpg").write_bytes(whole[: len(whole) // 2])
    set_params(project, **TINY_PARAMS, **{"data.source": str(source)})

    run_stages(project, ["fetch", "prepare", "split"])

    manifest = (project / "data" / "prepared" / "manifest.csv").read_text().splitlines()
    assert manifest[0] == "path,label,source,sha256,content,phash,split_group"
    assert len(manifest) == 21
    dropped = (project / "data" / "prepared" / "dropped.csv").read_text()
    assert "dogs/broken.jpg,dogs,corrupt_or_truncated" in dropped
    for split in ("train", "val", "test"):
        assert (project / "data" / "split" / f"{split}.csv").is_file()
        balance = (project / "metrics" / "balance" / f"{split}.csv").read_text().splitlines()
        assert balance[0] == "label,images"
        assert len(balance) == 3  # the header and two classes
    assert (project / "metrics" / "prepare.json").is_file()
    assert (project / "metrics" / "split.json").is_file()
    leftovers = [p for p in (project / "data").iterdir() if p.name.endswith(".partial")]
    assert leftovers == []


def test_messy_folder_report(project, tmp_path):
    source = tmp_path / "messy"
    expected = write_messy_folder(source)
    add_folder_traps(source, tmp_path / "outside")
    set_params(project, **TINY_PARAMS, **{"data.source": str(source), "prepare.min_size": 32})

    fetched = run_stages(project, ["fetch", "prepare", "split"])

    assert sorted(p.name for p in (project / "data" / "raw").iterdir()) == [
        "bird ñandú", "cats", "dogs",
    ]
    raw_files = {p for p in (project / "data" / "raw").rglob("*") if p.is_file()}
    assert not any(p.is_symlink() for p in raw_files)
    assert not any(p.name in ("link out.jpg", "dangling.jpg") for p in raw_files)

    prepared = project / "data" / "prepared"
    with (prepared / "dropped.csv").open(newline="", encoding="utf-8") as file:
        dropped = {row["source"]: row for row in csv.DictReader(file)}
    assert {s: row["reason"] for s, row in dropped.items()} == {
        s: reason for s, reason in expected.items() if reason
    }
    assert dropped["cats/dup 2.png"]["kept_copy"] == "cats/dup 1.png"
    assert dropped["cats/conflict.jpg"]["group"] == dropped["dogs/conflict.jpg"]["group"] != ""
    with (prepared / "manifest.csv").open(newline="", encoding="utf-8") as file:
        kept = [row["source"] for row in csv.DictReader(file)]
    assert sorted(kept) == sorted(s for s, reason in expected.items() if reason is None)
    images = {p.relative_to(prepared / "images").as_posix() for p in (prepared / "images").rglob("*.jpg")}
    assert len(images) == len(kept)  # no JPEG left behind for a dropped duplicate

    report = json.loads((project / "metrics" / "prepare.json").read_text())
    assert report["dropped"]["dogs"]["too_many_pixels"] == 2
    assert report["dropped"]["cats"]["label_conflict"] == 1
    assert report["duplicates"]["label_conflict_groups"] == 1
    assert "label conflict, every copy dropped" in fetched
    assert "cats/conflict.jpg, dogs/conflict.jpg" in fetched


def test_class_emptied_by_duplicates_stops_prepare(project, tmp_path):
    source = write_class_images(tmp_path / "images", {"cats": 10, "dogs": 10})
    (source / "ghost").mkdir()
    for index in range(3):
        shutil.copy(source / "cats" / f"cats_00{index}.jpg", source / "ghost" / f"g{index}.jpg")
    set_params(project, **TINY_PARAMS, **{"data.source": str(source)})
    run_stages(project, ["fetch"])

    result = run_stage(project, "prepare")

    assert result.returncode == 1
    assert "no usable image is left in class folder(s) 'ghost': 3 label_conflict" in result.output
    assert "Traceback" not in result.output
    assert not (project / "data" / "prepared").exists()


def test_adding_images_keeps_every_split(project, tmp_path):
    source = write_class_images(tmp_path / "images", {"cats": 300, "dogs": 300}, size=40)
    set_params(project, **TINY_PARAMS, **{"data.source": str(source)})
    first = run_stages(project, ["fetch", "prepare", "split"])
    before = split_assignment(project)

    write_class_images(tmp_path / "new", {"cats": 30, "dogs": 30}, size=40, seed=1)
    for image in (tmp_path / "new").rglob("*.jpg"):
        image.rename(source / image.parent.name / f"new {image.name}")
    second = run_stages(project, ["fetch", "prepare", "split"])
    after = split_assignment(project)

    assert "outside split.tolerance_sd" not in first + second
    assert len(after) == len(before) + 60
    assert {sha256: after[sha256] for sha256 in before} == before


def split_assignment(project) -> dict[str, str]:
    """Map each image's file hash to its split."""
    assignment = {}
    for name in ("train", "val", "test"):
        with (project / "data" / "split" / f"{name}.csv").open(newline="") as file:
            assignment.update({row["sha256"]: name for row in csv.DictReader(file)})
    return assignment


def test_split_too_small_class_fails_cleanly(project, tmp_path):
    source = write_class_images(tmp_path / "images", {"cats": 2, "dogs": 10})
    set_params(project, **TINY_PARAMS, **{"data.source": str(source)})
    run_stages(project, ["fetch", "prepare"])

    result = run_stage(project, "split")

    assert result.returncode == 1
    assert "'cats' has 2" in result.output
    assert "Traceback" not in result.output
    assert not (project / "data" / "split").exists()


def test_train_head_in_empty_git_repo_explains(project, tmp_path):
    source = write_class_images(tmp_path / "images", {"cats": 6, "dogs": 6})
    set_params(project, **TINY_PARAMS, **{"data.source": str(source)})
    init_git(project, commit=False)
    run_stages(project, ["fetch", "prepare", "split", "features"])

    result = run_stage(project, "train_head")

    assert result.returncode == 1
    assert "no commits yet" in result.output
    assert "Traceback" not in result.output
    assert not (project / "models" / "head.keras").exists()


def test_missing_weights_offline_explained(project, tmp_path):
    source = write_class_images(tmp_path / "images", {"cats": 6, "dogs": 6})
    set_params(project, **{
        "data.source": str(source),
        "data.image_size": 96,
        "model.alpha": 0.35,
        "train_head.epochs": 1,
    })
    init_git(project, commit=True)
    run_stages(project, ["fetch", "prepare", "split"])

    # An empty Keras cache, and a proxy on a closed local port so nothing leaves the machine.
    offline = {
        "KERAS_HOME": str(tmp_path / "empty-keras-home"),
        "HTTP_PROXY": "http://127.0.0.1:9",
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "NO_PROXY": "",
    }
    result = run_stage(project, "features", **offline)

    assert result.returncode == 1
    assert "downloading the ImageNet weights of mobilenet_v2 (alpha 0.35, size 96)" in result.output
    assert "$KERAS_HOME/models/" in result.output
    assert "Traceback" not in result.output


def test_sigmoid_head_balanced_weights_run(project, tmp_path):
    source = write_class_images(tmp_path / "images", {"cats": 12, "dogs": 6})
    set_params(project, **TINY_PARAMS, **{
        "data.source": str(source),
        "model.head": "sigmoid",
        "train_head.class_weight": "balanced",
        "train_head.optimizer": "sgd",
    })
    init_git(project, commit=True)

    run_stages(project, [
        "fetch", "prepare", "split", "features", "train_head", "finetune", "evaluate", "export",
    ])

    metrics = json.loads((project / "metrics" / "evaluate.json").read_text())
    assert set(metrics["final"]["per_class"]) == {"cats", "dogs"}
    split = json.loads((project / "metrics" / "split.json").read_text())
    assert metrics["n_images"] == split["test"]["total"]
    assert min(split["test"]["per_class"].values()) >= 1
    model_file = project / "models" / "model.keras"
    assert model_file.is_file()
    metadata = json.loads((project / "models" / "metadata.json").read_text())
    assert metadata["head"] == "sigmoid"
    export = json.loads((project / "metrics" / "export.json").read_text())
    assert all(result["top1_agreement"] == 1.0 for result in export["formats"].values())


def test_fetch_hash_mismatch_explained(project, tmp_path, archive_server):
    url, _ = archive_server
    set_params(project, **{"data.source": url, "data.sha256": "0" * 64})

    result = run_stage(project, "fetch", KERAS_HOME=str(tmp_path / "keras-home"))

    assert result.returncode == 1
    assert "does not match data.sha256" in result.output
    assert "Traceback" not in result.output
