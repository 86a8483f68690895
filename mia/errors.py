"""The one exception type for bad input, and how entry points report it: one line, exit status 2."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import TypeVar

log = logging.getLogger(__name__)
C = TypeVar("C")
T = TypeVar("T")


class MiaError(Exception):
    """A problem with the user's input or environment, with a message saying what to do about it."""


class NotApplicable(MiaError):
    """An attack that does not apply to this kind of target (CLiD on an unconditional model, say).

    A single run refuses it like any bad input; in a sweep such as ``experiment=compare_attacks`` the job is
    marked skipped, not failed, so one comparison serves pixel and text-to-image targets alike.
    """


def in_multirun_job() -> bool:
    """Whether this process runs a job of a Hydra multirun (a sweep)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def run_or_exit(program: str, task: Callable[[C], T], cfg: C) -> T:
    """Run ``task``; bad input (MiaError) becomes one line on stderr and exit status 2.

    In a job of a multirun the line is printed and the error raised on, so that Hydra records the job
    as failed and the sweep goes on to its other jobs (``mia.reporting.sweep.SweepSummary``).
    """
    try:
        return task(cfg)
    except MiaError as err:
        log.debug("bad input", exc_info=True)
        multirun = in_multirun_job()
        what = "skipped" if multirun and isinstance(err, NotApplicable) else "error"
        print(f"{program}: {what}: {err}", file=sys.stderr)
        if multirun:
            raise
        sys.exit(2)
