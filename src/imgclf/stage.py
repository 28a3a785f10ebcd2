"""Entry point shared by the scripts in stages/: logging set-up and clean failure."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

from imgclf.errors import StageError

log = logging.getLogger("imgclf")


def setup_logging() -> None:
    """Log INFO and above to stderr; the IMGCLF_LOG_LEVEL variable overrides the level."""
    logging.basicConfig(
        level=os.environ.get("IMGCLF_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's main(); an expected failure becomes one log line and exit status 1."""
    setup_logging()
    try:
        main()
    except StageError as error:
        log.error("%s", error)
        sys.exit(1)
