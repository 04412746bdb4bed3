# Copyright: travis.worker developers
# MIT License (see LICENSE or https://opensource.org/license/mit)
# SPDX-License-Identifier: MIT
"""Ansible module travis.worker.vagrant_box: add or remove a Vagrant box, idempotently."""

DOCUMENTATION = r"""
---
module: vagrant_box
short_description: Add or remove Vagrant boxes idempotently
version_added: "0.1.0"
description:
  - Reads C(vagrant box list --machine-readable) first. A box is identified by O(name) and O(provider)
    (and O(version) if given); if it is installed, nothing is added, so importing a set of boxes twice is
    a no-op instead of N "box already exists" errors.
  - With O(checksum), the file a box was added from is compared with the checksum. A box installed from a
    different file is replaced only with O(force=true); otherwise the task fails and says so.
  - To know which file an installed box came from, the module keeps a small record
    C(travis-worker-box.json) in the box's directory
    (C(VAGRANT_HOME/boxes/NAME-with-/-as--VAGRANTSLASH-/VERSION/PROVIDER/travis-worker-box.json)) with the
    source, its sha256 (for local files) and the checksum given. Vagrant ignores this file and removes it
    with the box. Boxes added without this module have no record; a O(checksum) cannot be verified for
    them, so they are left alone with a warning (set O(force=true) to replace them once).
  - A local C(.box) file with O(version) is added through a temporary one-version catalog (metadata JSON),
    because Vagrant gives boxes added from a plain file the version C(0).
  - Runs C(vagrant) as the invoking user with C(LANG=C); honours O(vagrant_home) (else E(VAGRANT_HOME)).
author:
  - travis.worker developers (@travis-ci)
options:
  name:
    description:
      - Box name, for example V(travis/worker-jammy) or V(local/debian12).
    type: str
    required: true
  src:
    description:
      - Where to add the box from when it is missing (or replaced) - a local C(.box) file path, a
        C(file://), C(http://) or C(https://) URL of a C(.box) file, or a Vagrant metadata catalog (C(.json)).
      - Required with O(state=present) when the box is not installed.
    type: str
  provider:
    description:
      - Box provider, for example V(virtualbox), V(lxc) or V(libvirt).
      - Unset matches the box with any provider (and lets Vagrant take the provider from the box).
    type: str
  version:
    description:
      - Box version. Unset matches any installed version.
    type: str
  checksum:
    description:
      - Expected checksum of the box file at O(src).
      - For a local file it is verified before anything is added; for a URL Vagrant verifies it.
    type: str
  checksum_type:
    description:
      - Algorithm of O(checksum).
    type: str
    choices: [md5, sha1, sha256, sha384, sha512]
    default: sha256
  state:
    description:
      - V(present) adds the box if missing; V(absent) removes every matching box (all versions unless
        O(version) is set).
    type: str
    choices: [present, absent]
    default: present
  force:
    description:
      - With O(state=present), replace an installed box whose recorded source differs from O(checksum)
        (or, without O(checksum), from the sha256 of the local O(src) file).
      - With O(state=absent), remove the box even if machines still use it (C(vagrant box remove --force)).
    type: bool
    default: false
  vagrant_home:
    description:
      - Vagrant's home directory to use instead of E(VAGRANT_HOME) or C(~/.vagrant.d).
    type: path
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - travis.worker.attributes
requirements:
  - vagrant >= 2.2
"""

EXAMPLES = r"""
- name: Import the worker box unless it is installed
  travis.worker.vagrant_box:
    name: travis/worker-jammy
    src: /srv/boxes/worker-jammy.box
    provider: virtualbox

- name: Import a new build of the worker box, replacing an older one
  travis.worker.vagrant_box:
    name: travis/worker-jammy
    src: /srv/boxes/worker-jammy.box
    provider: virtualbox
    checksum: "{{ lookup('ansible.builtin.file', '/srv/boxes/worker-jammy.box.sha256') }}"
    checksum_type: sha256
    force: true

- name: Add version 2.1.0 of a box from a file
  travis.worker.vagrant_box:
    name: local/debian12
    src: /srv/boxes/debian12.box
    provider: lxc
    version: 2.1.0

- name: Remove all versions of a box
  travis.worker.vagrant_box:
    name: travis/worker-old
    state: absent
"""

RETURN = r"""
boxes:
  description: All installed boxes after the run (in check mode, as predicted).
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: Box name.
      type: str
      sample: travis/worker-jammy
    provider:
      description: Box provider.
      type: str
      sample: virtualbox
    version:
      description: Box version (C(0) for boxes added from a plain file without a version).
      type: str
      sample: "0"
added:
  description: The boxes added (or replaced), as name, provider and version.
  returned: always
  type: list
  elements: dict
  sample: [{"name": "travis/worker-jammy", "provider": "virtualbox", "version": "0"}]
removed:
  description: The boxes removed.
  returned: always
  type: list
  elements: dict
  sample: []
record:
  description: The record kept for the box (source and checksums), if any.
  returned: when O(state=present)
  type: dict
  sample: {"src": "/srv/boxes/worker-jammy.box", "sha256": "c64b49e6...", "checksum_type": "sha256"}
commands:
  description: The vagrant argv lists that were run (in check mode, that would be run).
  returned: always
  type: list
  elements: list
"""

import hashlib
import json
import os
import re
import shutil
import tempfile
import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.travis.worker.plugins.module_utils.vagrant import (
    Box,
    VagrantError,
    box_directory,
    default_vagrant_home,
    fail_from_error,
    parse_box_list,
    runner_from_module,
)

RECORD = "travis-worker-box.json"
_URL_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
# `vagrant box add` success line (templates/locales/en.yml vagrant.box_added; Vagrant 2.4's BoxAdd#box_add
# appends " (ARCH)" to the provider when the box has an architecture).
_ADDED_RE = re.compile(
    r"Successfully added box '(?P<name>[^']+)' \(v(?P<version>[^)]+)\) "
    r"for '(?P<provider>[^' ]+)(?: \([^)]*\))?'"
)


def box_architectures(lines: list) -> dict:
    """{Box: [architecture, ...]} from Vagrant >= 2.4's ``box-architecture`` lines (``n/a`` for boxes added
    before architectures existed); empty for Vagrant 2.3, which prints none."""
    arches: dict = {}
    current: dict = {}
    for line in lines:
        if line.type == "box-name":
            current = {"name": line.data[0], "provider": "", "version": "0"}
        elif line.type in ("box-provider", "box-version") and current:
            current[line.type[4:]] = line.data[0]
        elif line.type == "box-architecture" and current:
            box = Box(current["name"], current["provider"], current["version"])
            arches.setdefault(box, []).append(line.data[0])
    return arches


def added_box(lines: list):
    """The box `vagrant box add` reports as added, or None."""
    for line in lines:
        if line.type == "ui" and len(line.data) > 1:
            match = _ADDED_RE.search(line.data[1])
            if match:
                return Box(match.group("name"), match.group("provider"), match.group("version"))
    return None


def local_path(src: str):
    """The local file path of ``src``, or None for a remote URL."""
    if src.startswith("file://"):
        return src[len("file://") :]
    return None if _URL_RE.match(src) else src


def file_digest(path: str, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_record(home: str, box: Box):
    path = os.path.join(box_directory(home, box.name, box.version, box.provider), RECORD)
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def write_record(home: str, box: Box, record: dict) -> bool:
    """Write the record next to the unpacked box (atomically); False if the box directory is not found."""
    directory = box_directory(home, box.name, box.version, box.provider)
    if not os.path.isdir(directory):
        return False
    tmp = os.path.join(directory, f".{RECORD}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(record, handle, indent=1, sort_keys=True)
    os.replace(tmp, os.path.join(directory, RECORD))
    return True


def box_lines(boxes: list, name: str) -> str:
    return "".join(f"{b.name} ({b.provider}, {b.version})\n" for b in boxes if b.name == name)


class BoxManager:
    """Decides and performs what ``state`` needs for one box name."""

    def __init__(self, module, runner, home: str):
        self.module = module
        self.runner = runner
        self.home = home
        self.p = module.params
        self.result: dict = {"changed": False, "added": [], "removed": [], "commands": [], "boxes": []}
        self.warnings: list = []
        self._src_digests: dict = {}
        self.architectures: dict = {}

    def matches(self, boxes: list) -> list:
        p = self.p
        return [
            b
            for b in boxes
            if b.name == p["name"]
            and (not p["provider"] or b.provider == p["provider"])
            and (not p["version"] or b.version == p["version"])
        ]

    def src_digest(self, algorithm: str):
        """Digest of the local src file (cached), None for a URL."""
        path = local_path(self.p["src"] or "")
        if not path:
            return None
        if algorithm not in self._src_digests:
            self._src_digests[algorithm] = file_digest(path, algorithm)
        return self._src_digests[algorithm]

    def check_src(self) -> None:
        p = self.p
        if not p["src"]:
            self.module.fail_json(
                msg=f"box '{p['name']}' ({p['provider'] or 'any provider'}) is not installed and no "
                "'src' was given; set 'src' to the .box file or URL to add it from",
                error_kind="box_not_found",
            )
        path = local_path(p["src"])
        if path is not None and not os.path.isfile(path):
            self.module.fail_json(
                msg=f"src '{path}' for box '{p['name']}' does not exist or is not a file; fix 'src' "
                "(path on the managed host) or build/copy the box there first",
                error_kind="src_missing",
            )
        if p["checksum"] and path is not None:
            actual = self.src_digest(p["checksum_type"])
            if actual != p["checksum"].lower():
                self.module.fail_json(
                    msg=f"src '{path}' for box '{p['name']}' has {p['checksum_type']} {actual}, "
                    f"but 'checksum' is {p['checksum']}; wrong file or stale checksum - fix one of them",
                    error_kind="checksum_mismatch",
                )

    def wanted(self):
        """(type, digest) the installed box must come from, or None if any installed box will do."""
        p = self.p
        if p["checksum"]:
            return p["checksum_type"], p["checksum"].lower()
        if p["force"] and p["src"] and local_path(p["src"]) is not None:
            self.check_src()
            return "sha256", self.src_digest("sha256")
        return None

    def recorded_digest(self, box: Box, kind: str):
        return ((read_record(self.home, box) or {}).get("checksums") or {}).get(kind)

    def needs_replace(self, box: Box) -> bool:
        wanted = self.wanted()
        if not wanted:
            return False
        kind, digest = wanted
        installed = self.recorded_digest(box, kind)
        if installed == digest:
            return False
        if self.p["force"]:
            return True
        if installed is None:
            self.warnings.append(
                f"box '{box.name}' ({box.provider}, {box.version}) has no {RECORD} record of the file it was "
                f"added from, so 'checksum' cannot be verified; left as is (set force: true to replace it)"
            )
            return False
        self.module.fail_json(
            msg=f"box '{box.name}' ({box.provider}, {box.version}) is installed from a different file "
            f"({kind} {installed}) than 'checksum' ({digest}); set force: true to replace it, "
            "or fix 'checksum'",
            error_kind="checksum_mismatch",
            boxes=[b._asdict() for b in self.before],
        )
        return False

    def add(self, replace: bool) -> None:
        p = self.p
        self.check_src()
        src = p["src"]
        path = local_path(src)
        catalog_dir = None
        placeholder = None
        add_args = {"name": p["name"], "provider": p["provider"], "force": replace}
        if p["version"] and not src.endswith(".json"):
            if not p["provider"]:
                self.module.fail_json(
                    msg=f"box '{p['name']}': 'version' with a .box file needs 'provider' too (set provider)",
                    error_kind="bad_arguments",
                )
            url = "file://" + os.path.abspath(path) if path is not None else src
            entry = {"name": p["provider"], "url": url}
            if p["checksum"]:
                entry.update(checksum_type=p["checksum_type"], checksum=p["checksum"])
            catalog = {"name": p["name"], "versions": [{"version": p["version"], "providers": [entry]}]}
            placeholder = f"<temporary catalog for {url}>"
            if self.module.check_mode:
                src = placeholder
            else:
                catalog_dir = tempfile.mkdtemp(prefix="travis-worker-box-")
                src = os.path.join(catalog_dir, "catalog.json")
                with open(src, "w", encoding="utf-8") as handle:
                    json.dump(catalog, handle)
            add_args["version"] = p["version"]
        else:
            add_args.update(version=p["version"], checksum=p["checksum"], checksum_type=p["checksum_type"])
        try:
            done = self.runner.box_add(src, **add_args)
        finally:
            if catalog_dir:
                shutil.rmtree(catalog_dir, ignore_errors=True)
        # the temporary catalog path is reported as a placeholder, so check mode and real runs agree
        self.result["commands"].append([placeholder if catalog_dir and a == src else a for a in done.cmd])
        return added_box(done.lines)

    def target_version(self):
        """The version `vagrant box add` gives the box: O(version), "0" for a box file added directly
        (Vagrant's BoxAdd#add_direct), unknown (None) for a catalog without O(version)."""
        if self.p["version"]:
            return self.p["version"]
        return None if (self.p["src"] or "").endswith(".json") else "0"

    def record(self) -> dict:
        p = self.p
        record = {"src": p["src"], "added_by": "travis.worker.vagrant_box", "added_at": int(time.time())}
        checksums = {}
        if local_path(p["src"]) is not None:
            checksums["sha256"] = self.src_digest("sha256")
        if p["checksum"]:
            checksums[p["checksum_type"]] = p["checksum"].lower()
        record["checksums"] = checksums
        return record

    def present(self) -> None:
        p = self.p
        found = self.matches(self.before)
        wanted = self.wanted() if found else None
        # Without O(version) several versions may match: one added from this very file is enough.
        same = [b for b in found if wanted and self.recorded_digest(b, wanted[0]) == wanted[1]]
        replace = [] if same else [b for b in found if self.needs_replace(b)]
        if found and not replace:
            self.result["record"] = read_record(self.home, (same or found)[0]) or {}
            self.result["boxes"] = [b._asdict() for b in self.before]
            return
        added = self.add(replace=bool(replace))
        self.result["changed"] = True
        record = self.record()
        version = self.target_version()
        if self.module.check_mode:
            new = [Box(p["name"], p["provider"] or "unknown", version or "unknown")]
            after = self.before + [b for b in new if b not in self.before]
        else:
            after = self.box_list()
            # The record goes to the box this add wrote (never to other installed versions): the one Vagrant
            # names in its success line, else the new entry, else the replaced entry of the target version.
            new = (
                [added]
                if added and added in after
                else [b for b in self.matches(after) if b not in self.before]
            )
            if not new and version:
                new = [b for b in self.matches(after) if b.version == version]
            for box in new:
                if not write_record(self.home, box, record):
                    self.warnings.append(
                        f"box '{box.name}' ({box.provider}, {box.version}) was added but its directory "
                        f"was not found under {self.home}/boxes, so no {RECORD} was written "
                        "(is vagrant_home right?)"
                    )
        self.result["added"] = [b._asdict() for b in new]
        self.result["record"] = record
        self.result["boxes"] = [b._asdict() for b in after]

    def absent(self) -> None:
        found = self.matches(self.before)
        for box in found:
            # Vagrant 2.4 lists one entry per architecture; removing one of several fails with
            # BoxRemoveMultiArchitecture unless --all-architectures says all of them are meant.
            cmd = self.runner.box_remove(
                box.name,
                provider=box.provider,
                version=box.version,
                force=self.p["force"],
                all_architectures=len(self.architectures.get(box, [])) > 1,
            )
            self.result["commands"].append(cmd.cmd)
        self.result["changed"] = bool(found)
        self.result["removed"] = [b._asdict() for b in found]
        if found and not self.module.check_mode:
            after = self.box_list()
        else:
            after = [b for b in self.before if b not in found]
        self.result["boxes"] = [b._asdict() for b in after]

    def box_list(self) -> list:
        """Installed boxes, one entry per name/provider/version (Vagrant 2.4 lists one per architecture)."""
        lines = self.runner.run(["box", "list"]).lines
        self.architectures = box_architectures(lines)
        return list(dict.fromkeys(parse_box_list(lines)))

    def run(self) -> dict:
        self.before = self.box_list()
        self.runner.dry_run = self.module.check_mode
        if self.p["state"] == "present":
            self.present()
        else:
            self.absent()
        if self.module._diff:
            after = [Box(**b) for b in self.result["boxes"]]
            self.result["diff"] = {
                "before": box_lines(self.before, self.p["name"]),
                "after": box_lines(after, self.p["name"]),
            }
        return self.result


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "name": {"type": "str", "required": True},
            "src": {"type": "str"},
            "provider": {"type": "str"},
            "version": {"type": "str"},
            "checksum": {"type": "str"},
            "checksum_type": {
                "type": "str",
                "default": "sha256",
                "choices": ["md5", "sha1", "sha256", "sha384", "sha512"],
            },
            "state": {"type": "str", "default": "present", "choices": ["present", "absent"]},
            "force": {"type": "bool", "default": False},
            "vagrant_home": {"type": "path"},
        },
        supports_check_mode=True,
    )
    home = module.params["vagrant_home"] or default_vagrant_home()
    runner = runner_from_module(module, vagrant_home=module.params["vagrant_home"])
    manager = BoxManager(module, runner, home)
    try:
        result = manager.run()
    except VagrantError as exc:
        fail_from_error(module, exc, boxes=[b._asdict() for b in getattr(manager, "before", [])])
        return
    except OSError as exc:
        module.fail_json(
            msg=f"box '{module.params['name']}': {exc}; check permissions and free space of "
            f"VAGRANT_HOME ({home}) and of 'src'",
            error_kind="os_error",
        )
        return
    for warning in manager.warnings:
        module.warn(warning)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
