"""Pure helpers of the benchmark scripts in bench/: log parsing, subsets, machine facts."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))  # the scripts import their sibling module `machine`

import experiments  # noqa: E402
import machine  # noqa: E402
import tutorial_pattern  # noqa: E402
from imgclf.manifest import Entry  # noqa: E402


def test_features_line_parsed():
    output = (
        "01:02:03 INFO imgclf.stages.features: caching 2 classes\n"
        "01:04:01 INFO imgclf.stages.features: features: 9266 images in 118.2 s "
        "(78.4 images/s)\n"
    )
    parsed = experiments.parse_features_line(output)
    assert parsed == {"images": 9266, "seconds": 118.2, "images_per_s": 78.4}


def test_features_line_missing_names_fix():
    with pytest.raises(SystemExit, match="FEATURES_LINE"):
        experiments.parse_features_line("features: done\n")


def test_stage_durations_run_to_next_start():
    starts = [("fetch", 10.0), ("prepare", 12.5), ("split", 20.0)]
    assert experiments.stage_durations(starts, end=21.25) == {
        "fetch": 2.5, "prepare": 7.5, "split": 1.25}


def test_stage_durations_empty_without_stages():
    assert experiments.stage_durations([], end=5.0) == {}


def test_running_stage_pattern_matches_dvc_line():
    match = experiments.RUNNING_STAGE.match("Running stage 'train_head':\n")
    assert match is not None
    assert match.group(1) == "train_head"


def test_override_value_parsed_as_yaml():
    assert experiments.parse_override("train_head.epochs=2") == ("train_head.epochs", 2)
    assert experiments.parse_override("train_head.lr=5e-4") == ("train_head.lr", 5e-4)
    assert experiments.parse_override("model.head=sigmoid") == ("model.head", "sigmoid")


def test_override_without_equals_rejected():
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        experiments.parse_override("train_head.epochs")


def test_set_params_keeps_comments(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("train_head:\n  lr: 0.001  # kept\n")
    experiments.set_params(params, {"train_head.lr": 0.0005})
    assert experiments.read_param(params, "train_head.lr") == 0.0005
    assert "# kept" in params.read_text()


def test_set_params_unknown_key_rejected(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("train_head:\n  lr: 0.001\n")
    with pytest.raises(SystemExit, match="no key 'epoch'"):
        experiments.set_params(params, {"train_head.epoch": 2})


def test_copy_subset_same_images_each_time(tmp_path):
    raw = tmp_path / "raw"
    for label in ("cats", "dogs"):
        (raw / label).mkdir(parents=True)
        for index in range(10):
            (raw / label / f"{index}.jpg").write_bytes(b"x")
    first = experiments.copy_subset(raw, 3, tmp_path / "first")
    experiments.copy_subset(raw, 3, tmp_path / "second")
    assert first == {"cats": 3, "dogs": 3}
    names = sorted(path.name for path in (tmp_path / "first" / "cats").iterdir())
    again = sorted(path.name for path in (tmp_path / "second" / "cats").iterdir())
    assert names == again


def test_copy_subset_too_large_rejected(tmp_path):
    for label in ("cats", "dogs"):
        (tmp_path / "raw" / label).mkdir(parents=True)
        (tmp_path / "raw" / label / "a.jpg").write_bytes(b"x")
    with pytest.raises(SystemExit, match="has only 1 images"):
        experiments.copy_subset(tmp_path / "raw", 2, tmp_path / "out")


def test_summary_ratio_uses_medians():
    rounds = [
        {"a": {"ceiling_images_per_s": 100.0, "features_images_per_s": 90.0, "ratio": 0.9}},
        {"a": {"ceiling_images_per_s": 80.0, "features_images_per_s": 60.0, "ratio": 0.75}},
        {"a": {"ceiling_images_per_s": 90.0, "features_images_per_s": 81.0, "ratio": 0.9}},
    ]
    summary = experiments.summarize(rounds)["a_features_vs_ceiling"]
    assert summary["ratio_of_medians"] == pytest.approx(81.0 / 90.0, abs=1e-4)
    assert summary["meets_target"] is True
    assert summary["ratios_per_repeat"] == [0.9, 0.75, 0.9]


def test_first_per_class_alternates_classes():
    cats = [Entry(f"c{i}", "cats") for i in range(4)]
    dogs = [Entry(f"d{i}", "dogs") for i in range(2)]
    entries = cats + dogs
    chosen = tutorial_pattern.first_per_class(entries, 5)
    assert [entry.path for entry in chosen] == ["c0", "d0", "c1", "d1", "c2"]


def test_cpu_model_and_memory_parsed():
    cpuinfo = "processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t: fpu\n"
    assert machine.cpu_model(cpuinfo) == "AMD EPYC 7B13"
    assert machine.cpu_model("processor\t: 0\n") == "unknown"
    assert machine.mem_total_gib("MemTotal:       24641536 kB\n") == 23.5


def test_run_command_times_stages(tmp_path):
    script = "echo \"Running stage 'a':\"; sleep 0.3; echo \"Running stage 'b':\""
    run = experiments.run_command(["sh", "-c", script], tmp_path, tmp_path / "log",
                                  timeout_s=30)
    assert list(run.stage_seconds) == ["a", "b"]
    assert 0.25 <= run.stage_seconds["a"] < 2
    assert "Running stage 'b'" in (tmp_path / "log").read_text()


def test_run_command_failure_shows_output(tmp_path):
    with pytest.raises(SystemExit, match="exit status 3(.|\n)*broken input"):
        experiments.run_command(["sh", "-c", "echo broken input; exit 3"], tmp_path,
                                tmp_path / "log", timeout_s=30)


def test_run_command_timeout_stops_children(tmp_path):
    script = "sleep 30 & echo $! > child.pid; wait"
    with pytest.raises(SystemExit, match="timed out after 0.5 s"):
        experiments.run_command(["sh", "-c", script], tmp_path, tmp_path / "log", timeout_s=0.5)

    child = int((tmp_path / "child.pid").read_text())
    deadline = time.monotonic() + 5
    while Path(f"/proc/{child}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)  # init reaps the killed child shortly after
    assert not Path(f"/proc/{child}").exists()
