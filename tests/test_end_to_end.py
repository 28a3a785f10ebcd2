"""The default pipeline on the real cats_and_dogs_filtered set with real ImageNet weights.

Runs only when the Keras cache ($KERAS_HOME, default ~/.keras) already contains
the archive and the MobileNetV2 weights, because this test must not download.
It trains fewer epochs than the defaults to fit in CI.
"""

import json
import os
from pathlib import Path

import pytest

from helpers import copy_project, run, set_params

pytestmark = pytest.mark.slow

ARCHIVE = "datasets/cats_and_dogs_filtered.zip"
WEIGHTS = "models/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"


def keras_home() -> Path:
    """Locate the Keras cache the way Keras 3 does."""
    if "KERAS_HOME" in os.environ:
        return Path(os.environ["KERAS_HOME"])
    home = Path.home()
    return (home if os.access(home, os.W_OK) else Path("/tmp")) / ".keras"


def test_cats_and_dogs_reaches_97_percent(tmp_path):
    missing = [name for name in (ARCHIVE, WEIGHTS) if not (keras_home() / name).is_file()]
    if missing:
        pytest.skip(f"the Keras cache {keras_home()} lacks {', '.join(missing)}")

    project = copy_project(tmp_path / "project")
    set_params(project, **{"train_head.epochs": 2, "finetune.epochs": 1})
    run(["git", "init", "-q"], project)
    run(["dvc", "init", "-q"], project)
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "project"], project)

    run(["dvc", "repro"], project)

    prepared = json.loads((project / "metrics" / "prepare.json").read_text())
    assert prepared["kept"] == {"cats": 1500, "dogs": 1500}
    metrics = json.loads((project / "metrics" / "evaluate.json").read_text())
    assert metrics["n_images"] == 450
    assert metrics["accuracy"] >= 0.97, metrics

    # The export stage fails below export.min_agreement; check the recorded figures too.
    export = json.loads((project / "metrics" / "export.json").read_text())
    assert export["n_images"] == 450
    for name, result in export["formats"].items():
        assert result["top1_agreement"] >= 0.995, (name, result)
