"""How the commands report bad input: one line on stderr and exit status 2 (or, in a sweep, a failed job)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import TypeVar

from mia.config import is_multirun
from mia.errors import MiaError, NotApplicable

log = logging.getLogger(__name__)
C = TypeVar("C")
T = TypeVar("T")


def run_or_exit(program: str, task: Callable[[C], T], cfg: C) -> T:
    """Run ``task``; bad input (MiaError) becomes one line on stderr and exit status 2.

    In a job of a multirun the line is printed and the error raised on, so that Hydra records the job
    as failed and the sweep goes on to its other jobs (``mia.reporting.sweep.SweepSummary``).
    """
    try:
        return task(cfg)
    except MiaError as err:
        log.debug("bad input", exc_info=True)
        multirun = is_multirun()
        what = "skipped" if multirun and isinstance(err, NotApplicable) else "error"
        print(f"{program}: {what}: {err}", file=sys.stderr)
        if multirun:
            raise
        sys.exit(2)
