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


def run_or_exit(program: str, task: Callable[[C], T], cfg: C) -> T:
    """Run ``task``; bad input (MiaError) becomes one line on stderr and exit status 2."""
    try:
        return task(cfg)
    except MiaError as err:
        log.debug("bad input", exc_info=True)
        print(f"{program}: error: {err}", file=sys.stderr)
        sys.exit(2)
