"""VirtualBox image publish/prune (module_utils/virtualbox_image.py) against recorded VBoxManage output.

The recordings are tests/unit/fixtures/vboxmanage_image/*.json (provenance in each; make_fixtures.py there).
"""

from __future__ import annotations

import json
import os
import stat
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from ansible_collections.travis.worker.plugins.module_utils import virtualbox_image as vi
from ansible_collections.travis.worker.plugins.module_utils.vboxmanage import VBoxManage
from module_harness import recorded

BASE = "3f2b9c7a-1d4e-4a8b-8c6f-2e5d7a9b0c13"
CLONE = "9f3a2c71-6b8d-4e0f-a1c2-5d7e9b3f4a86"
BOX = "twlab/debian12"
DIGEST = "cd" * 32
VERSION = "20261202.041500"
NOW = datetime(2026, 12, 2, 4, 15, tzinfo=timezone.utc)


class FakeModule:
    """run_command replays vboxmanage_image recordings in order, asserting argv (a list) and the C locale."""

    def __init__(self, *fixtures: str) -> None:
        self.queue = [recorded(f"vboxmanage_image/{name}") for name in fixtures]

    def get_bin_path(self, name: str, required: bool = False) -> str:
        return f"/usr/bin/{name}"

    def run_command(self, argv: list[str], **kwargs: Any) -> tuple[int, str, str]:
        assert isinstance(argv, list) and self.queue, f"unexpected {argv}"
        rec = self.queue.pop(0)
        assert argv == ["/usr/bin/VBoxManage", *rec["argv"][1:]]
        assert kwargs["environ_update"]["LC_ALL"] == "C"
        return rec["rc"], rec["stdout"], rec["stderr"]


def vbox(*fixtures: str, dry_run: bool = False) -> tuple[VBoxManage, FakeModule]:
    module = FakeModule(*fixtures)
    return VBoxManage(module, dry_run=dry_run), module


def key(tmp_path: Path) -> str:
    path = tmp_path / "base_private_key"
    path.write_bytes(b"-----BEGIN OPENSSH PRIVATE KEY-----\nbase\n-----END OPENSSH PRIVATE KEY-----\n")
    return str(path)


def do_publish(runner: VBoxManage, tmp_path: Path, version: str = VERSION, **kw: Any) -> dict:
    return vi.publish(
        runner, store=str(tmp_path / "images"), box=BOX, version=version, digest=kw.pop("digest", DIGEST),
        base_vm=BASE, private_key=key(tmp_path), built_on="box-1", now=NOW, **kw,
    )  # fmt: skip


def box_dir(tmp_path: Path) -> Path:
    return tmp_path / "images" / "twlab-VAGRANTSLASH-debian12"


def test_publish_snapshots_the_base_vm_writes_image_json_last_and_moves_current(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner, module = vbox("showvminfo_base_poweroff", "snapshot_take_image")
    written: list[str] = []
    real_write = vi._write

    def spy(path: Path, data: bytes, mode: int) -> None:
        written.append(path.name)
        real_write(path, data, mode)

    monkeypatch.setattr(vi, "_write", spy)
    result = do_publish(runner, tmp_path)
    assert not module.queue
    assert written == ["vm.json", "private_key", "image.json"]
    path = box_dir(tmp_path) / VERSION
    assert json.loads((path / "vm.json").read_text()) == {"uuid": BASE, "snapshot": "image"}
    assert json.loads((path / "image.json").read_text()) == {
        "box": BOX, "version": VERSION, "digest": DIGEST, "provider": "virtualbox",
        "created": "2026-12-02T04:15:00Z", "built_on": "box-1",
    }  # fmt: skip
    assert stat.S_IMODE((path / "private_key").stat().st_mode) == 0o600
    assert os.readlink(box_dir(tmp_path) / "current") == VERSION
    assert result["changed"] and result["previous"] is None


def test_publish_refuses_a_running_base_vm(tmp_path: Path) -> None:
    runner, module = vbox("showvminfo_base_running")
    with pytest.raises(vi.ImageError, match=r"base VM .* is running: halt it first"):
        do_publish(runner, tmp_path)
    assert not module.queue
    assert not box_dir(tmp_path).exists()


def test_publish_rerun_after_a_failure_keeps_the_snapshot_and_replaces_the_incomplete_dir(
    tmp_path: Path,
) -> None:
    half = box_dir(tmp_path) / VERSION
    half.mkdir(parents=True)
    (half / "vm.json").write_text("{}")  # an earlier attempt stopped before image.json
    runner, module = vbox("showvminfo_base_snapshotted")  # "image" is there: no second snapshot
    do_publish(runner, tmp_path)
    assert not module.queue
    assert (half / "image.json").is_file()
    assert json.loads((half / "vm.json").read_text())["uuid"] == BASE


def test_publish_of_an_existing_version_only_activates_it_and_a_digest_clash_fails(tmp_path: Path) -> None:
    runner, _ = vbox("showvminfo_base_poweroff", "snapshot_take_image")
    do_publish(runner, tmp_path)
    runner, _ = vbox()  # no VBoxManage call at all
    assert do_publish(runner, tmp_path)["changed"] is False
    with pytest.raises(vi.ImageError, match="already published with digest"):
        do_publish(runner, tmp_path, digest="ef" * 32)


def test_publish_in_check_mode_writes_nothing_and_plans_the_snapshot(tmp_path: Path) -> None:
    runner, module = vbox("showvminfo_base_poweroff", dry_run=True)
    result = do_publish(runner, tmp_path)
    assert not module.queue
    assert result["changed"] and result["planned"] == [
        ["/usr/bin/VBoxManage", "snapshot", BASE, "take", "image"]
    ]
    assert not box_dir(tmp_path).exists()


def test_activate_moves_current_back_for_a_rollback(tmp_path: Path) -> None:
    runner, _ = vbox("showvminfo_base_poweroff", "snapshot_take_image")
    do_publish(runner, tmp_path, "20261201.090000")
    runner, _ = vbox("showvminfo_base_poweroff", "snapshot_take_image")
    do_publish(runner, tmp_path)
    assert vi.activate(str(tmp_path / "images"), BOX, "20261201.090000") == VERSION
    assert os.readlink(box_dir(tmp_path) / "current") == "20261201.090000"
    with pytest.raises(vi.ImageError, match="not a published image"):
        vi.activate(str(tmp_path / "images"), BOX, "20990101.000000")


def test_parse_medium_info_reads_continuation_lines() -> None:
    info = vi.parse_medium_info(recorded("vboxmanage_image/showmediuminfo_base_disk_linked")["stdout"])
    assert info["Parent UUID"] == ["base"]
    assert info["Child UUIDs"] == [
        "0a1b2c3d-4e5f-4a6b-9c7d-8e9fa0b1c2d3",
        "b7c8d9e0-f1a2-4b3c-8d4e-5f6a7b8c9d0e",
    ]
    assert info["In use by VMs"][0].startswith(f"base (UUID: {BASE}) [image (UUID: ")


def test_linked_clones_finds_the_vm_using_a_child_of_the_snapshot_disk() -> None:
    runner, module = vbox(
        "showvminfo_base_snapshotted",
        "showmediuminfo_base_diff",
        "showmediuminfo_base_disk_linked",
        "showmediuminfo_clone_disk",
    )
    assert vi.linked_clones(runner, BASE) == [{"name": "travis-worker-1", "uuid": CLONE}]
    assert not module.queue


def old_and_new(tmp_path: Path) -> None:
    """Two published versions: the old one (base VM BASE) and the current one."""
    runner, _ = vbox("showvminfo_base_poweroff", "snapshot_take_image")
    do_publish(runner, tmp_path, "20261201.090000")
    new = box_dir(tmp_path) / VERSION
    new.mkdir()
    (new / "vm.json").write_text(
        json.dumps({"uuid": "11111111-2222-4333-8444-555555555555", "snapshot": "image"})
    )
    (new / "image.json").write_text(json.dumps({"digest": "ef" * 32, "provider": "virtualbox"}))
    vi.activate(str(tmp_path / "images"), BOX, VERSION)


def test_prune_deletes_an_unused_base_vm_and_its_version(tmp_path: Path) -> None:
    old_and_new(tmp_path)
    runner, module = vbox(
        "showvminfo_base_snapshotted", "showmediuminfo_base_diff", "showmediuminfo_base_disk_alone",
        "unregistervm_base",
    )  # fmt: skip
    result = vi.prune(runner, store=str(tmp_path / "images"), box=BOX, keep=1)
    assert not module.queue
    assert result["removed"] == ["20261201.090000"] and result["kept"] == {VERSION: "current"}
    assert not (box_dir(tmp_path) / "20261201.090000").exists()


def test_prune_keeps_a_version_a_vm_is_recorded_on_without_asking_virtualbox(tmp_path: Path) -> None:
    old_and_new(tmp_path)
    users = box_dir(tmp_path) / "users"
    users.mkdir()
    (users / "worker-2").write_text("20261201.090000\n")
    runner, _ = vbox()  # the users/ record decides: VirtualBox is not asked
    result = vi.prune(runner, store=str(tmp_path / "images"), box=BOX, keep=1)
    assert result["removed"] == [] and result["kept"]["20261201.090000"] == "used by worker-2"


def test_prune_refuses_a_base_vm_a_linked_clone_still_uses(tmp_path: Path) -> None:
    """No users/ record (e.g. lost), but VirtualBox still has a clone on the old image: it stays."""
    old_and_new(tmp_path)
    runner, module = vbox(
        "showvminfo_base_snapshotted", "showmediuminfo_base_diff", "showmediuminfo_base_disk_linked",
        "showmediuminfo_clone_disk",
    )  # fmt: skip
    result = vi.prune(runner, store=str(tmp_path / "images"), box=BOX, keep=1)
    assert not module.queue
    assert result["removed"] == []
    assert f"travis-worker-1 ({CLONE})" in result["refused"]["20261201.090000"]
    assert (box_dir(tmp_path) / "20261201.090000" / "image.json").is_file()


def test_prune_of_a_version_whose_base_vm_is_gone_removes_the_directory(tmp_path: Path) -> None:
    old_and_new(tmp_path)
    runner, module = vbox("showvminfo_base_not_found")
    result = vi.prune(runner, store=str(tmp_path / "images"), box=BOX, keep=1)
    assert not module.queue
    assert result["removed"] == ["20261201.090000"]


def test_prune_in_check_mode_plans_the_unregister_and_keeps_the_files(tmp_path: Path) -> None:
    old_and_new(tmp_path)
    runner, module = vbox(
        "showvminfo_base_snapshotted", "showmediuminfo_base_diff", "showmediuminfo_base_disk_alone",
        dry_run=True,
    )  # fmt: skip
    result = vi.prune(runner, store=str(tmp_path / "images"), box=BOX, keep=1)
    assert not module.queue
    assert result["planned"] == [["/usr/bin/VBoxManage", "unregistervm", BASE, "--delete"]]
    assert (box_dir(tmp_path) / "20261201.090000").is_dir()


def test_clone_base_makes_a_full_clone_of_the_current_image_snapshot(tmp_path: Path) -> None:
    runner, _ = vbox("showvminfo_base_poweroff", "snapshot_take_image")
    do_publish(runner, tmp_path)
    runner, module = vbox("clonevm_full_base")
    result = vi.clone_base(
        runner, store=str(tmp_path / "images"), box=BOX, name="base-20261202.050000",
        uuid="5e6f7a8b-9c0d-4e1f-a2b3-c4d5e6f7a8b9",
    )  # fmt: skip
    assert not module.queue  # argv: no "--options link"
    assert result["version"] == VERSION
    assert result["private_key"] == str(box_dir(tmp_path) / VERSION / "private_key")


def test_clone_base_without_a_published_image_says_to_build_from_the_box(tmp_path: Path) -> None:
    runner, _ = vbox()
    with pytest.raises(vi.ImageError, match="no published image"):
        vi.clone_base(runner, store=str(tmp_path / "images"), box=BOX, name="base", uuid="x")


def shared_layout(tmp_path: Path) -> None:
    """Two versions that are snapshots of one base VM (worker_image's own VirtualBox layout)."""
    for version in ("20261201.090000", VERSION):
        path = box_dir(tmp_path) / version
        path.mkdir(parents=True)
        (path / "vm.json").write_text(json.dumps({"uuid": BASE, "snapshot": f"image-{version}"}))
        (path / "image.json").write_text(json.dumps({"digest": DIGEST, "provider": "virtualbox"}))
    vi.activate(str(tmp_path / "images"), BOX, VERSION)


def test_prune_deletes_only_the_old_snapshot_of_a_shared_base_vm(tmp_path: Path) -> None:
    shared_layout(tmp_path)
    runner, module = vbox(
        "showvminfo_shared_base",
        "showmediuminfo_shared_current",
        "showmediuminfo_shared_snap2",  # the new snapshot's disk: its clone does not count for the old one
        "showmediuminfo_shared_snap1_alone",
        "snapshot_delete_old",
    )
    result = vi.prune(runner, store=str(tmp_path / "images"), box=BOX, keep=1)
    assert not module.queue  # no unregistervm: the current version is a snapshot of the same VM
    assert result["removed"] == ["20261201.090000"]


def test_prune_refuses_an_old_snapshot_a_linked_clone_still_uses(tmp_path: Path) -> None:
    shared_layout(tmp_path)
    runner, module = vbox(
        "showvminfo_shared_base",
        "showmediuminfo_shared_current",
        "showmediuminfo_shared_snap2",
        "showmediuminfo_shared_snap1_linked",
        "showmediuminfo_old_clone_disk",
    )
    result = vi.prune(runner, store=str(tmp_path / "images"), box=BOX, keep=1)
    assert not module.queue
    assert result["removed"] == []
    assert "travis-worker-2 (44dd55ee-66ff-47aa-98bb-99cc00dd11e4)" in result["refused"]["20261201.090000"]


def test_linked_clones_of_the_whole_base_vm_walk_every_snapshot_disk() -> None:
    runner, module = vbox(
        "showvminfo_shared_base",
        "showmediuminfo_shared_current",
        "showmediuminfo_shared_snap2",
        "showmediuminfo_shared_clone_disk",
        "showmediuminfo_shared_snap1_linked",
        "showmediuminfo_old_clone_disk",
    )
    clones = vi.linked_clones(runner, BASE)
    assert not module.queue
    assert [c["name"] for c in clones] == ["travis-worker-1", "travis-worker-2"]
