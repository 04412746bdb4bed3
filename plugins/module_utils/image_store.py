# -*- coding: utf-8 -*-
# Copyright: travis.worker developers
# MIT License (see LICENSE or https://opensource.org/license/mit)
# SPDX-License-Identifier: MIT
"""The worker image store on a worker box (issue #13, docs/playbooks.md "The image store"), file side only.

Layout under the store root (``vms.image_store`` of the runner, ``worker_vms_image_store`` of the roles)::

    <root>/<slug>/<version>/image.json   written LAST: a version directory without it is incomplete
    <root>/<slug>/<version>/rootfs/      LXC: the image's root filesystem (overlay lower layer of every VM)
    <root>/<slug>/<version>/vm.json      VirtualBox: {"uuid": ..., "snapshot": ...}, the linked clones' source
    <root>/<slug>/<version>/private_key  the key the image's `vagrant` user accepts (0600, worker user)
    <root>/<slug>/current -> <version>   relative symlink, replaced atomically: moving it is publishing
    <root>/<slug>/users/<vm>             one line: the version that VM runs (written by the runner)

``slug`` is the box name with ``/`` replaced by ``-VAGRANTSLASH-`` (Vagrant's own convention). Versions sort
as strings (``%Y%m%d.%H%M%S`` names sort by time). Nothing here runs a command; the module does.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from typing import Any, Optional

IMAGE_JSON = "image.json"
CURRENT = "current"
USERS = "users"
RESERVED = (CURRENT, USERS)


def slug(box: str) -> str:
    return box.replace("/", "-VAGRANTSLASH-")


def box_dir(store: str, box: str) -> str:
    return os.path.join(store, slug(box))


def read_json(path: str) -> Optional[dict[str, Any]]:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_json_atomic(path: str, data: dict[str, Any], mode: int = 0o644) -> None:
    """Write ``data`` to a temp file next to ``path``, rename it into place (no reader sees half a file)."""
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=1, sort_keys=True)
            handle.write("\n")
        os.chmod(tmp, mode)
        os.rename(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def version_dirs(bdir: str) -> list[str]:
    """Every version directory name (complete or not), sorted."""
    try:
        names = os.listdir(bdir)
    except FileNotFoundError:
        return []
    return sorted(
        n
        for n in names
        if n not in RESERVED
        and not n.startswith(".")
        and os.path.isdir(os.path.join(bdir, n))
        and not os.path.islink(os.path.join(bdir, n))
    )


def images(bdir: str) -> list[dict[str, Any]]:
    """The complete versions (their image.json), oldest first."""
    out = []
    for name in version_dirs(bdir):
        data = read_json(os.path.join(bdir, name, IMAGE_JSON))
        if data is not None:
            out.append(dict(data, version=name))
    return out


def incomplete(bdir: str) -> list[str]:
    return [n for n in version_dirs(bdir) if not os.path.isfile(os.path.join(bdir, n, IMAGE_JSON))]


def current(bdir: str) -> Optional[str]:
    """The version `current` points to, or None."""
    try:
        target = os.readlink(os.path.join(bdir, CURRENT))
    except OSError:
        return None
    return os.path.basename(target.rstrip("/")) or None


def users(bdir: str) -> dict[str, str]:
    """VM name -> version it runs (users/<vm>, one line)."""
    udir = os.path.join(bdir, USERS)
    out: dict[str, str] = {}
    try:
        names = sorted(os.listdir(udir))
    except FileNotFoundError:
        return out
    for name in names:
        if name.startswith("."):
            continue
        try:
            with open(os.path.join(udir, name), encoding="utf-8") as handle:
                out[name] = handle.readline().strip()
        except OSError:
            continue
    return out


def set_current(bdir: str, version: str) -> None:
    """Point `current` at ``version`` atomically: a relative symlink under a temp name, renamed over it."""
    tmp = os.path.join(bdir, f".{CURRENT}.{os.getpid()}")
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(version, tmp)
    os.rename(tmp, os.path.join(bdir, CURRENT))


def by_digest(
    found: list[dict[str, Any]], digest: str, provider: Optional[str] = None
) -> Optional[dict[str, Any]]:
    """The newest complete image built with ``digest`` (and ``provider``), or None."""
    match = [
        i for i in found if i.get("digest") == digest and (provider is None or i.get("provider") == provider)
    ]
    return match[-1] if match else None


def previous(found: list[dict[str, Any]], cur: Optional[str]) -> Optional[str]:
    """The newest complete version older than ``cur`` (the rollback target of `previous`)."""
    names = [i["version"] for i in found]
    older = [n for n in names if cur is None or n < cur]
    return older[-1] if older else None


def prune_plan(bdir: str, keep: int) -> tuple[list[str], dict[str, list[str]]]:
    """(versions to remove, {kept version: [reasons]}): beyond the newest ``keep`` complete versions, never
    the `current` one nor one a VM in users/ runs. Incomplete directories are removed too (a failed build)."""
    found = [i["version"] for i in images(bdir)]
    cur = current(bdir)
    in_use: dict[str, list[str]] = {}
    for vm, ver in users(bdir).items():
        in_use.setdefault(ver, []).append(vm)
    newest = found[-keep:] if keep > 0 else []
    remove, kept = [], {}
    for name in found:
        why = []
        if name in newest:
            why.append(f"one of the newest {keep}")
        if name == cur:
            why.append("current")
        if name in in_use:
            why.append("in use by " + ", ".join(in_use[name]))
        if why:
            kept[name] = why
        else:
            remove.append(name)
    return remove + [n for n in incomplete(bdir) if n not in remove], kept


def sha256_of(path: str) -> str:
    """sha256 of a file (box files, catalog checksums), read 1 MiB at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1024 * 1024), b""):
            digest.update(chunk)
    return digest.hexdigest()
