#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: travis.worker developers
# MIT License (see LICENSE or https://opensource.org/license/mit)
# SPDX-License-Identifier: MIT

from __future__ import annotations

DOCUMENTATION = r"""
---
module: virtualbox_env
short_description: Reset or clean the worker user's VirtualBox VMs, VM folders and .vagrant state
version_added: 0.1.0
description:
  - O(state=reset) wipes the worker VMs of the user the module runs as (use C(become_user), e.g. C(travis))
    the way the old C(thor travis:worker:vagrant:rebuild) did - it powers off and unregisters every worker VM
    with C(VBoxManage unregistervm --delete), removes their folders under the default machine folder
    (C(~/VirtualBox VMs)) and the worker project's C(.vagrant) directory.
  - A reset only happens with O(confirm=true); without it the task fails and lists what it would remove.
    It refuses while worker services (C(travis-worker@*.service)) are running, and names them.
  - O(state=clean) removes only broken worker VMs - registrations listed as C(<inaccessible>), registered
    VMs whose folder or settings file is gone, and (with O(project_dir)) worker VMs that no machine of the
    project's C(.vagrant) refers to. Running VMs are never removed by C(clean).
  - O(state=clean) needs no confirmation, except when O(project_dir) has no C(.vagrant/machines) with a
    VirtualBox id (a typo, E(VAGRANT_DOTFILE_PATH) elsewhere, an earlier reset) - then every halted worker VM
    would count as orphaned, so the task fails and lists them unless O(confirm=true).
  - After powering a VM off, C(unregistervm) is retried (3 attempts, 1 second apart, as Vagrant's VirtualBox
    driver does) while VirtualBox still reports the VM locked by the closing session.
  - Only VMs whose names start with O(prefix) are touched unless O(all_vms=true). An empty O(prefix) is
    refused (it would match every VM of the user); use O(all_vms=true) to mean that.
author:
  - travis.worker developers (@travis-ci)
options:
  state:
    description: C(reset) wipes all worker VMs and state; C(clean) only inaccessible/orphaned worker VMs.
    type: str
    required: true
    choices: [reset, clean]
  confirm:
    description:
      - Must be true for O(state=reset) to remove anything (check mode previews without it).
      - Also needed for O(state=clean) when O(project_dir) has no C(.vagrant/machines) state.
    type: bool
    default: false
  all_vms:
    description:
      - Act on every VM of the user, not only those whose name starts with O(prefix).
      - Mutually exclusive with O(prefix).
    type: bool
    default: false
  prefix:
    description: Name prefix of the worker VMs (and their folders in the machine folder); must not be empty.
    type: str
    default: travis-
  project_dir:
    description:
      - The worker Vagrant project. O(state=reset) removes its C(.vagrant) directory; O(state=clean) treats
        worker VMs that none of its C(.vagrant/machines/*/virtualbox/id) files name as orphans.
    type: path
  machine_folder:
    description:
      - VirtualBox's machine folder.
      - Default - the C(Default machine folder) system property, else C(~/VirtualBox VMs).
    type: path
  unit_prefix:
    description: Name of the worker service template without C(@.service); running instances block a reset.
    type: str
    default: travis-worker
  vboxmanage:
    description: Path of VBoxManage, when it is not in PATH.
    type: path
requirements:
  - VirtualBox (VBoxManage) on the target
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - travis.worker.attributes
notes:
  - Check mode returns what would be removed and needs no O(confirm).
  - Diff mode shows the registered VMs, the folders and the C(.vagrant) directory before and after.
"""

EXAMPLES = r"""
- name: Preview what a reset would remove
  travis.worker.virtualbox_env:
    state: reset
    project_dir: /home/travis/travis-worker
  check_mode: true
  become: true
  become_user: travis

- name: Wipe the worker VMs (workers must be stopped first)
  travis.worker.virtualbox_env:
    state: reset
    confirm: true
    project_dir: /home/travis/travis-worker
  become: true
  become_user: travis

- name: Remove inaccessible and orphaned worker VMs only
  travis.worker.virtualbox_env:
    state: clean
    project_dir: /home/travis/travis-worker
  become: true
  become_user: travis
"""

RETURN = r"""
removed:
  description: What was removed (in check mode, what would be removed).
  returned: always
  type: dict
  contains:
    vms:
      description:
        - Unregistered VMs with the reason (C(reset), C(inaccessible), C(folder missing), C(not in project)).
      type: list
      elements: dict
      sample: [{"name": "travis-worker-1", "uuid": "3c1f...", "reason": "reset"}]
    folders:
      description: VM folders removed from the machine folder.
      type: list
      elements: str
    vagrant_dirs:
      description: C(.vagrant) directories removed.
      type: list
      elements: str
powered_off:
  description: Running VMs that were (or would be) powered off before unregistering.
  returned: always
  type: list
  elements: str
skipped:
  description: Orphaned VMs that C(clean) left alone because they are running.
  returned: always
  type: list
  elements: dict
machine_folder:
  description: The machine folder used.
  returned: always
  type: str
  sample: /home/travis/VirtualBox VMs
"""

import os
import pwd
import shutil
import time
import traceback
from typing import Any, Optional

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.travis.worker.plugins.module_utils.systemctl import Systemctl, SystemctlError
from ansible_collections.travis.worker.plugins.module_utils.vboxmanage import (
    INACCESSIBLE,
    VBoxManage,
    VBoxManageError,
    VmEntry,
)


# unregistervm right after controlvm poweroff may find the VM still locked by the closing session:
# retry like Vagrant's VirtualBox driver (driver/base.rb execute(retryable: true): 3 tries, 1 s apart).
UNREGISTER_TRIES = 3
UNREGISTER_DELAY = 1.0


def vagrant_ids(project_dir: Optional[str]) -> set[str]:
    """VirtualBox UUIDs referenced by ``<project>/.vagrant/machines/*/virtualbox/id``."""
    ids: set[str] = set()
    if not project_dir:
        return ids
    machines = os.path.join(project_dir, ".vagrant", "machines")
    if not os.path.isdir(machines):
        return ids
    for machine in sorted(os.listdir(machines)):
        id_file = os.path.join(machines, machine, "virtualbox", "id")
        if os.path.isfile(id_file):
            with open(id_file, encoding="utf-8") as handle:
                value = handle.read().strip().lower()
            if value:
                ids.add(value)
    return ids


class Environment:
    def __init__(self, module: AnsibleModule) -> None:
        self.module = module
        self.params = module.params
        self.vbox = VBoxManage(module, binary=self.params["vboxmanage"])
        self.prefix = self.params["prefix"]
        self.all_vms = self.params["all_vms"]

    def machine_folder(self) -> str:
        if self.params["machine_folder"]:
            return self.params["machine_folder"]
        folder = self.vbox.default_machine_folder()
        # VirtualBox's own default: "VirtualBox VMs" in the home of its user (RTPathUserHome: $HOME first)
        home = os.environ.get("HOME") or pwd.getpwuid(os.getuid()).pw_dir
        return folder or os.path.join(home, "VirtualBox VMs")

    def matches(self, name: str) -> bool:
        return self.all_vms or name.startswith(self.prefix)

    def running_workers(self) -> list[str]:
        systemctl = Systemctl(self.module)
        try:
            units = systemctl.list_units(f"{self.params['unit_prefix']}@*.service")
        except SystemctlError as exc:
            if "not found in PATH" in exc.message:
                self.module.warn("systemctl is not available: could not check for running worker services")
                return []
            raise
        return [
            u["unit"] for u in units if u["active"] in ("active", "activating", "reloading", "deactivating")
        ]

    def describe(self, vm: VmEntry) -> dict[str, Any]:
        """Name, uuid, settings file and state; inaccessible VMs get their name from the settings file."""
        entry: dict[str, Any] = {"name": vm.name, "uuid": vm.uuid, "inaccessible": vm.inaccessible}
        try:
            info = self.vbox.show_vm_info(vm.uuid)
        except VBoxManageError:
            info = {}
        cfg = info.get("CfgFile", "")
        entry["vm_state"] = info.get("VMState", "unknown")
        # VBoxManageInfo.cpp prints only name="<inaccessible>" and UUID= for an inaccessible VM (no
        # accessibility key); the human form is the one that names its settings file.
        if vm.inaccessible or info.get("name") == INACCESSIBLE:
            entry["inaccessible"] = True
            cfg = cfg or self.vbox.config_file(vm.uuid) or ""
        entry["cfg_file"] = cfg
        if entry["inaccessible"]:
            entry["label"] = os.path.splitext(os.path.basename(cfg))[0] if cfg else vm.name
        else:
            entry["label"] = vm.name
        return entry

    def inventory(self) -> tuple[list[dict[str, Any]], set[str]]:
        vms = [self.describe(vm) for vm in self.vbox.list_vms()]
        running = {vm.uuid for vm in self.vbox.list_running_vms()}
        for vm in vms:
            vm["running"] = vm["uuid"] in running
        return vms, running

    def plan_reset(self, folder: str) -> dict[str, Any]:
        vms, _running = self.inventory()
        chosen = [vm for vm in vms if self.matches(vm["label"])]
        folders = []
        if os.path.isdir(folder):
            folders = [
                os.path.join(folder, entry) for entry in sorted(os.listdir(folder)) if self.matches(entry)
            ]
        dirs = []
        if self.params["project_dir"]:
            dot = os.path.join(self.params["project_dir"], ".vagrant")
            if os.path.exists(dot):
                dirs.append(dot)
        return {
            "vms": [dict(vm, reason="reset") for vm in chosen],
            "folders": folders,
            "vagrant_dirs": dirs,
            "skipped": [],
            "all": vms,
        }

    def plan_clean(self, folder: str) -> dict[str, Any]:
        vms, _running = self.inventory()
        known = vagrant_ids(self.params["project_dir"])
        chosen, skipped = [], []
        for vm in vms:
            if not self.matches(vm["label"]):
                continue
            reason = None
            if vm["inaccessible"]:
                reason = "inaccessible"
            elif vm["cfg_file"] and not os.path.exists(vm["cfg_file"]):
                reason = "folder missing"
            elif self.params["project_dir"] and vm["uuid"] not in known:
                reason = "not in project"
            if reason is None:
                continue
            if vm["running"]:
                skipped.append(dict(vm, reason=reason + ", running"))
            else:
                chosen.append(dict(vm, reason=reason))
        folders = []
        for vm in chosen:
            vm_dir = os.path.dirname(vm["cfg_file"]) if vm["cfg_file"] else ""
            if vm_dir and os.path.isdir(vm_dir) and os.path.dirname(vm_dir) == folder.rstrip("/"):
                folders.append(vm_dir)
        return {"vms": chosen, "folders": folders, "vagrant_dirs": [], "skipped": skipped, "all": vms}

    def remove(self, plan: dict[str, Any]) -> list[str]:
        powered_off = []
        for vm in plan["vms"]:
            if vm["running"]:
                if not self.module.check_mode:
                    self.vbox.poweroff(vm["uuid"])
                powered_off.append(vm["label"])
        if self.module.check_mode:
            return powered_off
        for vm in plan["vms"]:
            # An inaccessible VM has no files VirtualBox could delete: --delete would fail on it.
            self.unregister(vm["uuid"], delete=not vm["inaccessible"])
        for path in plan["folders"] + plan["vagrant_dirs"]:
            if os.path.lexists(path):
                shutil.rmtree(path)
        return powered_off

    def unregister(self, uuid: str, delete: bool) -> None:
        """Unregister, retrying (bounded) while the VM is still locked by a session being closed."""
        for attempt in range(1, UNREGISTER_TRIES + 1):
            try:
                self.vbox.unregister(uuid, delete=delete)
                return
            except VBoxManageError as exc:
                if not exc.locked or attempt == UNREGISTER_TRIES:
                    if exc.locked:
                        exc.message += f" (still locked after {UNREGISTER_TRIES} attempts)"
                    raise
            time.sleep(UNREGISTER_DELAY)

    def refuse_unanchored_clean(self, plan: dict[str, Any]) -> None:
        """state=clean without any .vagrant id to compare with would call every halted worker VM an orphan."""
        project = self.params["project_dir"]
        if not project or vagrant_ids(project):
            return
        orphans = [vm for vm in plan["vms"] if vm["reason"] == "not in project"]
        if not orphans or self.params["confirm"]:
            return
        names = ", ".join(f"{vm['label']} {{{vm['uuid']}}}" for vm in orphans)
        text = (
            f"{project} has no .vagrant/machines/*/virtualbox/id (wrong project_dir, VAGRANT_DOTFILE_PATH "
            f"elsewhere, or an earlier reset), so state=clean would remove every halted worker VM: {names}"
        )
        if self.module.check_mode:
            self.module.warn(text + " — a real run needs confirm: true")
            return
        self.module.fail_json(
            msg=text + " — check project_dir; set confirm: true to remove them anyway",
            removed={
                "vms": [{"name": vm["label"], "uuid": vm["uuid"], "reason": vm["reason"]} for vm in orphans]
            },
        )

    def run(self) -> dict[str, Any]:
        state = self.params["state"]
        if not self.all_vms and not self.prefix:
            self.module.fail_json(
                msg="prefix is empty, which matches every VM of this user; set the worker VMs' prefix "
                "(default travis-), or all_vms: true if every VM is really meant"
            )
        if state == "reset":
            running = self.running_workers()
            if running:
                self.module.fail_json(
                    msg=(
                        f"refusing to reset VirtualBox while worker services run: {', '.join(running)} — "
                        "stop them first (travis.worker.worker_service name=all state=drained), then rerun"
                    ),
                    running_services=running,
                )
            folder = self.machine_folder()
            plan = self.plan_reset(folder)
        else:
            folder = self.machine_folder()
            plan = self.plan_clean(folder)
            self.refuse_unanchored_clean(plan)
        removed = {
            "vms": [{"name": vm["label"], "uuid": vm["uuid"], "reason": vm["reason"]} for vm in plan["vms"]],
            "folders": plan["folders"],
            "vagrant_dirs": plan["vagrant_dirs"],
        }
        changed = bool(plan["vms"] or plan["folders"] or plan["vagrant_dirs"])
        if state == "reset" and changed and not self.params["confirm"] and not self.module.check_mode:
            self.module.fail_json(
                msg=(
                    "state=reset removes "
                    + summary(removed)
                    + " — this is destructive; set confirm: true to do it (or run with --check to preview)"
                ),
                removed=removed,
            )
        result: dict[str, Any] = {
            "changed": changed,
            "removed": removed,
            "skipped": [
                {"name": vm["label"], "uuid": vm["uuid"], "reason": vm["reason"]} for vm in plan["skipped"]
            ],
            "machine_folder": folder,
        }
        if self.module._diff:
            result["diff"] = {
                "before": listing(plan["all"], plan, empty=False),
                "after": listing(plan["all"], plan, empty=True),
            }
        try:
            result["powered_off"] = self.remove(plan) if changed else []
        except VBoxManageError as exc:
            kwargs = exc.fail_kwargs()
            kwargs["msg"] += " (nothing after this VM was removed; rerun once the cause is fixed)"
            self.module.fail_json(**kwargs)
        except OSError as exc:
            self.module.fail_json(
                msg=f"could not remove {exc.filename}: {exc.strerror} — check its permissions"
            )
        if state == "reset" and self.module.check_mode and not self.params["confirm"] and changed:
            self.module.warn("a real run of state=reset needs confirm: true")
        return result


def summary(removed: dict[str, Any]) -> str:
    parts = []
    if removed["vms"]:
        parts.append("VMs " + ", ".join(f"{vm['name']} {{{vm['uuid']}}}" for vm in removed["vms"]))
    if removed["folders"]:
        parts.append("folders " + ", ".join(removed["folders"]))
    if removed["vagrant_dirs"]:
        parts.append("Vagrant state " + ", ".join(removed["vagrant_dirs"]))
    return "; ".join(parts) or "nothing"


def listing(all_vms: list[dict[str, Any]], plan: dict[str, Any], empty: bool) -> str:
    gone = {vm["uuid"] for vm in plan["vms"]}
    lines = [f"vm {vm['label']} {{{vm['uuid']}}}" for vm in all_vms if not (empty and vm["uuid"] in gone)]
    if not empty:
        lines += [f"folder {path}" for path in plan["folders"]]
        lines += [f"vagrant {path}" for path in plan["vagrant_dirs"]]
    return "".join(line + "\n" for line in lines)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "state": {"type": "str", "required": True, "choices": ["reset", "clean"]},
            "confirm": {"type": "bool", "default": False},
            "all_vms": {"type": "bool", "default": False},
            "prefix": {"type": "str", "default": "travis-"},
            "project_dir": {"type": "path"},
            "machine_folder": {"type": "path"},
            "unit_prefix": {"type": "str", "default": "travis-worker"},
            "vboxmanage": {"type": "path"},
        },
        mutually_exclusive=[("all_vms", "prefix")],
        supports_check_mode=True,
    )
    try:
        result = Environment(module).run()
    except (VBoxManageError, SystemctlError) as exc:
        module.fail_json(**exc.fail_kwargs())
    except (
        OSError,
        ValueError,
        KeyError,
        TypeError,
        RuntimeError,
    ) as exc:  # a bug or an odd host: no traceback
        module.fail_json(
            msg=f"virtualbox_env state={module.params['state']} failed unexpectedly: "
            f"{type(exc).__name__}: {exc} — please report this with the "
            "exception below",
            exception=traceback.format_exc(),
        )
    module.exit_json(**result)


if __name__ == "__main__":
    main()
