"""audit: data/features/{meta.json,*.pooled.npy}, data/split/*.csv -> metrics/audit.{json,png}.

Scores every labelled image of the train, val and test splits together on the
cached view-0 pooled backbone features: likely mislabels from a cross-validated
linear model, and outliers far from every class (see imgclf.audit). The stage
only reports: it never moves or deletes an image. audit.exclude, read by
training, is how a user leaves suspects out.
"""

import io
import json
import logging
import shlex
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from imgclf import audit, config
from imgclf.errors import StageError
from imgclf.files import write_bytes_atomic, write_json_atomic
from imgclf.gallery import draw_grid, draw_message
from imgclf.manifest import Entry, class_names, read_entries
from imgclf.stage import run_stage

log = logging.getLogger("imgclf.stages.audit")

GRID_IMAGE = config.METRICS_DIR / "audit.png"
TILE_PIXELS = 160  # side of each image in the grid
LOGGED_SUSPECTS = 5  # of each kind
REBUILD = "run `dvc repro features` to rebuild the feature cache"


def read_meta(features_dir: Path) -> dict:
    """Return data/features/meta.json; raise StageError if the cache is missing or unreadable."""
    path = features_dir / "meta.json"
    if not features_dir.is_dir():
        raise StageError(f"{features_dir} not found; {REBUILD}")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StageError(f"{path} not found; {REBUILD}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise StageError(f"{path} is not valid JSON ({error}); {REBUILD}") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("splits"), dict):
        raise StageError(f"{path} has no 'splits' mapping; {REBUILD}")
    return meta


def read_view0(features_dir: Path, split: str, rows: int, meta: dict) -> np.ndarray:
    """Return the un-augmented pooled features of one split, (rows, C) float32.

    Raise StageError when meta.json or the array disagree with the split
    manifest's `rows` images, or when a feature is not finite.
    """
    manifest = config.split_manifest(split)
    split_meta = meta["splits"].get(split)
    listed = split_meta.get("rows") if isinstance(split_meta, dict) else None
    if listed != rows:
        raise StageError(
            f"{features_dir / 'meta.json'} lists {listed} {split} rows but {manifest} lists "
            f"{rows} images, so the features are stale; {REBUILD}"
        )

    path = features_dir / f"{split}.pooled.npy"
    try:
        pooled = np.load(path, mmap_mode="r")  # (views, rows, C)
    except FileNotFoundError:
        raise StageError(f"{path} not found; {REBUILD}") from None
    except (OSError, ValueError) as error:
        raise StageError(f"reading {path} failed ({error}); {REBUILD}") from None
    if pooled.ndim != 3 or pooled.shape[0] < 1 or pooled.shape[1] != rows:
        raise StageError(
            f"{path} has shape {pooled.shape}, but (views, {rows}, channels) was expected for "
            f"the {rows} images of {manifest}; {REBUILD}"
        )
    if not np.issubdtype(pooled.dtype, np.floating):
        raise StageError(f"{path} has dtype {pooled.dtype}, not float16 or float32; {REBUILD}")

    view0 = np.asarray(pooled[0], dtype=np.float32)  # (rows, C)
    bad_rows = np.flatnonzero(~np.isfinite(view0).all(axis=1))
    if bad_rows.size:
        raise StageError(
            f"{path}: {bad_rows.size} of {rows} rows have a NaN or infinite feature in view 0, "
            f"the first is row {bad_rows[0]}; a float16 cache overflows on large activations, "
            "so set features.dtype to float32 and run `dvc repro features`"
        )
    return view0


def load_tile(path: str) -> np.ndarray:
    """Return a prepared image as a grid tile, (TILE_PIXELS, TILE_PIXELS, 3) float RGB in [0, 255]."""
    try:
        with Image.open(path) as image:
            tile = image.convert("RGB").resize((TILE_PIXELS, TILE_PIXELS))
    except (FileNotFoundError, UnidentifiedImageError, OSError) as error:
        raise StageError(
            f"reading the image {path} listed in the split manifests failed ({error}); "
            "run `dvc repro` to rebuild data/prepared"
        ) from None
    return np.asarray(tile, dtype=np.float32)


def draw_suspects(suspects: list[dict]) -> bytes:
    """Return the PNG of the suspects' grid, or of a "no suspects" note when there are none."""
    if suspects:
        tiles = np.stack([load_tile(suspect["path"]) for suspect in suspects])  # (n, s, s, 3)
        picture = draw_grid(tiles, [audit.tile_caption(suspect) for suspect in suspects])
    else:
        picture = draw_message("No suspects: no likely mislabels or outliers")
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def log_suspects(report: dict, excluded: list[str]) -> None:
    """Log the top suspects of each kind and the command that leaves them out of training."""
    logged_paths = []
    for suspect in report["mislabel_suspects"][:LOGGED_SUSPECTS]:
        log.info(
            "likely mislabel: %s (%s) is labelled %s, the model gives %s p=%.3f",
            suspect["path"], suspect["split"], suspect["label"], suspect["suggested_label"],
            suspect["suggested_probability"],
        )
        logged_paths.append(suspect["path"])
    for suspect in report["outlier_suspects"][:LOGGED_SUSPECTS]:
        log.info(
            "outlier: %s (%s) labelled %s, score %.2f (nearest class %s)",
            suspect["path"], suspect["split"], suspect["label"], suspect["score"],
            suspect["nearest_class"],
        )
        logged_paths.append(suspect["path"])
    if not logged_paths:
        return
    # The suggestion keeps the paths params.yaml already excludes, since -S replaces the list.
    paths = list(dict.fromkeys([*excluded, *logged_paths]))
    log.info(
        "check them in %s, then leave the ones that are wrong out of training with "
        "`dvc exp run -S %s`, or list them under audit.exclude in params.yaml",
        GRID_IMAGE, shlex.quote(f"audit.exclude={json.dumps(paths)}"),
    )


def main() -> None:
    params = config.load_params()
    settings = params.audit

    entries: dict[str, list[Entry]] = {
        split: read_entries(config.split_manifest(split)) for split in config.SPLITS
    }
    meta = read_meta(config.FEATURES_DIR)
    blocks = [
        read_view0(config.FEATURES_DIR, split, len(entries[split]), meta) for split in config.SPLITS
    ]
    widths = {block.shape[1] for block in blocks}
    if len(widths) > 1:
        raise StageError(
            f"the pooled features of the splits have different channel counts {sorted(widths)}; "
            f"{REBUILD}"
        )
    features = np.concatenate(blocks)  # (n, C), the splits in config.SPLITS order

    listed = [entry for split in config.SPLITS for entry in entries[split]]
    classes = class_names(listed)
    images = audit.AuditedImages(
        paths=[entry.path for entry in listed],
        splits=[split for split in config.SPLITS for _ in entries[split]],
        label_ids=np.array([classes.index(entry.label) for entry in listed]),
        classes=classes,
    )

    fit = audit.out_of_fold_probabilities(
        features, images.label_ids, classes, folds=settings.folds, seed=params.seed
    )
    scores = audit.outlier_scores(features, images.label_ids, classes)
    report = audit.build_report(
        images, fit,
        audit.find_mislabels(fit.probabilities, images.label_ids, settings.mislabel_confidence),
        audit.find_outliers(scores, images.label_ids, settings.outlier_threshold),
        settings={
            "folds": settings.folds,
            "seed": params.seed,
            "mislabel_confidence": settings.mislabel_confidence,
            "outlier_threshold": settings.outlier_threshold,
        },
    )
    png = draw_suspects(audit.grid_suspects(report, settings.grid_size))

    write_json_atomic(config.AUDIT_REPORT, report)
    write_bytes_atomic(GRID_IMAGE, png)

    log.info(
        "audited %d images (%s) of %d classes; linear model C=%g, out-of-fold accuracy %.4f",
        report["n_images"],
        ", ".join(f"{split} {counts['n_images']}" for split, counts in report["per_split"].items()),
        len(classes), fit.regularization, fit.accuracy,
    )
    log.info(
        "%d likely mislabels (another class at p >= %g) and %d outliers (score >= %g); "
        "details in %s",
        report["n_mislabel_suspects"], settings.mislabel_confidence,
        report["n_outlier_suspects"], settings.outlier_threshold, config.AUDIT_REPORT,
    )
    log_suspects(report, settings.exclude)


if __name__ == "__main__":
    run_stage(main)
