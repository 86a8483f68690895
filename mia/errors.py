"""The one exception type for bad input: entry points print its message as one line and exit non-zero."""


class MiaError(Exception):
    """A problem with the user's input or environment, with a message saying what to do about it."""
