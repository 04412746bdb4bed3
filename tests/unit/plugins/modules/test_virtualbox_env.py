"""virtualbox_env: reset/clean against recorded VBoxManage 7 outputs; confirm, prefix, services, locks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from ansible_collections.travis.worker.plugins.modules import virtualbox_env
from module_harness import call, recorded

VBOX = "/usr/bin/VBoxManage"
SYSTEMCTL = "/usr/bin/systemctl"
U1 = "2b1c7a4e-5a3f-4d2e-9d0b-0c1e2f3a4b5c"  # travis-worker-1, running
U2 = "7f9e1d2c-3b4a-4c5d-8e6f-a1b2c3d4e5f6"  # travis-worker-2, poweroff
U3 = "c0ffee00-1234-4abc-9def-0123456789ab"  # <inaccessible>, settings file travis-worker-3.vbox
U4 = "d15ea5e0-aaaa-4bbb-8ccc-dddddddddddd"  # dev-ubuntu: not a worker
RECORDED_HOME = "/home/travis/VirtualBox VMs"
LIST_UNITS = [
    SYSTEMCTL,
    "list-units",
    "--plain",
    "--no-legend",
    "--no-pager",
    "--all",
    "--",
    "travis-worker@*.service",
]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, Path]:
    """A machine folder with the worker VM folders and a project with .vagrant ids."""
    folder = tmp_path / "VirtualBox VMs"
    for name in ("travis-worker-1", "travis-worker-2", "travis-worker-3", "dev-ubuntu"):
        (folder / name).mkdir(parents=True)
        if name != "travis-worker-3":  # the inaccessible VM lost its settings file
            (folder / name / f"{name}.vbox").write_text("<VirtualBox/>")
    project = tmp_path / "travis-worker"
    (project / ".vagrant" / "machines" / "worker-1" / "virtualbox").mkdir(parents=True)
    (project / ".vagrant" / "machines" / "worker-1" / "virtualbox" / "id").write_text(U1 + "\n")
    return {"folder": folder, "project": project}


def vb(fixture: str, folder: Path, **kwargs: Any) -> Any:
    """A VBoxManage call from a recording, with the recorded machine folder moved to the test's folder."""
    rec = recorded(f"vboxmanage/{fixture}")
    return call(
        [VBOX, *rec["argv"][1:]],
        rc=kwargs.get("rc", rec["rc"]),
        stdout=rec["stdout"].replace(RECORDED_HOME, str(folder)),
        stderr=rec["stderr"],
    )


def inventory(folder: Path) -> list[Any]:
    return [
        vb("list_vms_mixed", folder),
        vb("showvminfo_worker1_running", folder),
        vb("showvminfo_worker2_poweroff", folder),
        vb("showvminfo_inaccessible_mr", folder),
        vb("showvminfo_inaccessible_human", folder),
        vb("showvminfo_dev_poweroff", folder),
        vb("list_runningvms_one", folder),
    ]


def no_workers() -> Any:
    return call(LIST_UNITS, fixture="systemctl/list_units_none")


def args(env: dict[str, Path], **extra: Any) -> dict[str, Any]:
    return {"machine_folder": str(env["folder"]), "project_dir": str(env["project"]), **extra}


def test_reset_without_confirm_fails_and_lists_what_it_would_remove(run_module, env) -> None:
    result = run_module(
        virtualbox_env.main, args(env, state="reset"), [no_workers(), *inventory(env["folder"])]
    )
    assert result["failed"] is True
    msg = result["msg"]
    assert "confirm: true" in msg
    for name in ("travis-worker-1", "travis-worker-2", "travis-worker-3", str(env["project"] / ".vagrant")):
        assert name in msg
    assert "dev-ubuntu" not in msg
    assert (env["folder"] / "travis-worker-2").is_dir() and (env["project"] / ".vagrant").is_dir()


def test_reset_check_mode_previews_without_confirm(run_module, env) -> None:
    result = run_module(
        virtualbox_env.main,
        args(env, state="reset"),
        [no_workers(), *inventory(env["folder"])],
        check_mode=True,
        diff=True,
    )
    assert result["changed"] is True and "failed" not in result
    assert [(v["name"], v["uuid"]) for v in result["removed"]["vms"]] == [
        ("travis-worker-1", U1),
        ("travis-worker-2", U2),
        ("travis-worker-3", U3),
    ]
    assert result["removed"]["folders"] == [str(env["folder"] / f"travis-worker-{i}") for i in (1, 2, 3)]
    assert result["removed"]["vagrant_dirs"] == [str(env["project"] / ".vagrant")]
    assert result["powered_off"] == ["travis-worker-1"]
    assert f"vm dev-ubuntu {{{U4}}}" in result["diff"]["after"]
    assert "travis-worker-1" in result["diff"]["before"] and "travis-worker-1" not in result["diff"]["after"]
    assert (env["folder"] / "travis-worker-1").is_dir()  # nothing touched


def test_reset_with_confirm_removes_worker_vms_only(run_module, env) -> None:
    calls = [
        no_workers(),
        *inventory(env["folder"]),
        vb("controlvm_poweroff", env["folder"]),
        call([VBOX, "unregistervm", U1, "--delete"], fixture="vboxmanage/unregistervm_ok"),
        vb("unregistervm_ok", env["folder"]),
        call([VBOX, "unregistervm", U3]),  # inaccessible: nothing VirtualBox could delete
    ]
    result = run_module(virtualbox_env.main, args(env, state="reset", confirm=True), calls)
    assert result["changed"] is True
    assert not any((env["folder"] / f"travis-worker-{i}").exists() for i in (1, 2, 3))
    assert (env["folder"] / "dev-ubuntu").is_dir()
    assert not (env["project"] / ".vagrant").exists()
    assert all(c["environ_update"]["LANG"] == "C" for c in result["_calls"] if c["argv"][0] == VBOX)


def test_reset_all_vms_includes_other_vms(run_module, env) -> None:
    result = run_module(
        virtualbox_env.main,
        args(env, state="reset", all_vms=True),
        [no_workers(), *inventory(env["folder"])],
        check_mode=True,
    )
    assert "dev-ubuntu" in [v["name"] for v in result["removed"]["vms"]]


def test_reset_refuses_while_workers_run(run_module, env) -> None:
    result = run_module(
        virtualbox_env.main,
        args(env, state="reset", confirm=True),
        [call(LIST_UNITS, fixture="systemctl/list_units_workers")],
    )
    assert result["failed"] is True
    assert "travis-worker@worker-1.service" in result["msg"]
    assert "worker-2" not in result["msg"]  # inactive ones are not named
    assert result["running_services"] == ["travis-worker@worker-1.service"]


@pytest.fixture
def sleeps(monkeypatch) -> list[float]:
    """The module's waits between unregister attempts, recorded instead of slept."""
    waited: list[float] = []
    monkeypatch.setattr(virtualbox_env.time, "sleep", waited.append)
    return waited


def test_reset_locked_vm_fails_with_rc_and_stderr(run_module, env, sleeps) -> None:
    calls = [
        no_workers(),
        *inventory(env["folder"]),
        vb("controlvm_poweroff", env["folder"]),
        *[vb("unregistervm_locked", env["folder"]) for _ in range(virtualbox_env.UNREGISTER_TRIES)],
    ]
    result = run_module(virtualbox_env.main, args(env, state="reset", confirm=True), calls)
    assert result["failed"] is True and result["rc"] == 1
    assert U1 in result["msg"] and "locked" in result["msg"] and "rerun" in result["msg"]
    assert "after 3 attempts" in result["msg"]
    assert "VBOX_E_INVALID_OBJECT_STATE" in result["stderr"]
    assert sleeps == [1.0, 1.0]  # bounded: 3 attempts, 1 s apart, as Vagrant's driver
    assert (env["folder"] / "travis-worker-2").is_dir()  # stopped at the first failure


def test_unregister_after_poweroff_is_retried_while_the_session_closes(run_module, env, sleeps) -> None:
    """VirtualBox releases the session lock a moment after `controlvm poweroff`: the first unregistervm
    may still find the VM locked; a retry 1 s later succeeds (Vagrant: driver/base.rb retryable)."""
    calls = [
        no_workers(),
        *inventory(env["folder"]),
        vb("controlvm_poweroff", env["folder"]),
        vb("unregistervm_locked", env["folder"]),
        call([VBOX, "unregistervm", U1, "--delete"], fixture="vboxmanage/unregistervm_ok"),
        vb("unregistervm_ok", env["folder"]),
        call([VBOX, "unregistervm", U3]),
    ]
    result = run_module(virtualbox_env.main, args(env, state="reset", confirm=True), calls)
    assert result.get("failed") is not True, result
    assert result["changed"] is True and sleeps == [1.0]
    assert not (env["folder"] / "travis-worker-1").exists()


def test_unregister_other_errors_are_not_retried(run_module, env, sleeps) -> None:
    calls = [
        *inventory(env["folder"]),
        vb("unregistervm_ok", env["folder"], rc=1),
    ]
    # provenance: reconstructed, VBoxManage 7.0 `unregistervm` of a UUID VirtualBox no longer knows (first
    # line only, exit 1): VBoxManageMisc.cpp handleUnregisterVM() CHECK_ERROR on FindMachine, whose error
    # text is src/VBox/Main/src-server/VirtualBoxImpl.cpp findMachine() "Could not find a registered machine
    # with UUID {%RTuuid}" (VBOX_E_OBJECT_NOT_FOUND)
    calls[-1].stderr = "VBoxManage: error: Could not find a registered machine with UUID {" + U2 + "}\n"
    result = run_module(virtualbox_env.main, args(env, state="clean"), calls)
    assert result["failed"] is True and sleeps == []


def test_clean_without_vagrant_state_refuses_to_treat_every_vm_as_orphan(run_module, env, tmp_path) -> None:
    """A project_dir without .vagrant/machines (typo, VAGRANT_DOTFILE_PATH, an earlier reset) would make
    every halted worker VM 'not in project': clean then needs the same confirmation as reset."""
    empty = tmp_path / "typo"
    empty.mkdir()
    result = run_module(
        virtualbox_env.main, args(env, state="clean", project_dir=str(empty)), inventory(env["folder"])
    )
    assert result["failed"] is True
    assert (
        "travis-worker-2" in result["msg"]
        and "confirm: true" in result["msg"]
        and ".vagrant" in result["msg"]
    )
    assert (env["folder"] / "travis-worker-2").is_dir()


def test_clean_without_vagrant_state_check_mode_warns(run_module, env, tmp_path) -> None:
    result = run_module(
        virtualbox_env.main,
        args(env, state="clean", project_dir=str(tmp_path / "typo")),
        inventory(env["folder"]),
        check_mode=True,
    )
    assert result["changed"] is True
    assert any("confirm: true" in w for w in result["_warnings"])


def test_clean_without_vagrant_state_with_confirm_removes(run_module, env, tmp_path) -> None:
    calls = [
        *inventory(env["folder"]),
        vb("unregistervm_ok", env["folder"]),
        call([VBOX, "unregistervm", U3]),
    ]
    result = run_module(
        virtualbox_env.main, args(env, state="clean", project_dir=str(tmp_path / "typo"), confirm=True), calls
    )
    assert [v["name"] for v in result["removed"]["vms"]] == ["travis-worker-2", "travis-worker-3"]


def test_empty_prefix_is_refused(run_module, env) -> None:
    result = run_module(virtualbox_env.main, args(env, state="clean", prefix=""), [])
    assert result["failed"] is True and "prefix is empty" in result["msg"] and "all_vms" in result["msg"]


def test_all_vms_and_prefix_are_mutually_exclusive(run_module, env) -> None:
    result = run_module(virtualbox_env.main, args(env, state="clean", prefix="ci-", all_vms=True), [])
    assert result["failed"] is True and "mutually exclusive" in result["msg"]


def test_clean_removes_inaccessible_and_unreferenced_only(run_module, env) -> None:
    calls = [
        *inventory(env["folder"]),
        vb("unregistervm_ok", env["folder"]),
        call([VBOX, "unregistervm", U3]),
    ]
    result = run_module(virtualbox_env.main, args(env, state="clean"), calls, diff=True)
    assert result["changed"] is True
    assert [(v["name"], v["reason"]) for v in result["removed"]["vms"]] == [
        ("travis-worker-2", "not in project"),
        ("travis-worker-3", "inaccessible"),
    ]
    assert (env["folder"] / "travis-worker-1").is_dir()  # referenced by .vagrant, running
    assert not (env["folder"] / "travis-worker-3").exists()
    assert (env["project"] / ".vagrant").is_dir()  # clean keeps the project state


def test_clean_skips_running_orphans_and_reports_folder_missing(run_module, env) -> None:
    (
        env["folder"] / "travis-worker-1" / "travis-worker-1.vbox"
    ).unlink()  # running VM whose settings vanished
    (env["project"] / ".vagrant" / "machines" / "worker-2" / "virtualbox").mkdir(parents=True)
    (env["project"] / ".vagrant" / "machines" / "worker-2" / "virtualbox" / "id").write_text(U2)
    calls = [*inventory(env["folder"]), call([VBOX, "unregistervm", U3])]
    result = run_module(virtualbox_env.main, args(env, state="clean"), calls)
    assert [v["name"] for v in result["removed"]["vms"]] == ["travis-worker-3"]
    assert result["skipped"] == [{"name": "travis-worker-1", "uuid": U1, "reason": "folder missing, running"}]


def test_clean_nothing_to_do_is_not_changed(run_module, env) -> None:
    calls = [vb("list_vms_empty", env["folder"]), vb("list_runningvms_none", env["folder"])]
    result = run_module(virtualbox_env.main, args(env, state="clean"), calls)
    assert result["changed"] is False and result["removed"]["vms"] == []


def test_machine_folder_from_system_properties(run_module, env) -> None:
    calls = [
        no_workers(),
        call([VBOX, "list", "systemproperties"], fixture="vboxmanage/list_systemproperties"),
        vb("list_vms_empty", env["folder"]),
        vb("list_runningvms_none", env["folder"]),
    ]
    result = run_module(virtualbox_env.main, {"state": "reset"}, calls, check_mode=True)
    assert result["machine_folder"] == RECORDED_HOME
    assert result["changed"] is False


def test_vboxmanage_missing(run_module, env) -> None:
    result = run_module(virtualbox_env.main, args(env, state="clean"), [], missing_bins=("VBoxManage",))
    assert result["failed"] is True and "install VirtualBox" in result["msg"]


def test_clean_check_mode_changes_nothing(run_module, env) -> None:
    result = run_module(
        virtualbox_env.main, args(env, state="clean"), inventory(env["folder"]), check_mode=True
    )
    assert result["changed"] is True
    assert [v["name"] for v in result["removed"]["vms"]] == ["travis-worker-2", "travis-worker-3"]
    assert result["removed"]["folders"] == [str(env["folder"] / f"travis-worker-{i}") for i in (2, 3)]
    assert (env["folder"] / "travis-worker-2").is_dir() and (env["folder"] / "travis-worker-3").is_dir()
