"""Driver: cached-feature stages against the tutorial pattern, side by side in a scratch project.

In: this repository's pipeline (dvc.yaml, params.yaml, stages/, src/, .dvc/plots), and
for --subset the fetched images in data/raw. Out: a JSON report (--out) with the
medians and every raw value, rewritten after each repeat, plus each command's
output under WORKDIR/logs/.

The scratch project is a fresh git + DVC repository in WORKDIR/project. With
--subset N, the driver copies N images per class from data/raw, drawn with a fixed
seed, into a folder that becomes data.source. The project's own prepare and split
stages then split them. Without --subset the scratch project keeps data.source,
which for the defaults is the cats_and_dogs_filtered archive in the Keras cache.
Each of the --repeats rounds measures, in this order:

  c. `dvc repro -f` of the whole pipeline (per-stage seconds from the times at which
     DVC prints "Running stage"), then bench/tutorial_pattern.py at the default lr;
  a. bench/backbone_ceiling.py, then stages/features.py, whose log line
     "features: N images in S s (R images/s)" gives its throughput;
  b. one sweep point: train_head.lr set to --sweep-lr, then the train_head, finetune
     and evaluate stage scripts on the cached features (test accuracy from
     metrics/evaluate.json), then bench/tutorial_pattern.py --lr SWEEP_LR.

The targets: features/ceiling >= 0.85, sweep point/tutorial time <= 0.2 and test
accuracies within 0.5 points. Pipeline and tutorial times are wall seconds of
whole processes, TensorFlow start-up included, and per-stage seconds include
DVC's hashing and caching of that stage's outputs.

Run from the repository root (hours at full size on a small CPU machine):
  python bench/experiments.py --out bench/results/experiments.json
Quick end-to-end check with a tiny subset and short training:
  python bench/experiments.py --subset 40 --repeats 1 --set train_head.epochs=2 \\
      --set finetune.epochs=1 --out /tmp/experiments-check.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ruamel.yaml import YAML

from machine import describe_machine

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
PROJECT_FILES = ("dvc.yaml", "params.yaml", "stages", "src", ".gitignore", ".dvcignore")
PARTS = ("a", "b", "c")
SWEEP_STAGES = ("train_head", "finetune", "evaluate")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")

TARGET_FEATURES_RATIO = 0.85  # features stage images/s over the ceiling, at least
TARGET_SWEEP_TIME_RATIO = 0.2  # sweep point seconds over tutorial seconds, at most
TARGET_ACCURACY_POINTS = 0.5  # |pipeline - tutorial| test accuracy, in percentage points

RUNNING_STAGE = re.compile(r"^Running stage '([^']+)':")
FEATURES_LINE = re.compile(
    r"features: (?P<images>\d+) images in (?P<seconds>[\d.]+) s \((?P<rate>[\d.]+) images/s\)"
)


# ---------------------------------------------------------------- scratch project


def tool_env(project: Path) -> dict[str, str]:
    """Return the environment for every command: this interpreter's python and dvc first."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(
        PYTHONPATH=str(project / "src"),
        PYTHONUNBUFFERED="1",  # DVC's lines reach the pipe when printed, not when a buffer fills
        DVC_NO_ANALYTICS="1",
        GIT_AUTHOR_NAME="imgclf bench",
        GIT_AUTHOR_EMAIL="bench@imgclf.invalid",
        GIT_COMMITTER_NAME="imgclf bench",
        GIT_COMMITTER_EMAIL="bench@imgclf.invalid",
    )
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def parse_override(text: str) -> tuple[str, object]:
    """Parse KEY=VALUE with a YAML value: "train_head.epochs=2" -> ("train_head.epochs", 2)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise SystemExit(f"--set {text!r}: write it as KEY=VALUE, e.g. train_head.epochs=2")
    return key.strip(), YAML(typ="safe", pure=True).load(value)


def set_params(params_file: Path, values: dict[str, object]) -> None:
    """Set dotted keys in a params.yaml, keeping its comments."""
    yaml = YAML()  # round-trip mode keeps the comments
    params = yaml.load(params_file.read_text())
    for dotted, value in values.items():
        *sections, key = dotted.split(".")
        node = params
        for section in sections:
            if section not in node:
                raise SystemExit(f"--set {dotted}: params.yaml has no section {section!r}")
            node = node[section]
        if key not in node:
            raise SystemExit(f"--set {dotted}: params.yaml has no key {key!r} there")
        node[key] = value
    with params_file.open("w") as file:
        yaml.dump(params, file)


def read_param(params_file: Path, dotted: str) -> object:
    node = YAML(typ="safe", pure=True).load(params_file.read_text())
    for part in dotted.split("."):
        node = node[part]
    return node


def copy_subset(raw: Path, per_class: int, dest: Path, seed: int = 0) -> dict[str, int]:
    """Copy `per_class` images of each class folder of `raw` into `dest`; return counts."""
    classes = sorted(path for path in raw.iterdir() if path.is_dir())
    if len(classes) < 2:
        raise SystemExit(f"--raw {raw}: expected one folder per class, found {len(classes)}; "
                         "run `dvc repro fetch` in the project first, or pass --raw")
    counts = {}
    rng = random.Random(seed)
    for folder in classes:
        images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if len(images) < per_class:
            raise SystemExit(f"--subset {per_class}: {folder} has only {len(images)} images; "
                             "choose a smaller subset")
        (dest / folder.name).mkdir(parents=True)
        for image in sorted(rng.sample(images, per_class)):
            shutil.copy2(image, dest / folder.name / image.name)
        counts[folder.name] = per_class
    return counts


def make_project(workdir: Path, overrides: dict[str, object], source: Path | None) -> Path:
    """Create WORKDIR/project: the pipeline files, params overrides, git and DVC, one commit."""
    project = workdir / "project"
    project.mkdir(parents=True)
    for name in PROJECT_FILES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, project / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif path.is_file():
            shutil.copy2(path, project / name)

    values = dict(overrides)
    if source is not None:
        values["data.source"] = str(source)
    if values:
        set_params(project / "params.yaml", values)

    env = tool_env(project)
    for command in (["git", "init", "-q"], ["dvc", "init", "-q"]):
        subprocess.run(command, cwd=project, env=env, check=True)
    shutil.copytree(ROOT / ".dvc" / "plots", project / ".dvc" / "plots")
    subprocess.run(["git", "add", "-A"], cwd=project, env=env, check=True)
    subprocess.run(["git", "commit", "-q", "-m", "Benchmark project"], cwd=project, env=env,
                   check=True)
    return project


# ---------------------------------------------------------------- running commands


@dataclass
class Run:
    seconds: float
    output: str
    stage_seconds: dict[str, float] = field(default_factory=dict)


def stage_durations(starts: list[tuple[str, float]], end: float) -> dict[str, float]:
    """Turn (stage, start time) pairs into seconds per stage: until the next start, or `end`."""
    ends = [start for _, start in starts[1:]] + [end]
    return {name: round(stop - start, 2) for (name, start), stop in zip(starts, ends)}


def run_command(args: list[str], cwd: Path, log_path: Path, *, timeout_s: float) -> Run:
    """Run a command, streaming its output to `log_path`; raise SystemExit if it fails.

    The times at which DVC prints "Running stage '<name>':" give per-stage seconds.
    """
    started = time.monotonic()
    starts: list[tuple[str, float]] = []
    lines: list[str] = []
    # A session of its own, so a timeout stops DVC's stage processes as well.
    process = subprocess.Popen(args, cwd=cwd, env=tool_env(cwd), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    timer = threading.Timer(timeout_s, os.killpg, (process.pid, signal.SIGKILL))
    timer.start()
    try:
        with log_path.open("w") as log:
            log.write(f"$ {' '.join(args)}\n")
            for line in process.stdout:
                match = RUNNING_STAGE.match(line)
                if match:
                    starts.append((match.group(1), time.monotonic()))
                lines.append(line)
                log.write(line)
        returncode = process.wait()
    finally:
        timer.cancel()
    end = time.monotonic()

    if returncode != 0:
        if returncode == -signal.SIGKILL:
            failure = f"timed out after {timeout_s:g} s (--timeout-s)"
        else:
            failure = f"failed with exit status {returncode}"
        tail = "".join(lines[-25:])
        raise SystemExit(
            f"{' '.join(args)} (in {cwd}) {failure}; full output in {log_path}:\n{tail}")
    return Run(round(end - started, 2), "".join(lines), stage_durations(starts, end))


def parse_features_line(output: str) -> dict[str, float]:
    """Return images, seconds and images/s from the features stage's summary log line."""
    matches = list(FEATURES_LINE.finditer(output))
    if not matches:
        raise SystemExit(
            "the features stage printed no line like 'features: N images in S s (R images/s)'; "
            "check its log in WORKDIR/logs/ and update FEATURES_LINE in bench/experiments.py"
        )
    last = matches[-1]
    return {"images": int(last["images"]), "seconds": float(last["seconds"]),
            "images_per_s": float(last["rate"])}


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def strip_machine(summary: dict) -> dict:
    return {key: value for key, value in summary.items() if key != "machine"}


# ---------------------------------------------------------------- measurements


@dataclass
class Bench:
    project: Path
    logs: Path
    timeout_s: float
    sweep_lr: float
    default_lr: float

    def log(self, repeat: int, name: str) -> Path:
        return self.logs / f"{repeat}-{name}.log"

    def python(self, repeat: int, name: str, *args: str) -> Run:
        return run_command([sys.executable, *args], self.project, self.log(repeat, name),
                           timeout_s=self.timeout_s)

    def tutorial(self, repeat: int, name: str, lr: float) -> dict:
        output = self.logs / f"{repeat}-{name}.json"
        run = self.python(repeat, name, str(BENCH / "tutorial_pattern.py"),
                          "--root", str(self.project), "--lr", repr(lr), "--output", str(output))
        return {"process_s": run.seconds, **strip_machine(read_json(output))}

    def full_repro(self, repeat: int) -> dict:
        """c: `dvc repro -f` of every stage, then the tutorial pattern at the default lr."""
        print(f"repeat {repeat}: dvc repro -f", flush=True)
        repro = run_command(["dvc", "repro", "-f"], self.project, self.log(repeat, "repro"),
                            timeout_s=self.timeout_s)
        print(f"repeat {repeat}: tutorial pattern at lr {self.default_lr:g}", flush=True)
        return {"repro_s": repro.seconds, "stage_s": repro.stage_seconds,
                "tutorial": self.tutorial(repeat, "tutorial-default", self.default_lr)}

    def throughput(self, repeat: int) -> dict:
        """a: the backbone ceiling, then the features stage alone."""
        print(f"repeat {repeat}: backbone ceiling, features stage", flush=True)
        ceiling_json = self.logs / f"{repeat}-ceiling.json"
        self.python(repeat, "ceiling", str(BENCH / "backbone_ceiling.py"),
                    "--params", str(self.project / "params.yaml"), "--output", str(ceiling_json))
        ceiling = read_json(ceiling_json)
        features_run = self.python(repeat, "features", "stages/features.py")
        features = parse_features_line(features_run.output)
        return {
            "ceiling_images_per_s": ceiling["images_per_s"],
            "ceiling_repeats_images_per_s": ceiling["repeats_images_per_s"],
            "features_images_per_s": features["images_per_s"],
            "features_images": features["images"],
            "features_log_s": features["seconds"],
            "features_process_s": features_run.seconds,
            "ratio": round(features["images_per_s"] / ceiling["images_per_s"], 4),
        }

    def sweep_point(self, repeat: int) -> dict:
        """b: train_head, finetune, evaluate at the sweep lr on cached features; the tutorial."""
        print(f"repeat {repeat}: sweep point at train_head.lr {self.sweep_lr:g}", flush=True)
        params_file = self.project / "params.yaml"
        original = params_file.read_text()
        set_params(params_file, {"train_head.lr": self.sweep_lr})
        try:
            stage_s = {stage: self.python(repeat, f"sweep-{stage}", f"stages/{stage}.py").seconds
                       for stage in SWEEP_STAGES}
            accuracy = read_json(self.project / "metrics" / "evaluate.json")["final"]["accuracy"]
        finally:
            params_file.write_text(original)
        print(f"repeat {repeat}: tutorial pattern at lr {self.sweep_lr:g}", flush=True)
        tutorial = self.tutorial(repeat, "tutorial-sweep", self.sweep_lr)
        pipeline_s = round(sum(stage_s.values()), 2)
        return {
            "pipeline_s": pipeline_s,
            "stage_s": stage_s,
            "pipeline_accuracy": round(accuracy, 4),
            "tutorial": tutorial,
            "time_ratio": round(pipeline_s / tutorial["process_s"], 4),
            "accuracy_difference_points": round(100 * (accuracy - tutorial["test_accuracy"]), 2),
        }


# ---------------------------------------------------------------- report


def spread(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 4), "values": values}


def summarize(rounds: list[dict]) -> dict:
    """Medians and raw values of every figure over the repeats measured so far."""
    summary: dict = {}
    a = [r["a"] for r in rounds if "a" in r]
    if a:
        ceiling = spread([x["ceiling_images_per_s"] for x in a])
        features = spread([x["features_images_per_s"] for x in a])
        ratio = round(features["median"] / ceiling["median"], 4)
        summary["a_features_vs_ceiling"] = {
            "ceiling_images_per_s": ceiling,
            "features_images_per_s": features,
            "ratio_of_medians": ratio,
            "ratios_per_repeat": [x["ratio"] for x in a],
            "target": f">= {TARGET_FEATURES_RATIO}",
            "meets_target": ratio >= TARGET_FEATURES_RATIO,
        }
    b = [r["b"] for r in rounds if "b" in r]
    if b:
        pipeline = spread([x["pipeline_s"] for x in b])
        tutorial = spread([x["tutorial"]["process_s"] for x in b])
        ratio = round(pipeline["median"] / tutorial["median"], 4)
        difference = spread([x["accuracy_difference_points"] for x in b])
        summary["b_sweep_point_vs_tutorial"] = {
            "pipeline_s": pipeline,
            "pipeline_stage_s": {stage: spread([x["stage_s"][stage] for x in b])
                                 for stage in SWEEP_STAGES},
            "tutorial_s": tutorial,
            "time_ratio_of_medians": ratio,
            "time_ratios_per_repeat": [x["time_ratio"] for x in b],
            "pipeline_accuracy": spread([x["pipeline_accuracy"] for x in b]),
            "tutorial_accuracy": spread([x["tutorial"]["test_accuracy"] for x in b]),
            "accuracy_difference_points": difference,
            "target": f"time ratio <= {TARGET_SWEEP_TIME_RATIO}, "
                      f"|accuracy difference| <= {TARGET_ACCURACY_POINTS} points",
            "meets_target": (ratio <= TARGET_SWEEP_TIME_RATIO
                             and abs(difference["median"]) <= TARGET_ACCURACY_POINTS),
        }
    c = [r["c"] for r in rounds if "c" in r]
    if c:
        repro = spread([x["repro_s"] for x in c])
        tutorial = spread([x["tutorial"]["process_s"] for x in c])
        stages = list(c[0]["stage_s"])
        summary["c_full_repro_vs_tutorial"] = {
            "repro_s": repro,
            "repro_stage_s": {stage: spread([x["stage_s"].get(stage) for x in c])
                              for stage in stages},
            "tutorial_s": tutorial,
            "tutorial_accuracy": spread([x["tutorial"]["test_accuracy"] for x in c]),
            "time_ratio_of_medians": round(repro["median"] / tutorial["median"], 4),
        }
    return summary


def count_rows(csv_path: Path) -> int:
    with csv_path.open() as file:
        return sum(1 for _ in file) - 1


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subset", type=int,
                        help="use N images per class from --raw, split by the project's stages "
                             "(default: the whole data.source)")
    parser.add_argument("--raw", type=Path, default=ROOT / "data" / "raw",
                        help="fetched images, one folder per class, for --subset "
                             "(default: data/raw)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds to measure (default: 3)")
    parser.add_argument("--parts", default="a,b,c",
                        help="comma-separated figures to measure: a (throughput), b (sweep "
                             "point), c (full repro) (default: a,b,c)")
    parser.add_argument("--sweep-lr", type=float, default=0.0005,
                        help="train_head.lr of the sweep point (default: 0.0005)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a params.yaml value in the scratch project, e.g. "
                             "--set train_head.epochs=2; repeatable")
    parser.add_argument("--workdir", type=Path,
                        help="empty or new folder for the scratch project and logs "
                             "(default: a new folder in the system temp folder)")
    parser.add_argument("--timeout-s", type=float, default=4 * 3600,
                        help="stop if one command runs longer, in seconds (default: 14400)")
    parser.add_argument("--out", type=Path, default=BENCH / "results" / "experiments.json",
                        help="JSON report (default: bench/results/experiments.json)")
    args = parser.parse_args()

    if args.subset is not None and args.subset < 2:
        parser.error(f"--subset = {args.subset}: use at least 2 images per class")
    if args.repeats < 1:
        parser.error(f"--repeats = {args.repeats}: use 1 or more")
    if not 0 < args.sweep_lr <= 1:
        parser.error(f"--sweep-lr = {args.sweep_lr}: use a learning rate in (0, 1]")
    args.parts = tuple(part.strip() for part in args.parts.split(",") if part.strip())
    unknown = sorted(set(args.parts) - set(PARTS))
    if unknown or not args.parts:
        parser.error(f"--parts {','.join(args.parts)}: use a comma-separated subset of a,b,c")
    if args.workdir is not None and args.workdir.exists() and any(args.workdir.iterdir()):
        parser.error(f"--workdir {args.workdir} is not empty; pass a new or empty folder")
    return args


def main() -> int:
    args = parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before describe_machine imports TensorFlow
    overrides = dict(parse_override(text) for text in args.set)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="imgclf-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    logs = workdir / "logs"
    logs.mkdir()
    if not os.environ.get("KERAS_HOME"):
        print("KERAS_HOME is not set: Keras reads weights and the data archive from "
              "~/.keras", flush=True)

    source = None
    subset_counts = None
    if args.subset is not None:
        source = workdir / "source"
        subset_counts = copy_subset(args.raw, args.subset, source)
    project = make_project(workdir, overrides, source)
    print(f"scratch project: {project}; logs: {logs}", flush=True)

    params_file = project / "params.yaml"
    default_lr = float(read_param(params_file, "train_head.lr"))
    if "b" in args.parts and args.sweep_lr == default_lr:
        raise SystemExit(f"--sweep-lr {args.sweep_lr:g} equals train_head.lr; pick another "
                         "value so that the sweep point changes a parameter")
    bench = Bench(project, logs, args.timeout_s, args.sweep_lr, default_lr)

    report: dict = {
        "benchmark": "experiments",
        "conditions": {
            "subset_per_class": args.subset,
            "subset_counts": subset_counts,
            "data_source": str(read_param(params_file, "data.source")),
            "repeats": args.repeats,
            "parts": list(args.parts),
            "overrides": {key: value for key, value in overrides.items()},
            "default_head_lr": default_lr,
            "sweep_head_lr": args.sweep_lr,
            "workdir": str(workdir),
        },
        "machine_at_start": describe_machine(),
    }
    started = time.monotonic()
    if "c" not in args.parts:
        print("setup: dvc repro (not measured)", flush=True)
        setup = run_command(["dvc", "repro"], project, logs / "0-setup.log",
                            timeout_s=args.timeout_s)
        report["setup_repro_s"] = setup.seconds

    rounds: list[dict] = []
    for repeat in range(1, args.repeats + 1):
        measured: dict = {"repeat": repeat}
        if "c" in args.parts:
            measured["c"] = bench.full_repro(repeat)
        if repeat == 1:
            report["conditions"]["images"] = {
                split: count_rows(project / "data" / "split" / f"{split}.csv")
                for split in ("train", "val", "test")}
        if "a" in args.parts:
            measured["a"] = bench.throughput(repeat)
        if "b" in args.parts:
            measured["b"] = bench.sweep_point(repeat)
        rounds.append(measured)

        report["summary"] = summarize(rounds)
        report["rounds"] = rounds
        report["elapsed_s"] = round(time.monotonic() - started, 1)
        report["load_average_at_end"] = [round(value, 2) for value in os.getloadavg()]
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"repeat {repeat} of {args.repeats} written to {args.out}", flush=True)

    print(json.dumps(report["summary"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
