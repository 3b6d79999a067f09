"""Keep secrets out of params, tags, artifacts and messages."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

_SECRET_KEYS = re.compile(r"(token|password|passwd|secret|key|credential)", re.IGNORECASE)
_USERINFO = re.compile(r"(\w+://)[^/@\s]+@")


def redact_uri(uri: str | None) -> str | None:
    """Drop user:password@ and secret-looking query values from a URI; leave other URIs untouched."""
    if not uri:
        return uri
    parts = urlsplit(uri)
    pairs = [pair.partition("=") for pair in parts.query.split("&") if pair]
    secret_query = any(_SECRET_KEYS.search(k) for k, _, _ in pairs)
    if "@" not in parts.netloc and not secret_query:
        return uri
    netloc = parts.netloc.rsplit("@", 1)[-1]
    query = "&".join(f"{k}=***" if _SECRET_KEYS.search(k) else f"{k}{sep}{v}" for k, sep, v in pairs)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_text(text: str) -> str:
    """Drop user:password@ from any URI inside a free-form message."""
    return _USERINFO.sub(r"\1***@", text)
