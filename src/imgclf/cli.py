"""The `imgclf` command: `imgclf predict` classifies image files, `imgclf serve` starts the HTTP service."""

from __future__ import annotations

import argparse
import csv
import glob
import io
import json
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


from imgclf import config
from imgclf.errors import StageError

log = logging.getLogger("imgclf.cli")

# Extensions collected from folders; files named on the command line are read whatever their name.
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"}

EXIT_OK = 0
EXIT_SOME_FAILED = 1  # at least one file could not be classified; the others were
EXIT_USAGE = 2  # bad arguments, no files found, or the model cannot be loaded


@dataclass
class Result:
    path: str
    top: list[tuple[str, float]]  # (class, probability), most probable first
    probabilities: dict[str, float]
    error: str | None = None


def collect_files(patterns: Sequence[str]) -> tuple[list[Path], list[str]]:
    """Expand files, folders (recursively, image extensions only) and globs.

    Returns the files in command-line order without duplicates, and the
    arguments that matched nothing.
    """
    files: list[Path] = []
    unmatched: list[str] = []
    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():
            matches = sorted(
                file for file in path.rglob("*")
                if file.is_file() and file.suffix.lower() in IMAGE_SUFFIXES
                and not any(part.startswith(".") for part in file.relative_to(path).parts)
            )
        elif path.exists():
            matches = [path]
        elif glob.has_magic(pattern):
            matches = sorted(Path(match) for match in glob.glob(pattern, recursive=True)
                             if Path(match).is_file())
        else:
            matches = []
        if not matches:
            unmatched.append(pattern)
        files.extend(matches)
    return list(dict.fromkeys(files)), unmatched


def classify_files(loaded, files: list[Path], *, top_k: int, batch_size: int,
                   progress: bool) -> list[Result]:
    """Classify files with the shared inference path; a file that fails gets an error Result."""
    from tqdm import tqdm

    from imgclf.inference import ImageError, image_array, predict_arrays, top_k as best

    classes = loaded.metadata.classes
    results: list[Result] = []
    bar = tqdm(total=len(files), unit="image", desc="predict", disable=not progress, file=sys.stderr)
    for start in range(0, len(files), batch_size):
        chunk = files[start : start + batch_size]
        arrays, good = [], []
        for file in chunk:
            try:
                arrays.append(image_array(
                    file.read_bytes(), loaded.metadata.image_size, **loaded.metadata.conversion()
                ))
                good.append(file)
            except ImageError as error:
                results.append(Result(str(file), [], {}, f"{error.kind}: {error}"))
            except OSError as error:
                results.append(Result(str(file), [], {}, f"unreadable: {error.strerror or error}"))
        if arrays:
            probabilities = predict_arrays(loaded.predictor, arrays, batch_size)  # (n, n_classes)
            for file, row in zip(good, probabilities, strict=True):
                results.append(Result(
                    str(file), best(row, classes, top_k),
                    {name: float(value) for name, value in zip(classes, row, strict=True)},
                ))
        bar.update(len(chunk))
    bar.close()

    order = {str(file): index for index, file in enumerate(files)}
    return sorted(results, key=lambda result: order[result.path])


def format_results(results: list[Result], output_format: str, top_k: int) -> str:
    if output_format == "json":
        return json.dumps(
            [{"path": r.path, "top": [{"class": c, "probability": p} for c, p in r.top],
              "probabilities": r.probabilities, "error": r.error} for r in results],
            indent=2,
        ) + "\n"

    if output_format == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        header = ["path", "error"]
        for rank in range(1, top_k + 1):
            header += [f"class_{rank}", f"probability_{rank}"]
        writer.writerow(header)
        for r in results:
            row = [r.path, r.error or ""]
            for rank in range(top_k):
                row += list(r.top[rank]) if rank < len(r.top) else ["", ""]
            writer.writerow(row)
        return buffer.getvalue()

    # table: one line per file, columns aligned on the path
    width = max((len(r.path) for r in results), default=4)
    lines = []
    for r in results:
        if r.error:
            cells = f"ERROR {r.error}"
        else:
            cells = "  ".join(f"{name} {probability:.4f}" for name, probability in r.top)
        lines.append(f"{r.path:<{width}}  {cells}")
    return "\n".join(lines) + "\n"


def run_predict(args: argparse.Namespace) -> int:
    from imgclf.inference import load_model

    files, unmatched = collect_files(args.paths)
    if not files:
        log.error("no files to classify in %s; pass image files, folders or globs", args.paths)
        return EXIT_USAGE

    loaded = load_model(Path(args.model))
    top_k = min(args.top_k, len(loaded.metadata.classes))
    progress = len(files) > args.batch_size and sys.stderr.isatty()
    results = [Result(pattern, [], {}, "not_found: no file, folder or glob match") for pattern in unmatched]
    results += classify_files(loaded, files, top_k=top_k, batch_size=args.batch_size, progress=progress)
    sys.stdout.write(format_results(results, args.format, top_k))

    failed = [r for r in results if r.error]
    for r in failed:
        log.error("%s: %s", r.path, r.error)
    if failed:
        log.error("%d of %d files could not be classified", len(failed), len(results))
        return EXIT_SOME_FAILED
    return EXIT_OK


def run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from imgclf.serve import ServiceSettings, create_app, setup_json_logging

    setup_json_logging()
    if args.host not in ("127.0.0.1", "::1", "localhost"):
        log.warning("binding %s: the service is reachable from other machines", args.host)
    settings = ServiceSettings(
        model=Path(args.model),
        max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
        max_batch_size=args.max_batch_size,
        max_wait_ms=args.max_wait_ms,
    )
    app = create_app(settings)
    uvicorn.run(app, host=args.host, port=args.port, log_config=None, access_log=False)
    return EXIT_OK


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{value} is not a positive number")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imgclf", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    model_help = (
        "model to load: a .keras or .h5 file, a SavedModel folder or a .tflite file, with "
        f"metadata.json beside it (default: {config.FINAL_MODEL})"
    )

    predict = commands.add_parser("predict", help="classify image files, folders or globs")
    predict.add_argument("paths", nargs="+", metavar="PATH",
                         help="image file, folder (searched recursively) or glob such as 'photos/**/*.jpg'")
    predict.add_argument("--model", default=str(config.FINAL_MODEL), help=model_help)
    predict.add_argument("--top-k", type=positive_int, default=3, help="classes to show per image (default: 3)")
    predict.add_argument("--format", choices=("table", "json", "csv"), default="table",
                         help="output format on stdout (default: table)")
    predict.add_argument("--batch-size", type=positive_int, default=32,
                         help="images per model call (default: 32)")
    predict.set_defaults(run=run_predict)

    serve = commands.add_parser("serve", help="serve the model over HTTP with FastAPI and uvicorn")
    serve.add_argument("--model", default=str(config.FINAL_MODEL), help=model_help)
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to bind (default: 127.0.0.1, this machine only)")
    serve.add_argument("--port", type=int, default=8000, help="TCP port (default: 8000)")
    serve.add_argument("--max-upload-mb", type=positive_float, default=10.0,
                       help="largest request body in MiB; larger ones get 413 (default: 10)")
    serve.add_argument("--max-batch-size", type=positive_int, default=16,
                       help="maximum images per model call across concurrent requests (default: 16)")
    serve.add_argument("--max-wait-ms", type=float, default=5.0,
                       help="maximum time in ms that an image waits for others to join its batch (default: 5)")
    serve.set_defaults(run=run_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=os.environ.get("IMGCLF_LOG_LEVEL", "INFO").upper(),
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.run(args)
    except StageError as error:
        log.error("%s", error)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
