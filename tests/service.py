"""Run `imgclf serve` as a real uvicorn process on 127.0.0.1 for tests."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from helpers import PROJECT_ROOT, tool_env


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def running_service(model: Path, log_path: Path, *options: str) -> Iterator[str]:
    """Start the service on a free loopback port; yields its base URL and stops it afterwards."""
    port = free_port()
    command = [sys.executable, "-m", "imgclf.cli", "serve", "--model", str(model),
               "--port", str(port), *options]
    with log_path.open("w") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT,
            env=tool_env(PYTHONPATH=str(PROJECT_ROOT / "src")),
        )
        base_url = f"http://127.0.0.1:{port}"
        try:
            wait_until_healthy(base_url, process, log_path)
            yield base_url
        finally:
            process.terminate()
            process.wait(timeout=30)


def wait_until_healthy(base_url: str, process: subprocess.Popen, log_path: Path,
                       timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"service exited {process.returncode}:\n{log_path.read_text()}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{base_url}/health", timeout=2).status_code == 200:
                return
        time.sleep(0.25)
    raise AssertionError(f"service not healthy after {timeout_s} s:\n{log_path.read_text()}")
