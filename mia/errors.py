"""The exception types for bad input; how entry points report them is ``mia.runs.exit.run_or_exit``."""

from __future__ import annotations


class MiaError(Exception):
    """A problem with the user's input or environment, with a message saying what to do about it."""


class NotApplicable(MiaError):
    """An attack that does not apply to this kind of target (CLiD on an unconditional model, say).

    A single run refuses it like any bad input; in a sweep such as ``experiment=compare_attacks`` the job is
    marked skipped, not failed, so one comparison serves pixel and text-to-image targets alike.
    """
