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


def test_locked_snapshot_restore() -> None:
    module = FakeModule("snapshot_restore_locked")
    with pytest.raises(vbm.VBoxManageError) as info:
        vbm.VBoxManage(module).snapshot_restore("travis-worker-1", "travis-clean")
    assert info.value.locked
    assert "'travis-clean' of VM travis-worker-1" in info.value.message


def test_not_found() -> None:
    module = FakeModule("showvminfo_not_found")
    with pytest.raises(vbm.VBoxManageError) as info:
        vbm.VBoxManage(module).show_vm_info("travis-worker-9")
    assert info.value.not_found
    assert "travis-worker-9" in info.value.message and "list vms" in info.value.message


def test_snapshot_take_and_poweroff_argv() -> None:
    module = FakeModule("snapshot_take", "controlvm_poweroff")
    runner = vbm.VBoxManage(module)
    runner.snapshot_take("travis-worker-1", "travis-clean")
    runner.poweroff(U1)
    assert [c["argv"][1] for c in module.calls] == ["snapshot", "controlvm"]


def test_missing_binary_says_how_to_fix() -> None:
    with pytest.raises(vbm.VBoxManageError) as info:
        vbm.VBoxManage(FakeModule(bin_path=None)).list_vms()
    assert "VBoxManage was not found" in info.value.message and "install VirtualBox" in info.value.message
