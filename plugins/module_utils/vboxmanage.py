# -*- coding: utf-8 -*-
# Copyright: travis.worker developers
# MIT License (see LICENSE)
"""The one runner for VBoxManage: argv lists, LANG=C, and every output parser in one place.

VirtualBox registrations are per user: run the module as the user whose VMs you mean
(``become_user: travis``); this runner never adds ``sudo`` by itself.

A call fails when VBoxManage exits non-zero **or** prints a ``VBoxManage: error:`` line on stderr with exit 0
(as Vagrant's VirtualBox driver treats it: e.g. ``showvminfo`` of an inaccessible VM exits 0 and prints the
access error there). The failure message starts with that error line, never with the progress line
(``0%...100%``) VBoxManage writes to stderr before it. The parsers read the formats of VirtualBox 7.0 and 7.1
(tests/unit/fixtures/vboxmanage/, each with its provenance).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Optional

from ansible_collections.travis.worker.plugins.module_utils.cli import (
    C_LOCALE,
    CommandError,
    CommandRunner,
    error_lines,
    headline,
)

__all__ = [
    "C_LOCALE",
    "INACCESSIBLE",
    "VBoxManage",
    "VBoxManageError",
    "VmEntry",
    "config_file_from_human",
    "failed",
    "parse_extpacks",
    "parse_human_info",
    "parse_list_vms",
    "parse_machinereadable",
    "parse_system_properties",
    "snapshot_names",
]

INACCESSIBLE = "<inaccessible>"

_LIST_LINE = re.compile(r'^"(?P<name>.*)" \{(?P<uuid>[0-9a-fA-F-]{36})\}\s*$')
_MR_LINE = re.compile(r'^(?P<key>"(?:[^"\\]|\\.)*"|[^=]+)=(?P<value>.*)$')
# "already locked by a session (or being locked or unlocked)" (7.x), "already locked for a session (or
# being unlocked)" (6.1), "Cannot unregister the machine '...' while it is locked".
_LOCKED = re.compile(
    r"is already locked|while it is locked|locked for a session|VBOX_E_INVALID_OBJECT_STATE", re.IGNORECASE
)
_NOT_FOUND = re.compile(r"Could not find a registered machine|VBOX_E_OBJECT_NOT_FOUND", re.IGNORECASE)
# SessionMachine::restoreSnapshot on an online VM: "Cannot delete the current state of the running machine".
_ONLINE = re.compile(r"of the running machine|VBOX_E_INVALID_VM_STATE", re.IGNORECASE)
# 7.0 prints this human line inside --machinereadable output; 7.1 prints encryption="...".
_RAW_ENCRYPTION = re.compile(r"^Encryption:\s+(?P<value>\S+)\s*$")
# VBoxManageList.cpp listExtensionPacks(): "Pack no.%2zu:   %ls" opens each pack.
_EXTPACK_HEAD = re.compile(r"^Pack no\.\s*(?P<index>\d+):\s*(?P<name>.*?)\s*$")


@dataclass(frozen=True)
class VmEntry:
    """One line of ``VBoxManage list vms``."""

    name: str
    uuid: str

    @property
    def inaccessible(self) -> bool:
        return self.name == INACCESSIBLE

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "uuid": self.uuid, "inaccessible": self.inaccessible}


class VBoxManageError(CommandError):
    """A failed VBoxManage call, with everything an operator needs to act on it."""

    @property
    def locked(self) -> bool:
        return bool(_LOCKED.search(self.stderr or ""))

    @property
    def not_found(self) -> bool:
        return bool(_NOT_FOUND.search(self.stderr or ""))

    @property
    def online(self) -> bool:
        """The VM must be powered off for this (e.g. ``snapshot restore`` of a running VM)."""
        return bool(_ONLINE.search(self.stderr or ""))


def failed(rc: int, stderr: str) -> bool:
    """Whether a VBoxManage call failed: non-zero exit, or exit 0 with ``VBoxManage: error:`` on stderr."""
    return rc != 0 or bool(error_lines(stderr, "VBoxManage"))


def parse_list_vms(text: str) -> list[VmEntry]:
    """Parse ``VBoxManage list vms`` / ``list runningvms``: ``"name" {uuid}`` per line."""
    entries = []
    for line in text.splitlines():
        match = _LIST_LINE.match(line.strip())
        if match:
            entries.append(VmEntry(name=match.group("name"), uuid=match.group("uuid").lower()))
    return entries


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        return value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    return value


def parse_machinereadable(text: str) -> dict[str, str]:
    """Parse ``VBoxManage showvminfo --machinereadable``: ``key="value"`` / ``"quoted key"="value"`` lines.

    Repeated keys keep the first value (VBoxManage repeats e.g. ``SnapshotName`` for each
    snapshot level with a suffix, so real keys are unique anyway). VirtualBox 7.0 prints
    ``Encryption:     disabled`` and 7.1 ``encryption="disabled"``: both give ``info["encryption"]``.
    """
    info: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        raw = _RAW_ENCRYPTION.match(line)
        if raw:  # VirtualBox 7.0's human-format line; 7.1 prints encryption="..." (same key either way)
            info.setdefault("encryption", raw.group("value"))
            continue
        match = _MR_LINE.match(line)
        if not match:
            continue
        key = _unquote(match.group("key"))
        info.setdefault(key, _unquote(match.group("value")))
    return info


def parse_system_properties(text: str) -> dict[str, str]:
    """Parse ``VBoxManage list systemproperties`` (``Key:   value`` lines)."""
    props = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            props[key.strip()] = value.strip()
    return props


def parse_extpacks(text: str) -> list[dict[str, Any]]:
    """Parse ``VBoxManage list extpacks`` (run with LANG=C: the labels are translatable since 7.0).

    One dict per pack: ``name``, ``version``, ``revision`` (as printed), ``usable`` (bool) and
    ``why_unusable`` (empty when usable). Lines before the first ``Pack no.`` (``Extension Packs: N``) are
    skipped; a label this parser does not know is ignored."""
    packs: list[dict[str, Any]] = []
    labels = {
        "Version": "version",
        "Revision": "revision",
        "Usable": "usable",
        "Why unusable": "why_unusable",
    }
    for line in text.splitlines():
        head = _EXTPACK_HEAD.match(line)
        if head:
            pack = {
                "name": head.group("name"),
                "version": "",
                "revision": "",
                "usable": "",
                "why_unusable": "",
            }
            packs.append(pack)
            continue
        key, sep, value = line.partition(":")
        if packs and sep and key in labels:
            packs[-1][labels[key]] = value.strip()
    for pack in packs:
        pack["usable"] = pack["usable"] == "true"
    return packs


def parse_human_info(text: str) -> dict[str, str]:
    """Parse the human-readable ``VBoxManage showvminfo`` (``Key:   value``); the only form that names the
    settings file of an inaccessible VM (the machine-readable form prints just its name and UUID).

    Labels are padded to 17 columns for an inaccessible VM and to 28 for an accessible one; both parse.
    The labels are translatable in VirtualBox 7 (``Info::tr``): only ``config_file_from_human`` reads one."""
    info: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key and not key.startswith(" "):
            info.setdefault(key.strip(), value.strip())
    return info


def config_file_from_human(text: str) -> Optional[str]:
    """The ``Config file:`` of a human ``showvminfo`` (``Config file:     PATH`` for an inaccessible VM).

    Human text: the label is a translatable string in VirtualBox 7 (docs/recordings.md)."""
    return parse_human_info(text).get("Config file") or None


def snapshot_names(info: dict[str, str]) -> list[str]:
    """Snapshot names from a parsed ``showvminfo --machinereadable`` (``SnapshotName``, ``SnapshotName-1``)"""
    return [value for key, value in info.items() if key == "SnapshotName" or key.startswith("SnapshotName-")]


class VBoxManage(CommandRunner):
    """Run VBoxManage through ``module.run_command`` with argv lists and the C locale.

    With ``dry_run=True`` (check mode) the commands that change a VM (poweroff, unregister, snapshot
    take/restore/delete) are not run; their argv is kept in ``planned``. Reading commands always run."""

    program = "VBoxManage"
    error_type = VBoxManageError
    missing_remedy = (
        "install VirtualBox (role travis.worker.virtualbox) or set the module's vboxmanage option to its path"
    )

    def __init__(self, module: Any, binary: Optional[str] = None, dry_run: bool = False) -> None:
        super().__init__(module, binary, dry_run=dry_run)

    def run(
        self, args: list[str], what: str, check: bool = True, changes: bool = False
    ) -> tuple[int, str, str]:
        """Run ``VBoxManage <args>``; on failure raise a VBoxManageError naming ``what`` was attempted.

        A command that ``changes`` something is skipped in a dry run (its argv goes to ``planned``)."""
        cmd = self.argv(args)
        if changes and self.skip(cmd):
            return 0, "", ""
        rc, out, err = self.call(cmd)
        if check and failed(rc, err):
            raise VBoxManageError(self._explain(what, err), cmd=cmd, rc=rc, stdout=out, stderr=err)
        return rc, out, err

    @staticmethod
    def _explain(what: str, stderr: str) -> str:
        first = headline(stderr, "VBoxManage")
        remedy = "see stderr"
        if _LOCKED.search(stderr or ""):
            remedy = (
                "the VM is locked by another session (a running VM, a GUI or another VBoxManage): "
                "power it off (VBoxManage controlvm <vm> poweroff) or wait for the other session, then retry"
            )
        elif _NOT_FOUND.search(stderr or ""):
            remedy = "the VM is not registered for this user: check `VBoxManage list vms` as the same user"
        elif _ONLINE.search(stderr or ""):
            remedy = "the VM is running: power it off (VBoxManage controlvm <vm> poweroff) first, then retry"
        return f"VBoxManage failed to {what}: {first} — {remedy}"

    def list_vms(self) -> list[VmEntry]:
        _rc, out, _err = self.run(["list", "vms"], "list the registered VMs")
        return parse_list_vms(out)

    def list_running_vms(self) -> list[VmEntry]:
        _rc, out, _err = self.run(["list", "runningvms"], "list the running VMs")
        return parse_list_vms(out)

    def system_properties(self) -> dict[str, str]:
        _rc, out, _err = self.run(["list", "systemproperties"], "read the system properties")
        return parse_system_properties(out)

    def default_machine_folder(self) -> Optional[str]:
        return self.system_properties().get("Default machine folder") or None

    def show_vm_info(self, vm: str) -> dict[str, str]:
        _rc, out, _err = self.run(["showvminfo", vm, "--machinereadable"], f"show VM {vm}")
        return parse_machinereadable(out)

    def config_file(self, vm: str) -> Optional[str]:
        """The settings file (``.vbox``) of a VM, also of an inaccessible one (None if unknown)."""
        # check=False: for an inaccessible VM VBoxManage exits 0 and prints the access error on stderr.
        rc, out, _err = self.run(["showvminfo", vm], f"show VM {vm}", check=False)
        if rc != 0:
            return None
        return config_file_from_human(out)

    def vm_state(self, vm: str) -> str:
        """``VMState`` of a VM (``running``, ``poweroff``, ``saved``, ``aborted``...)."""
        return self.show_vm_info(vm).get("VMState", "unknown")

    def poweroff(self, vm: str) -> None:
        self.run(["controlvm", vm, "poweroff"], f"power off VM {vm}", changes=True)

    def unregister(self, vm: str, delete: bool = True) -> None:
        args = ["unregistervm", vm]
        if delete:
            args.append("--delete")
        self.run(args, f"unregister{' and delete' if delete else ''} VM {vm}", changes=True)

    def snapshot_take(self, vm: str, name: str, live: bool = False) -> None:
        args = ["snapshot", vm, "take", name]
        if live:
            args.append("--live")
        self.run(args, f"take snapshot {name!r} of VM {vm}", changes=True)

    def snapshot_restore(self, vm: str, name: str) -> None:
        self.run(["snapshot", vm, "restore", name], f"restore snapshot {name!r} of VM {vm}", changes=True)

    def snapshot_delete(self, vm: str, name: str) -> None:
        self.run(["snapshot", vm, "delete", name], f"delete snapshot {name!r} of VM {vm}", changes=True)

    def snapshots(self, vm: str) -> list[str]:
        return snapshot_names(self.show_vm_info(vm))
