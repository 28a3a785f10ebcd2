"""The evaluate stage on a tiny three-class pipeline, run as DVC runs it."""

import json

import pytest

from conftest import write_class_images
from helpers import TINY_PARAMS, copy_project, run, run_stage, set_params

pytestmark = pytest.mark.slow

CLASSES = ["birds", "cats", "dogs"]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A project whose stages up to evaluate have run once on 3 x 14 generated images."""
    root = tmp_path_factory.mktemp("evaluate")
    source = write_class_images(root / "images", {name: 14 for name in CLASSES}, size=40)
    project = copy_project(root / "project")
    set_params(project, **TINY_PARAMS, **{"data.source": str(source), "evaluate.top_k": 2})
    run(["git", "init", "-q"], project)
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "project"], project)
    for stage in ("fetch", "prepare", "split", "features", "train_head", "finetune", "evaluate"):
        result = run_stage(project, stage)
        assert result.returncode == 0, f"{stage}:\n{result.output}"
    return project


def test_metrics_of_both_models(project):
    metrics = json.loads((project / "metrics" / "evaluate.json").read_text())

    assert set(metrics) == {"n_images", "final", "head", "gain"}
    for model in ("final", "head"):
        scores = metrics[model]
        assert set(scores["per_class"]) == set(CLASSES)
        for key in ("accuracy", "balanced_accuracy", "log_loss", "ece", "roc_auc"):
            assert 0 <= scores[key] < float("inf"), key
        assert "top_2_accuracy" in scores  # 3 classes, more than top_k
        assert set(scores["weighted"]) == {"precision", "recall", "f1"}
    assert metrics["gain"]["accuracy"] == pytest.approx(
        metrics["final"]["accuracy"] - metrics["head"]["accuracy"]
    )


def test_plot_files_one_vs_rest(project):
    plots = project / "dvclive" / "evaluate" / "plots"

    for curve in ("roc", "precision_recall"):
        assert sorted(p.name for p in (plots / "sklearn" / curve).iterdir()) == [
            f"{name}.json" for name in CLASSES
        ]
    assert (plots / "sklearn" / "calibration" / "head.json").is_file()
    assert (plots / "images" / "errors.png").is_file()
    assert (plots / "images" / "gradcam.png").is_file()
    finetune = (plots / "training" / "finetune.csv").read_text().splitlines()
    assert finetune[0].startswith("step,phase,")
    assert finetune[1].startswith("2,finetune,")  # after the 2 head epochs
    assert not (project / "dvclive" / "evaluate" / "metrics.json").exists()
    assert not list((project / "dvclive").glob(".*partial"))


def test_summary_links_gallery(project):
    summary = (project / "metrics" / "summary.md").read_text()

    assert "| accuracy |" in summary
    assert "| top-2 accuracy |" in summary
    for name in ("errors.png", "gradcam.png"):
        link = f"../dvclive/evaluate/plots/images/{name}"
        assert f"]({link})" in summary
        assert (project / "metrics" / link).resolve().is_file()


def test_positive_class_rejected_for_three_classes(project):
    set_params(project, **{"evaluate.positive_class": "cats"})
    try:
        result = run_stage(project, "evaluate")
    finally:
        set_params(project, **{"evaluate.positive_class": None})

    assert result.returncode == 1
    assert "evaluate.positive_class = 'cats' applies to two classes only" in result.output
    assert "Traceback" not in result.output
