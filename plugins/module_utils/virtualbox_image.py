# -*- coding: utf-8 -*-
# Copyright: travis.worker developers
# MIT License (see LICENSE)
"""Publish and prune VirtualBox images in the image store (issue #13; docs/runner.md, "Images").

A VirtualBox image is a powered-off *base VM* with a snapshot: the worker VMs are linked clones of that
snapshot (``VBoxManage clonevm --snapshot S --options link``, made by the runner at its job boundary).
In the store, ``<store>/<slug>/<version>/`` holds ``vm.json`` (``{"uuid", "snapshot"}``), ``private_key``
(the SSH key the image's ``vagrant`` user accepts; mode 0600) and ``image.json``, written last. ``current``
is a relative symlink to the active version, replaced atomically.

* :func:`publish` snapshots the base VM (unless the snapshot is there: a rerun continues), writes the version
  directory (``image.json`` last) and, with ``activate``, moves ``current``. The base VM must not be changed
  afterwards: its snapshot's disks are the parents of the clones' disks. The next build uses a new base VM.
* :func:`linked_clones` answers "which VMs are linked clones of this base VM": VirtualBox names no parent VM
  in ``showvminfo``; the link is in the media. ``showmediuminfo disk`` (VBoxManageDisk.cpp showMediumInfo())
  prints ``Parent UUID:``, ``In use by VMs:`` and ``Child UUIDs:``: the base VM's current disk is a child of
  the snapshot's disk, every linked clone's disk another child, used by the clone.
* :func:`prune` keeps the newest ``keep`` versions, the one ``current`` names and every one named in
  ``users/``; of the others it unregisters and deletes the base VM (``unregistervm --delete``), or, when
  other versions are snapshots of the same base VM, deletes only that version's snapshot, unless
  :func:`linked_clones` finds a VM still linked to it (then the version stays and the VMs are named).

Every function takes a :class:`~.vboxmanage.VBoxManage` runner; in check mode (``dry_run``) nothing is
written and the commands that would change something are listed in ``planned``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

from ansible_collections.travis.worker.plugins.module_utils.vboxmanage import VBoxManage, VBoxManageError

__all__ = [
    "ImageError",
    "activate",
    "clone_base",
    "linked_clones",
    "parse_medium_info",
    "prune",
    "publish",
    "release",
    "slug",
]

CURRENT = "current"
USERS = "users"
IMAGE_JSON = "image.json"
VM_JSON = "vm.json"
PRIVATE_KEY = "private_key"
# states in which a snapshot of the base VM is a cold one (no saved state the clones would inherit)
COLD_STATES = ("poweroff", "aborted")
_IMAGE_UUID_KEY = re.compile(r"-ImageUUID-\d+-\d+$")
_LABEL = re.compile(r"^(?P<label>[A-Za-z][A-Za-z -]*):\s+(?P<value>.*)$")
_CONTINUATION = " " * 16  # showMediumInfo() indents the further values of a label by 16 spaces
_IN_USE = re.compile(r"^(?P<name>.*) \(UUID: (?P<uuid>[0-9a-fA-F-]{36})\)(?P<snapshots>(?: \[.*\])*)$")


class ImageError(Exception):
    """A publish or prune step that cannot go on, with what to do about it."""


def slug(box: str) -> str:
    """The box name as a directory name: Vagrant's own convention (``/`` -> ``-VAGRANTSLASH-``)."""
    return box.replace("/", "-VAGRANTSLASH-")


def _box_dir(store: str, box: str) -> Path:
    return Path(store) / slug(box)


def _current(store: str, box: str) -> Optional[str]:
    try:
        return os.path.basename(os.readlink(_box_dir(store, box) / CURRENT).rstrip("/"))
    except OSError:
        return None


def activate(store: str, box: str, version: str, dry_run: bool = False) -> Optional[str]:
    """Point ``current`` at ``version`` (``ln -s`` to a temporary name, then ``rename``).

    Returns the version it named before (None when there was none)."""
    box_dir = _box_dir(store, box)
    if not (box_dir / version / IMAGE_JSON).is_file():
        raise ImageError(f"{box_dir / version} is not a published image (no {IMAGE_JSON}); publish it first")
    previous = _current(store, box)
    if previous != version and not dry_run:
        tmp = box_dir / f".{CURRENT}.{os.getpid()}"
        tmp.unlink(missing_ok=True)
        os.symlink(version, tmp)
        os.replace(tmp, box_dir / CURRENT)
    return previous


def _write(path: Path, data: bytes, mode: int) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def publish(
    vbox: VBoxManage,
    *,
    store: str,
    box: str,
    version: str,
    digest: str,
    base_vm: str,
    private_key: str,
    snapshot: str = "image",
    activate_it: bool = True,
    built_on: Optional[str] = None,
    now: Optional[datetime] = None,
) -> dict[str, Any]:
    """Make the powered-off ``base_vm`` image ``version`` of ``box``; see the module docstring.

    Returns ``changed``, ``version``, ``path``, ``vm`` (``{"uuid", "snapshot"}``), ``previous`` (the version
    ``current`` named before) and ``planned`` (argv skipped in check mode).
    """
    if not re.fullmatch(r"[0-9A-Za-z][0-9A-Za-z._-]*", version):
        raise ImageError(f"version {version!r}: use letters, digits, '.', '_' and '-' (e.g. 20261202.041500)")
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise ImageError(f"digest {digest!r} is not a sha256 hex digest (64 lower-case hex digits)")
    path = _box_dir(store, box) / version
    existing = _read_json(path / IMAGE_JSON)
    if existing is not None:
        if existing.get("digest") != digest:
            raise ImageError(
                f"{path} is already published with digest {existing.get('digest')}; "
                f"publish digest {digest} under another version"
            )
        vm = _read_json(path / VM_JSON) or {}
        previous = activate(store, box, version, vbox.dry_run) if activate_it else _current(store, box)
        return {"changed": activate_it and previous != version, "version": version, "path": str(path),
                "vm": vm, "previous": previous, "planned": vbox.planned}  # fmt: skip

    info = vbox.show_vm_info(base_vm)
    uuid, state = info.get("UUID", base_vm), info.get("VMState", "unknown")
    if state not in COLD_STATES:
        raise ImageError(
            f"base VM {base_vm} is {state}: halt it first (`vagrant halt base`); the image snapshot must "
            f"be a cold one, or every clone would start from its saved state"
        )
    try:
        key = Path(private_key).read_bytes()
    except OSError as exc:
        raise ImageError(
            f"private key {private_key}: {exc.strerror}; it is the base VM's Vagrant key"
        ) from None
    snapshots = [v for k, v in info.items() if k == "SnapshotName" or k.startswith("SnapshotName-")]
    if snapshot not in snapshots:  # a rerun after a failure later on finds it there
        vbox.snapshot_take(uuid, snapshot)
    vm = {"uuid": uuid, "snapshot": snapshot}
    image = {
        "box": box,
        "version": version,
        "digest": digest,
        "provider": "virtualbox",
        "created": (now or datetime.now(timezone.utc)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "built_on": built_on or socket.gethostname(),
    }
    previous = _current(store, box)
    if not vbox.dry_run:
        if path.exists():  # an incomplete earlier attempt (no image.json): start it again
            shutil.rmtree(path)
        path.mkdir(parents=True)
        _write(path / VM_JSON, (json.dumps(vm) + "\n").encode(), 0o644)
        _write(path / PRIVATE_KEY, key, 0o600)
        _write(path / IMAGE_JSON, (json.dumps(image) + "\n").encode(), 0o644)  # last: the version is complete
        if activate_it:
            activate(store, box, version)
    return {"changed": True, "version": version, "path": str(path), "vm": vm, "image": image,
            "previous": previous, "planned": vbox.planned}  # fmt: skip


def _read_json(path: Path) -> Optional[dict[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def clone_base(
    vbox: VBoxManage, *, store: str, box: str, name: str, uuid: str, linked: bool = False
) -> dict[str, Any]:
    """A new base VM for the next build, cloned from the snapshot of the image ``current`` names.

    ``clonevm <image VM> --snapshot <snapshot> --name NAME --uuid UUID --register`` (VBoxManageMisc.cpp
    handleCloneVM()). A full clone by default: a linked one would make the new image's disks children of the
    old image's, so the old version could never be pruned and every round would add a level to the chain.
    The caller points Vagrant's ``base`` machine at ``uuid`` (``.vagrant/machines/base/virtualbox/id``) and
    copies the returned ``private_key`` path to its data dir.
    """
    version = _current(store, box)
    path = _box_dir(store, box) / (version or "")
    vm = _read_json(path / VM_JSON) if version else None
    if not vm or not (path / IMAGE_JSON).is_file():
        raise ImageError(
            f"{_box_dir(store, box)}: no published image (current); build the base VM from the box"
        )
    args = ["clonevm", str(vm["uuid"]), "--snapshot", str(vm["snapshot"])]
    if linked:
        args += ["--options", "link"]
    vbox.run([*args, "--name", name, "--uuid", uuid, "--register"], f"clone image {version} as {name}",
             changes=True)  # fmt: skip
    return {"changed": True, "version": version, "uuid": uuid, "private_key": str(path / PRIVATE_KEY),
            "planned": vbox.planned}  # fmt: skip


def parse_medium_info(text: str) -> dict[str, list[str]]:
    """``VBoxManage showmediuminfo disk X`` -> {label: [values]} (a label's further lines are indented 16)."""
    values: dict[str, list[str]] = {}
    label: Optional[str] = None
    for line in text.splitlines():
        if line.startswith(_CONTINUATION) and label is not None:
            values[label].append(line.strip())
            continue
        match = _LABEL.match(line)
        if match:
            label = match["label"]
            values.setdefault(label, []).append(match["value"].strip())
        else:
            label = None
    return values


def _medium(vbox: VBoxManage, uuid: str) -> dict[str, list[str]]:
    _rc, out, _err = vbox.run(["showmediuminfo", "disk", uuid], f"show disk {uuid}")
    return parse_medium_info(out)


def _users(medium: dict[str, list[str]]) -> list[dict[str, Any]]:
    """``In use by VMs`` entries: name, uuid and the snapshots (names) through which the VM uses the disk."""
    users = []
    for value in medium.get("In use by VMs", []):
        match = _IN_USE.match(value)
        if match:
            snapshots = re.findall(r"\[(.*?) \(UUID: [0-9a-fA-F-]{36}\)\]", match["snapshots"])
            users.append({"name": match["name"], "uuid": match["uuid"].lower(), "snapshots": snapshots})
    return users


def linked_clones(vbox: VBoxManage, base_vm: str, snapshot: Optional[str] = None) -> list[dict[str, str]]:
    """The VMs (name, uuid) whose disks are children of the disks of ``base_vm``'s snapshots.

    From each current disk of the base VM up its ``Parent UUID`` chain: every ancestor is the disk of one of
    its snapshots (``In use by VMs: base (UUID: ...) [<snapshot> (UUID: ...)]``). Children of such a disk
    other than the next one down the chain belong to linked clones (or to another branch of the base VM's
    own snapshot tree, which it uses itself). ``snapshot``: only the disks of that snapshot count.
    """
    info = vbox.show_vm_info(base_vm)
    uuid = info.get("UUID", base_vm).lower()
    clones: dict[str, dict[str, str]] = {}
    for key, disk in info.items():
        if not _IMAGE_UUID_KEY.search(key) or not disk or disk == "none":
            continue
        below, medium = disk, _medium(vbox, disk)
        while (medium.get("Parent UUID") or ["base"])[0] != "base":
            parent = medium["Parent UUID"][0]
            medium = _medium(vbox, parent)
            mine = [u for u in _users(medium) if u["uuid"] == uuid]
            if snapshot is None or any(snapshot in u["snapshots"] for u in mine):
                for child in medium.get("Child UUIDs", []):
                    if child == below:
                        continue
                    for user in _users(_medium(vbox, child)):
                        if user["uuid"] != uuid:
                            clones[user["uuid"]] = {"name": user["name"], "uuid": user["uuid"]}
            below = parent
    return sorted(clones.values(), key=lambda u: u["name"])


def release(vbox: VBoxManage, vm: dict[str, Any], others: list[dict[str, Any]]) -> Optional[str]:
    """Free the VirtualBox side of one version (its ``vm.json`` is ``vm``) before its directory goes.

    ``others``: the ``vm.json`` of the versions that stay. When one of them names the same base VM, only
    this version's snapshot is deleted (``snapshot <vm> delete <snapshot>``); else the base VM is
    unregistered and its disks deleted (``unregistervm --delete``). Nothing is done, and the reason is
    returned, while :func:`linked_clones` finds a VM still linked to it. A base VM that is gone already
    (not found) needs nothing. Returns None when the version may be removed."""
    base, snapshot = str(vm.get("uuid", "")), str(vm.get("snapshot", ""))
    if not base:
        return None
    shared = any(str(other.get("uuid", "")) == base for other in others)
    try:
        clones = linked_clones(vbox, base, snapshot if shared else None)
    except VBoxManageError as exc:
        if exc.not_found:
            return None  # the base VM is gone already: only the directory is left
        return f"cannot check its base VM {base}: {exc}"
    if clones:
        names = ", ".join(f"{c['name']} ({c['uuid']})" for c in clones)
        return f"VMs are still linked clones of its base VM {base}: {names}"
    if shared:
        vbox.snapshot_delete(base, snapshot)
    else:
        vbox.unregister(base, delete=True)
    return None


def prune(vbox: VBoxManage, *, store: str, box: str, keep: int) -> dict[str, Any]:
    """Remove old versions of ``box`` (see the module docstring); returns removed/kept/refused/planned."""
    if keep < 1:
        raise ImageError(f"keep={keep}: keep at least the newest version")
    box_dir = _box_dir(store, box)
    entries = list(box_dir.iterdir()) if box_dir.is_dir() else []
    complete = sorted(
        (p.name for p in entries if p.is_dir() and not p.is_symlink() and (p / IMAGE_JSON).is_file()),
        reverse=True,
    )
    in_use = {}
    users_dir = box_dir / USERS
    if users_dir.is_dir():
        for user in sorted(users_dir.iterdir()):
            if user.is_file() and not user.name.startswith("."):
                in_use.setdefault(user.read_text(encoding="utf-8").strip(), []).append(user.name)
    current = _current(store, box)
    kept = {v: "newest" for v in complete[:keep]}
    for version in complete:
        if version == current:
            kept[version] = "current"
        elif version in in_use:
            kept[version] = "used by " + ", ".join(in_use[version])
    removed: list[str] = []
    refused: dict[str, str] = {}
    vms = {v: _read_json(box_dir / v / VM_JSON) or {} for v in complete}
    for version in complete:
        if version in kept:
            continue
        # one base VM per version (publish()), or one base VM with a snapshot per version: then only that
        # snapshot goes while another version that stays (or is not removed yet) still uses the VM
        others = [vms[v] for v in complete if v != version and v not in removed]
        why = release(vbox, vms[version], others)
        if why:
            refused[version] = why
            continue
        if not vbox.dry_run:
            shutil.rmtree(box_dir / version)
        removed.append(version)
    return {
        "changed": bool(removed),
        "removed": removed,
        "kept": dict(sorted(kept.items(), reverse=True)),
        "refused": refused,
        "planned": vbox.planned,
    }
