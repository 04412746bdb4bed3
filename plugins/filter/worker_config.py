"""A filter that shows what changes in the runner's configuration without its secrets (issue #11 section 4).

``config_changes`` lists what differs between two configuration mappings as ``key: old -> new`` lines with
every secret masked, so the worker role can tell the operator what a run changes (or would change in check
mode) while its template tasks run with ``no_log`` and ``diff: false``.

Secrets are the values of keys named like a credential (``token``, ``password``, ``secret``, ``key``...) and
the password part of any URL (``rediss://:PASSWORD@host`` -> ``rediss://:***@host``), as the runner's own
``travis-worker config --show`` masks them.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit


MASK = "***"
_SECRET_NAME = re.compile(r"(token|password|passwd|secret|credential|private_?key|api_?key)$", re.IGNORECASE)
_URL_PASSWORD = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^:@/]*):(?P<password>[^@/]*)@")


def _is_secret_key(path: str) -> bool:
    return bool(_SECRET_NAME.search(path.rsplit(".", 1)[-1]))


def mask_value(path: str, value: Any) -> Any:
    """``value`` of key ``path`` (dotted) as it may be shown."""
    if value is None or value == "":
        return value
    if _is_secret_key(path):
        return MASK
    if isinstance(value, str):
        parts = urlsplit(value) if "://" in value else None
        if parts is not None and parts.password is not None:
            return _URL_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", value, count=1)
        return value
    if isinstance(value, (list, tuple)):
        return [mask_value(path, item) for item in value]
    if isinstance(value, dict):
        return redact_config(value, path)
    return value


def redact_config(data: Any, prefix: str = "") -> Any:
    """A copy of ``data`` with every secret masked."""
    if not isinstance(data, dict):
        return mask_value(prefix, data)
    return {key: mask_value(f"{prefix}.{key}" if prefix else str(key), value) for key, value in data.items()}


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict) and (data or not prefix):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: data}


def _show(path: str, value: Any) -> str:
    shown = mask_value(path, value)
    return '""' if shown == "" else str(shown)


def config_changes(old: Any, new: Any) -> list[str]:
    """``key: old -> new`` for every key that differs (``+ key: new`` added, ``- key`` removed), masked.

    A secret that changed reads ``key: changed (value not shown)``: its masked old and new values look alike.
    """
    before, after = (
        _flatten(old if isinstance(old, dict) else {}),
        _flatten(new if isinstance(new, dict) else {}),
    )
    lines: list[str] = []
    for path in sorted(set(before) | set(after)):
        if path not in before:
            lines.append(f"+ {path}: {_show(path, after[path])}")
        elif path not in after:
            lines.append(f"- {path}")
        elif before[path] != after[path]:
            old_shown, new_shown = _show(path, before[path]), _show(path, after[path])
            if old_shown == new_shown:
                lines.append(f"{path}: changed (value not shown)")
            else:
                lines.append(f"{path}: {old_shown} -> {new_shown}")
    return lines


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"config_changes": config_changes}
