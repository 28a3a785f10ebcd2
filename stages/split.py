"""split: data/prepared/manifest.csv -> data/split/{train,val,test}.csv, metrics/split.json."""

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

    splits = stratified_split(
        entries, val=params.split.val, test=params.split.test, seed=params.seed
    )

    with staged_directory(config.SPLIT_DIR) as staging:
        for name, items in splits.items():
            rows = [{"path": e.path, "label": e.label} for e in items]
            write_csv_atomic(staging / config.split_manifest(name).name, ["path", "label"], rows)

    counts = count_by_class(splits)
    write_json_atomic(config.METRICS_DIR / "split.json", counts)
    log.info("split %d images: %s", len(entries), {k: v["total"] for k, v in counts.items()})


if __name__ == "__main__":
    run_stage(main)
