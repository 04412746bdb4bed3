"""The content-addressed lab cache: directory, keys, manifests with artifact checksums, and locks."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_CACHE = Path("/var/cache/travis-worker-lab")
MANIFEST = "manifest.json"


def cache_root(override: Path | None = None) -> Path:
    """The cache directory: `override`, else `$TRAVIS_LAB_CACHE`, else /var/cache/travis-worker-lab."""
    if override is not None:
        return Path(override)
    env = os.environ.get("TRAVIS_LAB_CACHE")
    return Path(env) if env else DEFAULT_CACHE


def inputs_key(inputs: Mapping[str, Any]) -> str:
    """sha256 over the canonical JSON form of the build inputs (order of dict keys does not matter)."""
    blob = json.dumps(inputs, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class Manifest:
    key: str
    inputs: dict[str, Any]
    built_at: str
    artifacts: dict[str, str]  # file name -> sha256
    timings: dict[str, float]

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=2, sort_keys=True) + "\n"


def write_manifest(entry: Path, manifest: Manifest) -> None:
    tmp = entry / (MANIFEST + ".tmp")
    tmp.write_text(manifest.to_json())
    os.replace(tmp, entry / MANIFEST)


def verify_entry(entry: Path, key: str) -> tuple[Manifest | None, str]:
    """Check a cache entry: manifest readable, same key, every artifact present with its sha256.

    Returns (manifest, "") when valid, else (None, reason).
    """
    path = entry / MANIFEST
    if not entry.is_dir():
        return None, "no cache entry"
    try:
        data = json.loads(path.read_text())
        manifest = Manifest(
            key=data["key"],
            inputs=data["inputs"],
            built_at=data["built_at"],
            artifacts=dict(data["artifacts"]),
            timings=dict(data.get("timings", {})),
        )
    except FileNotFoundError:
        return None, f"{path} missing (partial build?)"
    except (ValueError, KeyError, TypeError) as exc:
        return None, f"{path} unreadable: {exc}"
    if manifest.key != key:
        return None, f"{path} is for key {manifest.key[:12]}, expected {key[:12]}"
    if not manifest.artifacts:
        return None, f"{path} lists no artifacts"
    for name, want in manifest.artifacts.items():
        art = entry / name
        if not art.is_file():
            return None, f"artifact {art} missing"
        got = file_sha256(art)
        if got != want:
            return None, f"artifact {art} corrupt: sha256 {got[:12]} != manifest {want[:12]}"
    return manifest, ""


@contextlib.contextmanager
def locked(lockfile: Path, what: str) -> Iterator[None]:
    """Exclusive `fcntl.flock` on `lockfile`; logs when it has to wait for another process."""
    lockfile.parent.mkdir(parents=True, exist_ok=True)
    with lockfile.open("a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            log.info("waiting for %s: another process holds %s", what, lockfile)
            t0 = time.monotonic()
            fcntl.flock(fh, fcntl.LOCK_EX)
            log.info("got %s after %.1f s", what, time.monotonic() - t0)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below `path` (deepest first), from /proc/self/mounts."""
    root = str(path.resolve())
    found: list[str] = []
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        parts = line.split()
        if len(parts) < 2:
            continue
        mnt = parts[1].encode().decode("unicode_escape")
        if mnt == root or mnt.startswith(root + "/"):
            found.append(mnt)
    return sorted(found, key=len, reverse=True)


def safe_rmtree(path: Path) -> None:
    """Remove `path` after unmounting anything mounted below it (a failed debootstrap leaves /proc, /sys)."""
    if not path.exists():
        return
    for mnt in mounts_under(path):
        log.warning("unmounting leftover %s before removing %s", mnt, path)
        subprocess.run(["umount", "-l", mnt], check=False)
    if mounts_under(path):
        raise RuntimeError(f"refusing to remove {path}: still has mounts below it")
    shutil.rmtree(path, ignore_errors=False)
