#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: travis.worker developers
# MIT License (see LICENSE or https://opensource.org/license/mit)
# SPDX-License-Identifier: MIT

from __future__ import annotations

DOCUMENTATION = r"""
---
module: box_export
short_description: Re-export a provisioned Vagrant machine as a .box file, skipped if its digest is unchanged
version_added: 0.1.0
description:
  - Packages machine O(name) of the Vagrant project O(project_dir) into the box file O(path).
  - VirtualBox - C(vagrant package <name> --output ...) in O(project_dir); the machine is halted first and
    started again (without provisioning) if it was running. Run it as the user the VM is registered to
    (C(become_user)); VirtualBox registrations are per user.
  - VirtualBox - Vagrant replaces the insecure key in the machine by a generated one
    (C(config.ssh.insert_key)). It ships that key in the box (C(vagrant_private_key) and a Vagrantfile
    setting C(config.ssh.private_key_path)) only when it packages a machine of the project, not with
    C(vagrant package --base), so machines made from such a box could not log in. With O(base) set, the VM is
    packaged with C(--base) and, when the project's machine has a generated C(private_key), the module
    ships that key the same way (C(--include) and C(--vagrantfile)).
  - LXC - done by this module, because C(vagrant package) of vagrant-lxc 1.4.3 crashes with LXC 5. The
    container named in C(.vagrant/machines/<name>/lxc/id) is stopped, its rootfs is archived with numeric
    owners and xattrs (entries under C(./rootfs/), the layout vagrant-lxc's template extracts), without
    C(/dev), C(/proc), C(/sys), C(/run), C(/tmp) contents, SSH host keys, the machine-id and the journal, with
    Vagrant's insecure public key restored for the C(vagrant) user and a unit that regenerates SSH host keys
    at first boot; plus C(metadata.json) C({"provider":"lxc","version":"1.0.0"}) and C(lxc-config) (the
    source box's, else derived from the container's config). The container is started again if it was
    running.
  - libvirt - C(vagrant package <name> --output ...), halted first, started again if it was running.
  - The box is written to a temporary file next to O(path) and renamed into place. A metadata file
    C(<path>.json) records the source machine, the creation time, the checksum and the caller's recipe
    O(digest); a rerun with the same O(digest) and an intact box (same size and sha256 as recorded) reports
    C(changed=false) without exporting again.
author:
  - travis.worker developers (@travis-ci)
options:
  project_dir:
    description: The Vagrant project (the directory with the Vagrantfile and C(.vagrant)).
    type: path
    required: true
  name:
    description: The machine to export, as named in the Vagrantfile.
    type: str
    required: true
  path:
    description: The box file to write.
    type: path
    required: true
  provider:
    description: The machine's provider. Default - the one with an id under C(.vagrant/machines/<name>/).
    type: str
    choices: [virtualbox, lxc, libvirt]
  digest:
    description:
      - The recipe digest of the machine's content (for example a hash of the roles and variables that
        built it). When the box at O(path) was exported with the same digest, nothing is done.
      - Without a digest every run exports again.
    type: str
  force:
    description: Export even when the digest matches.
    type: bool
    default: false
  base:
    description:
      - Mutually exclusive with the LXC-only O(lxc_config) and O(insecure_key).
      - VirtualBox only - the VM name or UUID to package with C(vagrant package --base), for a VM that is not
        the project's machine O(name). Default - package the machine O(name) of the project.
    type: str
  restart:
    description: Start the machine again after the export if it was running before.
    type: bool
    default: true
  lxc_path:
    description: LXC only - the LXC path holding the containers.
    type: path
    default: /var/lib/lxc
  lxc_config:
    description: LXC only - a file to ship as the box's C(lxc-config) instead of the source box's.
    type: path
  insecure_key:
    description:
      - LXC only - the public key written to C(~vagrant/.ssh/authorized_keys) in the box, so C(vagrant up)
        from the box can log in like from any base box. Default - Vagrant's insecure key shipped with Vagrant.
    type: path
  vagrant_home:
    description: C(VAGRANT_HOME), where the source box is. Default - C($VAGRANT_HOME) or C(~/.vagrant.d).
    type: path
  timeout:
    description: Seconds each vagrant / lxc-stop command may take; unset or V(0) means no limit.
    type: int
requirements:
  - vagrant on the target; for LXC the lxc tools, tar and gzip
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - travis.worker.attributes
notes:
  - Check mode reports whether an export would happen and which machine would be halted, without touching it.
  - Diff mode shows the box's metadata before and after.
"""

EXAMPLES = r"""
- name: Re-export the provisioned base machine to a box
  travis.worker.box_export:
    project_dir: /home/travis/base-box
    name: base
    path: /var/cache/travis/boxes/travis-ruby.box
    digest: "{{ lookup('file', 'recipe.lock') | hash('sha256') }}"
  register: box

- name: Import the new box (a no-op when it did not change)
  travis.worker.vagrant_box:
    name: travis/ruby
    src: "{{ box.path }}"
    checksum: "{{ box.sha256 }}"
    checksum_type: sha256
    force: true
  when: box is changed
"""

RETURN = r"""
path:
  description: The box file.
  returned: always
  type: str
  sample: /var/cache/travis/boxes/travis-ruby.box
sha256:
  description:
    - SHA-256 of the box file (from the metadata file when nothing was exported).
    - Absent in check mode before the first export.
  returned: when the box exists
  type: str
size:
  description: Size of the box file in bytes.
  returned: when the box exists
  type: int
provider:
  description: The provider the machine was exported from.
  returned: always
  type: str
  sample: lxc
metadata:
  description: The content of C(<path>.json).
  returned: always
  type: dict
  sample: {"source": {"project_dir": "/srv/base", "machine": "base", "provider": "lxc", "id": "base_17000"},
           "created": "2026-11-28T01:00:00Z", "digest": "abc", "sha256": "...", "size": 123456}
halted:
  description: Whether the machine was (or would be) stopped for the export.
  returned: always
  type: bool
restarted:
  description: Whether the machine was started again after the export.
  returned: always
  type: bool
"""

import datetime
import json
import os
import re
import shutil
import tempfile
import traceback
from typing import Any, Optional

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.travis.worker.plugins.module_utils.image_store import sha256_of
from ansible_collections.travis.worker.plugins.module_utils.vagrant import (
    VagrantError,
    box_directory,
    default_vagrant_home,
    fail_from_error,
    runner_from_module,
)

PROVIDERS = ("virtualbox", "lxc", "libvirt")
ROOTFS_EXCLUDES = (
    "./rootfs/dev/*",
    "./rootfs/proc/*",
    "./rootfs/sys/*",
    "./rootfs/run/*",
    "./rootfs/tmp/*",
    "./rootfs/var/tmp/*",
    "./rootfs/var/log/journal/*",
    "./rootfs/var/cache/apt/archives/*.deb",
    "./rootfs/etc/ssh/ssh_host_*",
    "./rootfs/etc/machine-id",
    "./rootfs/var/lib/dbus/machine-id",
    "./rootfs/var/lib/systemd/random-seed",
    "./rootfs/home/vagrant/.ssh/authorized_keys",
)
# LXC config keys that belong to the source container, not to a box (vagrant-lxc writes its own).
LXC_HOST_KEYS = re.compile(r"^\s*lxc\.(rootfs|uts|net|network|mount\.entry|hook|utsname|log)\b")
HOSTKEY_UNIT = "travis-box-ssh-hostkeys.service"
HOSTKEY_UNIT_TEXT = """[Unit]
Description=Generate SSH host keys on the first boot of a machine made from a travis.worker box
Before=ssh.service
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A

[Install]
WantedBy=ssh.service
"""


# The box's Vagrantfile when a --base VM is packaged with the key Vagrant generated for it. Vagrant puts
# --include files and the --vagrantfile (as _Vagrantfile) under include/ in the box, and the box's own
# Vagrantfile loads include/_Vagrantfile (lib/vagrant/action/general/package.rb, package_setup_files.rb,
# templates/package_Vagrantfile.erb), so the key is next to this file.
BASE_VAGRANTFILE = """Vagrant.configure("2") do |config|
  config.ssh.private_key_path = File.expand_path("../vagrant_private_key", __FILE__)
end
"""


class ExportError(Exception):
    def __init__(self, msg: str, **extra: Any) -> None:
        super().__init__(msg)
        self.msg = msg
        self.extra = extra


def read_metadata(path: str) -> Optional[dict[str, Any]]:
    try:
        with open(path + ".json", encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_atomic(path: str, text: str) -> None:
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)
        os.rename(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def machine_ids(project_dir: str, name: str) -> dict[str, str]:
    """{provider: id} for the machine, from ``.vagrant/machines/<name>/<provider>/id``."""
    base = os.path.join(project_dir, ".vagrant", "machines", name)
    ids = {}
    for provider in PROVIDERS:
        id_file = os.path.join(base, provider, "id")
        if os.path.isfile(id_file):
            with open(id_file, encoding="utf-8") as handle:
                value = handle.read().strip()
            if value:
                ids[provider] = value
    return ids


def up_to_date(meta: Optional[dict[str, Any]], path: str, digest: Optional[str]) -> bool:
    """Same recipe digest and the box file intact: its size and then its sha256 match the metadata."""
    if not digest or not meta or meta.get("digest") != digest:
        return False
    try:
        return os.path.getsize(path) == meta.get("size") and sha256_of(path) == meta.get("sha256")
    except OSError:
        return False


def derived_lxc_config(container_config: str) -> str:
    """The box-level part of a container config: drop rootfs/network/mount/hostname lines."""
    lines = []
    for line in container_config.splitlines():
        if not line.strip() or line.lstrip().startswith("#") or LXC_HOST_KEYS.match(line):
            continue
        lines.append(line.rstrip())
    return "".join(line + "\n" for line in lines)


def rootfs_from_config(config_text: str, default: str) -> str:
    for line in config_text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() in ("lxc.rootfs.path", "lxc.rootfs"):
            value = value.strip()
            return value[4:] if value.startswith("dir:") else value
    return default


class Exporter:
    def __init__(self, module: AnsibleModule) -> None:
        self.module = module
        self.p = module.params
        self.vagrant_home = self.p["vagrant_home"] or default_vagrant_home()
        self._vagrant = None

    @property
    def vagrant(self):
        if self._vagrant is None:
            self._vagrant = runner_from_module(
                self.module,
                project_dir=self.p["project_dir"],
                vagrant_home=self.p["vagrant_home"],
                timeout=self.p["timeout"],
            )
        return self._vagrant

    # ---- helpers ------------------------------------------------------------------------------------------
    def cmd(self, argv: list[str], what: str, remedy: str) -> str:
        rc, out, err = self.module.run_command(argv, environ_update={"LANG": "C", "LC_ALL": "C"})
        if rc != 0:
            first = next((ln for ln in (err or out or "").splitlines() if ln.strip()), "no output")
            raise ExportError(
                f"{what} failed: {first.strip()} — {remedy}", rc=rc, stdout=out, stderr=err, cmd=argv
            )
        return out

    def binary(self, name: str) -> str:
        found = self.module.get_bin_path(name)
        if not found:
            raise ExportError(
                f"{name} is not installed on this host; install it (apt-get install {name}) and rerun"
            )
        return found

    def source(self) -> tuple[str, str]:
        ids = machine_ids(self.p["project_dir"], self.p["name"])
        provider = self.p["provider"]
        if provider is None:
            if len(ids) > 1:
                raise ExportError(
                    f"machine '{self.p['name']}' has ids for several providers "
                    f"({', '.join(sorted(ids))}); set provider"
                )
            provider = next(iter(ids), None)
        if provider is None or provider not in ids:
            if provider == "virtualbox" and self.p["base"]:
                return provider, self.p["base"]
            raise ExportError(
                f"machine '{self.p['name']}' of {self.p['project_dir']} has not been created"
                + (f" with provider {provider}" if provider else "")
                + f" (no .vagrant/machines/{self.p['name']}/<provider>/id): bring it up and provision it "
                "first "
                "(travis.worker.vagrant_vm state=provisioned)"
            )
        if provider == "virtualbox" and self.p["base"]:
            return provider, self.p["base"]
        return provider, ids[provider]

    # ---- LXC ---------------------------------------------------------------------------------------------
    def lxc_state(self, container: str) -> str:
        out = self.cmd(
            [self.binary("lxc-info"), "-P", self.p["lxc_path"], "-n", container, "-s"],
            f"reading the state of LXC container {container} (machine '{self.p['name']}')",
            f"check that the container exists: lxc-ls -P {self.p['lxc_path']} -f",
        )
        match = re.search(r"State:\s*(\S+)", out)
        return match.group(1).upper() if match else "UNKNOWN"

    def lxc_stop(self, container: str) -> None:
        argv = [self.binary("lxc-stop"), "-P", self.p["lxc_path"], "-n", container]
        if self.p["timeout"]:
            argv += ["-t", str(self.p["timeout"])]
        self.cmd(
            argv,
            f"stopping LXC container {container} (machine '{self.p['name']}')",
            "stop it by hand and rerun",
        )

    def lxc_start(self, container: str) -> None:
        self.cmd(
            [self.binary("lxc-start"), "-P", self.p["lxc_path"], "-n", container, "-d"],
            f"starting LXC container {container} (machine '{self.p['name']}') again after the export",
            f"start it with `vagrant up {self.p['name']} --no-provision` in {self.p['project_dir']}",
        )

    def box_lxc_config(self, container_dir: str, config_text: str) -> str:
        if self.p["lxc_config"]:
            with open(self.p["lxc_config"], encoding="utf-8") as handle:
                return handle.read()
        meta_file = os.path.join(
            self.p["project_dir"], ".vagrant", "machines", self.p["name"], "lxc", "box_meta"
        )
        try:
            with open(meta_file, encoding="utf-8") as handle:
                meta = json.load(handle)
            box_dir = box_directory(
                self.vagrant_home, meta["name"], str(meta["version"]), meta.get("provider", "lxc")
            )
            with open(os.path.join(box_dir, "lxc-config"), encoding="utf-8") as handle:
                return handle.read()
        except (OSError, ValueError, KeyError, TypeError):
            return derived_lxc_config(config_text)

    def insecure_key(self) -> str:
        if self.p["insecure_key"]:
            return self.p["insecure_key"]
        gems = "/usr/share/rubygems-integration/all/gems"
        if os.path.isdir(gems):
            for entry in sorted(os.listdir(gems), reverse=True):
                candidate = os.path.join(gems, entry, "keys", "vagrant.pub")
                if entry.startswith("vagrant-") and entry[8:9].isdigit() and os.path.isfile(candidate):
                    return candidate
        for candidate in ("/opt/vagrant/embedded/gems/gems", "/opt/vagrant/embedded/gems"):
            if os.path.isdir(candidate):
                for root, _dirs, files in os.walk(candidate):
                    if root.endswith("/keys") and "vagrant.pub" in files:
                        return os.path.join(root, "vagrant.pub")
        raise ExportError(
            "Vagrant's insecure public key (keys/vagrant.pub) was not found; set insecure_key to a public "
            "key the box's vagrant user should accept"
        )

    def overlay(self, work: str, rootfs: str) -> list[str]:
        """Files appended to the rootfs archive: empty machine-id, host key unit, insecure key."""
        root = os.path.join(work, "overlay", "rootfs")
        members = []
        etc = os.path.join(root, "etc")
        os.makedirs(os.path.join(etc, "systemd", "system", "ssh.service.wants"))
        with open(os.path.join(etc, "machine-id"), "w", encoding="ascii"):
            pass
        os.chmod(os.path.join(etc, "machine-id"), 0o444)
        members.append("./rootfs/etc/machine-id")
        unit = os.path.join(etc, "systemd", "system", HOSTKEY_UNIT)
        with open(unit, "w", encoding="ascii") as handle:
            handle.write(HOSTKEY_UNIT_TEXT)
        os.chmod(unit, 0o644)
        os.symlink(
            "/etc/systemd/system/" + HOSTKEY_UNIT,
            os.path.join(etc, "systemd", "system", "ssh.service.wants", HOSTKEY_UNIT),
        )
        members += [
            "./rootfs/etc/systemd/system/" + HOSTKEY_UNIT,
            "./rootfs/etc/systemd/system/ssh.service.wants/" + HOSTKEY_UNIT,
        ]
        ssh_dir = os.path.join(rootfs, "home", "vagrant", ".ssh")
        if os.path.isdir(ssh_dir):
            st = os.stat(ssh_dir)
            target = os.path.join(root, "home", "vagrant", ".ssh")
            os.makedirs(target)
            keys = os.path.join(target, "authorized_keys")
            shutil.copyfile(self.insecure_key(), keys)
            os.chmod(keys, 0o600)
            os.chown(keys, st.st_uid, st.st_gid)
            members.append("./rootfs/home/vagrant/.ssh/authorized_keys")
        for path in (
            os.path.join(root, "etc"),
            os.path.join(root, "etc", "systemd"),
            os.path.join(root, "etc", "systemd", "system"),
        ):
            os.chmod(path, 0o755)
        return members

    def export_lxc(self, container: str, tmp_box: str) -> dict[str, Any]:
        lxc_path = self.p["lxc_path"]
        container_dir = os.path.join(lxc_path, container)
        config_file = os.path.join(container_dir, "config")
        try:
            with open(config_file, encoding="utf-8") as handle:
                config_text = handle.read()
        except OSError as exc:
            raise ExportError(
                f"cannot read {config_file} of LXC container {container} (machine '{self.p['name']}'): "
                f"{exc.strerror} — is lxc_path right and the module run as root (become: true)?"
            ) from exc
        rootfs = rootfs_from_config(config_text, os.path.join(container_dir, "rootfs"))
        if not os.path.isdir(os.path.join(rootfs, "etc")):
            raise ExportError(
                f"rootfs {rootfs} of LXC container {container} is not a directory rootfs; "
                "only dir-backed containers can be exported"
            )
        tar = self.binary("tar")
        gzip = self.module.get_bin_path("pigz") or self.binary("gzip")
        was_running = self.lxc_state(container) in ("RUNNING", "FROZEN", "STARTING")
        work = tempfile.mkdtemp(prefix=".box_export-", dir=os.path.dirname(tmp_box))
        restarted = False
        try:
            try:
                if was_running:
                    self.lxc_stop(container)
                rootfs_tar = self.archive_rootfs(tar, work, rootfs)
            finally:
                if was_running and self.p["restart"]:
                    self.lxc_start(container)
                    restarted = True
            self.cmd([gzip, "-f", rootfs_tar], "compressing rootfs.tar", "check free disk space next to path")
            with open(os.path.join(work, "metadata.json"), "w", encoding="utf-8") as handle:
                json.dump({"provider": "lxc", "version": "1.0.0"}, handle)
                handle.write("\n")
            with open(os.path.join(work, "lxc-config"), "w", encoding="utf-8") as handle:
                handle.write(self.box_lxc_config(container_dir, config_text))
            # The rootfs inside is compressed already: the outer gzip only has to be fast (as in the lab).
            self.cmd(
                [
                    tar,
                    "-I",
                    "gzip -1",
                    "-cf",
                    tmp_box,
                    "-C",
                    work,
                    "metadata.json",
                    "lxc-config",
                    "rootfs.tar.gz",
                ],
                f"writing the box file for machine '{self.p['name']}'",
                "check free disk space next to path",
            )
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return {"halted": was_running, "restarted": restarted}

    def archive_rootfs(self, tar: str, work: str, rootfs: str) -> str:
        """rootfs.tar in ``work``: the rootfs without host-specific files, plus the overlay files."""
        members = self.overlay(work, rootfs)
        rootfs_tar = os.path.join(work, "rootfs.tar")
        argv = [tar, "--numeric-owner", "--xattrs", "--xattrs-include=*", "-cf", rootfs_tar]
        argv += [f"--exclude={pattern}" for pattern in ROOTFS_EXCLUDES]
        # tar wants the rootfs as ./rootfs under its parent; a rootfs elsewhere is reached through a link.
        parent = os.path.dirname(rootfs.rstrip("/"))
        if os.path.basename(rootfs.rstrip("/")) != "rootfs":
            parent = os.path.join(work, "src")
            os.makedirs(parent)
            os.symlink(rootfs, os.path.join(parent, "rootfs"))
            argv += ["-h"]
        argv += ["-C", parent, "./rootfs"]
        self.cmd(
            argv,
            f"archiving the rootfs {rootfs} of machine '{self.p['name']}'",
            "check free disk space next to path",
        )
        self.cmd(
            [tar, "--numeric-owner", "-rf", rootfs_tar, "-C", os.path.join(work, "overlay"), *members],
            f"adding the box files to the rootfs archive of machine '{self.p['name']}'",
            "check free disk space next to path",
        )
        return rootfs_tar

    # ---- VirtualBox / libvirt ----------------------------------------------------------------------------
    def export_vagrant(self, provider: str, vm_id: str, tmp_box: str) -> dict[str, Any]:
        name = self.p["name"]
        machines = self.vagrant.status([name])
        state = machines[0].state if machines else "unknown"
        was_running = state == "running"
        restarted = False
        try:
            if was_running:
                self.vagrant.halt([name])
            if provider == "virtualbox" and self.p["base"]:
                self.package_base(vm_id, tmp_box)
            else:
                self.vagrant.run(["package", name, "--output", tmp_box], machine=name)
        finally:
            if was_running and self.p["restart"]:
                self.vagrant.up([name], provision=False)
                restarted = True
        return {"halted": was_running, "restarted": restarted}

    def package_base(self, vm_id: str, tmp_box: str) -> None:
        """``vagrant package --base``, shipping the project machine's generated key as Vagrant would."""
        argv = ["package", "--base", vm_id, "--output", tmp_box]
        key = os.path.join(
            self.p["project_dir"], ".vagrant", "machines", self.p["name"], "virtualbox", "private_key"
        )
        if not os.path.isfile(key):
            self.vagrant.run(argv, machine=self.p["name"])
            return
        work = tempfile.mkdtemp(prefix=".box_export-", dir=os.path.dirname(tmp_box))
        try:
            shipped = os.path.join(work, "vagrant_private_key")
            shutil.copyfile(key, shipped)
            os.chmod(shipped, 0o600)
            vagrantfile = os.path.join(work, "Vagrantfile")
            with open(vagrantfile, "w", encoding="utf-8") as handle:
                handle.write(BASE_VAGRANTFILE)
            argv += ["--include", shipped, "--vagrantfile", vagrantfile]
            self.vagrant.run(argv, machine=self.p["name"])
        finally:
            shutil.rmtree(work, ignore_errors=True)

    # ---- main ---------------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        path = self.p["path"]
        provider, vm_id = self.source()
        meta = read_metadata(path)
        result: dict[str, Any] = {
            "path": path,
            "provider": provider,
            "changed": False,
            "halted": False,
            "restarted": False,
        }
        if not self.p["force"] and up_to_date(meta, path, self.p["digest"]):
            result.update(sha256=meta.get("sha256"), size=meta.get("size"), metadata=meta)
            return result
        source = {
            "project_dir": self.p["project_dir"],
            "machine": self.p["name"],
            "provider": provider,
            "id": vm_id,
        }
        result["changed"] = True
        if self.module.check_mode:
            result["metadata"] = {"source": source, "digest": self.p["digest"]}
            result["halted"] = self.would_halt(provider, vm_id)
            result["msg"] = f"would export machine '{self.p['name']}' ({provider} {vm_id}) to {path}"
            if meta:
                result.update(sha256=meta.get("sha256"), size=meta.get("size"))
            self.add_diff(result, meta, result["metadata"])
            return result
        directory = os.path.dirname(path) or "."
        if not os.path.isdir(directory):
            raise ExportError(f"the directory of path {path} does not exist; create {directory} first")
        tmp_box = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
        if os.path.exists(tmp_box):
            os.unlink(tmp_box)
        try:
            if provider == "lxc":
                result.update(self.export_lxc(vm_id, tmp_box))
            else:
                result.update(self.export_vagrant(provider, vm_id, tmp_box))
            size = os.path.getsize(tmp_box)
            checksum = sha256_of(tmp_box)
            os.rename(tmp_box, path)
        finally:
            if os.path.exists(tmp_box):
                os.unlink(tmp_box)
        new_meta = {
            "source": source,
            "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "digest": self.p["digest"],
            "sha256": checksum,
            "size": size,
        }
        write_atomic(path + ".json", json.dumps(new_meta, indent=2, sort_keys=True) + "\n")
        result.update(sha256=checksum, size=size, metadata=new_meta)
        self.add_diff(result, meta, new_meta)
        return result

    def would_halt(self, provider: str, vm_id: str) -> bool:
        try:
            if provider == "lxc":
                return self.lxc_state(vm_id) in ("RUNNING", "FROZEN", "STARTING")
            machines = self.vagrant.status([self.p["name"]])
            return bool(machines) and machines[0].state == "running"
        except (ExportError, VagrantError):
            return False

    def add_diff(
        self, result: dict[str, Any], before: Optional[dict[str, Any]], after: dict[str, Any]
    ) -> None:
        if self.module._diff:
            result["diff"] = {
                "before_header": self.p["path"] + ".json",
                "after_header": self.p["path"] + ".json",
                "before": json.dumps(before, indent=2, sort_keys=True) + "\n" if before else "",
                "after": json.dumps(after, indent=2, sort_keys=True) + "\n",
            }


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "project_dir": {"type": "path", "required": True},
            "name": {"type": "str", "required": True},
            "path": {"type": "path", "required": True},
            "provider": {"type": "str", "choices": list(PROVIDERS)},
            "digest": {"type": "str"},
            "force": {"type": "bool", "default": False},
            "base": {"type": "str"},
            "restart": {"type": "bool", "default": True},
            "lxc_path": {"type": "path", "default": "/var/lib/lxc"},
            "lxc_config": {"type": "path"},
            "insecure_key": {"type": "path"},
            "vagrant_home": {"type": "path"},
            "timeout": {"type": "int"},
        },
        mutually_exclusive=[("base", "lxc_config"), ("base", "insecure_key")],
        supports_check_mode=True,
    )
    if (module.params["timeout"] or 0) < 0:
        module.fail_json(
            msg=f"timeout must be >= 0 seconds (unset or 0: no limit), got {module.params['timeout']}",
            path=module.params["path"],
        )
    try:
        result = Exporter(module).run()
    except VagrantError as exc:
        fail_from_error(module, exc, path=module.params["path"])
    except ExportError as exc:
        module.fail_json(msg=exc.msg, path=module.params["path"], **exc.extra)
    except OSError as exc:
        hint = "free disk space there" if exc.errno == 28 else "check permissions (become: true?)"
        module.fail_json(
            msg=f"exporting machine '{module.params['name']}' to {module.params['path']} failed: "
            f"{exc.strerror} ({exc.filename}) — {hint}",
            path=module.params["path"],
        )
    except (ValueError, KeyError, TypeError, RuntimeError) as exc:  # a bug or an odd host: no traceback
        module.fail_json(
            msg=f"box_export of machine '{module.params['name']}' failed unexpectedly: "
            f"{type(exc).__name__}: {exc} — please report this with the "
            "exception below",
            exception=traceback.format_exc(),
        )
    module.exit_json(**result)


if __name__ == "__main__":
    main()
