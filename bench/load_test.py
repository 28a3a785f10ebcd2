"""Load test: a bounded number of real-JPEG and bad uploads against a service on 127.0.0.1.

Starts the server itself (`imgclf serve`, or bench/naive_server.py with
--server naive), sends --requests uploads at --concurrency, and checks that
every good upload gets 200, every bad one its 4xx, and /health still returns
200 afterwards. Prints and writes a JSON summary: throughput, p50/p99 latency.

Run from the repository root:
  PYTHONPATH=src python bench/load_test.py --server batched --images data/raw --output bench/results/batched.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"  # loopback only: this script never sends to another address

# Kinds of bad upload -> the status the service must return.
BAD_KINDS = {"not_an_image": 415, "truncated": 400, "oversized": 413, "missing_field": 422, "bomb": 413}


def bomb_png(side: int = 20_000) -> bytes:
    """A PNG header declaring side x side pixels, with no pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
            + chunk(b"IEND", b""))


def plan_requests(images: list[Path], count: int, bad_fraction: float, max_upload: int,
                  seed: int) -> list[tuple[str, dict]]:
    """Return (kind, httpx keyword arguments) for each request, in a seeded random order."""
    rng = random.Random(seed)
    plan = []
    for index in range(count):
        if rng.random() >= bad_fraction:
            path = rng.choice(images)
            plan.append(("good", {"files": {"file": (path.name, path.read_bytes(), "image/jpeg")}}))
            continue
        kind = list(BAD_KINDS)[index % len(BAD_KINDS)]
        if kind == "not_an_image":
            body = {"files": {"file": ("x.jpg", rng.randbytes(5000), "image/jpeg")}}
        elif kind == "truncated":
            data = rng.choice(images).read_bytes()
            body = {"files": {"file": ("cut.jpg", data[: len(data) // 3], "image/jpeg")}}
        elif kind == "oversized":
            body = {"files": {"file": ("big.jpg", b"\xff\xd8" + bytes(max_upload + 1024), "image/jpeg")}}
        elif kind == "missing_field":
            body = {"files": {"image": ("a.jpg", rng.choice(images).read_bytes(), "image/jpeg")}}
        else:
            body = {"files": {"file": ("bomb.png", bomb_png(), "image/png")}}
        plan.append((kind, body))
    return plan


async def send_all(base_url: str, plan, concurrency: int, timeout_s: float) -> list[dict]:
    semaphore = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=timeout_s) as client:
        async def one(kind, body):
            async with semaphore:
                started = time.perf_counter()
                try:
                    response = await client.post("/predict", **body)
                    status = response.status_code
                except httpx.TransportError as error:
                    status = f"transport error: {type(error).__name__}"
                return {"kind": kind, "status": status, "seconds": time.perf_counter() - started}

        return await asyncio.gather(*(one(kind, body) for kind, body in plan))


def start_server(kind: str, model: Path, port: int, max_upload_mb: float, log_path: Path):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "TF_CPP_MIN_LOG_LEVEL": "2"}
    if kind == "batched":
        command = [sys.executable, "-m", "imgclf.cli", "serve", "--model", str(model),
                   "--port", str(port), "--max-upload-mb", str(max_upload_mb)]
    else:
        command = [sys.executable, str(ROOT / "bench" / "naive_server.py"), "--model", str(model),
                   "--port", str(port), "--max-upload-mb", str(max_upload_mb)]
    log = log_path.open("w")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited {process.returncode}; see {log_path}")
        try:
            if httpx.get(f"http://{HOST}:{port}/health", timeout=2).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    process.terminate()
    raise SystemExit(f"server not healthy after 180 s; see {log_path}")


def summarize(results: list[dict], wall_s: float) -> dict:
    good = [r for r in results if r["kind"] == "good"]
    latencies_ms = np.array([r["seconds"] * 1000 for r in good])
    wrong = [r for r in results
             if r["status"] != (200 if r["kind"] == "good" else BAD_KINDS[r["kind"]])]
    return {
        "requests": len(results),
        "good_requests": len(good),
        "bad_requests": len(results) - len(good),
        "wall_s": round(wall_s, 2),
        "throughput_rps": round(len(results) / wall_s, 2),
        "good_throughput_rps": round(len(good) / wall_s, 2),
        "good_p50_ms": round(float(np.percentile(latencies_ms, 50)), 1),
        "good_p99_ms": round(float(np.percentile(latencies_ms, 99)), 1),
        "good_errors": sum(r["status"] != 200 for r in good),
        "wrong_status": len(wrong),
        "wrong_status_examples": [{"kind": r["kind"], "status": r["status"]} for r in wrong[:5]],
        "statuses": {str(s): sum(r["status"] == s for r in results)
                     for s in sorted({r["status"] for r in results}, key=str)},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", choices=("batched", "naive"), default="batched")
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "model.keras")
    parser.add_argument("--images", type=Path, default=ROOT / "data" / "raw",
                        help="folder searched recursively for .jpg files (default: data/raw)")
    parser.add_argument("--requests", type=int, default=2000, help="requests to send (default: 2000)")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight (default: 16)")
    parser.add_argument("--bad-fraction", type=float, default=0.1,
                        help="share of malformed, oversized and other bad uploads (default: 0.1)")
    parser.add_argument("--max-upload-mb", type=float, default=2.0)
    parser.add_argument("--port", type=int, default=8010)
    parser.add_argument("--time-limit-s", type=float, default=900,
                        help="stop the run after this many seconds (default: 900)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, help="write the JSON summary here as well")
    args = parser.parse_args()

    images = sorted(args.images.rglob("*.jpg"))
    if not images:
        raise SystemExit(f"no .jpg files under {args.images}; pass --images")
    plan = plan_requests(images, args.requests, args.bad_fraction,
                         int(args.max_upload_mb * 1024 * 1024), args.seed)

    log_path = Path(f"/tmp/imgclf-bench-{args.server}.log")
    server = start_server(args.server, args.model, args.port, args.max_upload_mb, log_path)
    base_url = f"http://{HOST}:{args.port}"
    try:
        # Warm-up outside the measurement: the first model calls build the graph.
        warm = [("good", body) for kind, body in plan if kind == "good"][:32]
        asyncio.run(send_all(base_url, warm, args.concurrency, 120))

        started = time.perf_counter()
        results = asyncio.run(asyncio.wait_for(
            send_all(base_url, plan, args.concurrency, 120), timeout=args.time_limit_s))
        wall_s = time.perf_counter() - started

        health = httpx.get(f"{base_url}/health", timeout=10)
        summary = {"server": args.server, "concurrency": args.concurrency,
                   "images": str(args.images), **summarize(results, wall_s),
                   "healthy_after": health.status_code == 200, "health": health.json()}
    finally:
        server.terminate()
        server.wait(timeout=60)

    text = json.dumps(summary, indent=2)
    print(text)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n")
    ok = summary["good_errors"] == 0 and summary["wrong_status"] == 0 and summary["healthy_after"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
