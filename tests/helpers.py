"""Helpers for tests that run stage scripts and DVC in a temporary project copy."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from ruamel.yaml import YAML

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PROJECT_FILES = ("dvc.yaml", "params.yaml", "stages", "src")


def copy_project(dest: Path) -> Path:
    """Copy the pipeline definition, params and code into `dest`."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        source = PROJECT_ROOT / name
        if source.is_dir():
            shutil.copytree(source, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, dest / name)
    return dest


def keras_home() -> Path:
    """Locate the Keras cache the way Keras 3 does."""
    if "KERAS_HOME" in os.environ:
        return Path(os.environ["KERAS_HOME"])
    home = Path.home()
    return (home if os.access(home, os.W_OK) else Path("/tmp")) / ".keras"


def init_dvc(project: Path) -> None:
    """Run `dvc init` in a git repository and add the project's custom plot templates."""
    run(["dvc", "init", "-q"], project)
    shutil.copytree(PROJECT_ROOT / ".dvc" / "plots", project / ".dvc" / "plots")


def set_params(project: Path, **values: object) -> None:
    """Set dotted keys in the project's params.yaml, e.g. set_params(p, **{"data.source": "x"})."""
    yaml = YAML()  # round-trip mode keeps the comments
    path = project / "params.yaml"
    params = yaml.load(path.read_text())
    for dotted, value in values.items():
        *sections, key = dotted.split(".")
        node = params
        for section in sections:
            node = node[section]
        node[key] = value
    with path.open("w") as file:
        yaml.dump(params, file)


def tool_env(**extra: str) -> dict[str, str]:
    """Return an environment in which `python` and `dvc` are this interpreter's."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["DVC_NO_ANALYTICS"] = "1"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.update(
        GIT_AUTHOR_NAME="imgclf tests",
        GIT_AUTHOR_EMAIL="tests@imgclf.invalid",
        GIT_COMMITTER_NAME="imgclf tests",
        GIT_COMMITTER_EMAIL="tests@imgclf.invalid",
    )
    env.update(extra)
    return env


def run(args: list[str], cwd: Path, *, env: dict[str, str] | None = None, check: bool = True,
        timeout: float = 1800) -> subprocess.CompletedProcess:
    """Run a command, returning its combined output; on failure the output is in the message."""
    result = subprocess.run(
        args, cwd=cwd, env=env or tool_env(), capture_output=True, text=True, timeout=timeout
    )
    result.output = result.stdout + result.stderr
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {result.returncode}:\n{result.output}")
    return result


def run_stage(project: Path, stage: str, **env: str) -> subprocess.CompletedProcess:
    return run(
        [sys.executable, f"stages/{stage}.py"], project,
        env=tool_env(PYTHONPATH=str(project / "src"), **env), check=False,
    )



def run_stages(project, stages, **env) -> str:
    """Run stages in order and return their output; fail with the output of the first that fails."""
    outputs = []
    for stage in stages:
        result = run_stage(project, stage, **env)
        assert result.returncode == 0, f"{stage}:\n{result.output}"
        outputs.append(result.output)
    return "\n".join(outputs)


def init_git(project, *, commit: bool) -> None:
    run(["git", "init", "-q"], project)
    if commit:
        run(["git", "commit", "-q", "--allow-empty", "-m", "start"], project)

# Settings that make the pipeline run in seconds on generated images: a small
# randomly initialized MobileNetV2 (no download) at 32x32 pixels.
TINY_PARAMS = {
    "data.image_size": 32,
    "model.weights": "none",
    "model.alpha": 0.35,
    "train_head.batch_size": 8,
    "train_head.epochs": 2,
    "finetune.batch_size": 8,
    "finetune.epochs": 1,
    "finetune.unfreeze": 10,
    "evaluate.batch_size": 8,
}


def random_predictions(n: int, n_classes: int, seed: int = 0, margin: float = 1.0):
    """Return (true ids, softmax probabilities) with every class present.

    `margin` is added to the true class's logit: 1.0 is right about 60 % of the
    time with 2 to 7 classes, and larger margins are right more often.
    """
    rng = np.random.default_rng(seed)
    true_ids = np.arange(n) % n_classes
    logits = rng.normal(size=(n, n_classes))
    logits[np.arange(n), true_ids] += margin
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return true_ids, probabilities
