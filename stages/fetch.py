"""fetch: data.source -> data/raw/<class>/<file>.

Runs on every `dvc repro` (always_changed in dvc.yaml) so that a local folder
source never goes stale; stages downstream rerun only if the fetched files
differ. It also validates all of params.yaml, so a mistyped key fails the
run even when no stage would otherwise rerun.
"""

import logging

from imgclf import config
from imgclf.fetch import fetch
from imgclf.stage import run_stage

log = logging.getLogger("imgclf.stages.fetch")


def main() -> None:
    params = config.load_params()

    counts = fetch(params.data.source, config.RAW_DIR, sha256=params.data.sha256)

    summary = ", ".join(f"{label}: {count}" for label, count in sorted(counts.items()))
    log.info("fetched %d files into %s (%s)", sum(counts.values()), config.RAW_DIR, summary)


if __name__ == "__main__":
    run_stage(main)
