"""The record of what the lab created, so teardown removes that and only that."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from travis_lab import cache

log = logging.getLogger(__name__)

ALLOWED_PREFIXES = ("twlab-", "twt-")


def check_name(name: str, prefix: str | None = None) -> None:
    """Refuse names the lab must not own: without an allowed prefix, or with odd characters."""
    prefixes = (prefix,) if prefix else ALLOWED_PREFIXES
    if not name.startswith(prefixes):
        raise ValueError(f"refusing container name {name!r}: lab names must start with one of {prefixes}")
    matched = next(p for p in prefixes if name.startswith(p))
    if len(name) == len(matched) or not all(c.isalnum() or c in "-_." for c in name):
        raise ValueError(
            f"refusing container name {name!r}: use letters, digits, '-', '_' and '.' after the prefix"
        )


class State:
    """`<cache>/state/containers.json`: {name: {"created_at": ..., "pid": ...}} under a file lock."""

    def __init__(self, cache_dir: Path | None = None) -> None:
        self.dir = cache.cache_root(cache_dir) / "state"
        self.path = self.dir / "containers.json"

    @contextmanager
    def edit(self) -> Iterator[dict[str, dict[str, object]]]:
        self.dir.mkdir(parents=True, exist_ok=True)
        with cache.locked(self.dir / "containers.lock", "lab state lock"):
            data = self._read()
            yield data
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
            os.replace(tmp, self.path)

    def _read(self) -> dict[str, dict[str, object]]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except ValueError:
            log.warning("lab state %s unreadable; starting from empty", self.path)
            return {}
        return data if isinstance(data, dict) else {}

    def entries(self) -> dict[str, dict[str, object]]:
        return self._read()

    def names(self) -> list[str]:
        return sorted(self._read())

    def add(self, name: str, **info: object) -> None:
        check_name(name)
        with self.edit() as data:
            data[name] = {
                "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                "pid": os.getpid(),
                **info,
            }

    def remove(self, name: str) -> None:
        with self.edit() as data:
            data.pop(name, None)

    def owns(self, name: str) -> bool:
        return name in self._read()
