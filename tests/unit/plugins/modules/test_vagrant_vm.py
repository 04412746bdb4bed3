"""Unit tests of travis.worker.vagrant_vm: argv asserted against recorded ``vagrant --machine-readable``."""

from __future__ import annotations

from pathlib import Path

import pytest
from ansible_collections.travis.worker.plugins.modules import vagrant_vm
from module_harness import call

V = "/usr/bin/vagrant"
MR = "--machine-readable"
ALL = ["worker-1", "worker-2", "worker-3", "worker-4", "worker-5"]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "Vagrantfile").write_text('Vagrant.configure("2") { |c| }\n')
    return tmp_path


def status(fixture: str, names=()) -> object:
    return call([V, "status", *names, MR], fixture=f"vagrant/{fixture}")


def states(result: dict) -> dict:
    return {m["name"]: m["state"] for m in result["machines"]}


def test_running_check_mode_predicts_up_of_the_stopped_machines(run_module, project):
    args = {"project_dir": str(project), "provider": "virtualbox", "provision": False}
    result = run_module(vagrant_vm.main, args, [status("vbox_status_mixed")], check_mode=True, diff=True)
    assert result["changed"] is True
    assert result["changed_machines"] == ["worker-2", "worker-3", "worker-4", "worker-5"]
    assert result["commands"] == [
        [
            V,
            "up",
            "worker-2",
            "worker-3",
            "worker-4",
            "worker-5",
            "--provider=virtualbox",
            "--no-provision",
            MR,
        ]
    ]
    assert states(result) == dict.fromkeys(ALL, "running")
    assert {m["name"]: m["state"] for m in result["before"]} == {
        "worker-1": "running",
        "worker-2": "poweroff",
        "worker-3": "saved",
        "worker-4": "aborted",
        "worker-5": "not_created",
    }
    assert "worker-2: poweroff (virtualbox)\n" in result["diff"]["before"]
    assert "worker-2: running (virtualbox)\n" in result["diff"]["after"]
    assert len(result["_calls"]) == 1  # check mode only reads the status


def test_running_real_run_matches_check_mode_prediction(run_module, project):
    args = {"project_dir": str(project), "provider": "virtualbox", "provision": False}
    predicted = run_module(vagrant_vm.main, args, [status("vbox_status_mixed")], check_mode=True, diff=True)
    real = run_module(
        vagrant_vm.main,
        args,
        [
            status("vbox_status_mixed"),
            call(predicted["commands"][0], fixture="vagrant/vbox_up_2345"),
            status("vbox_status_all_running", ALL),
        ],
        diff=True,
    )
    for key in ("changed", "changed_machines", "commands", "machines", "before", "diff"):
        assert real[key] == predicted[key], key
    env = real["_calls"][0]["environ_update"]
    assert env["LANG"] == "C" and env["LC_ALL"] == "C"
    assert env["VAGRANT_CWD"] == str(project)
    assert env["VAGRANT_DEFAULT_PROVIDER"] == "virtualbox"
    assert real["_calls"][1]["cwd"] == str(project)


def test_running_rerun_changes_nothing(run_module, project):
    result = run_module(vagrant_vm.main, {"project_dir": str(project)}, [status("vbox_status_all_running")])
    assert result["changed"] is False
    assert result["commands"] == []
    assert result["changed_machines"] == []


def test_halted_halts_running_and_saved_only(run_module, project):
    result = run_module(
        vagrant_vm.main,
        {"project_dir": str(project), "state": "halted"},
        [
            status("vbox_status_mixed"),
            call([V, "halt", "worker-1", "worker-3", MR], fixture="vagrant/vbox_halt_13"),
            status("vbox_status_all_halted", ALL),
        ],
        diff=True,
    )
    assert result["changed"] is True
    assert result["changed_machines"] == ["worker-1", "worker-3"]
    assert states(result)["worker-1"] == "poweroff"
    assert "worker-3: saved (virtualbox)" in result["diff"]["before"]
    assert "worker-3: poweroff (virtualbox)" in result["diff"]["after"]


def test_halted_check_mode_predicts_provider_halted_state(run_module, project):
    result = run_module(
        vagrant_vm.main,
        {"project_dir": str(project), "state": "halted"},
        [status("vbox_status_mixed")],
        check_mode=True,
    )
    assert states(result) == {
        "worker-1": "poweroff",
        "worker-2": "poweroff",
        "worker-3": "poweroff",
        "worker-4": "aborted",
        "worker-5": "not_created",
    }
    rerun = run_module(
        vagrant_vm.main, {"project_dir": str(project), "state": "halted"}, [status("vbox_status_all_halted")]
    )
    assert rerun["changed"] is False


def test_absent_destroys_every_created_machine(run_module, project):
    result = run_module(
        vagrant_vm.main,
        {"project_dir": str(project), "state": "absent"},
        [
            status("vbox_status_mixed"),
            call(
                [V, "destroy", "--force", "worker-1", "worker-2", "worker-3", "worker-4", MR],
                fixture="vagrant/vbox_destroy_1234",
            ),
            status("vbox_status_all_absent", ALL),
        ],
    )
    assert result["changed_machines"] == ["worker-1", "worker-2", "worker-3", "worker-4"]
    assert set(states(result).values()) == {"not_created"}
    rerun = run_module(
        vagrant_vm.main, {"project_dir": str(project), "state": "absent"}, [status("vbox_status_all_absent")]
    )
    assert rerun["changed"] is False


def test_name_selects_machines_and_unknown_name_fails_before_acting(run_module, project):
    result = run_module(
        vagrant_vm.main,
        {"project_dir": str(project), "name": ["worker-2", "worker-9"]},
        [
            # only the named machines are read; vagrant refuses an unknown one (recorded for 'nope'), then the
            # whole status names the defined machines in the error
            call([V, "status", "worker-2", "worker-9", MR], fixture="vagrant/lxc_status_unknown_machine"),
            status("vbox_status_mixed"),
        ],
    )
    assert result["failed"] is True
    assert result["error_kind"] == "unknown_machine"
    assert "worker-9" in result["msg"] and "worker-1" in result["msg"] and "Fix 'name'" in result["msg"]
    ok = run_module(
        vagrant_vm.main,
        {"project_dir": str(project), "name": "worker-1"},
        [status("vbox_status_mixed", ["worker-1"])],
    )
    assert ok["changed"] is False
    assert [m["name"] for m in ok["machines"]] == ["worker-1"]


def test_lxc_recorded_not_created_up_with_parallel_and_timeout(run_module, project):
    args = {"project_dir": str(project), "provider": "lxc", "parallel": True, "timeout": 600}
    wrap = ["/usr/bin/timeout", "--kill-after=30", "600"]
    result = run_module(
        vagrant_vm.main,
        args,
        [call([*wrap, V, "status", MR], fixture="vagrant/lxc_status_not_created")],
        check_mode=True,
    )
    assert result["commands"] == [
        [*wrap, V, "up", "worker-1", "worker-2", "--provider=lxc", "--parallel", MR]
    ]
    assert [m["provider"] for m in result["before"]] == ["lxc", "lxc"]
    assert states(result) == {"worker-1": "running", "worker-2": "running"}


def test_lxc_recorded_box_not_found_fails_with_remedy(run_module, project):
    result = run_module(
        vagrant_vm.main,
        {"project_dir": str(project), "name": "worker-1", "provider": "lxc"},
        [
            status("lxc_status_not_created", ["worker-1"]),
            call([V, "up", "worker-1", "--provider=lxc", MR], fixture="vagrant/lxc_up_box_not_found"),
            status("lxc_status_not_created", ["worker-1"]),
        ],
    )
    assert result["failed"] is True
    assert result["error_kind"] == "box_not_found"
    assert "machine 'worker-1'" in result["msg"] and "vagrant_box" in result["msg"]
    assert "twt-nobox/debian12" in result["msg"]
    assert result["rc"] == 1
    assert result["machines"][0]["state"] == "not_created"


def test_virtualbox_locked_machine_error(run_module, project):
    result = run_module(
        vagrant_vm.main,
        {"project_dir": str(project), "name": "worker-2"},
        [
            status("vbox_status_mixed", ["worker-2"]),
            call([V, "up", "worker-2", MR], fixture="vagrant/vbox_up_locked"),
            status("vbox_status_mixed", ["worker-2"]),
        ],
    )
    assert result["failed"] is True
    assert result["error_kind"] == "machine_locked"
    assert "travis-worker-2" in result["msg"]
    assert "locked by another session" in result["msg"] and "retry" in result["msg"]
    assert result["rc"] == 1
    assert "already locked by a session" in result["stdout"]


def test_provider_not_usable_recorded(run_module, project):
    result = run_module(
        vagrant_vm.main,
        {"project_dir": str(project), "name": "worker-1", "provider": "virtualbox"},
        [
            status("lxc_status_not_created", ["worker-1"]),
            call(
                [V, "up", "worker-1", "--provider=virtualbox", MR],
                fixture="vagrant/lxc_up_virtualbox_not_usable",
            ),
            status("lxc_status_not_created", ["worker-1"]),
        ],
    )
    assert result["error_kind"] == "provider_unusable"
    assert "install VirtualBox" in result["msg"]


def test_provider_plugin_missing_recorded(run_module, project):
    result = run_module(
        vagrant_vm.main,
        {"project_dir": str(project), "name": "worker-1", "provider": "foo"},
        [
            status("lxc_status_not_created", ["worker-1"]),
            call([V, "up", "worker-1", "--provider=foo", MR], fixture="vagrant/lxc_up_provider_not_found"),
            status("lxc_status_not_created", ["worker-1"]),
        ],
    )
    assert result["error_kind"] == "provider_missing"
    assert "vagrant plugin install" in result["msg"]


def test_vagrant_missing(run_module, project):
    result = run_module(vagrant_vm.main, {"project_dir": str(project)}, [], missing_bins=("vagrant",))
    assert result["failed"] is True
    assert result["error_kind"] == "vagrant_missing"
    assert "install Vagrant" in result["msg"]


def test_no_vagrantfile(run_module, tmp_path):
    result = run_module(vagrant_vm.main, {"project_dir": str(tmp_path)}, [])
    assert result["error_kind"] == "no_vagrantfile"
    assert str(tmp_path) in result["msg"]


def test_status_error_is_classified(run_module, project):
    result = run_module(vagrant_vm.main, {"project_dir": str(project)}, [status("lxc_status_no_vagrantfile")])
    assert result["failed"] is True and result["error_kind"] == "no_vagrantfile"


def _sentinel(project: Path, name: str, provider: str, machine_id: str, sentinel_id: str) -> None:
    data = project / ".vagrant" / "machines" / name / provider
    data.mkdir(parents=True)
    (data / "id").write_text(machine_id)
    if sentinel_id:
        (data / "action_provision").write_text(f"1.5:{sentinel_id}")


def test_provisioned_uses_the_vagrant_sentinel(run_module, project):
    _sentinel(project, "worker-1", "virtualbox", "uuid-1", "uuid-1")  # provisioned
    args = {"project_dir": str(project), "name": ["worker-1", "worker-2"], "state": "provisioned"}
    result = run_module(
        vagrant_vm.main, args, [status("vbox_status_mixed", ["worker-1", "worker-2"])], check_mode=True
    )
    assert result["commands"] == [[V, "up", "worker-2", "--provision", MR]]
    assert result["changed_machines"] == ["worker-2"]

    (project / ".vagrant" / "machines" / "worker-1" / "virtualbox" / "action_provision").write_text(
        "1.5:old-id"
    )
    result = run_module(
        vagrant_vm.main,
        dict(args, name=["worker-1"]),
        [status("vbox_status_mixed", ["worker-1"])],
        check_mode=True,
    )
    assert result["commands"] == [[V, "provision", "worker-1", MR]]

    (project / ".vagrant" / "machines" / "worker-1" / "virtualbox" / "action_provision").write_text(
        "1.5:uuid-1"
    )
    result = run_module(
        vagrant_vm.main, dict(args, name=["worker-1"]), [status("vbox_status_mixed", ["worker-1"])]
    )
    assert result["changed"] is False


def test_reloaded_always_acts(run_module, project):
    result = run_module(
        vagrant_vm.main,
        {"project_dir": str(project), "name": "worker-1", "state": "reloaded", "provision": True},
        [status("vbox_status_mixed", ["worker-1"])],
        check_mode=True,
    )
    assert result["changed"] is True
    assert result["commands"] == [[V, "reload", "worker-1", "--provision", MR]]


def test_vagrant_home_is_passed(run_module, project, tmp_path):
    home = tmp_path / "home"
    result = run_module(
        vagrant_vm.main,
        {"project_dir": str(project), "vagrant_home": str(home)},
        [status("vbox_status_all_running")],
    )
    assert result["_calls"][0]["environ_update"]["VAGRANT_HOME"] == str(home)


def test_lxc_recorded_lifecycle_halt_provision_destroy(run_module, project):
    """Real vagrant-lxc recordings: halt worker-1, provision worker-2, destroy worker-3."""
    halt = run_module(
        vagrant_vm.main,
        {"project_dir": str(project), "name": "worker-1", "state": "halted"},
        [
            status("lxc_status_running", ["worker-1"]),
            call([V, "halt", "worker-1", MR], fixture="vagrant/lxc_halt_worker1"),
            call([V, "status", "worker-1", MR], fixture="vagrant/lxc_status_after_halt"),
        ],
        diff=True,
    )
    assert halt["changed"] is True
    assert halt["diff"] == {"before": "worker-1: running (lxc)\n", "after": "worker-1: stopped (lxc)\n"}
    again = run_module(
        vagrant_vm.main,
        {"project_dir": str(project), "name": "worker-1", "state": "halted"},
        [status("lxc_status_after_halt", ["worker-1"])],
    )
    assert again["changed"] is False

    _sentinel(project, "worker-2", "lxc", "twt-rec-worker-2", "")
    prov = run_module(
        vagrant_vm.main,
        {"project_dir": str(project), "name": "worker-2", "state": "provisioned"},
        [
            status("lxc_status_after_halt", ["worker-2"]),
            call([V, "provision", "worker-2", MR], fixture="vagrant/lxc_provision_worker2"),
            call([V, "status", "worker-2", MR], fixture="vagrant/lxc_status_after_halt"),
        ],
    )
    assert (
        prov["changed"] is True and prov["machines"][1:] == [] and prov["machines"][0]["state"] == "running"
    )

    destroy = run_module(
        vagrant_vm.main,
        {"project_dir": str(project), "name": "worker-3", "state": "absent"},
        [
            status("lxc_status_after_halt", ["worker-3"]),
            call([V, "destroy", "--force", "worker-3", MR], fixture="vagrant/lxc_destroy_worker3"),
            call([V, "status", "worker-3", MR], fixture="vagrant/lxc_status_final"),
        ],
    )
    assert destroy["changed"] is True
    assert {m["name"]: m["state"] for m in destroy["machines"]}["worker-3"] == "not_created"


def test_halted_powers_off_a_vm_in_guru_meditation(run_module, project):
    """A VirtualBox VM in `gurumeditation` holds its session: `vagrant halt` forces it off (ForcedHalt);
    state=halted must do that, not report it unchanged."""
    args = {"project_dir": str(project), "name": "worker-2", "state": "halted"}
    check = run_module(
        vagrant_vm.main,
        args,
        [status("vbox234_status_worker2_gurumeditation", ["worker-2"])],
        check_mode=True,
    )
    assert check["changed"] is True and states(check) == {"worker-2": "poweroff"}
    result = run_module(
        vagrant_vm.main,
        args,
        [
            status("vbox234_status_worker2_gurumeditation", ["worker-2"]),
            call([V, "halt", "worker-2", MR], fixture="vagrant/vbox234_halt_worker2_gurumeditation"),
            status("vbox234_status_worker2_poweroff", ["worker-2"]),
        ],
        diff=True,
    )
    assert result["changed"] is True and result["changed_machines"] == ["worker-2"]
    assert result["diff"] == {
        "before": "worker-2: gurumeditation (virtualbox)\n",
        "after": "worker-2: poweroff (virtualbox)\n",
    }


def test_negative_timeout_is_refused(run_module, project):
    result = run_module(vagrant_vm.main, {"project_dir": str(project), "timeout": -5}, [])
    assert result["failed"] is True and "timeout must be >= 0" in result["msg"]


@pytest.mark.parametrize(
    ("state", "option"),
    [("halted", "provision"), ("absent", "provision"), ("provisioned", "provision"), ("halted", "parallel")],
)
def test_an_option_the_state_does_not_use_is_refused(run_module, project, state, option):
    """provision acts on up/reload, parallel on up/destroy only: with another state they were ignored."""
    args = {"project_dir": str(project), "state": state, option: False}
    result = run_module(vagrant_vm.main, args, [])  # no vagrant call may run
    assert result["failed"] is True
    assert result["msg"].startswith(f"{option} is not used with state={state}")
    assert result["error_kind"] == "bad_arguments"
