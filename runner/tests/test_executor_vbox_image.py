"""VirtualBox image switch at the job boundary (issue #13): argv asserted against recorded VBoxManage output.

Every VBoxManage step replays a recording of fixtures/vbox_lifecycle/ (provenance in its PROVENANCE.json).
"""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from test_executor_vagrant import (
    UUID,
    FakeRunner,
    build_log_start,
    executor,
    fixture,
    project_dir,
    recording,
    ssh_ready,
    ssh_tail,
)
from travis_worker.images import ImageStore, slug
from travis_worker.vagrant import VBoxManage

OLD = UUID
IMAGE_VM = "3f2b9c7a-1d4e-4a8b-8c6f-2e5d7a9b0c13"
NEW = "9f3a2c71-6b8d-4e0f-a1c2-5d7e9b3f4a86"
VERSION = "20261202.041500"
DIGEST = "ab" * 32
BOX = "twlab/debian12"
IMAGE_KEY = b"-----BEGIN OPENSSH PRIVATE KEY-----\nimage key\n-----END OPENSSH PRIVATE KEY-----\n"
OLD_KEY = b"-----BEGIN OPENSSH PRIVATE KEY-----\nold key\n-----END OPENSSH PRIVATE KEY-----\n"
UP = ["vagrant", "up", "worker-1", "--provider=virtualbox", "--no-provision"]


def publish(store: Path, version: str = VERSION, *, current: bool = True) -> Path:
    """An image version as the design lays it out (image.json last), and ``current`` pointing at it."""
    path = store / slug(BOX) / version
    path.mkdir(parents=True)
    (path / "vm.json").write_text(json.dumps({"uuid": IMAGE_VM, "snapshot": "image"}))
    (path / "private_key").write_bytes(IMAGE_KEY)
    (path / "image.json").write_text(
        json.dumps(
            {
                "box": BOX,
                "version": version,
                "digest": DIGEST,
                "provider": "virtualbox",
                "created": "2026-12-02T04:15:00Z",
                "built_on": "box-1",
            }
        )
    )
    if current:
        link = store / slug(BOX) / "current"
        link.unlink(missing_ok=True)
        link.symlink_to(version)
    return path


def setup(tmp_path: Path) -> Path:
    project_dir(tmp_path)
    (tmp_path / ".vagrant/machines/worker-1/virtualbox/private_key").write_bytes(OLD_KEY)
    (tmp_path / ".vagrant/machines/worker-1/virtualbox/action_provision").write_text(f"1.5:{OLD}")
    store = tmp_path / "images"
    publish(store)
    return store


def image_executor(tmp_path: Path, runner: FakeRunner, store: Path, **kw):
    return executor(tmp_path, runner, images=ImageStore(str(store), BOX), new_uuid=lambda: NEW, **kw)


def switch_steps(tmp_path: Path) -> list:
    return [
        recording("showvminfo_named_poweroff.json"),  # its name, to move it out of the clone's way
        recording("showvminfo_named_poweroff.json"),  # _power_off: already off
        recording("clonevm_linked.json"),
        recording("modifyvm_rename_old.json"),
        (UP, 0, "", ""),
        recording("snapshot_take_clone.json"),
        ssh_tail(tmp_path)[0],
        ssh_ready(tmp_path),
        recording("unregistervm_delete_old.json"),
    ]


def machine(tmp_path: Path) -> Path:
    return tmp_path / ".vagrant/machines/worker-1/virtualbox"


def test_switch_makes_a_linked_clone_of_the_image_snapshot_and_retires_the_old_vm(tmp_path: Path) -> None:
    store = setup(tmp_path)
    runner = FakeRunner([*switch_steps(tmp_path), *ssh_tail(tmp_path)])
    ex = image_executor(tmp_path, runner, store)
    assert ex.switch_due()
    ex.prepare()
    assert not ex.switch_due()
    assert not runner.script
    argvs = [call["argv"] for call in runner.calls]
    assert argvs[2] == [
        "VBoxManage", "clonevm", IMAGE_VM, "--snapshot", "image", "--options", "link,KeepNATMACs",
        "--name", f"travis-worker-1-{VERSION}-9f3a2c71", "--uuid", NEW, "--register",
    ]  # fmt: skip
    assert argvs[3] == ["VBoxManage", "modifyvm", OLD, "--name", "travis-worker-1-retired-7d1c8f5e"]
    assert argvs[4] == UP and runner.calls[4]["cwd"] == str(tmp_path)
    assert argvs[5] == ["VBoxManage", "snapshot", NEW, "take", "sandbox"]
    # the old VM is deleted only after the clone answered on SSH
    assert argvs.index(["VBoxManage", "unregistervm", OLD, "--delete"]) > argvs.index(argvs[7])
    assert (machine(tmp_path) / "id").read_text() == NEW
    key = machine(tmp_path) / "private_key"
    assert key.read_bytes() == IMAGE_KEY and stat.S_IMODE(key.stat().st_mode) == 0o600
    assert (store / slug(BOX) / "users" / "worker-1").read_text() == VERSION + "\n"
    assert ex.image is not None and ex.image.summary() == {"version": VERSION, "digest": DIGEST}
    assert (machine(tmp_path) / "action_provision").read_text() == f"1.5:{NEW}"
    record = json.loads((machine(tmp_path) / "travis_image.json").read_text())
    assert record == {"uuid": NEW, "version": VERSION, "digest": DIGEST, "box": BOX}
    first = build_log_start(ex, tmp_path)[0]
    assert first.startswith(f"VM worker-1: switched to image {BOX} {VERSION} (digest {DIGEST[:12]})")
    assert f"linked clone {NEW} of {IMAGE_VM} snapshot 'image'" in first


def restore_steps(uuid: str, info: str) -> list:
    """The normal reset of ``uuid``: its snapshot list, state, restore of ``sandbox``, start."""
    restore = recording("snapshot_restore.json")
    start = recording("startvm_started.json")
    if uuid == NEW:
        head = [recording("snapshot_list_clone.json")]
    else:
        listing = fixture("vboxmanage_snapshot_list_sandbox.txt")
        head = [(["VBoxManage", "snapshot", uuid, "list", "--machinereadable"], 0, listing, "")]
    return [
        *head,
        recording(info),
        (["VBoxManage", "snapshot", uuid, "restore", "sandbox"], *restore[1:]),
        (["VBoxManage", "startvm", uuid, "--type", "headless"], *start[1:]),
    ]


def test_the_next_reset_restores_the_clones_sandbox_without_switching_again(tmp_path: Path) -> None:
    store = setup(tmp_path)
    runner = FakeRunner([*switch_steps(tmp_path), *ssh_tail(tmp_path)])
    ex = image_executor(tmp_path, runner, store)
    ex.prepare()
    runner.script = [*restore_steps(NEW, "showvminfo_clone_poweroff.json"), *ssh_tail(tmp_path)]
    runner.calls.clear()
    ex.prepare()
    assert not runner.script
    assert not any(call["argv"][1] == "clonevm" for call in runner.calls)
    assert ex.image is not None and ex.image.summary() == {"version": VERSION, "digest": DIGEST}
    assert (store / slug(BOX) / "users" / "worker-1").read_text() == VERSION + "\n"


def test_a_failed_up_leaves_the_vm_on_its_old_image_and_says_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = setup(tmp_path)
    runner = FakeRunner(
        [
            *switch_steps(tmp_path)[:4],
            recording("vagrant_up_name_exists.json"),
            # undo: the clone (never booted) is deleted, the old VM gets its name back
            recording("showvminfo_clone_poweroff.json"),
            recording("unregistervm_delete_clone.json"),
            recording("modifyvm_rename_back.json"),
            # then the normal reset of the old VM
            *restore_steps(OLD, "showvminfo_named_poweroff.json"),
            *ssh_tail(tmp_path),
        ]
    )
    ex = image_executor(tmp_path, runner, store)
    with caplog.at_level("WARNING"):
        ex.prepare()
    assert not runner.script
    assert (machine(tmp_path) / "id").read_text() == OLD
    assert (machine(tmp_path) / "private_key").read_bytes() == OLD_KEY
    assert (machine(tmp_path) / "action_provision").read_text() == f"1.5:{OLD}"
    assert ["VBoxManage", "unregistervm", OLD, "--delete"] not in [c["argv"] for c in runner.calls]
    assert not (store / slug(BOX) / "users" / "worker-1").exists()  # it runs no published image
    assert ex.image is None
    why = f"VM worker-1: switching to image {BOX} {VERSION} failed; it stays on the VM it had"
    assert why in caplog.text and "already exists" in caplog.text
    assert build_log_start(ex, tmp_path)[0].startswith(why)


def test_a_missing_image_snapshot_changes_nothing_and_is_not_retried_at_every_job(tmp_path: Path) -> None:
    store = setup(tmp_path)
    runner = FakeRunner(
        [
            *switch_steps(tmp_path)[:2],
            recording("clonevm_snapshot_missing.json"),
            *restore_steps(OLD, "showvminfo_named_poweroff.json"),
            *ssh_tail(tmp_path),
        ]
    )
    ex = image_executor(tmp_path, runner, store)
    ex.prepare()
    assert not runner.script
    assert not ex.switch_due()  # not before switch_retry_after
    assert (machine(tmp_path) / "id").read_text() == OLD
    assert not any(c["argv"][1] in ("modifyvm", "unregistervm") for c in runner.calls)
    assert "Could not find a snapshot named 'image'" in build_log_start(ex, tmp_path)[0]
    # the next job: no new clone attempt for the same version within switch_retry_after
    ex.runner = runner  # build_log_start() replaced it for the ssh calls
    runner.script = [*restore_steps(OLD, "showvminfo_named_poweroff.json"), *ssh_tail(tmp_path)]
    runner.calls.clear()
    ex.prepare()
    assert not runner.script


def test_a_vm_already_on_the_current_image_is_only_reset_and_recorded_as_its_user(tmp_path: Path) -> None:
    store = setup(tmp_path)
    record = {"uuid": OLD, "version": VERSION, "digest": DIGEST, "box": BOX}
    (machine(tmp_path) / "travis_image.json").write_text(json.dumps(record))
    runner = FakeRunner([*restore_steps(OLD, "showvminfo_named_poweroff.json"), *ssh_tail(tmp_path)])
    ex = image_executor(tmp_path, runner, store)
    ex.prepare()
    assert not runner.script
    assert ex.image is not None and ex.image.summary() == {"version": VERSION, "digest": DIGEST}
    assert (store / slug(BOX) / "users" / "worker-1").read_text() == VERSION + "\n"


def test_a_record_of_another_vm_id_means_no_image_so_the_vm_switches(tmp_path: Path) -> None:
    """Re-created from its box, the VM has a new id: the old record does not make it look up to date."""
    store = setup(tmp_path)
    record = {"uuid": "00000000-0000-4000-8000-000000000000", "version": VERSION, "digest": DIGEST}
    (machine(tmp_path) / "travis_image.json").write_text(json.dumps(record))
    runner = FakeRunner([*switch_steps(tmp_path), *ssh_tail(tmp_path)])
    image_executor(tmp_path, runner, store).prepare()
    assert not runner.script
    assert (machine(tmp_path) / "id").read_text() == NEW


def test_rollback_is_a_switch_to_the_older_version(tmp_path: Path) -> None:
    """``current`` moved back to an older version: the VM on the newer one switches to it the same way."""
    store = setup(tmp_path)
    publish(store, "20261201.090000")  # current -> the older version now
    record = {"uuid": OLD, "version": VERSION, "digest": DIGEST, "box": BOX}
    (machine(tmp_path) / "travis_image.json").write_text(json.dumps(record))
    steps = switch_steps(tmp_path)
    clone = recording("clonevm_linked.json")
    steps[2] = ([*clone[0][:8], "travis-worker-1-20261201.090000-9f3a2c71", *clone[0][9:]], *clone[1:])
    runner = FakeRunner([*steps, *ssh_tail(tmp_path)])
    ex = image_executor(tmp_path, runner, store)
    ex.prepare()
    assert not runner.script
    assert ex.image is not None and ex.image.summary() == {"version": "20261201.090000", "digest": DIGEST}


def test_without_an_image_store_the_reset_is_unchanged(tmp_path: Path) -> None:
    store = setup(tmp_path)
    runner = FakeRunner([*restore_steps(OLD, "showvminfo_named_poweroff.json"), *ssh_tail(tmp_path)])
    ex = executor(tmp_path, runner)
    ex.prepare()
    assert not runner.script and ex.image is None
    assert not (store / slug(BOX) / "users").exists()


def test_vboxmanage_clone_rename_and_delete_argv() -> None:
    runner = FakeRunner(
        [
            recording("clonevm_linked.json"),
            recording("modifyvm_rename_old.json"),
            recording("unregistervm_delete_old.json"),
        ]
    )
    vbox = VBoxManage(runner=runner)
    vbox.clone_linked(IMAGE_VM, "image", name=f"travis-worker-1-{VERSION}-9f3a2c71", uuid=NEW)
    vbox.rename(OLD, "travis-worker-1-retired-7d1c8f5e")
    vbox.unregister_delete(OLD)
    assert not runner.script


class VagrantLikeRunner(FakeRunner):
    """FakeRunner that also does what `vagrant up` does to the data dir before it fails at the boot wait:
    Vagrant's Provision action removes a sentinel naming another machine id (provision.rb), and with
    --no-provision writes none."""

    def __init__(self, script: list, data_dir: Path) -> None:
        super().__init__(script)
        self.data_dir = data_dir

    def __call__(self, argv: list[str], **kw):  # type: ignore[override]
        if argv[:2] == ["vagrant", "up"]:
            sentinel = self.data_dir / "action_provision"
            if sentinel.read_text() != f"1.5:{(self.data_dir / 'id').read_text()}":
                sentinel.unlink()
        return super().__call__(argv, **kw)


def test_a_boot_timeout_powers_the_clone_off_deletes_it_and_restores_vagrants_files(tmp_path: Path) -> None:
    store = setup(tmp_path)
    running = recording("showvminfo_clone_poweroff.json")
    # provenance: showvminfo_clone_poweroff.json (reconstructed, see PROVENANCE.json) with the state a booted
    # clone has: VBoxManageInfo.cpp machineStateToName(MachineState_Running, fShort) prints "running"
    running_stdout = running[2].replace('VMState="poweroff"', 'VMState="running"')
    runner = VagrantLikeRunner(
        [
            *switch_steps(tmp_path)[:4],
            recording("vagrant_up_boot_timeout.json"),
            # the clone booted: provenance as showvminfo_clone_poweroff.json, VMState "running"
            (running[0], 0, running_stdout, ""),
            (["VBoxManage", "controlvm", NEW, "poweroff"], *recording("controlvm_poweroff.json")[1:]),
            running,
            recording("unregistervm_delete_clone.json"),
            recording("modifyvm_rename_back.json"),
            *restore_steps(OLD, "showvminfo_named_poweroff.json"),
            *ssh_tail(tmp_path),
        ],
        machine(tmp_path),
    )
    ex = image_executor(tmp_path, runner, store)
    ex.prepare()
    assert not runner.script
    assert (machine(tmp_path) / "id").read_text() == OLD
    assert (machine(tmp_path) / "action_provision").read_text() == f"1.5:{OLD}"
    assert (machine(tmp_path) / "private_key").read_bytes() == OLD_KEY
    first = build_log_start(ex, tmp_path)[0]
    assert "`vagrant up worker-1 --provider=virtualbox --no-provision` exited with 1" in first
    assert "config.vm.boot_timeout" in first


def test_a_users_record_that_cannot_be_written_does_not_stop_the_reset(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = setup(tmp_path)
    record = {"uuid": OLD, "version": VERSION, "digest": DIGEST, "box": BOX}
    (machine(tmp_path) / "travis_image.json").write_text(json.dumps(record))
    (store / slug(BOX) / "users").write_text("not a directory")
    runner = FakeRunner([*restore_steps(OLD, "showvminfo_named_poweroff.json"), *ssh_tail(tmp_path)])
    ex = image_executor(tmp_path, runner, store)
    with caplog.at_level("WARNING"):
        ex.prepare()
    assert not runner.script
    assert not ex.switch_due()  # it runs the current image (from its record)
    assert "could not record its image in" in caplog.text


def test_a_vm_virtualbox_no_longer_has_is_replaced_by_the_clone(tmp_path: Path) -> None:
    """Vagrant's id names a VM that is gone (showvminfo: VBOX_E_OBJECT_NOT_FOUND): the switch repairs it."""
    store = setup(tmp_path)
    gone = (
        ["VBoxManage", "showvminfo", OLD, "--machinereadable"],
        1,
        "",
        fixture("vboxmanage_error_not_found.txt"),
    )
    runner = FakeRunner(
        [
            gone,
            recording("clonevm_linked.json"),
            (UP, 0, "", ""),
            recording("snapshot_take_clone.json"),
            ssh_tail(tmp_path)[0],
            ssh_ready(tmp_path),
            *ssh_tail(tmp_path),
        ]
    )
    ex = image_executor(tmp_path, runner, store)
    ex.prepare()
    assert not runner.script
    assert not any(c["argv"][1] in ("modifyvm", "unregistervm", "controlvm") for c in runner.calls)
    assert (machine(tmp_path) / "id").read_text() == NEW
