"""prepare: data/raw -> data/prepared/{images/, manifest.csv, dropped.csv}, metrics/prepare.json.

Decodes every raw file fully, applies its EXIF orientation, converts it to RGB
and resizes it to data.image_size; undecodable files are dropped with a reason.
"""

import logging

from imgclf import config
from imgclf.files import staged_directory, write_csv_atomic, write_json_atomic
from imgclf.prepare import prepare_all, summarize
from imgclf.stage import run_stage

log = logging.getLogger("imgclf.stages.prepare")

MAX_LOGGED_DROPS = 20  # the full list is in dropped.csv


def main() -> None:
    params = config.load_params()
    images_subdir = config.PREPARED_IMAGES_DIR.relative_to(config.PREPARED_DIR)

    with staged_directory(config.PREPARED_DIR) as staging:
        outcomes = prepare_all(
            config.RAW_DIR,
            staging / images_subdir,
            image_size=params.data.image_size,
            jpeg_quality=params.prepare.jpeg_quality,
            workers=params.prepare.workers,
        )
        kept_outcomes = [o for o in outcomes if o.reason is None]
        dropped_outcomes = [o for o in outcomes if o.reason is not None]

        manifest_rows = [
            {
                "path": (config.PREPARED_IMAGES_DIR / o.output).as_posix(),
                "label": o.label,
                "source": o.source,
                "sha256": o.sha256,
            }
            for o in kept_outcomes
        ]
        write_csv_atomic(
            staging / config.PREPARED_MANIFEST.name, ["path", "label", "source", "sha256"],
            manifest_rows,
        )
        dropped_rows = [
            {"source": o.source, "label": o.label, "reason": o.reason} for o in dropped_outcomes
        ]
        write_csv_atomic(
            staging / config.DROPPED_LIST.name, ["source", "label", "reason"], dropped_rows
        )

    summary = summarize(outcomes)
    write_json_atomic(config.METRICS_DIR / "prepare.json", summary)

    log.info("kept %d images (per class: %s)", len(kept_outcomes), summary["kept"])
    for row in dropped_rows[:MAX_LOGGED_DROPS]:
        log.warning("dropped %s: %s", row["source"], row["reason"])
    log.info(
        "dropped %d files; the list is in %s", len(dropped_outcomes), config.DROPPED_LIST
    )


if __name__ == "__main__":
    run_stage(main)
