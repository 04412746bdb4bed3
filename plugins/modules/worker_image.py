#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: travis.worker developers
# MIT License (see LICENSE or https://opensource.org/license/mit)
# SPDX-License-Identifier: MIT

from __future__ import annotations

DOCUMENTATION = r"""
---
module: worker_image
short_description: Publish, activate, roll back, prune, export and fetch worker images in the image store
version_added: 0.2.0
description:
  - Manages the versioned worker images of one box name in the image store of a worker box (issue 13). A
    worker runner switches its VM to the version C(<store>/<slug>/current) points to at its next job boundary;
    this module only changes files in the store (and, for VirtualBox publishing, takes a snapshot).
  - Layout - C(<store>/<slug>/<version>/) with C(image.json) written last (a directory without it is an
    incomplete build, ignored, removed by O(state=pruned)); LXC images hold C(rootfs/), VirtualBox images
    C(vm.json) (C({"uuid", "snapshot"})); both C(private_key). C(<store>/<slug>/current) is a relative symlink
    replaced atomically; C(<store>/<slug>/users/<vm>) (written by the runners) names the version each VM runs.
    C(<slug>) is the box name with C(/) replaced by C(-VAGRANTSLASH-).
  - O(state=published) - a new version from the stopped base VM. LXC - its root filesystem is copied once
    (C(rsync -aHAX --numeric-ids), xattrs such as file capabilities kept) into C(<version>/rootfs), files
    unchanged since the current image (else the newest) hard-linked to it (C(--link-dest)), not copied;
    C(/etc/machine-id) is emptied in the copy (the VMs of an image must not share the base VM's id; the LXC
    helper gives each VM its own). VirtualBox (module_utils C(virtualbox_image), shared with the other
    VirtualBox tools) - the base VM must be powered off (a cold snapshot, or every clone would start from its
    saved state); C(VBoxManage snapshot <vm> take <snapshot>) (skipped when the snapshot exists, as in a
    rerun), and C(vm.json) names the VM's UUID and snapshot. Then O(private_key) is copied, C(image.json)
    written, and C(current) moved (O(activate)). When a complete
    version with the same O(digest) and provider exists, nothing is built (a rerun after a failure); with
    O(activate) C(current) is moved to it.
  - O(state=current) - move C(current) to O(version) (a version name or V(previous), the newest complete
    version older than the current one). This is rollback. O(version=none) withdraws the published image -
    C(current) is removed, the versions stay - so the workers keep what their VMs run
    (C(reprovision.yml -e strategy=in_place) does it, since a published image would undo the in-place recipes
    at each VM's next reset).
  - O(state=pruned) - remove the complete versions beyond the newest O(keep), never the current one nor one
    named in C(users/); and incomplete version directories. VirtualBox (module_utils C(virtualbox_image)) -
    first the version's base VM is unregistered with its disks (C(unregistervm --delete)), or, when a version
    that stays names the same base VM, only its snapshot is deleted; when C(showmediuminfo) shows a VM still
    linked to it, or VBoxManage fails, the version is kept and a warning says why.
  - O(state=status) - report versions, current, users, incomplete builds. Never changes anything.
  - O(state=exported) - LXC only. Write the version O(version) (default the current one) as a box
    C(<catalog>/<slug>-<version>-lxc.box) (tar.gz, C(gzip -1), mode 0644, with C(metadata.json),
    C(private_key) and the C(rootfs/) tree, the layout of travis.worker.box_export's LXC boxes) and add it
    to C(<catalog>/metadata.json) (Vagrant's box catalog format, C(checksum_type) sha256; the image record
    goes in the version's C(travis_worker) object). Skipped when the catalog already lists that version with
    an intact file.
  - O(state=fetched) - read O(catalog) (a directory, a C(metadata.json) path or an C(http(s)://) or C(file://)
    URL of either), pick O(version) (default the newest, or the newest with O(digest)), download the C(.box)
    once (a C(file://) URL is read in place), verify its sha256, unpack it into C(<store>/<slug>/<version>/),
    write C(image.json) last and move C(current) (O(activate)). A version already complete locally is not
    fetched again.
author:
  - travis.worker developers (@travis-ci)
options:
  store:
    description: The image store root.
    type: path
    default: /var/lib/travis-worker/images
  box:
    description: The box name the images belong to (the worker VMs' box, for example V(twlab/debian12)).
    type: str
    required: true
  state:
    description: What to do; see the description.
    type: str
    choices: [published, current, pruned, status, exported, fetched]
    default: status
  provider:
    description: The provider of the image (O(state=published)).
    type: str
    choices: [lxc, virtualbox]
  digest:
    description:
      - The recipe digest the image carries (O(state=published), required there; 64 lower-case hex digits, the
        shape the runner accepts). With O(state=fetched), pick
        the newest catalog version with this digest.
    type: str
  version:
    description:
      - O(state=published) - the new version's name; default the UTC time C(%Y%m%d.%H%M%S).
      - O(state=current) - the version to activate, V(previous), or V(none) to withdraw C(current).
      - O(state=exported) / O(state=fetched) - the version; default the current one / the catalog's newest.
    type: str
  activate:
    description: With O(state=published) or O(state=fetched), move C(current) to the version.
    type: bool
    default: true
  force:
    description: With O(state=published), build a new version even when one with O(digest) exists.
    type: bool
    default: false
  lxc_container:
    description: LXC - the stopped base container whose root filesystem becomes the image.
    type: str
  lxc_path:
    description: LXC - the LXC path holding O(lxc_container).
    type: path
    default: /var/lib/lxc
  vm:
    description:
      - VirtualBox - the base VM (name or UUID) to snapshot; run the module as the user it is registered to.
    type: str
  vm_uuid:
    description:
      - VirtualBox - the base VM's UUID as the caller knows it. C(vm.json) gets the UUID
        C(VBoxManage showvminfo) reports for O(vm); a warning says when they differ.
    type: str
  snapshot:
    description:
      - VirtualBox - the snapshot name; default C(image-<version>) (C(tasks/image_publish.yml) snapshots the
        same base VM at every build, so each version needs its own snapshot).
    type: str
  private_key:
    description:
      - The SSH private key the image's C(vagrant) user accepts (the base VM's Vagrant key).
      - Required with O(provider=virtualbox).
    type: path
  owner:
    description:
      - The worker user; owns the store's box directory, C(users/) and C(private_key). Default - unchanged.
    type: str
  keep:
    description: With O(state=pruned), how many newest complete versions stay.
    type: int
    default: 2
  catalog:
    description: O(state=exported) - the catalog directory. O(state=fetched) - the catalog directory, its
      C(metadata.json), or an C(http(s)://) / C(file://) URL of either.
    type: str
  catalog_url:
    description:
      - O(state=exported) - the URL the other boxes reach the catalog directory at (the box URL becomes
        C(<catalog_url>/<file>)); default C(file://<catalog>).
    type: str
  hostname:
    description: The C(built_on) of C(image.json); default this host's name.
    type: str
requirements:
  - rsync, tar and gzip on the target (LXC); VBoxManage (VirtualBox publishing and pruning)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - travis.worker.attributes
notes:
  - Check mode reports what would be built, moved, removed or fetched, without touching the store.
  - Diff mode shows C(current) and the list of complete versions before and after.
  - The runner side (switching a VM at its job boundary, writing C(users/)) is in the travis-worker runner.
"""

EXAMPLES = r"""
- name: Publish the provisioned (stopped) LXC base VM as the new image and make it current
  travis.worker.worker_image:
    box: twlab/debian12
    state: published
    provider: lxc
    digest: "{{ tw_recipe_digest }}"
    lxc_container: worker-base-box1
    private_key: /home/travis/worker-vms/base/.vagrant/machines/base/lxc/private_key
    owner: travis

- name: Roll back to the version before the current one
  travis.worker.worker_image:
    box: twlab/debian12
    state: current
    version: previous

- name: Keep the 2 newest versions (and every version in use)
  travis.worker.worker_image:
    box: twlab/debian12
    state: pruned
    keep: 2

- name: Export the current image to the shared catalog
  travis.worker.worker_image:
    box: twlab/debian12
    state: exported
    catalog: /srv/catalog/twlab-debian12
    catalog_url: http://controller:8080/twlab-debian12

- name: Fetch the newest image with these recipes on another box
  travis.worker.worker_image:
    box: twlab/debian12
    state: fetched
    catalog: http://controller:8080/twlab-debian12/metadata.json
    digest: "{{ tw_recipe_digest }}"
    owner: travis
"""

RETURN = r"""
box_dir:
  description: C(<store>/<slug>).
  returned: always
  type: str
  sample: /var/lib/travis-worker/images/twlab-VAGRANTSLASH-debian12
version:
  description: The version published, activated, exported or fetched (the existing one if nothing was built).
  returned: when a version is involved
  type: str
  sample: "20261202.041500"
image:
  description: The version's image.json.
  returned: when a version is involved and exists (not in check mode before it is built)
  type: dict
  sample: {"box": "twlab/debian12", "version": "20261202.041500", "digest": "0123456789abcdef0123...",
           "provider": "lxc", "created": "2026-12-02T04:15:00Z", "built_on": "box1"}
built:
  description: Whether a new version was (or would be) built, copied or fetched.
  returned: always
  type: bool
current:
  description: The version C(current) points to after the run.
  returned: always
  type: str
previous_current:
  description: The version C(current) pointed to before the run.
  returned: always
  type: str
versions:
  description: The complete versions (their image.json plus C(version)), oldest first, after the run.
  returned: always
  type: list
  elements: dict
users:
  description: VM name -> version it runs (from C(users/)).
  returned: always
  type: dict
incomplete:
  description: Version directories without image.json (failed or running builds).
  returned: always
  type: list
  elements: str
removed:
  description: Versions removed (O(state=pruned)).
  returned: always
  type: list
  elements: str
kept:
  description: Version -> why it was kept (O(state=pruned)).
  returned: always
  type: dict
box_file:
  description: The .box file (O(state=exported)) or the one fetched.
  returned: with O(state=exported) or O(state=fetched)
  type: str
sha256:
  description: Its sha256.
  returned: with O(state=exported) or O(state=fetched)
  type: str
"""

import datetime
import json
import os
import pwd
import re
import shutil
import socket
import tempfile
import traceback
from typing import Any, Optional
from urllib.parse import urljoin, urlparse

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.urls import fetch_url

from ansible_collections.travis.worker.plugins.module_utils import image_store as store_lib
from ansible_collections.travis.worker.plugins.module_utils import virtualbox_image
from ansible_collections.travis.worker.plugins.module_utils.vboxmanage import VBoxManage, VBoxManageError


class ImageError(Exception):
    def __init__(self, msg: str, **extra: Any) -> None:
        super().__init__(msg)
        self.msg = msg
        self.extra = extra


def now_version() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d.%H%M%S")


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def rootfs_of(lxc_path: str, container: str) -> str:
    """The container's rootfs directory from its config (``lxc.rootfs.path``, ``dir:`` prefix dropped)."""
    config = os.path.join(lxc_path, container, "config")
    try:
        with open(config, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        raise ImageError(
            f"cannot read {config}: {exc}; is the base VM created (vagrant status in its project)"
            " and lxc_path right?"
        ) from exc
    path = os.path.join(lxc_path, container, "rootfs")
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() in ("lxc.rootfs.path", "lxc.rootfs"):
            value = value.strip()
            path = value[4:] if value.startswith("dir:") else value
    if not os.path.isdir(path):
        raise ImageError(
            f"container {container}: rootfs {path} is not a directory (only the dir backend is supported)"
        )
    return path


class Store:
    def __init__(self, module: AnsibleModule) -> None:
        self.module = module
        self.p = module.params
        self.check = module.check_mode
        self.bdir = store_lib.box_dir(self.p["store"], self.p["box"])
        self.result: dict[str, Any] = {
            "changed": False,
            "built": False,
            "box_dir": self.bdir,
            "removed": [],
            "kept": {},
            "previous_current": store_lib.current(self.bdir),
        }
        self.before = self.snapshot()

    # ------------------------------------------------------------------ helpers
    def snapshot(self) -> dict[str, Any]:
        return {
            "current": store_lib.current(self.bdir),
            "versions": [i["version"] for i in store_lib.images(self.bdir)],
        }

    def run(self, argv: list[str], what: str, remedy: str) -> str:
        rc, out, err = self.module.run_command(argv, environ_update={"LANG": "C", "LC_ALL": "C"})
        if rc != 0:
            raise ImageError(
                f"{what} failed (rc={rc}): {(err or out).strip()[-2000:]}; {remedy}", rc=rc, cmd=argv
            )
        return out

    def owner_ids(self) -> Optional[tuple[int, int]]:
        if not self.p["owner"]:
            return None
        try:
            entry = pwd.getpwnam(self.p["owner"])
        except KeyError:
            raise ImageError(
                f"owner {self.p['owner']!r} is not a user on this host; create it (the worker role does)"
            ) from None
        return entry.pw_uid, entry.pw_gid

    def ensure_dirs(self) -> None:
        ids = self.owner_ids()
        for path in (self.p["store"], self.bdir, os.path.join(self.bdir, store_lib.USERS)):
            if not os.path.isdir(path):
                os.makedirs(path, mode=0o755)
                self.result["changed"] = True
            if ids:
                st = os.stat(path)
                if (st.st_uid, st.st_gid) != ids:
                    os.chown(path, *ids)
                    self.result["changed"] = True

    def copy_key(self, src: Optional[str], vdir: str) -> None:
        if not src:
            return
        if not os.path.isfile(src):
            raise ImageError(
                f"private_key {src} does not exist; it is the base VM's"
                " .vagrant/machines/<vm>/<provider>/private_key"
            )
        dest = os.path.join(vdir, "private_key")
        shutil.copyfile(src, dest)
        os.chmod(dest, 0o600)
        ids = self.owner_ids()
        if ids:
            os.chown(dest, *ids)

    def write_image(self, vdir: str, image: dict[str, Any]) -> None:
        store_lib.write_json_atomic(os.path.join(vdir, store_lib.IMAGE_JSON), image)

    def activate(self, version: str) -> None:
        if store_lib.current(self.bdir) != version:
            if not self.check:
                store_lib.set_current(self.bdir, version)
            self.result["changed"] = True

    def image_of(self, version: str) -> Optional[dict[str, Any]]:
        for image in store_lib.images(self.bdir):
            if image["version"] == version:
                return image
        return None

    def new_version_name(self) -> str:
        version = self.p["version"] or now_version()
        if version in store_lib.RESERVED or "/" in version or version.startswith("."):
            raise ImageError(f"version {version!r} is not a usable directory name")
        if os.path.isfile(os.path.join(self.bdir, version, store_lib.IMAGE_JSON)):
            raise ImageError(
                f"version {version} exists already in {self.bdir}; pick another name or no version"
            )
        return version

    def remove_version_dir(self, version: str) -> None:
        path = os.path.join(self.bdir, version)
        # image.json first: a half-removed version is incomplete, never a broken complete one
        image = os.path.join(path, store_lib.IMAGE_JSON)
        if os.path.exists(image):
            os.unlink(image)
        shutil.rmtree(path)

    # ------------------------------------------------------------------ states
    def published(self) -> None:
        p = self.p
        if not p["digest"] or not p["provider"]:
            raise ImageError("state=published needs digest and provider")
        if not re.fullmatch(r"[0-9a-f]{64}", p["digest"]):
            # the runner refuses any other shape (it would keep every VM on its old image)
            raise ImageError(f"digest {p['digest']!r} is not 64 lower-case hex digits (a sha256)")
        existing = store_lib.by_digest(store_lib.images(self.bdir), p["digest"], p["provider"])
        if existing and not p["force"]:
            self.result.update(version=existing["version"], image=existing)
            if p["activate"]:
                self.activate(existing["version"])
            return
        if p["provider"] == "lxc" and not p["lxc_container"]:
            raise ImageError("provider=lxc needs lxc_container (the stopped base VM's container)")
        if p["provider"] == "virtualbox" and not p["vm"]:
            raise ImageError("provider=virtualbox needs vm (the base VM's name or UUID)")
        version = self.new_version_name()
        self.result.update(version=version, built=True, changed=True)
        if p["provider"] == "virtualbox":
            self.published_virtualbox(version)
            return
        rootfs = rootfs_of(p["lxc_path"], p["lxc_container"])
        if self.check:
            return
        self.ensure_dirs()
        vdir = os.path.join(self.bdir, version)
        if os.path.isdir(vdir):  # an earlier incomplete build of the same name
            shutil.rmtree(vdir)
        os.makedirs(vdir, mode=0o755)
        ids = self.owner_ids()
        if ids:
            os.chown(vdir, *ids)
        image: dict[str, Any] = {
            "box": p["box"],
            "version": version,
            "digest": p["digest"],
            "provider": p["provider"],
            "created": None,
            "built_on": p["hostname"] or socket.gethostname(),
        }
        link = self.link_base()
        try:
            self.run(
                [
                    self.module.get_bin_path("rsync", required=True),
                    "-aHAX",
                    "--numeric-ids",
                    *([f"--link-dest={link}"] if link else []),
                    rootfs + "/",
                    os.path.join(vdir, "rootfs") + "/",
                ],
                f"copying {rootfs} into the image",
                "check free space in the store and that the base container is stopped",
            )
            machine_id = os.path.join(vdir, "rootfs", "etc", "machine-id")
            if os.path.isfile(machine_id) and not os.path.islink(machine_id):
                # a new empty file, never a truncation: the copy may be a hard link into an older image
                os.unlink(machine_id)
                with open(machine_id, "w", encoding="utf-8"):
                    pass
            self.copy_key(p["private_key"], vdir)
            image["created"] = now_iso()
            self.write_image(vdir, image)
        except BaseException:
            if os.path.isdir(vdir):  # a failed build leaves nothing behind (and never moves current)
                shutil.rmtree(vdir, ignore_errors=True)
            raise
        self.result["image"] = image
        if p["activate"]:
            self.activate(version)

    def link_base(self) -> Optional[str]:
        """The rootfs of the image to hard-link unchanged files from (rsync --link-dest): the current LXC
        image, else the newest one; None when there is none. The base VM usually starts from the current
        image, so a new version copies only what its recipes changed. Safe because an image's files are
        never written after it is complete (VMs mount them as a read-only lower layer, syncs and exports
        only read them, a removal only unlinks)."""
        found = [i for i in store_lib.images(self.bdir) if i.get("provider") == "lxc"]
        cur = store_lib.current(self.bdir)
        found.sort(key=lambda i: (i["version"] == cur, i["version"]))
        for image in reversed(found):
            rootfs = os.path.join(self.bdir, image["version"], "rootfs")
            if os.path.isdir(rootfs):
                return rootfs
        return None

    def vbox(self) -> VBoxManage:
        return VBoxManage(self.module, dry_run=self.check)

    def published_virtualbox(self, version: str) -> None:
        """The one VirtualBox implementation (module_utils/virtualbox_image.py): a cold snapshot of the
        powered-off base VM, vm.json + private_key + image.json last, current moved (O(activate))."""
        p = self.p
        if not p["private_key"]:
            raise ImageError("provider=virtualbox needs private_key (the base VM's Vagrant key)")
        if not self.check:
            self.ensure_dirs()
        try:
            done = virtualbox_image.publish(
                self.vbox(), store=p["store"], box=p["box"], version=version, digest=p["digest"],
                base_vm=p["vm"], private_key=p["private_key"], snapshot=p["snapshot"] or f"image-{version}",
                activate_it=p["activate"], built_on=p["hostname"],
            )  # fmt: skip
        except virtualbox_image.ImageError as exc:
            raise ImageError(str(exc)) from None
        except VBoxManageError as exc:
            raise ImageError(**exc.fail_kwargs()) from None
        if p["vm_uuid"] and done["vm"].get("uuid", "").lower() != p["vm_uuid"].lower():
            self.module.warn(f"vm_uuid {p['vm_uuid']} differs from {p['vm']}'s UUID {done['vm'].get('uuid')};"
                             " vm.json names the latter")  # fmt: skip
        if "image" in done and not self.check:
            self.result["image"] = done["image"]
        ids = self.owner_ids()
        if ids and not self.check:
            vdir = os.path.join(self.bdir, version)
            for path in (vdir, os.path.join(vdir, "private_key")):
                os.chown(path, *ids)

    def current(self) -> None:
        want = self.p["version"]
        if not want:
            raise ImageError("state=current needs version (a version name or 'previous')")
        if want == "none":  # withdraw: the workers keep what their VMs run
            was = store_lib.current(self.bdir)
            self.result.update(version=None, previous=was)
            if was is not None or os.path.lexists(os.path.join(self.bdir, store_lib.CURRENT)):
                if not self.check:
                    os.unlink(os.path.join(self.bdir, store_lib.CURRENT))
                self.result["changed"] = True
            return
        found = store_lib.images(self.bdir)
        if want == "previous":
            target = store_lib.previous(found, store_lib.current(self.bdir))
            if target is None:
                raise ImageError(
                    f"no complete version older than the current one ({store_lib.current(self.bdir)})"
                    f" in {self.bdir}: nothing to roll back to"
                )
        else:
            target = want
        image = self.image_of(target)
        if image is None:
            raise ImageError(
                f"version {target} is not a complete image in {self.bdir};"
                f" complete versions: {[i['version'] for i in found]}"
            )
        self.result.update(version=target, image=image)
        self.activate(target)

    def pruned(self) -> None:
        remove, kept = store_lib.prune_plan(self.bdir, self.p["keep"])
        self.result["kept"] = kept
        complete = [i["version"] for i in store_lib.images(self.bdir)]
        vms = {v: store_lib.read_json(os.path.join(self.bdir, v, virtualbox_image.VM_JSON)) for v in complete}
        vbox = None
        for version in remove:
            if vms.get(version):  # a VirtualBox image: its base VM or snapshot goes first (virtualbox_image)
                vbox = vbox or self.vbox()
                others = [vms[v] or {} for v in complete if v != version and v not in self.result["removed"]]
                try:
                    why = virtualbox_image.release(vbox, vms[version], others)
                except VBoxManageError as exc:
                    why = str(exc)
                if why:
                    self.module.warn(f"kept {version}: {why}")
                    kept[version] = [why]
                    continue
            if not self.check:
                self.remove_version_dir(version)
            self.result["removed"].append(version)
            self.result["changed"] = True

    def exported(self) -> None:
        p = self.p
        if not p["catalog"]:
            raise ImageError("state=exported needs catalog (a directory)")
        version = p["version"] or store_lib.current(self.bdir)
        image = self.image_of(version) if version else None
        if image is None:
            raise ImageError(f"no complete version {version!r} in {self.bdir} to export (publish one first)")
        if image.get("provider") != "lxc":
            raise ImageError(
                f"version {version} is a {image.get('provider')} image; catalog export is done for LXC images"
                " only "
                "(a VirtualBox image is a snapshot of a VM registered on this box; build it on each box)"
            )
        catalog = p["catalog"]
        name = f"{store_lib.slug(p['box'])}-{version}-lxc.box"
        box_file = os.path.join(catalog, name)
        meta_path = os.path.join(catalog, "metadata.json")
        meta = store_lib.read_json(meta_path) or {"name": p["box"], "versions": []}
        self.result.update(version=version, image=image, box_file=box_file)
        listed = [v for v in meta.get("versions", []) if v.get("version") == version]
        if listed and os.path.isfile(box_file):
            entry = next((pr for pr in listed[0].get("providers", []) if pr.get("name") == "lxc"), None)
            if entry and os.path.getsize(box_file) == listed[0].get("travis_worker", {}).get("size"):
                self.result["sha256"] = entry.get("checksum")
                return
        self.result.update(changed=True, built=True)
        if self.check:
            return
        os.makedirs(catalog, mode=0o755, exist_ok=True)
        vdir = os.path.join(self.bdir, version)
        work = tempfile.mkdtemp(prefix=".export-", dir=catalog)
        try:
            with open(os.path.join(work, "metadata.json"), "w", encoding="utf-8") as handle:
                json.dump({"provider": "lxc", "version": "1.0.0"}, handle)
            tmp_box = os.path.join(work, name)
            members = ["rootfs"] + (
                ["private_key"] if os.path.isfile(os.path.join(vdir, "private_key")) else []
            )
            tar = self.module.get_bin_path("tar", required=True)
            argv = [
                tar,
                "--numeric-owner",
                "--xattrs",
                "--xattrs-include=*",
                # gzip -1: about 3x faster than the default level for a box a little larger (export is on
                # the reprovision's path; the catalog is on the fleet's own network)
                "--use-compress-program=gzip -1",
                "-cf",
                tmp_box,
                "-C",
                work,
                "metadata.json",
                "-C",
                vdir,
            ]
            self.run([*argv, *members], f"archiving {vdir}", f"check free space in {catalog}")
            os.chmod(tmp_box, 0o644)  # fetched to the controller as the connection user (no become)
            checksum = store_lib.sha256_of(tmp_box)
            size = os.path.getsize(tmp_box)
            os.rename(tmp_box, box_file)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        base_url = (p["catalog_url"] or "file://" + os.path.abspath(catalog)).rstrip("/")
        entry = {
            "version": version,
            "providers": [
                {"name": "lxc", "url": f"{base_url}/{name}", "checksum_type": "sha256", "checksum": checksum}
            ],
            "travis_worker": {
                "digest": image.get("digest"),
                "image": dict(image),
                "size": size,
            },
        }
        meta["name"] = p["box"]
        meta["versions"] = sorted(
            [v for v in meta.get("versions", []) if v.get("version") != version] + [entry],
            key=lambda v: v["version"],
        )
        store_lib.write_json_atomic(meta_path, meta)
        self.result["sha256"] = checksum

    def read_catalog(self) -> tuple[dict[str, Any], str]:
        """(metadata.json, its URL or path) of O(catalog)."""
        src = self.p["catalog"]
        parsed = urlparse(src)
        if parsed.scheme in ("http", "https"):
            url = src if src.endswith(".json") else src.rstrip("/") + "/metadata.json"
            resp, info = fetch_url(self.module, url)
            if info.get("status") != 200 or resp is None:
                raise ImageError(
                    f"cannot read the catalog {url}: HTTP {info.get('status')} {info.get('msg')}"
                )
            try:
                return json.loads(resp.read()), url
            except ValueError as exc:
                raise ImageError(f"the catalog {url} is not JSON: {exc}") from exc
        path = parsed.path if parsed.scheme == "file" else src
        if os.path.isdir(path):
            path = os.path.join(path, "metadata.json")
        data = store_lib.read_json(path)
        if data is None:
            raise ImageError(
                f"cannot read the catalog {path}: missing or not a JSON object (export one first)"
            )
        return data, path

    def fetched(self) -> None:
        p = self.p
        if not p["catalog"]:
            raise ImageError("state=fetched needs catalog")
        meta, where = self.read_catalog()
        if meta.get("name") not in (None, p["box"]):
            raise ImageError(f"the catalog {where} is for box {meta.get('name')}, not {p['box']}")
        versions = [
            v
            for v in meta.get("versions", [])
            if any(pr.get("name") == "lxc" for pr in v.get("providers", []))
        ]
        if p["version"]:
            versions = [v for v in versions if v.get("version") == p["version"]]
        if p["digest"]:
            versions = [v for v in versions if v.get("travis_worker", {}).get("digest") == p["digest"]]
        if not versions:
            raise ImageError(
                f"the catalog {where} has no LXC version"
                + (f" {p['version']}" if p["version"] else "")
                + (f" with digest {p['digest']}" if p["digest"] else "")
                + "; export it on the box that built it first"
            )
        entry = sorted(versions, key=lambda v: v["version"])[-1]
        version = entry["version"]
        provider = next(pr for pr in entry["providers"] if pr.get("name") == "lxc")
        self.result["version"] = version
        local = self.image_of(version)
        if local is not None:
            self.result["image"] = local
        else:
            self.result.update(built=True, changed=True)
            if not self.check:
                self.unpack(version, entry, provider, where)
        if p["activate"]:
            self.activate(version)

    def unpack(self, version: str, entry: dict[str, Any], provider: dict[str, Any], where: str) -> None:
        self.ensure_dirs()
        url = provider["url"]
        if not urlparse(url).scheme:
            url = urljoin(where if "://" in where else "file://" + os.path.abspath(where), url)
        parsed = urlparse(url)
        vdir = os.path.join(self.bdir, version)
        download = None
        try:
            if parsed.scheme == "file":
                box_file = parsed.path
            elif parsed.scheme in ("http", "https"):
                fd, download = tempfile.mkstemp(prefix=".fetch-", suffix=".box", dir=self.bdir)
                os.close(fd)
                resp, info = fetch_url(self.module, url, timeout=600)
                if info.get("status") != 200 or resp is None:
                    raise ImageError(f"cannot download {url}: HTTP {info.get('status')} {info.get('msg')}")
                with open(download, "wb") as handle:
                    shutil.copyfileobj(resp, handle, 1024 * 1024)
                box_file = download
            else:
                raise ImageError(f"box URL {url}: only file://, http:// and https:// are supported")
            if provider.get("checksum_type", "sha256") != "sha256":
                raise ImageError(
                    f"box {url}: checksum_type {provider.get('checksum_type')} (only sha256 is supported)"
                )
            got = store_lib.sha256_of(box_file)
            if provider.get("checksum") and got != provider["checksum"]:
                raise ImageError(
                    f"box {url}: sha256 {got} does not match the catalog's {provider['checksum']};"
                    " nothing was unpacked"
                )
            self.result.update(box_file=url, sha256=got)
            if os.path.isdir(vdir):
                shutil.rmtree(vdir)
            os.makedirs(vdir, mode=0o755)
            tar = self.module.get_bin_path("tar", required=True)
            # without --xattrs-include=* GNU tar restores only user.* xattrs: file capabilities would be lost
            argv = [tar, "--numeric-owner", "--xattrs", "--xattrs-include=*", "-xzf", box_file, "-C", vdir]
            skip = [
                "--exclude=./image.json",
                "--exclude=image.json",
                "--exclude=metadata.json",
                "--exclude=./metadata.json",
            ]
            self.run([*argv, *skip], f"unpacking {url}", f"check free space in {self.bdir}")
            key = os.path.join(vdir, "private_key")
            if os.path.isfile(key):
                os.chmod(key, 0o600)
                ids = self.owner_ids()
                if ids:
                    os.chown(key, *ids)
            ids = self.owner_ids()
            if ids:
                os.chown(vdir, *ids)
            image = dict(entry.get("travis_worker", {}).get("image") or {})
            image.update(box=self.p["box"], version=version, provider="lxc")
            image.setdefault("digest", entry.get("travis_worker", {}).get("digest"))
            image.setdefault("created", now_iso())
            image["fetched_from"] = url
            self.write_image(vdir, image)
            self.result["image"] = image
        except BaseException:
            if os.path.isdir(vdir) and not os.path.isfile(os.path.join(vdir, store_lib.IMAGE_JSON)):
                shutil.rmtree(vdir, ignore_errors=True)
            raise
        finally:
            if download and os.path.exists(download):
                os.unlink(download)

    def finish(self) -> dict[str, Any]:
        after = self.snapshot()
        if self.check:  # what a real run would leave
            if (
                self.result.get("built")
                and self.p["state"] in ("published", "fetched")
                and self.result.get("version")
            ):
                after["versions"] = sorted(set(after["versions"]) | {self.result["version"]})
            if self.p["state"] == "pruned":
                after["versions"] = [v for v in after["versions"] if v not in self.result["removed"]]
            if self.p["state"] in ("published", "fetched", "current") and (
                self.p["activate"] or self.p["state"] == "current"
            ):
                after["current"] = self.result.get("version") or after["current"]
            if self.p["state"] == "current" and self.p["version"] == "none":
                after["current"] = None  # withdrawn
        self.result.update(
            current=after["current"],
            versions=store_lib.images(self.bdir),
            users=store_lib.users(self.bdir),
            incomplete=store_lib.incomplete(self.bdir),
        )
        if self.module._diff:
            self.result["diff"] = {"before": self.before, "after": after}
        return self.result


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            store=dict(type="path", default="/var/lib/travis-worker/images"),
            box=dict(type="str", required=True),
            state=dict(
                type="str",
                default="status",
                choices=["published", "current", "pruned", "status", "exported", "fetched"],
            ),
            provider=dict(type="str", choices=["lxc", "virtualbox"]),
            digest=dict(type="str"),
            version=dict(type="str"),
            activate=dict(type="bool", default=True),
            force=dict(type="bool", default=False),
            lxc_container=dict(type="str"),
            lxc_path=dict(type="path", default="/var/lib/lxc"),
            vm=dict(type="str"),
            vm_uuid=dict(type="str"),
            snapshot=dict(type="str"),
            private_key=dict(type="path", no_log=False),
            owner=dict(type="str"),
            keep=dict(type="int", default=2),
            catalog=dict(type="str"),
            catalog_url=dict(type="str"),
            hostname=dict(type="str"),
        ),
        supports_check_mode=True,
    )
    if module.params["keep"] < 0:
        module.fail_json(msg="keep must be >= 0")
    try:
        store = Store(module)
        state = module.params["state"]
        if state != "status":
            getattr(store, state)()
        module.exit_json(**store.finish())
    except ImageError as exc:
        module.fail_json(msg=exc.msg, **exc.extra)
    except OSError as exc:
        module.fail_json(
            msg=f"{exc}; check the store path and that the module runs as root",
            exception=traceback.format_exc(),
        )


if __name__ == "__main__":
    main()
