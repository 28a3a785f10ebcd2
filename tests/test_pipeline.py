"""The whole pipeline under real DVC, in a temporary git repository, on generated images."""

import csv
import json
import re
import subprocess
import sys
import time

import pytest

from conftest import add_folder_traps, noise_image, write_class_images, write_messy_folder
from helpers import TINY_PARAMS, copy_project, init_dvc, run, set_params, tool_env

pytestmark = pytest.mark.slow


def stages_run(output: str) -> set[str]:
    return set(re.findall(r"Running stage '(\w+)'", output))


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """A committed project whose pipeline has run once on 2 x 16 generated images."""
    root = tmp_path_factory.mktemp("pipeline")
    source = write_class_images(root / "images", {"cats": 16, "dogs": 16}, size=40)
    project = copy_project(root / "project")
    set_params(project, **TINY_PARAMS, **{"data.source": str(source)})

    run(["git", "init", "-q"], project)
    init_dvc(project)
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "project"], project)

    first = run(["dvc", "repro"], project)
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "first run"], project)
    return {"project": project, "source": source, "first": first.output}


def test_first_repro_runs_every_stage(repo):
    project = repo["project"]
    assert stages_run(repo["first"]) == {
        "fetch", "prepare", "split", "features", "audit", "train_head", "finetune", "evaluate",
        "export",
    }
    assert (project / "models" / "head.keras").is_file()
    assert (project / "models" / "model.keras").is_file()
    for folder in (project / "models", project / "models" / "export"):
        model_metadata = json.loads((folder / "metadata.json").read_text())
        assert model_metadata["classes"] == ["cats", "dogs"]
        assert model_metadata["image_size"] == TINY_PARAMS["data.image_size"]
    export = json.loads((project / "metrics" / "export.json").read_text())
    assert set(export["formats"]) == {"saved_model", "tflite_float32", "tflite_dynamic_range", "h5"}
    assert (project / "models" / "export" / "model_float32.tflite").is_file()
    metrics = json.loads((project / "metrics" / "evaluate.json").read_text())
    split = json.loads((project / "metrics" / "split.json").read_text())
    assert metrics["n_images"] == split["test"]["total"]
    for model in ("final", "head"):
        assert set(metrics[model]["per_class"]) == {"cats", "dogs"}
        supports = [c["support"] for c in metrics[model]["per_class"].values()]
        assert sum(supports) == metrics["n_images"]
    assert "accuracy" in metrics["gain"]
    confusion = project / "dvclive" / "evaluate" / "plots" / "sklearn" / "confusion_matrix.json"
    assert confusion.is_file()
    assert (project / "metrics" / "summary.md").is_file()
    assert not (project / "dvclive" / "evaluate" / "metrics.json").exists()
    live_metrics = json.loads((project / "dvclive" / "train_head" / "metrics.json").read_text())
    assert live_metrics["best_epoch"] in (1, 2)
    assert "loss" in live_metrics["eval"]


def test_predict_cli_agrees_with_evaluate(repo):
    project = repo["project"]
    test_split = list(csv.DictReader((project / "data" / "split" / "test.csv").open()))
    paths = [row["path"] for row in test_split]

    outputs = {}
    for model in ("models/model.keras", "models/export/model_float32.tflite"):
        result = run([sys.executable, "-m", "imgclf.cli", "predict", *paths, "--model", model,
                      "--format", "json"], project, env=tool_env(PYTHONPATH=str(project / "src")))
        outputs[model] = json.loads(result.stdout)

    keras_rows = outputs["models/model.keras"]
    accuracy = sum(row["top"][0]["class"] == item["label"]
                   for row, item in zip(keras_rows, test_split)) / len(test_split)
    metrics = json.loads((project / "metrics" / "evaluate.json").read_text())
    assert accuracy == metrics["final"]["accuracy"]
    for keras_row, tflite_row in zip(keras_rows, outputs["models/export/model_float32.tflite"]):
        for name, probability in keras_row["probabilities"].items():
            assert abs(tflite_row["probabilities"][name] - probability) < 1e-4


def test_second_repro_retrains_nothing(repo):
    project = repo["project"]
    head_time = (project / "models" / "head.keras").stat().st_mtime_ns

    result = run(["dvc", "repro"], project)

    # fetch always re-checks its source; finding the same files, nothing downstream runs.
    assert stages_run(result.output) <= {"fetch"}
    assert (project / "models" / "head.keras").stat().st_mtime_ns == head_time
    assert run(["git", "status", "--porcelain"], project).output.strip() == ""


def test_finetune_lr_reruns_only_downstream(repo):
    project = repo["project"]
    set_params(project, **{"finetune.lr": 0.0003})

    result = run(["dvc", "repro"], project)

    assert stages_run(result.output) - {"fetch"} == {"finetune", "evaluate", "export"}
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "finetune.lr 3e-4"], project)


def test_head_lr_experiment_reuses_the_feature_cache(repo):
    project = repo["project"]

    result = run(["dvc", "exp", "run", "-S", "train_head.lr=0.002"], project)

    assert stages_run(result.output) - {"fetch"} == {"train_head", "finetune", "evaluate", "export"}
    assert "Stage 'features' didn't change, skipping" in result.output
    exp_table = json.loads(run(["dvc", "exp", "show", "--json"], project).stdout)
    experiments = [
        exp for commit in exp_table for exp in (commit.get("experiments") or [])
    ]
    assert experiments, exp_table
    params = experiments[0]["revs"][0]["data"]["params"]["params.yaml"]["data"]
    assert params["train_head"]["lr"] == 0.002

    diff = json.loads(run(["dvc", "metrics", "diff", "--all", "--json"], project).stdout)
    assert "final.accuracy" in diff["metrics/evaluate.json"]
    assert "head.accuracy" in diff["metrics/evaluate.json"]
    assert "eval.loss" in diff["dvclive/finetune/metrics.json"]


def test_exp_run_typo_fails(repo):
    project = repo["project"]

    # DVC rejects a key that params.yaml lacks; with "+" it adds it, and imgclf rejects it.
    rejected_by_dvc = run(["dvc", "exp", "run", "-S", "finetune.lrr=0.002"], project, check=False)
    added = run(["dvc", "exp", "run", "-S", "+finetune.lrr=0.002"], project, check=False)
    run(["git", "checkout", "--", "params.yaml"], project)

    assert rejected_by_dvc.returncode != 0
    assert "finetune.lrr" in rejected_by_dvc.output
    assert added.returncode != 0
    assert "finetune.lrr: unknown key" in added.output


def wait_for_queue(project, timeout: float = 900) -> str:
    """Poll `dvc queue status` until nothing is queued or running; return the last status."""
    deadline = time.monotonic() + timeout
    while True:
        status = run(["dvc", "queue", "status"], project).stdout
        if not re.search(r"\b(Queued|Running)\b", status):
            return status
        if time.monotonic() > deadline:
            raise AssertionError(f"the queue did not finish in {timeout} s:\n{status}")
        time.sleep(3)


def test_queued_grid_from_a_clean_clone(repo, tmp_path):
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(repo["project"]), str(clone)], tmp_path)
    # The first project's DVC cache serves as the remote a team would pull from.
    remote = str(repo["project"] / ".dvc" / "cache")
    run(["dvc", "remote", "add", "--local", "-d", "origin", remote], clone)
    run(["dvc", "pull"], clone)

    run(["dvc", "exp", "run", "--queue", "-S", "train_head.lr=0.0003,0.003"], clone)
    # The queue's workers run detached and keep inherited pipes open, so no capture here.
    subprocess.run(["dvc", "queue", "start", "-j", "2"], cwd=clone, env=tool_env(), check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    status = wait_for_queue(clone)

    tasks = re.findall(r"^(\w+)\s.*\bSuccess\b", status, flags=re.MULTILINE)
    assert len(tasks) == 2, status
    for task in tasks:
        log = run(["dvc", "queue", "logs", task], clone).output
        assert stages_run(log) - {"fetch"} == {"train_head", "finetune", "evaluate", "export"}
    table = json.loads(run(["dvc", "exp", "show", "--json"], clone).stdout)
    rates = {
        exp["revs"][0]["data"]["params"]["params.yaml"]["data"]["train_head"]["lr"]
        for commit in table for exp in (commit.get("experiments") or [])
    }
    assert rates == {0.0003, 0.003}


def test_changed_source_folder_is_seen(repo):
    project, source = repo["project"], repo["source"]
    run(["git", "checkout", "--", "."], project)
    run(["dvc", "checkout", "--force"], project)
    noise_image(500).save(source / "cats" / "extra.jpg")

    result = run(["dvc", "repro"], project)

    assert {"fetch", "prepare", "split", "train_head"} <= stages_run(result.output)
    assert "cats/extra.jpg" in (project / "data" / "prepared" / "manifest.csv").read_text()


def test_plots_show_renders_each_once(repo):
    project = repo["project"]

    rendered = json.loads(run(["dvc", "plots", "show", "--json"], project).stdout)["data"]
    run(["dvc", "plots", "show", "-o", "plots-html"], project)

    plots = "dvclive/evaluate/plots"
    expected = {
        "Class balance, train", "Class balance, val", "Class balance, test",
        "training_loss", "training_accuracy", "reliability",
        f"{plots}/sklearn/confusion_matrix.json",
        f"{plots}/sklearn/confusion_matrix_normalized.json",
        f"{plots}/sklearn/roc/dogs.json",  # the positive class, second in sorted order
        f"{plots}/sklearn/precision_recall/dogs.json",
        f"{plots}/images/errors.png",
        f"{plots}/images/gradcam.png",
        "metrics/audit.png",
    }
    assert set(rendered) == expected  # each plot once, none also drawn from a stage output
    confusion = rendered[f"{plots}/sklearn/confusion_matrix.json"]
    assert "Confusion matrix" in json.dumps(confusion)
    balance_spec = json.dumps(rendered["Class balance, train"])
    assert '"zero": true' in balance_spec  # the project's template, not DVC's bar_horizontal
    assert (project / "plots-html" / "index.html").is_file()


def test_messy_folder_goes_through_repro(tmp_path):
    source = tmp_path / "messy"
    expected = write_messy_folder(source)
    add_folder_traps(source, tmp_path / "outside")
    project = copy_project(tmp_path / "project")
    set_params(project, **TINY_PARAMS, **{"data.source": str(source), "prepare.min_size": 32})
    run(["git", "init", "-q"], project)
    init_dvc(project)
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "project"], project)

    result = run(["dvc", "repro"], project)

    assert "evaluate" in stages_run(result.output)
    report = json.loads((project / "metrics" / "prepare.json").read_text())
    assert report["total"]["kept"] == sum(reason is None for reason in expected.values())
    metrics = json.loads((project / "metrics" / "evaluate.json").read_text())
    assert set(metrics["final"]["per_class"]) == {"bird ñandú", "cats", "dogs"}
