"""Errors that reach the user as one line and a non-zero exit."""


class InputError(Exception):
    """Bad input from the user: the message names the file (or option) and the problem."""


class Stopped(Exception):
    """The user or the system asked the work to stop (SIGTERM, Ctrl-C); the run ends KILLED, not FAILED."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (libraries write pages), or its type when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
