"""Hide secrets in what the runner logs or prints: URL user info, and secret values in build logs."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

SECURE = "[secure]"
# scheme://userinfo@ : userinfo has no '/', '@' or whitespace (RFC 3986 authority)
_URL_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/@\s]+)@")
MIN_SECRET = 3  # shorter secure values are exported and shown as [secure], but not masked in output


def _mask_userinfo(match: re.Match[str]) -> str:
    user, sep, _password = match["userinfo"].partition(":")
    return f"{match['scheme']}{user}:***@" if sep else f"{match['scheme']}***@"


def mask_urls(text: str) -> str:
    """Every `scheme://user:password@` in `text` becomes `scheme://user:***@`, `scheme://token@` `scheme://***@`."""
    return _URL_USERINFO.sub(_mask_userinfo, text)


def url_secrets(url: str) -> list[str]:
    """The user info parts of `url` that mask_urls would hide (for masking them in a build log)."""
    match = _URL_USERINFO.search(url)
    if not match:
        return []
    user, sep, password = match["userinfo"].partition(":")
    return [password] if sep else [user]


class RedactingFormatter(logging.Formatter):
    """A log formatter that masks URL user info in the whole record, traceback included."""

    def format(self, record: logging.LogRecord) -> str:
        return mask_urls(super().format(record))


class Masker:
    """Replaces secret values in a stream of text by `[secure]`, also when a value is split across chunks:
    up to (longest secret - 1) characters are held back until more text (or the end) shows what they are."""

    def __init__(self, secrets: Iterable[str]):
        values = sorted({s for s in secrets if len(s) >= MIN_SECRET}, key=len, reverse=True)
        self.pattern = re.compile("|".join(re.escape(v) for v in values)) if values else None
        self.hold = max((len(v) for v in values), default=1) - 1
        self._pending = ""

    def feed(self, text: str, final: bool = False) -> str:
        if self.pattern is None:
            return text
        text = self._pending + text
        cut = len(text) if final else max(0, len(text) - self.hold)
        for match in self.pattern.finditer(text):
            if match.start() < cut < match.end():
                cut = match.end()  # never cut inside a secret
        self._pending = text[cut:]
        return self.pattern.sub(SECURE, text[:cut])
