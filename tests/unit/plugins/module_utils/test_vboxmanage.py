"""The VBoxManage runner: argv lists, C locale, parsers against recorded VirtualBox 7 outputs, errors."""

from __future__ import annotations

from typing import Any

import pytest
from ansible_collections.travis.worker.plugins.module_utils import vboxmanage as vbm
from module_harness import recorded

U1 = "2b1c7a4e-5a3f-4d2e-9d0b-0c1e2f3a4b5c"
U3 = "c0ffee00-1234-4abc-9def-0123456789ab"


class FakeModule:
    """Just enough of AnsibleModule: run_command replays recordings in order and asserts argv and env."""

    def __init__(self, *fixtures: str, bin_path: str | None = "/usr/bin/VBoxManage") -> None:
        self.queue = [recorded(f"vboxmanage/{name}") for name in fixtures]
        self.bin_path = bin_path
        self.calls: list[dict[str, Any]] = []

    def get_bin_path(self, name: str, required: bool = False) -> str | None:
        assert name == "VBoxManage"
        return self.bin_path

    def run_command(self, argv: list[str], **kwargs: Any) -> tuple[int, str, str]:
        assert isinstance(argv, list)
        self.calls.append({"argv": argv, **kwargs})
        rec = self.queue.pop(0)
        assert argv == ["/usr/bin/VBoxManage", *rec["argv"][1:]]
        assert kwargs["environ_update"]["LANG"] == "C" and kwargs["environ_update"]["LC_ALL"] == "C"
        return rec["rc"], rec["stdout"], rec["stderr"]


def test_parse_list_vms_with_inaccessible() -> None:
    entries = vbm.parse_list_vms(recorded("vboxmanage/list_vms_mixed")["stdout"])
    assert [(e.name, e.inaccessible) for e in entries] == [
        ("travis-worker-1", False),
        ("travis-worker-2", False),
        ("<inaccessible>", True),
        ("dev-ubuntu", False),
    ]
    assert entries[2].uuid == U3
    assert entries[0].as_dict() == {"name": "travis-worker-1", "uuid": U1, "inaccessible": False}


def test_parse_list_vms_names_with_quotes_and_spaces() -> None:
    text = '"my vm \\"x\\"" {2B1C7A4E-5A3F-4D2E-9D0B-0C1E2F3A4B5C}\ngarbage line\n'
    (entry,) = vbm.parse_list_vms(text)
    assert entry.uuid == U1  # lower-cased
    assert entry.name == 'my vm \\"x\\"'


def test_parse_machinereadable() -> None:
    info = vbm.parse_machinereadable(recorded("vboxmanage/showvminfo_worker1_running")["stdout"])
    assert info["name"] == "travis-worker-1"
    assert info["VMState"] == "running"
    assert info["CfgFile"] == "/home/travis/VirtualBox VMs/travis-worker-1/travis-worker-1.vbox"
    assert info["memory"] == "3072"
    assert info["SATA Controller-0-0"].endswith("box-disk001.vmdk")  # quoted key
    assert info["Forwarding(0)"] == "ssh,tcp,127.0.0.1,2222,,22"
    assert vbm.snapshot_names(info) == ["travis-clean", "travis-clean-job"]


def test_parse_inaccessible_machinereadable_and_human() -> None:
    info = vbm.parse_machinereadable(recorded("vboxmanage/showvminfo_inaccessible_mr")["stdout"])
    assert info == {"name": "<inaccessible>", "UUID": U3}
    human = vbm.parse_human_info(recorded("vboxmanage/showvminfo_inaccessible_human")["stdout"])
    assert human["Config file"] == "/home/travis/VirtualBox VMs/travis-worker-3/travis-worker-3.vbox"


def test_runner_lists_and_shows() -> None:
    module = FakeModule(
        "list_vms_mixed", "list_runningvms_one", "showvminfo_worker1_running", "list_systemproperties"
    )
    runner = vbm.VBoxManage(module)
    assert len(runner.list_vms()) == 4
    assert [v.name for v in runner.list_running_vms()] == ["travis-worker-1"]
    assert runner.vm_state(U1) == "running"
    assert runner.default_machine_folder() == "/home/travis/VirtualBox VMs"
    assert not module.queue


def test_runner_config_file_of_inaccessible_vm() -> None:
    module = FakeModule("showvminfo_inaccessible_human")
    assert vbm.VBoxManage(module).config_file(U3).endswith("travis-worker-3/travis-worker-3.vbox")


def test_locked_unregister_names_vm_and_remedy() -> None:
    module = FakeModule("unregistervm_locked")
    with pytest.raises(vbm.VBoxManageError) as info:
        vbm.VBoxManage(module).unregister(U1)
    err = info.value
    assert err.locked and not err.not_found
    assert err.rc == 1
    assert U1 in err.message and "locked" in err.message and "poweroff" in err.message
    kwargs = err.fail_kwargs()
    assert kwargs["cmd"] == ["/usr/bin/VBoxManage", "unregistervm", U1, "--delete"]
    assert "VBOX_E_INVALID_OBJECT_STATE" in kwargs["stderr"]


@pytest.mark.parametrize("fixture", ["showvminfo_worker1_running", "showvminfo_worker1_running_71"])
def test_parse_machinereadable_70_and_71(fixture: str) -> None:
    """7.0 prints a raw 'Encryption:     disabled' line, 7.1 encryption="disabled": one key either way."""
    text = recorded(f"vboxmanage/{fixture}")["stdout"]
    info = vbm.parse_machinereadable(text)
    assert info["encryption"] == "disabled"
    assert not any(key.startswith("Encryption") for key in info)
    assert info["VMState"] == "running" and info["name"] == "travis-worker-1"
    assert vbm.snapshot_names(info) == ["travis-clean", "travis-clean-job"]
    assert info["CurrentSnapshotName"] == "travis-clean-job"
    keys = [line.split("=", 1)[0] for line in text.splitlines()]
    assert keys.index("CurrentSnapshotNode") < keys.index("GuestMemoryBalloon")  # showVMInfo's order
    assert ("platformArchitecture" in info) == fixture.endswith("_71")


def test_parse_saved_vm_state_file() -> None:
    info = vbm.parse_machinereadable(recorded("vboxmanage/showvminfo_worker3_saved_71")["stdout"])
    assert info["VMState"] == "saved" and info["VMStateFile"].endswith(".sav")


def test_rc0_with_error_on_stderr_is_a_failure() -> None:
    """showvminfo of an inaccessible VM exits 0 and prints its access error as 'VBoxManage: error:'."""
    module = FakeModule("showvminfo_inaccessible_human")
    with pytest.raises(vbm.VBoxManageError) as info:
        vbm.VBoxManage(module).run(["showvminfo", U3], f"show VM {U3}")
    assert info.value.rc == 0
    # provenance: the expected text is the first stderr line of showvminfo_inaccessible_human.json
    assert info.value.message.startswith(
        f"VBoxManage failed to show VM {U3}: VBoxManage: error: Could not find file"
    )


def test_failure_headline_is_the_error_line_not_the_progress_line() -> None:
    """VBoxManage writes 0%...100% to stderr before an error; the message must start with the error line.

    Input: the progress line of unregistervm_ok followed by the error of unregistervm_locked (both
    reconstructed recordings), as VBoxManage would print them for an unregister whose delete step fails."""
    progress = recorded("vboxmanage/unregistervm_ok")["stderr"]
    error = recorded("vboxmanage/unregistervm_locked")["stderr"]
    assert progress.startswith("0%...")
    message = vbm.VBoxManage._explain("unregister VM x", progress + error)
    # provenance: the expected text is the first stderr line of unregistervm_locked.json
    assert message.startswith(
        "VBoxManage failed to unregister VM x: "
        "VBoxManage: error: Cannot unregister the machine 'travis-worker-1'"
    )
    assert "power it off" in message


def test_progress_on_stderr_is_no_failure() -> None:
    module = FakeModule("controlvm_poweroff", "unregistervm_ok", "snapshot_take", "snapshot_restore_ok")
    runner = vbm.VBoxManage(module)
    runner.poweroff(U1)
    runner.unregister("7f9e1d2c-3b4a-4c5d-8e6f-a1b2c3d4e5f6")
    runner.snapshot_take("travis-worker-1", "travis-clean")
    runner.snapshot_restore("travis-worker-1", "travis-clean")
    assert not module.queue


def test_startvm_locked_real_wording() -> None:
    """VirtualBox 7: 'already locked by a session (or being locked or unlocked)'."""
    module = FakeModule("startvm_locked")
    with pytest.raises(vbm.VBoxManageError) as info:
        vbm.VBoxManage(module).run(
            ["startvm", "travis-worker-1", "--type", "headless"], "start VM travis-worker-1"
        )
    assert info.value.locked
    assert "locked by another session" in info.value.message


def test_snapshot_restore_of_running_vm() -> None:
    """snapshot takes a shared lock: a running VM fails in RestoreSnapshot (VBOX_E_INVALID_VM_STATE)."""
    module = FakeModule("snapshot_restore_running")
    with pytest.raises(vbm.VBoxManageError) as info:
        vbm.VBoxManage(module).snapshot_restore("travis-worker-1", "travis-clean")
    err = info.value
    assert err.online and not err.locked
    assert "'travis-clean' of VM travis-worker-1" in err.message
    assert "Cannot delete the current state of the running machine" in err.message
    assert "power it off" in err.message


def test_not_found() -> None:
    module = FakeModule("showvminfo_not_found")
    with pytest.raises(vbm.VBoxManageError) as info:
        vbm.VBoxManage(module).show_vm_info("travis-worker-9")
    assert info.value.not_found
    assert "travis-worker-9" in info.value.message and "list vms" in info.value.message


def test_snapshot_take_and_poweroff_argv() -> None:
    module = FakeModule("snapshot_take", "controlvm_poweroff")
    runner = vbm.VBoxManage(module)  # both print their progress on stderr and exit 0
    runner.snapshot_take("travis-worker-1", "travis-clean")
    runner.poweroff(U1)
    assert [c["argv"][1] for c in module.calls] == ["snapshot", "controlvm"]


def test_missing_binary_says_how_to_fix() -> None:
    with pytest.raises(vbm.VBoxManageError) as info:
        vbm.VBoxManage(FakeModule(bin_path=None)).list_vms()
    assert "VBoxManage was not found" in info.value.message and "install VirtualBox" in info.value.message


# ---- list extpacks (recordings reconstructed from VBoxManageList.cpp listExtensionPacks()) -----------------


def test_parse_extpacks_none() -> None:
    assert vbm.parse_extpacks(recorded("vboxmanage/list_extpacks_none")["stdout"]) == []


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("list_extpacks_71", ("Oracle VirtualBox Extension Pack", "7.1.12", "169651", True, "")),
        ("list_extpacks_70", ("Oracle VM VirtualBox Extension Pack", "7.0.20", "163906", True, "")),
        (
            "list_extpacks_71_with_7110_pack",
            ("Oracle VirtualBox Extension Pack", "7.1.10", "169112", True, ""),
        ),
        (
            "list_extpacks_71_with_70_pack",
            (
                "Oracle VM VirtualBox Extension Pack",
                "7.0.20",
                "163906",
                False,
                "VBoxExtPackRegister returned VERR_VERSION_MISMATCH, pReg=0000000000000000 "
                "ErrInfo='VirtualBox version mismatch - expected 7.0 got 7.1'",
            ),
        ),
    ],
)
def test_parse_extpacks_one_pack(name: str, expected: tuple) -> None:
    (pack,) = vbm.parse_extpacks(recorded(f"vboxmanage/{name}")["stdout"])
    assert (pack["name"], pack["version"], pack["revision"], pack["usable"], pack["why_unusable"]) == expected


def test_parse_extpacks_two_packs_and_index_ten() -> None:
    # listExtensionPacks() separates packs by an empty line; "Pack no.%2zu:" has no space from 10 on
    one = recorded("vboxmanage/list_extpacks_71")["stdout"].split("\n", 1)[1]
    other = recorded("vboxmanage/list_extpacks_71_with_70_pack")["stdout"].split("\n", 1)[1]
    text = "Extension Packs: 11\n" + one + "\n" + other.replace("Pack no. 0:", "Pack no.10:")
    packs = vbm.parse_extpacks(text)
    assert [(p["name"], p["version"], p["usable"]) for p in packs] == [
        ("Oracle VirtualBox Extension Pack", "7.1.12", True),
        ("Oracle VM VirtualBox Extension Pack", "7.0.20", False),
    ]
