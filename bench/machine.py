"""Describe the machine a benchmark ran on: time, CPU model, cores, RAM, load, library versions.

`describe_machine()` returns a JSON-ready dict. It reads /proc/cpuinfo and
/proc/meminfo where they exist (Linux) and imports TensorFlow and Keras only
when `with_tensorflow` is true, so a driver that never loads TensorFlow starts quickly.
"""

from __future__ import annotations

import os
import platform
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path


def cpu_model(cpuinfo: str) -> str:
    """Return the first "model name" in /proc/cpuinfo text, or "unknown"."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            return value.strip()
    return "unknown"


def mem_total_gib(meminfo: str) -> float | None:
    """Return MemTotal from /proc/meminfo text in GiB, or None if it is absent."""
    for line in meminfo.splitlines():
        if line.startswith("MemTotal:"):
            kib = int(line.split()[1])
            return round(kib / 1024**2, 1)
    return None


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def describe_machine(with_tensorflow: bool = True) -> dict:
    """Return the time, CPU model, core count, RAM, load average and library versions."""
    description: dict = {
        "time_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpu_model": cpu_model(_read("/proc/cpuinfo")),
        "cpu_cores": os.cpu_count(),
        "ram_gib": mem_total_gib(_read("/proc/meminfo")),
        "load_average_1_5_15": [round(value, 2) for value in os.getloadavg()],
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "dvc": package_version("dvc"),
    }
    if with_tensorflow:
        import keras
        import tensorflow as tf

        description["tensorflow"] = tf.__version__
        description["keras"] = keras.__version__
        description["gpus"] = [gpu.name for gpu in tf.config.list_physical_devices("GPU")]
    return description
