"""Entry point shared by the scripts in stages/: logging set-up and clean failure."""

from __future__ import annotations

import logging
import os
import signal
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


def _exit_on_sigterm(signum, frame):
    log.error("stopped by SIGTERM; partial outputs are being removed")
    sys.exit(128 + signum)


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's main(); an expected failure becomes one log line and exit status 1."""
    setup_logging()
    # SIGTERM (timeout, kill, a CI runner) raises SystemExit like Ctrl-C raises
    # KeyboardInterrupt, so partial outputs are removed on the way out.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        main()
    except StageError as error:
        log.error("%s", error)
        sys.exit(1)
