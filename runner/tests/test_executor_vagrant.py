"""Vagrant executor unit tests: argv asserted against recorded vagrant/VBoxManage output."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Optional

import pytest
from travis_worker.executor import Limits, SandboxError, make_executor, spawn_in_pty
from travis_worker.executor_vagrant import REMOTE_CLOCK, REMOTE_KILL, REMOTE_RUN, VagrantExecutor
from travis_worker.images import ImageStore, slug
from travis_worker.vagrant import CommandError, Completed, LxcSandbox, cli_env, parse_ssh_config, run_cli

FIXTURES = Path(__file__).parent / "fixtures" / "vagrant"
UUID = "7d1c8f5e-4b2a-4c19-9a77-3e0f2b6d9c01"
ROOMY = Limits(60, 30, 10**6)
HOST_NOW = 1796173200.25  # 2026-12-02T01:00:00Z


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


class FakeRunner:
    """Replays (argv, Completed) pairs in order and fails the test on any unexpected call."""

    def __init__(self, script: list[tuple[list[str], int, str, str]]) -> None:
        self.script = list(script)
        self.calls: list[dict] = []

    def __call__(
        self, argv: list[str], *, cwd: Optional[str] = None, timeout: float = 0, input: Optional[str] = None
    ) -> Completed:
        self.calls.append({"argv": argv, "cwd": cwd, "input": input})
        assert self.script, f"unexpected call {argv}"
        expected, code, out, err = self.script.pop(0)
        assert argv[: len(expected)] == expected, (argv, expected)
        return Completed(argv, code, out, err)


def project_dir(tmp_path: Path) -> Path:
    machine = tmp_path / ".vagrant" / "machines" / "worker-1" / "virtualbox"
    machine.mkdir(parents=True)
    (machine / "id").write_text(UUID)
    return tmp_path


SSH_CONFIG = (["vagrant", "ssh-config", "worker-1"], 0, fixture("vagrant_ssh_config_virtualbox.txt"), "")
RECORDINGS = Path(__file__).parent / "fixtures" / "vbox_lifecycle"


def recording(name: str) -> tuple[list[str], int, str, str]:
    """A recorded call (fixtures/vbox_lifecycle/*.json, each with its provenance) as a FakeRunner step."""
    data = json.loads((RECORDINGS / name).read_text())
    return data["argv"], data["rc"], data["stdout"], data["stderr"]


def build_log_start(ex: VagrantExecutor, tmp_path: Path) -> list[str]:
    """The lines run() writes before the build's own output (the build itself runs locally)."""
    script = tmp_path / "build.sh"
    script.write_text("echo BUILD\n")
    state = tmp_path / "state"
    ex.runner = FakeRunner([(["ssh", "-F", str(state / "ssh-config-worker-1")], 0, "", "")])
    ex.spawn = LocalSsh(script)
    out: list[bytes] = []
    ex.run("echo BUILD\n", out.append, threading.Event(), ROOMY)
    text = b"".join(out).decode()
    return text[: text.index("BUILD")].splitlines()


def ssh_ready(tmp_path: Path) -> tuple[list[str], int, str, str]:
    return (["ssh", "-F", str(tmp_path / "state" / "ssh-config-worker-1")], 0, "", "")


def executor(tmp_path: Path, runner: FakeRunner, provider: str = "virtualbox", **kw) -> VagrantExecutor:
    (tmp_path / "state").mkdir(exist_ok=True)
    kw.setdefault("lxc_sandbox", LxcSandbox(runner=runner, helper=str(tmp_path / "twt-no-such-helper")))
    kw.setdefault("retry_sleep", 0)
    kw.setdefault("clock", lambda: HOST_NOW)
    return VagrantExecutor(
        provider,
        project_dir=str(tmp_path),
        vm_name="worker-1",
        runner=runner,
        state_dir=str(tmp_path / "state"),
        ready_timeout=0,
        **kw,
    )


def test_virtualbox_prepare_restores_the_sandbox_snapshot(tmp_path: Path) -> None:
    project_dir(tmp_path)
    runner = FakeRunner(
        [
            (
                ["VBoxManage", "snapshot", UUID, "list", "--machinereadable"],
                0,
                fixture("vboxmanage_snapshot_list_sandbox.txt"),
                "",
            ),
            (
                ["VBoxManage", "showvminfo", UUID, "--machinereadable"],
                0,
                fixture("vboxmanage_showvminfo_running.txt"),
                "",
            ),
            recording("controlvm_poweroff.json"),
            recording("showvminfo_poweroff.json"),
            recording("snapshot_restore.json"),
            recording("startvm_started.json"),
            SSH_CONFIG,
            ssh_ready(tmp_path),
            recording("ssh_clock.json"),
        ]
    )
    executor(tmp_path, runner).prepare()
    argvs = [call["argv"] for call in runner.calls]
    assert argvs[:6] == [
        ["VBoxManage", "snapshot", UUID, "list", "--machinereadable"],
        ["VBoxManage", "showvminfo", UUID, "--machinereadable"],
        ["VBoxManage", "controlvm", UUID, "poweroff"],
        ["VBoxManage", "showvminfo", UUID, "--machinereadable"],
        ["VBoxManage", "snapshot", UUID, "restore", "sandbox"],
        ["VBoxManage", "startvm", UUID, "--type", "headless"],
    ]
    assert runner.calls[6]["cwd"] == str(tmp_path)
    config = tmp_path / "state" / "ssh-config-worker-1"
    assert argvs[7] == [
        "ssh",
        "-F",
        str(config),
        "-o",
        "BatchMode=yes",
        "-o",
        "ConnectTimeout=10",
        "-o",
        "ServerAliveInterval=15",
        "-o",
        "ServerAliveCountMax=4",
        "worker-1",
        "true",
    ]
    assert config.read_text() == fixture("vagrant_ssh_config_virtualbox.txt")
    assert not runner.script


@pytest.mark.parametrize(
    "listing", ["vboxmanage_snapshot_list_none.txt", "vboxmanage_snapshot_list_other.txt"]
)
def test_virtualbox_missing_snapshot_recreates_the_vm_from_its_box(
    tmp_path: Path, listing: str, caplog: pytest.LogCaptureFixture
) -> None:
    """No `sandbox`: never snapshot the VM's current (possibly dirty) state; re-create it from its box."""
    project_dir(tmp_path)
    code = 1 if "none" in listing else 0
    runner = FakeRunner(
        [
            (["VBoxManage", "snapshot", UUID, "list", "--machinereadable"], code, fixture(listing), ""),
            (["vagrant", "destroy", "-f", "worker-1"], 0, "", ""),
            (["vagrant", "up", "worker-1", "--provider=virtualbox"], 0, "", ""),
            recording("snapshot_take.json"),
            SSH_CONFIG,
            ssh_ready(tmp_path),
            recording("ssh_clock.json"),
        ]
    )
    ex = executor(tmp_path, runner)
    with caplog.at_level("WARNING"):
        ex.prepare()
    assert not runner.script
    argvs = [call["argv"] for call in runner.calls]
    assert ["VBoxManage", "controlvm", UUID, "poweroff"] not in argvs
    assert runner.calls[1]["cwd"] == runner.calls[2]["cwd"] == str(tmp_path)
    assert "has no snapshot 'sandbox'; re-creating it from its box" in caplog.text
    log_start = build_log_start(ex, tmp_path)
    assert log_start[0].startswith("VM worker-1: it has no snapshot 'sandbox'; re-creating it from its box")
    assert log_start[1].startswith("Guest clock set from the worker host")


def reset_head(state_recording: str) -> list[tuple[list[str], int, str, str]]:
    return [
        (
            ["VBoxManage", "snapshot", UUID, "list", "--machinereadable"],
            0,
            fixture("vboxmanage_snapshot_list_sandbox.txt"),
            "",
        ),
        recording(state_recording),
    ]


def ssh_tail(tmp_path: Path) -> list[tuple[list[str], int, str, str]]:
    return [SSH_CONFIG, ssh_ready(tmp_path), recording("ssh_clock.json")]


def test_virtualbox_guru_meditation_is_powered_off_before_the_restore(tmp_path: Path) -> None:
    """VMState "gurumeditation" (not "stuck") is online: restore refuses it until it is powered off."""
    project_dir(tmp_path)
    runner = FakeRunner(
        [
            *reset_head("showvminfo_gurumeditation.json"),
            recording("controlvm_poweroff.json"),
            recording("showvminfo_poweroff.json"),
            recording("snapshot_restore.json"),
            recording("startvm_started.json"),
            *ssh_tail(tmp_path),
        ]
    )
    executor(tmp_path, runner).prepare()
    assert not runner.script


def test_virtualbox_power_off_race_waits_and_retries_the_start(tmp_path: Path) -> None:
    """After poweroff the VM is still "stopping" and its session locked: wait, then retry startvm."""
    project_dir(tmp_path)
    runner = FakeRunner(
        [
            *reset_head("showvminfo_gurumeditation.json"),
            recording("controlvm_poweroff.json"),
            recording("showvminfo_stopping.json"),
            recording("showvminfo_poweroff.json"),
            recording("snapshot_restore.json"),
            recording("startvm_locked.json"),
            recording("startvm_locked.json"),
            recording("startvm_started.json"),
            *ssh_tail(tmp_path),
        ]
    )
    executor(tmp_path, runner).prepare()
    assert not runner.script
    assert not any(call["argv"][:2] == ["vagrant", "destroy"] for call in runner.calls)


def test_virtualbox_lock_that_never_clears_is_a_sandbox_error_after_bounded_retries(tmp_path: Path) -> None:
    project_dir(tmp_path)
    runner = FakeRunner(
        [
            *reset_head("showvminfo_poweroff.json"),
            recording("snapshot_restore.json"),
            *[recording("startvm_locked.json")] * 3,
        ]
    )
    with pytest.raises(SandboxError, match="already locked by a session"):
        executor(tmp_path, runner, retries=3).prepare()
    assert not runner.script  # exactly 3 tries, no destroy of a VM somebody else holds


def test_virtualbox_startvm_exit_1_after_successfully_started_is_a_start(tmp_path: Path) -> None:
    project_dir(tmp_path)
    runner = FakeRunner(
        [
            *reset_head("showvminfo_poweroff.json"),
            recording("snapshot_restore.json"),
            recording("startvm_exit1_started.json"),
            *ssh_tail(tmp_path),
        ]
    )
    executor(tmp_path, runner).prepare()
    assert not runner.script


def test_virtualbox_unloadable_snapshot_recreates_the_vm_from_its_box(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    project_dir(tmp_path)
    runner = FakeRunner(
        [
            *reset_head("showvminfo_poweroff.json"),
            recording("snapshot_restore.json"),
            recording("startvm_unloadable_state.json"),
            (["vagrant", "destroy", "-f", "worker-1"], 0, "", ""),
            (["vagrant", "up", "worker-1", "--provider=virtualbox"], 0, "", ""),
            recording("snapshot_take.json"),
            *ssh_tail(tmp_path),
        ]
    )
    ex = executor(tmp_path, runner)
    with caplog.at_level("WARNING"):
        ex.prepare()
    assert not runner.script
    assert "could not be restored and started" in caplog.text and "VERR_SSM_LOADED_TOO_LITTLE" in caplog.text
    assert "re-creating it from its box" in build_log_start(ex, tmp_path)[0]


def test_virtualbox_exit_0_with_an_error_line_is_a_failure(tmp_path: Path) -> None:
    project_dir(tmp_path)
    poweroff = recording("controlvm_poweroff.json")
    # provenance: the text is VBoxManage 7.0's (VBoxManageControlVM.cpp handleControlVM(): RTMsgErrorExit
    # "Machine '%s' is not currently running."); the exit code 0 is synthetic (that call exits 1): the input
    # for the rule "exit 0 with a VBoxManage: error: line is a failure", whose real case is showvminfo of an
    # inaccessible VM (tests/unit/fixtures/vboxmanage/showvminfo_inaccessible_human.json)
    error = "VBoxManage: error: Machine 'x' is not currently running.\n"
    runner = FakeRunner([*reset_head("showvminfo_gurumeditation.json"), (poweroff[0], 0, "", error)])
    with pytest.raises(SandboxError, match="is not currently running"):
        executor(tmp_path, runner).prepare()


def test_virtualbox_sets_the_guest_clock_and_shows_it_first_in_the_build_log(tmp_path: Path) -> None:
    project_dir(tmp_path)
    runner = FakeRunner(
        [
            *reset_head("showvminfo_poweroff.json"),
            recording("snapshot_restore.json"),
            recording("startvm_started.json"),
            *ssh_tail(tmp_path),
        ]
    )
    ex = executor(tmp_path, runner)
    ex.prepare()
    clock_call = runner.calls[-1]["argv"]
    assert clock_call[-2] == "worker-1" and 'sudo -n date -u -s "@1796173200.250"' in clock_call[-1]
    assert build_log_start(ex, tmp_path) == [
        "Guest clock set from the worker host: 2026-12-02T01:00:00Z (was 2026-11-27T04:10:09Z, +420591 s)"
    ]


def test_virtualbox_clock_failure_is_said_in_the_build_log_not_fatal(tmp_path: Path) -> None:
    project_dir(tmp_path)
    runner = FakeRunner(
        [
            *reset_head("showvminfo_poweroff.json"),
            recording("snapshot_restore.json"),
            recording("startvm_started.json"),
            SSH_CONFIG,
            ssh_ready(tmp_path),
            (["ssh"], 1, "", "sudo: a password is required\n"),
        ]
    )
    ex = executor(tmp_path, runner)
    ex.prepare()
    [line] = build_log_start(ex, tmp_path)
    assert line.startswith("Guest clock NOT set") and "a password is required" in line


def test_remote_clock_sets_and_reports_in_a_real_shell(tmp_path: Path) -> None:
    """REMOTE_CLOCK with a stand-in `sudo` that only echoes: two whole-second epochs come back."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "sudo").write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$(dirname "$0")/sudo-args"\n')
    (fake / "sudo").chmod(0o755)
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}"}
    done = subprocess.run(
        ["bash", "-c", REMOTE_CLOCK.format(epoch="1796173200.250")],
        env=env, capture_output=True, text=True, check=True, timeout=10,
    )  # fmt: skip
    assert [field.isdigit() for field in done.stdout.split()] == [True, True]
    assert (fake / "sudo-args").read_text().split() == ["-n", "date", "-u", "-s", "@1796173200.250"]


def test_lifecycle_recordings_carry_their_provenance() -> None:
    names = sorted(p for p in RECORDINGS.glob("*.json") if p.name != "PROVENANCE.json")  # the manifest
    assert names
    for path in names:
        provenance = json.loads(path.read_text()).get("provenance", {})
        assert all(provenance.get(key) for key in ("program", "version", "source")), path.name


def test_virtualbox_failure_is_a_sandbox_error_naming_vm_and_stderr(tmp_path: Path) -> None:
    project_dir(tmp_path)
    runner = FakeRunner(
        [(["VBoxManage", "snapshot", UUID, "list"], 1, "", fixture("vboxmanage_error_not_found.txt"))]
    )
    with pytest.raises(SandboxError) as info:
        executor(tmp_path, runner).prepare()
    message = str(info.value)
    assert "VM worker-1" in message and "virtualbox" in message
    assert f"VBoxManage snapshot {UUID} list --machinereadable" in message
    assert "Could not find a registered machine" in message


def test_virtualbox_without_vagrant_id_tells_to_run_vagrant_up(tmp_path: Path) -> None:
    with pytest.raises(SandboxError, match=r"no VirtualBox id for VM 'worker-1'.*vagrant up worker-1"):
        executor(tmp_path, FakeRunner([])).prepare()


def test_lxc_without_the_helper_destroys_and_brings_the_machine_up_fresh(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    runner = FakeRunner(
        [
            (["vagrant", "destroy", "-f", "worker-1"], 0, "==> worker-1: Destroying...\n", ""),
            (["vagrant", "up", "worker-1", "--provider=lxc"], 0, "==> worker-1: Machine booted\n", ""),
            SSH_CONFIG,
            ssh_ready(tmp_path),
        ]
    )
    with caplog.at_level("WARNING"):
        executor(tmp_path, runner, provider="lxc").prepare()
    assert "recipes applied to it are lost" in caplog.text and "twt-no-such-helper" in caplog.text
    assert [c["argv"] for c in runner.calls[:2]] == [
        ["vagrant", "destroy", "-f", "worker-1"],
        ["vagrant", "up", "worker-1", "--provider=lxc"],
    ]
    assert all(c["cwd"] == str(tmp_path) for c in runner.calls[:3])


def test_lxc_up_failure_is_a_sandbox_error(tmp_path: Path) -> None:
    runner = FakeRunner(
        [
            (["vagrant", "destroy", "-f", "worker-1"], 0, "", ""),
            (
                ["vagrant", "up", "worker-1", "--provider=lxc"],
                1,
                "",
                "The box 'twlab/debian12' could not be found.\n",
            ),
        ]
    )
    with pytest.raises(
        SandboxError, match=r"VM worker-1 \(lxc.*vagrant up worker-1 --provider=lxc.*could not be found"
    ):
        executor(tmp_path, runner, provider="lxc").prepare()


def test_ssh_not_ready_is_a_sandbox_error(tmp_path: Path) -> None:
    runner = FakeRunner(
        [
            (["vagrant", "destroy"], 0, "", ""),
            (["vagrant", "up"], 0, "", ""),
            SSH_CONFIG,
            (["ssh"], 255, "", "ssh: connect to host 127.0.0.1 port 2222: Connection refused\n"),
        ]
    )
    with pytest.raises(SandboxError, match=r"SSH not ready.*Connection refused"):
        executor(tmp_path, runner, provider="lxc").prepare()


def test_ssh_config_without_host_is_a_sandbox_error(tmp_path: Path) -> None:
    runner = FakeRunner(
        [
            (["vagrant", "destroy"], 0, "", ""),
            (["vagrant", "up"], 0, "", ""),
            (["vagrant", "ssh-config"], 0, "\n", ""),
        ]
    )
    with pytest.raises(SandboxError, match="no Host with a HostName"):
        executor(tmp_path, runner, provider="lxc").prepare()


def test_parse_ssh_config() -> None:
    hosts = parse_ssh_config(fixture("vagrant_ssh_config_virtualbox.txt"))
    assert hosts["worker-1"]["hostname"] == "127.0.0.1"
    assert hosts["worker-1"]["port"] == "2222"
    assert hosts["worker-1"]["identityfile"].endswith("virtualbox/private_key")


def test_run_cli_uses_lang_c_and_reports_missing_binaries() -> None:
    done = run_cli(["sh", "-c", 'echo "$LANG $LC_ALL"'])
    assert (done.returncode, done.stdout) == (0, "C C\n")
    missing = run_cli(["twt-no-such-binary"])
    assert missing.returncode == 127 and "not found" in missing.stderr
    assert "twt-no-such-binary" in str(CommandError(missing))
    assert cli_env()["LANG"] == "C"


# --- run(): the ssh client is replaced by local bash, argv asserted --------------------------------


class LocalSsh:
    """spawn() stand-in: records the ssh argv and runs the uploaded script locally instead."""

    def __init__(self, script_path: Path) -> None:
        self.script_path = script_path
        self.argv: list[str] = []

    def __call__(self, argv: list[str], *, cwd: Optional[str], env: dict[str, str]):
        self.argv = argv
        return spawn_in_pty(["bash", str(self.script_path)], cwd=cwd, env=env)


def run_with(tmp_path: Path, script: str, cancel: Optional[threading.Event] = None, limits: Limits = ROOMY):
    uploaded = tmp_path / "uploaded.sh"
    uploaded.write_text(script)
    state = tmp_path / "state"
    runner = FakeRunner(
        [
            SSH_CONFIG,
            (["ssh", "-F", str(state / "ssh-config-worker-1")], 0, "", ""),
            (["ssh", "-F", str(state / "ssh-config-worker-1")], 0, "", ""),
        ]
    )
    spawn = LocalSsh(uploaded)
    ex = executor(tmp_path, runner, provider="lxc", spawn=spawn)
    out: list[bytes] = []
    result = ex.run(script, out.append, cancel or threading.Event(), limits)
    return result, b"".join(out).decode(), runner, spawn


def test_run_uploads_the_script_and_runs_it_under_setsid_with_a_tty(tmp_path: Path) -> None:
    result, text, runner, spawn = run_with(tmp_path, "echo hello; exit 1\n")
    assert (result.state, result.exit_code) == ("failed", 1), text
    assert "hello" in text
    upload = runner.calls[1]
    assert upload["input"] == "echo hello; exit 1\n"
    assert upload["argv"][-2:] == [
        "worker-1",
        'mkdir -p "$HOME/.travis-worker" && rm -f "$HOME/.travis-worker/pgid" && '
        'cat > "$HOME/.travis-worker/build.sh"',
    ]
    assert spawn.argv[-4:] == ["-tt", "-q", "worker-1", REMOTE_RUN]
    assert "echo $$ >" in REMOTE_RUN and "exec bash" in REMOTE_RUN
    assert len(runner.calls) == 2  # no remote kill after a normal end


def test_run_cancel_kills_the_remote_group(tmp_path: Path) -> None:
    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()
    started = time.monotonic()
    result, _text, runner, _ = run_with(tmp_path, "sleep 30\n", cancel=cancel)
    assert result.state == "cancelled" and time.monotonic() - started < 2.3
    assert runner.calls[-1]["argv"][-2:] == ["worker-1", REMOTE_KILL]
    assert 'kill -KILL -- "-$pg"' in REMOTE_KILL


def test_run_hard_limit_kills_the_remote_group(tmp_path: Path) -> None:
    result, _text, runner, _ = run_with(tmp_path, "sleep 30\n", limits=Limits(0.5, 30, 1000))
    assert result.state == "errored" and "hard time limit" in (result.reason or "")
    assert runner.calls[-1]["argv"][-1] == REMOTE_KILL


def test_run_ssh_failure_is_errored(tmp_path: Path) -> None:
    result, _, _, _ = run_with(tmp_path, "exit 255\n")
    assert result.state == "errored" and "SSH connection to VM worker-1 failed" in (result.reason or "")


def test_run_upload_failure_is_errored_with_a_log_line(tmp_path: Path) -> None:
    state = tmp_path / "state"
    runner = FakeRunner(
        [SSH_CONFIG, (["ssh", "-F", str(state / "ssh-config-worker-1")], 255, "", "Connection refused\n")]
    )
    out: list[bytes] = []
    result = executor(tmp_path, runner, provider="lxc").run("true", out.append, threading.Event(), ROOMY)
    assert result.state == "errored" and "Connection refused" in (result.reason or "")
    assert b"uploading the build script" in b"".join(out)


def test_make_executor_vagrant_providers(tmp_path: Path) -> None:
    ex = make_executor("virtualbox", project_dir=str(tmp_path), vm_name="worker-2")
    assert isinstance(ex, VagrantExecutor) and (ex.provider, ex.vm_name) == ("virtualbox", "worker-2")
    assert make_executor("lxc", project_dir=str(tmp_path), vm_name="worker-1").provider == "lxc"


def test_remote_commands_work_in_a_real_shell(tmp_path: Path) -> None:
    """REMOTE_RUN / REMOTE_KILL with sh as the remote login shell (a session leader, as under sshd -tt)."""
    home = tmp_path / "home"
    (home / ".travis-worker").mkdir(parents=True)
    (home / ".travis-worker" / "build.sh").write_text(
        'sleep 100 & echo $! > "$HOME/child.tmp" && mv "$HOME/child.tmp" "$HOME/child"; sleep 100\n'
    )  # written then renamed: the test never reads a created-but-still-empty file
    env = {**os.environ, "HOME": str(home)}
    proc = subprocess.Popen(["sh", "-c", REMOTE_RUN], env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 5
        while not (home / "child").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        pgid = int((home / ".travis-worker" / "pgid").read_text())
        child = int((home / "child").read_text())
        assert pgid == proc.pid == os.getpgid(child)
        subprocess.run(["sh", "-c", REMOTE_KILL], env=env, check=True, timeout=5)
        assert proc.wait(timeout=5) == -9
        deadline = time.monotonic() + 2
        while Path(f"/proc/{child}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        stat = Path(f"/proc/{child}/stat")
        assert not stat.exists() or stat.read_text().split()[2] == "Z"
    finally:
        if proc.poll() is None:
            proc.kill()


def test_parse_recorded_vagrant_lxc_ssh_config() -> None:
    hosts = parse_ssh_config(fixture("vagrant_ssh_config_lxc.txt"))
    assert list(hosts) == ["worker-1"]
    assert hosts["worker-1"]["hostname"].startswith("10.0.3.")
    assert hosts["worker-1"]["user"] == "vagrant"
    assert hosts["worker-1"]["identityfile"].endswith("/.vagrant/machines/worker-1/lxc/private_key")


# --- LXC with the sandbox helper (travis-worker-lxc-sandbox) ----------------------------------------------

CONTAINER = "worker_worker-1_1764300000123_42"


def lxc_project(tmp_path: Path, created: bool = True) -> Path:
    machine = tmp_path / ".vagrant" / "machines" / "worker-1" / "lxc"
    machine.mkdir(parents=True)
    if created:
        (machine / "id").write_text(CONTAINER)
    return tmp_path


def helper(tmp_path: Path) -> str:
    path = tmp_path / "travis-worker-lxc-sandbox"
    path.write_text("#!/bin/sh\nexit 99\n")  # never run: the FakeRunner answers for it
    path.chmod(0o755)
    return str(path)


def lxc_executor(tmp_path: Path, runner: FakeRunner) -> VagrantExecutor:
    return executor(
        tmp_path, runner, provider="lxc", lxc_sandbox=LxcSandbox(runner=runner, helper=helper(tmp_path))
    )


STORE_RECORDED = "/tmp/lxc-exp-store"  # the store root of the recorded helper runs (PROVENANCE.json)
BOX = "twlab/debian12"
DIGEST_1 = "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881"
DIGEST_2 = "a1fce4363854ff888cff4b8e7875d600c2682390412a8cf79b37d0b11148b0fa"


def reset_output(name: str, store: Optional[Path] = None) -> str:
    """A recorded ``reset``/``status`` JSON line, its store root moved to the test's store."""
    text = fixture(name)
    return text.replace(STORE_RECORDED, str(store)) if store is not None else text


def publish(
    store: Path, version: str, digest: str, key: bytes = b"IMAGE KEY\n", current: bool = True
) -> Path:
    """An LXC image version as the playbook publishes it: rootfs/, private_key, image.json last, current."""
    path = store / slug(BOX) / version
    (path / "rootfs").mkdir(parents=True)
    (path / "private_key").write_bytes(key)
    meta = {
        "box": BOX,
        "version": version,
        "digest": digest,
        "provider": "lxc",
        "created": "2026-12-02T04:00:00Z",
    }
    (path / "image.json").write_text(json.dumps(meta))
    if current:
        link = store / slug(BOX) / "current.tmp"
        link.symlink_to(version)
        link.rename(store / slug(BOX) / "current")
    return path


def image_executor(tmp_path: Path, runner: FakeRunner, store: Path) -> VagrantExecutor:
    return executor(
        tmp_path,
        runner,
        provider="lxc",
        lxc_sandbox=LxcSandbox(runner=runner, helper=helper(tmp_path)),
        images=ImageStore(str(store), BOX),
    )


def ssh_config_lxc() -> tuple[list[str], int, str, str]:
    return (["vagrant", "ssh-config", "worker-1"], 0, fixture("vagrant_ssh_config_lxc.txt"), "")


def test_lxc_resets_the_overlay_and_starts_the_same_machine_without_vagrant_up(tmp_path: Path) -> None:
    lxc_project(tmp_path)
    h = str(tmp_path / "travis-worker-lxc-sandbox")
    runner = FakeRunner(
        [
            ([h, "status", CONTAINER], 0, "", ""),
            ([h, "reset", CONTAINER, "--timeout", "1"], 0, fixture("lxc_sandbox_reset_own.txt"), ""),
            ssh_config_lxc(),
            ssh_ready(tmp_path),
            ([h, "status", CONTAINER], 0, "", ""),
            (
                [h, "reset", CONTAINER, "--timeout", "1"],
                0,
                fixture("lxc_sandbox_reset_own.txt").replace(".161", ".7"),
                "",
            ),
            ssh_ready(
                tmp_path
            ),  # the second reset reads no `vagrant ssh-config`: the helper gave the address
        ]
    )
    ex = lxc_executor(tmp_path, runner)
    ex.prepare()
    config = tmp_path / "state" / "ssh-config-worker-1"
    assert "  HostName 10.0.3.161\n" in config.read_text()
    ex.prepare()
    assert "  HostName 10.0.3.7\n" in config.read_text()
    assert parse_ssh_config(config.read_text())["worker-1"]["identityfile"].endswith("lxc/private_key")
    argvs = [c["argv"] for c in runner.calls]
    assert not any(a[:2] == ["vagrant", "up"] or "destroy" in a for a in argvs)  # the same machine, no Ruby
    assert runner.script == [] and ex.image is None


def test_lxc_takes_the_snapshot_once_when_missing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    lxc_project(tmp_path)
    h = str(tmp_path / "travis-worker-lxc-sandbox")
    runner = FakeRunner(
        [
            ([h, "status", CONTAINER], 10, fixture("lxc_sandbox_status_image.txt"), ""),
            ([h, "save", CONTAINER], 0, "saved\n", ""),
            ([h, "reset", CONTAINER, "--timeout", "1"], 0, fixture("lxc_sandbox_reset_own.txt"), ""),
            ssh_config_lxc(),
            ssh_ready(tmp_path),
        ]
    )
    with caplog.at_level("INFO"):
        lxc_executor(tmp_path, runner).prepare()
    assert f"container {CONTAINER}) has no snapshot 'sandbox': taking it now" in caplog.text
    assert runner.script == []


def test_lxc_machine_not_created_is_brought_up_then_snapshotted(tmp_path: Path) -> None:
    lxc_project(tmp_path, created=False)
    h = str(tmp_path / "travis-worker-lxc-sandbox")

    class CreatingRunner(FakeRunner):
        def __call__(self, argv: list[str], **kw) -> Completed:
            done = super().__call__(argv, **kw)
            if argv[:2] == ["vagrant", "up"]:  # what vagrant-lxc does on creation
                (tmp_path / ".vagrant/machines/worker-1/lxc/id").write_text(CONTAINER)
            return done

    runner = CreatingRunner(
        [
            (["vagrant", "up", "worker-1", "--provider=lxc"], 0, "==> worker-1: Importing base box\n", ""),
            ([h, "status", CONTAINER], 10, "", ""),
            ([h, "save", CONTAINER], 0, "", ""),
            ([h, "reset", CONTAINER, "--timeout", "1"], 0, fixture("lxc_sandbox_reset_own.txt"), ""),
            ssh_config_lxc(),
            ssh_ready(tmp_path),
        ]
    )
    lxc_executor(tmp_path, runner).prepare()
    assert runner.script == []


def test_lxc_helper_failure_is_a_sandbox_error_naming_the_command(tmp_path: Path) -> None:
    lxc_project(tmp_path)
    h = str(tmp_path / "travis-worker-lxc-sandbox")
    runner = FakeRunner(
        [
            ([h, "status", CONTAINER], 0, "", ""),
            (
                [h, "reset", CONTAINER],
                6,
                "",
                f"travis-worker-lxc-sandbox: container '{CONTAINER}' has no IPv4 address after 1 s\n",
            ),
        ]
    )
    with pytest.raises(SandboxError, match=r"VM worker-1 \(lxc.*travis-worker-lxc-sandbox reset .*no IPv4"):
        lxc_executor(tmp_path, runner).prepare()


def test_lxc_reset_without_json_is_a_sandbox_error(tmp_path: Path) -> None:
    lxc_project(tmp_path)
    h = str(tmp_path / "travis-worker-lxc-sandbox")
    runner = FakeRunner(
        [([h, "status", CONTAINER], 0, "", ""), ([h, "reset", CONTAINER], 0, "restored\n", "")]
    )
    with pytest.raises(SandboxError, match="printed no JSON with an ip"):
        lxc_executor(tmp_path, runner).prepare()


def test_lxc_helper_runs_through_sudo_for_the_worker_user(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lxc_project(tmp_path)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    h = str(tmp_path / "travis-worker-lxc-sandbox")
    runner = FakeRunner(
        [
            (["sudo", "-n", h, "status", CONTAINER], 0, "", ""),
            (["sudo", "-n", h, "reset", CONTAINER], 0, fixture("lxc_sandbox_reset_own.txt"), ""),
            ssh_config_lxc(),
            ssh_ready(tmp_path),
        ]
    )
    lxc_executor(tmp_path, runner).prepare()
    assert runner.script == []


def test_lxc_sudo_refusing_the_helper_is_an_error_not_a_missing_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lxc_project(tmp_path)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    h = str(tmp_path / "travis-worker-lxc-sandbox")
    runner = FakeRunner([(["sudo", "-n", h, "status", CONTAINER], 1, "", "sudo: a password is required\n")])
    with pytest.raises(SandboxError, match="sudo: a password is required"):
        lxc_executor(tmp_path, runner).prepare()
    assert runner.script == []  # no save attempted over a sudo failure


# --- LXC images: switch at the reset -----------------------------------------------------------------------


def test_lxc_switches_onto_the_published_image_and_takes_its_key(tmp_path: Path) -> None:
    project = lxc_project(tmp_path)
    (project / ".vagrant/machines/worker-1/lxc/private_key").write_bytes(b"OWN KEY\n")
    store = tmp_path / "images"
    image = publish(store, "20261202.041500", DIGEST_2)
    h = str(tmp_path / "travis-worker-lxc-sandbox")
    runner = FakeRunner(
        [
            (
                [h, "reset", CONTAINER, "--image", str(image), "--timeout", "1"],
                0,
                reset_output("lxc_sandbox_reset_switched.txt", store),
                "",
            ),
            ssh_config_lxc(),
            ssh_ready(tmp_path),
        ]
    )
    ex = image_executor(tmp_path, runner, store)
    ex.prepare()
    assert runner.script == []  # no status/save: the image is the clean lower layer
    assert ex.image is not None and ex.image.summary() == {"version": "20261202.041500", "digest": DIGEST_2}
    assert ex.switched
    key = project / ".vagrant/machines/worker-1/lxc/private_key"
    assert key.read_bytes() == b"IMAGE KEY\n" and key.stat().st_mode & 0o777 == 0o600
    config = parse_ssh_config((tmp_path / "state" / "ssh-config-worker-1").read_text())["worker-1"]
    assert config["identityfile"] == str(key) and config["hostname"] == "10.0.3.161"
    assert (store / slug(BOX) / "users" / "worker-1").read_text() == "20261202.041500\n"
    assert not ex.switch_due()


def test_lxc_keeps_its_image_until_current_moves_then_switches(tmp_path: Path) -> None:
    lxc_project(tmp_path)
    store = tmp_path / "images"
    first = publish(store, "20261202.040000", DIGEST_1)
    h = str(tmp_path / "travis-worker-lxc-sandbox")
    runner = FakeRunner(
        [
            # start-up: the VM's image is unknown, so the reset names current (the helper: already on it)
            (
                [h, "reset", CONTAINER, "--image", str(first)],
                0,
                reset_output("lxc_sandbox_reset_image.txt", store),
                "",
            ),
            ssh_config_lxc(),
            ssh_ready(tmp_path),
            ([h, "reset", CONTAINER, "--timeout"], 0, reset_output("lxc_sandbox_reset_image.txt", store), ""),
            ssh_ready(tmp_path),
        ]
    )
    ex = image_executor(tmp_path, runner, store)
    ex.prepare()
    assert ex.image is not None and ex.image.version == "20261202.040000" and not ex.switched
    assert not ex.switch_due()
    ex.prepare()  # current unchanged: a plain reset, no --image
    second = publish(store, "20261202.041500", DIGEST_2)
    assert ex.switch_due()
    runner.script = [
        (
            [h, "reset", CONTAINER, "--image", str(second), "--timeout"],
            0,
            reset_output("lxc_sandbox_reset_switched.txt", store),
            "",
        ),
        ssh_ready(tmp_path),
    ]
    ex.prepare()
    assert ex.image is not None and ex.image.digest == DIGEST_2 and ex.switched
    assert (store / slug(BOX) / "users" / "worker-1").read_text() == "20261202.041500\n"
    assert runner.script == []


def test_lxc_rollback_is_a_switch_to_the_older_version(tmp_path: Path) -> None:
    lxc_project(tmp_path)
    store = tmp_path / "images"
    first = publish(store, "20261202.040000", DIGEST_1)
    publish(store, "20261202.041500", DIGEST_2)
    h = str(tmp_path / "travis-worker-lxc-sandbox")
    runner = FakeRunner(
        [
            (
                [h, "reset", CONTAINER, "--image"],
                0,
                reset_output("lxc_sandbox_reset_switched.txt", store),
                "",
            ),
            ssh_config_lxc(),
            ssh_ready(tmp_path),
        ]
    )
    ex = image_executor(tmp_path, runner, store)
    ex.prepare()
    link = store / slug(BOX) / "current.tmp"
    link.symlink_to("20261202.040000")
    link.rename(store / slug(BOX) / "current")
    assert ex.switch_due()
    runner.script = [
        (
            [h, "reset", CONTAINER, "--image", str(first)],
            0,
            reset_output("lxc_sandbox_reset_image.txt", store),
            "",
        ),
        ssh_ready(tmp_path),
    ]
    ex.prepare()
    assert ex.image is not None and ex.image.version == "20261202.040000"


@pytest.mark.parametrize("problem", ["incomplete", "virtualbox", "not-json"])
def test_lxc_ignores_a_current_it_cannot_run_and_does_not_poll_it_again(tmp_path: Path, problem: str) -> None:
    lxc_project(tmp_path)
    store = tmp_path / "images"
    image = publish(store, "20261202.041500", DIGEST_2)
    meta = image / "image.json"
    if problem == "incomplete":
        meta.unlink()
    elif problem == "virtualbox":
        meta.write_text(meta.read_text().replace('"lxc"', '"virtualbox"'))
    else:
        meta.write_text("{half")
    h = str(tmp_path / "travis-worker-lxc-sandbox")
    runner = FakeRunner(
        [
            ([h, "status", CONTAINER], 0, "", ""),
            ([h, "reset", CONTAINER, "--timeout"], 0, fixture("lxc_sandbox_reset_own.txt"), ""),
            ssh_config_lxc(),
            ssh_ready(tmp_path),
        ]
    )
    ex = image_executor(tmp_path, runner, store)
    ex.prepare()
    assert ex.image is None and runner.script == []
    assert not ex.switch_due()  # an idle worker would otherwise reset every few seconds
    assert not (store / slug(BOX) / "users" / "worker-1").exists()


def test_lxc_image_without_private_key_is_a_sandbox_error(tmp_path: Path) -> None:
    lxc_project(tmp_path)
    store = tmp_path / "images"
    image = publish(store, "20261202.041500", DIGEST_2)
    (image / "private_key").unlink()
    h = str(tmp_path / "travis-worker-lxc-sandbox")
    runner = FakeRunner(
        [([h, "reset", CONTAINER, "--image"], 0, reset_output("lxc_sandbox_reset_switched.txt", store), "")]
    )
    with pytest.raises(SandboxError, match=r"image .*20261202.041500 has no readable private_key"):
        image_executor(tmp_path, runner, store).prepare()


def test_virtualbox_does_not_switch_until_its_reset_does(tmp_path: Path) -> None:
    """The decision is shared; VirtualBox joins SWITCH_PROVIDERS with its linked-clone reset."""
    store = tmp_path / "images"
    publish(store, "20261202.041500", DIGEST_2)
    ex = executor(tmp_path, FakeRunner([]), images=ImageStore(str(store), BOX))
    assert ex.wanted_image() is None and not ex.switch_due()


def test_make_executor_follows_the_box_images_only_with_vms_box(tmp_path: Path) -> None:
    ex = make_executor("lxc", project_dir=str(tmp_path), vm_name="worker-1", image_store=str(tmp_path))
    assert ex.images is None  # type: ignore[attr-defined]
    ex = make_executor(
        "lxc", project_dir=str(tmp_path), vm_name="worker-1", image_store=str(tmp_path), box=BOX
    )
    assert ex.images.dir == tmp_path / "twlab-VAGRANTSLASH-debian12"  # type: ignore[attr-defined]
