"""Settings read from the environment (COROSEG_*): one reader, so a bad value is the same one-line error
whichever it is."""

from __future__ import annotations

import os

from coroseg.errors import InputError


def env_number(name: str, default: float, cast: type = float, minimum: float = 0) -> float:
    """The number in environment variable `name`, else `default`."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        value = cast(raw)
    except ValueError:
        kind = "a whole number" if cast is int else "a number"
        raise InputError(f"{name}={raw!r}: must be {kind}") from None
    if value < minimum:
        raise InputError(f"{name}={raw!r}: must be at least {minimum}")
    return value
