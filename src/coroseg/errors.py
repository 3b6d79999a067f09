"""Errors that reach the user as one line and a non-zero exit."""


class InputError(Exception):
    """Bad input from the user: the message names the file (or option) and the problem."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (libraries write pages), or its type when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
