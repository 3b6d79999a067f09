"""Errors that reach the user as one line and a non-zero exit."""


class InputError(Exception):
    """Bad input from the user: the message names the file (or option) and the problem."""
