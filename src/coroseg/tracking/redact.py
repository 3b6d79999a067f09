"""Keep secrets out of params, tags, artifacts and messages.

`redact_text` is the one function every place uses: log messages (through `RedactingFilter`), the
tracking-failed message, params and tags, and every text file of a run's record.
"""

from __future__ import annotations

import logging
import os
import re
from urllib.parse import urlsplit, urlunsplit

MASK = "***"

# Secret environment variables whose names the patterns below do not catch.
_SECRET_ENV_NAMES = frozenset({
    "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
    "AZURE_STORAGE_ACCESS_KEY", "AZURE_STORAGE_CONNECTION_STRING", "DATABRICKS_TOKEN", "HF_TOKEN",
})
_SECRET_ENV_NAME = re.compile(r"TOKEN|PASSWORD|PASSWD|SECRET|CREDENTIAL|_KEY$", re.IGNORECASE)
_MIN_SECRET_VALUE = 6   # shorter values ("1", "true") would blank out ordinary words

# A name=value pair is secret when its name contains one of these ...
_SECRET_NAME_PART = re.compile(r"token|password|passwd|secret|credential", re.IGNORECASE)
# ... or when one of its words (split at _ - . and camelCase) is one of these: `key` as a word, so that
# api_key, AccountKey and X-Amz-... count and `monkey` does not.
_SECRET_NAME_WORDS = frozenset({"key", "apikey", "sig", "signature", "auth", "authorization", "pwd"})
_NAME_WORD_SPLIT = re.compile(r"[_.\-]|(?<=[a-z])(?=[A-Z])")

# name=value in a query string, a connection string or a message; the value runs to the next separator.
_ASSIGNMENT = re.compile(r"(?P<name>[A-Za-z][\w.\-]*)=(?P<value>[^&;\s'\"<>]+)")
_USERINFO = re.compile(r"(\w+://)[^/@\s]+@")


def _is_secret_name(name: str) -> bool:
    if _SECRET_NAME_PART.search(name):
        return True
    return any(word.lower() in _SECRET_NAME_WORDS for word in _NAME_WORD_SPLIT.split(name))


def secret_env_values() -> list[str]:
    """Values of the secret environment variables now set, longest first (a value may contain another)."""
    values = {
        value for name, value in os.environ.items()
        if len(value) >= _MIN_SECRET_VALUE and (name in _SECRET_ENV_NAMES or _SECRET_ENV_NAME.search(name))
    }
    return sorted(values, key=len, reverse=True)


def _mask_assignment(match: re.Match) -> str:
    if not _is_secret_name(match["name"]):
        return match[0]
    return f"{match['name']}={MASK}"


def redact_text(text: str) -> str:
    """`text` without user:password@ in URIs, secret name=value pairs, or the values of secret env vars."""
    for value in secret_env_values():   # read now: a test or a wrapper may set them after import
        text = text.replace(value, MASK)
    text = _USERINFO.sub(rf"\1{MASK}@", text)
    return _ASSIGNMENT.sub(_mask_assignment, text)


def redact_uri(uri: str | None) -> str | None:
    """A URI without its user:password@ part, and otherwise as `redact_text` leaves it."""
    if not uri:
        return uri
    parts = urlsplit(uri)
    if "@" in parts.netloc:   # rebuilt only then: urlunsplit would turn sqlite:///x into sqlite:/x
        uri = urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[-1]))
    return redact_text(uri)


class RedactingFilter(logging.Filter):
    """Installed on a handler, it redacts every record the handler emits, its arguments included."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact_text(record.getMessage())
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        return True
