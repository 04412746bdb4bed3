"""module_utils/cli: the base the vagrant, VBoxManage and systemctl runners share (issue #12, section 4)."""

from __future__ import annotations

from typing import Any

import pytest
from ansible_collections.travis.worker.plugins.module_utils import cli
from ansible_collections.travis.worker.plugins.module_utils import systemctl as sc
from ansible_collections.travis.worker.plugins.module_utils import vagrant as v
from ansible_collections.travis.worker.plugins.module_utils import vboxmanage as vbm
from module_harness import recorded


class Module:
    """run_command replays recordings; check_mode and the bin path as a module has them."""

    def __init__(self, *recordings: str) -> None:
        self.queue = [recorded(name) for name in recordings]
        self.calls: list[dict[str, Any]] = []

    def get_bin_path(self, name: str, required: bool = False) -> str:
        return f"/usr/bin/{name}"

    def run_command(self, argv: list, **kwargs: Any) -> tuple:
        self.calls.append({"argv": argv, **kwargs})
        rec = self.queue.pop(0)
        assert argv[1:] == rec["argv"][1:]
        return rec["rc"], rec["stdout"], rec["stderr"]


def test_the_three_runners_share_the_base() -> None:
    for runner, error in ((vbm.VBoxManage, vbm.VBoxManageError), (sc.Systemctl, sc.SystemctlError)):
        assert issubclass(runner, cli.CommandRunner) and issubclass(error, cli.CommandError)
    assert issubclass(v.VagrantRunner, cli.CommandRunner) and issubclass(v.VagrantError, cli.CommandError)
    assert v.module_executor is cli.module_executor


def test_every_runner_gets_the_c_locale() -> None:
    module = Module("vboxmanage/list_vms_empty", "systemctl/list_units_none")
    vbm.VBoxManage(module).list_vms()
    sc.Systemctl(module).list_units("travis-worker@*.service")
    for call in module.calls:
        env = call["environ_update"]
        assert (env["LANG"], env["LC_ALL"], env["LC_MESSAGES"]) == ("C", "C", "C")
    assert module.calls[1]["environ_update"]["SYSTEMD_PAGER"] == ""
    execute_calls = []
    runner = v.VagrantRunner(lambda a, c, e: execute_calls.append(e) or (0, "", ""), "/usr/bin/vagrant")
    runner.run(["version"], machine_readable=False)
    assert execute_calls[0]["LC_MESSAGES"] == "C" and execute_calls[0]["VAGRANT_NO_COLOR"] == "1"


def test_dry_run_skips_changes_and_keeps_their_argv() -> None:
    module = Module("vboxmanage/list_vms_empty", "systemctl/show_target_wants")
    vbox = vbm.VBoxManage(module, dry_run=True)
    vbox.list_vms()  # reading runs
    vbox.poweroff("travis-worker-1")
    vbox.snapshot_restore("travis-worker-1", "sandbox")
    systemctl = sc.Systemctl(module, dry_run=True)
    systemctl.stop(["travis-worker@worker-1.service"])
    assert systemctl.wants("travis-worker.target")  # reading runs
    assert [c["argv"][1] for c in module.calls] == ["list", "show"]
    assert vbox.planned == [
        ["/usr/bin/VBoxManage", "controlvm", "travis-worker-1", "poweroff"],
        ["/usr/bin/VBoxManage", "snapshot", "travis-worker-1", "restore", "sandbox"],
    ]
    assert systemctl.planned == [["/usr/bin/systemctl", "stop", "--", "travis-worker@worker-1.service"]]
    vagrant = v.VagrantRunner(lambda *a: pytest.fail("ran in a dry run"), "vagrant", dry_run=True)
    assert (
        vagrant.halt(["worker-1"]).cmd
        == vagrant.planned[0]
        == ["vagrant", "halt", "worker-1", "--machine-readable"]
    )


def test_missing_binary_keeps_each_runners_remedy() -> None:
    class NoBin(Module):
        def get_bin_path(self, name: str, required: bool = False) -> None:
            return None

    with pytest.raises(sc.SystemctlError, match=r"not found in PATH.*systemd host"):
        sc.Systemctl(NoBin()).list_units("x")
    with pytest.raises(vbm.VBoxManageError, match=r"not found in PATH.*install VirtualBox"):
        vbm.VBoxManage(NoBin()).list_vms()


def test_headline_prefers_the_error_line_and_skips_progress() -> None:
    # provenance: the stderr below joins two reconstructed recordings; the short strings are synthetic
    # inputs for the parser (progress as VBoxManage's showProgress prints it, systemctl's captured error).
    stderr = (
        recorded("vboxmanage/unregistervm_ok")["stderr"]
        + recorded("vboxmanage/unregistervm_locked")["stderr"]
    )
    assert cli.headline(stderr, "VBoxManage").startswith("VBoxManage: error: Cannot unregister the machine")
    assert cli.headline("0%...10%...20%...\n") == cli.NO_OUTPUT
    assert cli.headline("\nFailed to stop nope.service: Unit nope.service not loaded.\n") == (
        "Failed to stop nope.service: Unit nope.service not loaded."
    )
    assert cli.is_progress("0%...10%...20%...30%...40%...50%...60%...70%...80%...90%...100%")
    assert not cli.is_progress("100 files")
    assert cli.error_lines("VBoxManage.exe: error: x\nother\n", "VBoxManage") == ["VBoxManage.exe: error: x"]


def test_command_error_fail_kwargs() -> None:
    err = cli.CommandError("m", cmd=["a"], rc=2, stdout="o", stderr="e")
    assert err.fail_kwargs() == {"msg": "m", "cmd": ["a"], "rc": 2, "stdout": "o", "stderr": "e"}
    assert str(err) == "m"
    verr = v.VagrantError("x", "machine_locked", rc=1, cmd=["vagrant"])
    assert verr.as_dict()["error_kind"] == "machine_locked" and verr.fail_kwargs()["msg"] == "x"
