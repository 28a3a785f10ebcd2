"""split: data/prepared/manifest.csv -> data/split/{train,val,test}.csv, metrics/split.json,
metrics/balance/{train,val,test}.csv.

Each image's split comes from a seeded hash of its file's bytes, so adding
images leaves existing ones where they were. Look-alike groups stay in one split.
"""

import logging

from imgclf import config
from imgclf.files import staged_directory, write_csv_atomic, write_json_atomic
from imgclf.manifest import read_entries
from imgclf.split import count_by_class, stratified_split
from imgclf.stage import run_stage

log = logging.getLogger("imgclf.stages.split")


def main() -> None:
    params = config.load_params()
    entries = read_entries(config.PREPARED_MANIFEST)

    result = stratified_split(
        entries, val=params.split.val, test=params.split.test, seed=params.split.seed,
        tolerance_sd=params.split.tolerance_sd,
    )
    for fix in result.corrections:
        log.warning(
            "class %r: the hashes gave train/val/test %s, outside split.tolerance_sd; moved %d "
            "images nearest the cut points to get %s. Those images may move again when "
            "images are added", fix.label, "/".join(map(str, fix.hashed)), fix.moved,
            "/".join(map(str, fix.corrected)),
        )

    with staged_directory(config.SPLIT_DIR) as staging:
        for name, items in result.splits.items():
            rows = [{"path": e.path, "label": e.label, "sha256": e.sha256} for e in items]
            write_csv_atomic(
                staging / config.split_manifest(name).name, ["path", "label", "sha256"], rows
            )

    counts = count_by_class(result.splits)
    counts["moved_by_correction"] = sum(fix.moved for fix in result.corrections)
    write_json_atomic(config.METRICS_DIR / "split.json", counts)
    with staged_directory(config.BALANCE_DIR) as staging:
        for name in config.SPLITS:
            rows = [{"label": k, "images": v} for k, v in counts[name]["per_class"].items()]
            write_csv_atomic(staging / f"{name}.csv", ["label", "images"], rows)

    log.info("split %d images: %s", len(entries), {k: counts[k]["total"] for k in config.SPLITS})


if __name__ == "__main__":
    run_stage(main)
