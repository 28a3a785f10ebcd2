"""`dvc plots diff` of two revisions, rendered offline in headless Chromium.

The page uses the offline template (tools/offline_plots), so no plot may load
anything from the internet. Skipped when Chromium, chromedriver or the npm
copies of the Vega libraries are missing.
"""

import json

import numpy as np
import pytest
from dvclive import Live

from browser import find_chromium, render_page
from helpers import PROJECT_ROOT, copy_project, init_dvc, run
from imgclf.gallery import draw_grid
from imgclf.plots import log_classification_plots, write_training_curves

pytestmark = pytest.mark.slow


@pytest.fixture
def offline_template(tmp_path):
    import importlib.util

    path = PROJECT_ROOT / "tools" / "offline_plots" / "build_template.py"
    spec = importlib.util.spec_from_file_location("build_template", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    try:
        return module.build_template(output=tmp_path / "template.html")
    except FileNotFoundError as error:
        pytest.skip(str(error))


def write_training_log(live_dir, n_epochs, offset):
    for split in ("train", "eval"):
        for metric in ("loss", "accuracy"):
            path = live_dir / "plots" / "metrics" / split / f"{metric}.tsv"
            path.parent.mkdir(parents=True, exist_ok=True)
            values = [offset + 0.1 * epoch for epoch in range(n_epochs)]
            path.write_text(f"step\t{metric}\n" + "".join(f"{i}\t{v}\n" for i, v in enumerate(values)))


def write_evaluate_plots(project, seed):
    """Write the files the evaluate stage writes, from random cat and dog predictions."""
    rng = np.random.default_rng(seed)
    true_ids = np.arange(40) % 2
    logits = rng.normal(size=(40, 2))
    logits[np.arange(40), true_ids] += 1.5
    final = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    head = np.roll(final, 3, axis=0)

    live_dir = project / "dvclive"
    write_training_log(live_dir / "train_head", 3, 0.1 * seed)
    write_training_log(live_dir / "finetune", 2, 0.2 * seed)
    live = Live(dir=str(live_dir / "evaluate"), dvcyaml=None, save_dvc_exp=False)
    log_classification_plots(
        live, true_ids, {"final": final, "head": head}, ["cats", "dogs"], positive_id=1, n_bins=10,
    )
    write_training_curves(
        live_dir / "evaluate" / "plots" / "training",
        {"train_head": live_dir / "train_head", "finetune": live_dir / "finetune"},
    )
    pictures = rng.uniform(0, 255, (2, 32, 32, 3))
    for name in ("errors.png", "gradcam.png"):
        live.log_image(name, draw_grid(pictures, ["a", "b"]))

    # The split stage's class counts, drawn with the project's class_balance template.
    balance = project / "metrics" / "balance"
    balance.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val", "test"):
        counts = rng.integers(5, 50, size=2)
        (balance / f"{split}.csv").write_text(f"label,images\ncats,{counts[0]}\ndogs,{counts[1]}\n")


@pytest.mark.skipif(find_chromium() is None, reason="chromium or chromedriver not installed")
def test_plots_diff_renders_offline(tmp_path, offline_template):
    project = copy_project(tmp_path / "project")
    run(["git", "init", "-q"], project)
    init_dvc(project)
    for seed in (1, 2):
        write_evaluate_plots(project, seed)
        run(["git", "add", "-A"], project)
        run(["git", "commit", "-qm", f"plots {seed}"], project)

    shown = json.loads(run(["dvc", "plots", "diff", "--json", "HEAD~1", "HEAD"], project).stdout)
    run(["dvc", "plots", "diff", "--html-template", str(offline_template), "-o", "diff", "HEAD~1", "HEAD"],
        project)
    page = render_page(project / "diff" / "index.html", tmp_path / "diff.png")

    # 3 class balance charts, 2 training curves, 2 confusion matrices, ROC,
    # precision-recall and reliability
    assert len(page.plots) == 10, shown["data"].keys()
    assert sorted(page.drawn) == sorted(page.plots)
    assert len(page.images) == 4  # two gallery images for each revision
    assert all(image["width"] > 0 for image in page.images), page.images
    assert [url for url in page.resources if not url.startswith("file:")] == []
    assert page.console_errors == []
    assert (tmp_path / "diff.png").stat().st_size > 10_000
