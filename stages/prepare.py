"""prepare: data/raw -> data/prepared/{images/, manifest.csv, dropped.csv}, metrics/prepare.json.

Decodes every raw file fully, applies its EXIF orientation, converts it to RGB
and resizes it to data.image_size by prepare.resize. Files that cannot be used
are dropped with a reason; of each group of duplicates one copy stays, and an
image found under two labels is dropped in every copy.
"""

import logging
import time
from collections import Counter, defaultdict

from imgclf import config
from imgclf.errors import StageError
from imgclf.files import staged_directory, write_csv_atomic, write_json_atomic
from imgclf.prepare import Settings, drop_duplicates, prepare_all, summarize
from imgclf.stage import run_stage

log = logging.getLogger("imgclf.stages.prepare")

MAX_LOGGED = 20  # lines per kind of problem in the log; the full list is in dropped.csv
LARGE_GROUP = 10  # duplicate groups above this size are named in the log

MANIFEST_COLUMNS = ["path", "label", "source", "sha256", "content", "phash", "split_group"]
DROPPED_COLUMNS = ["source", "label", "reason", "group", "kept_copy"]


def main() -> None:
    params = config.load_params()
    settings = Settings(
        image_size=params.data.image_size,
        **params.prepare.model_dump(exclude={"near_duplicate_distance", "workers"}),
    )
    images_subdir = config.PREPARED_IMAGES_DIR.relative_to(config.PREPARED_DIR)

    with staged_directory(config.PREPARED_DIR) as staging:
        started = time.perf_counter()
        decoded = prepare_all(
            config.RAW_DIR, staging / images_subdir, settings, workers=params.prepare.workers
        )
        seconds = time.perf_counter() - started
        outcomes, groups = drop_duplicates(decoded, params.prepare.near_duplicate_distance)

        check_every_class_kept(outcomes)
        for before, after in zip(decoded, outcomes, strict=True):
            if before.output and not after.output:  # a duplicate's JPEG was already written
                (staging / images_subdir / before.output).unlink()

        kept = [o for o in outcomes if o.reason is None]
        write_csv_atomic(
            staging / config.PREPARED_MANIFEST.name, MANIFEST_COLUMNS,
            [manifest_row(o) for o in kept],
        )
        dropped_rows = [
            {"source": o.source, "label": o.label, "reason": o.reason,
             "group": o.group or "", "kept_copy": o.kept_copy or ""}
            for o in outcomes if o.reason is not None
        ]
        write_csv_atomic(staging / config.DROPPED_LIST.name, DROPPED_COLUMNS, dropped_rows)

    summary = summarize(outcomes, groups)
    write_json_atomic(config.METRICS_DIR / "prepare.json", summary)
    report(summary, dropped_rows, groups, images_per_second=len(decoded) / seconds)


def check_every_class_kept(outcomes: list) -> None:
    """Stop when a class folder lost every image, instead of training without that class."""
    reasons_by_class: dict[str, Counter] = defaultdict(Counter)
    for outcome in outcomes:
        reasons_by_class[outcome.label][outcome.reason] += 1
    emptied = {
        label: reasons for label, reasons in reasons_by_class.items() if reasons[None] == 0
    }
    if emptied:
        lines = [
            f"{label!r}: " + ", ".join(f"{count} {reason}" for reason, count in sorted(r.items()))
            for label, r in sorted(emptied.items())
        ]
        raise StageError(
            "no usable image is left in class folder(s) " + "; ".join(lines) + ". Fix or "
            "replace those files, or remove the folder from data.source. A label_conflict "
            "means the same picture is also in another class"
        )


def manifest_row(outcome) -> dict:
    return {
        "path": (config.PREPARED_IMAGES_DIR / outcome.output).as_posix(),
        "label": outcome.label,
        "source": outcome.source,
        "sha256": outcome.sha256,
        "content": outcome.fingerprint.content,
        "phash": outcome.fingerprint.phash,
        "split_group": outcome.split_group or "",
    }


def report(summary: dict, dropped_rows: list[dict], groups: list, images_per_second: float) -> None:
    """Log what was kept and dropped, every label conflict first."""
    for group in [g for g in groups if g.kept is None][:MAX_LOGGED]:
        copies = ", ".join(member.source for member in group.members)
        log.warning("label conflict, every copy dropped (group %s): %s", group.id, copies)

    for group in [g for g in groups if len(g.members) > LARGE_GROUP]:
        log.warning(
            "duplicate group %s joins %d images, starting with %s; if they are different "
            "pictures, lower prepare.near_duplicate_distance",
            group.id, len(group.members), group.members[0].source,
        )

    unusable = [row for row in dropped_rows if row["group"] == ""]
    for row in unusable[:MAX_LOGGED]:
        log.warning("dropped %s: %s", row["source"], row["reason"])

    log.info("decoded %.0f images per second", images_per_second)
    log.info("kept %d images: %s", summary["total"]["kept"], summary["kept"])
    log.info(
        "dropped %d files (%s); %d duplicate groups. Every dropped file, with its reason "
        "and group, is listed in %s",
        summary["total"]["dropped"], summary["total"]["dropped_by_reason"],
        summary["duplicates"]["groups"], config.DROPPED_LIST,
    )


if __name__ == "__main__":
    run_stage(main)
