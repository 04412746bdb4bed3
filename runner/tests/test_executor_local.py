"""The local executor: real bash under a PTY, real git repository, limits and cancellation."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from test_script_support import job_for, make_repo
from travis_worker.executor import BuildResult, Limits, SandboxError, make_executor
from travis_worker.executor_local import LocalExecutor
from travis_worker.script import build_script

ROOMY = Limits(hard_limit=60, log_silence=30, log_length=4 * 1024 * 1024)


class Recorder:
    def __init__(self) -> None:
        self.parts: list[tuple[float, bytes]] = []

    def __call__(self, data: bytes) -> None:
        assert isinstance(data, bytes)
        self.parts.append((time.monotonic(), data))

    @property
    def text(self) -> str:
        return b"".join(part for _, part in self.parts).decode("utf-8", "replace")


def run(
    script: str, limits: Limits = ROOMY, cancel: threading.Event | None = None
) -> tuple[BuildResult, Recorder]:
    recorder = Recorder()
    executor = LocalExecutor()
    executor.prepare()
    result = executor.run(script, recorder, cancel or threading.Event(), limits)
    return result, recorder


def pid_alive(pid: int, wait: float = 2.0) -> bool:
    """Whether ``pid`` still lives ``wait`` seconds from now at most (signal delivery is asynchronous)."""
    deadline = time.monotonic() + wait
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return _alive(pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purposes
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize(
    ("config", "state", "code"),
    [
        ({"install": "true", "script": "test -f .travis.yml"}, "passed", 0),
        ({"install": "true", "script": "false"}, "failed", 1),
        ({"install": "exit 1", "script": "true"}, "errored", 2),
    ],
    ids=["passed", "failed", "errored"],
)
def test_real_repository_build_states(tmp_path: Path, config: dict, state: str, code: int) -> None:
    _, commit = make_repo(tmp_path / "git")
    script = build_script(job_for(commit, config), git_base_url=f"file://{tmp_path / 'git'}")
    result, out = run(script)
    assert (result.state, result.exit_code) == (state, code), out.text
    assert "$ git clone --depth=50 --branch=master" in out.text
    if state != "errored":
        assert f"Done. Your build exited with {code}." in out.text
    else:
        assert "The build exited with 1 during install: errored." in out.text


def test_output_streams_in_parts_before_the_end() -> None:
    result, out = run("echo first-part; sleep 1.5; echo second-part")
    assert result.state == "passed"
    first = next(t for t, data in out.parts if b"first-part" in data)
    second = next(t for t, data in out.parts if b"second-part" in data)
    assert second - first >= 1.0, out.parts
    assert len(out.parts) >= 2


def removed(job_dir: Path, wait: float = 10) -> bool:
    """Whether the job directory is gone within `wait` s: it is removed in the background after the build,
    not before run() returns."""
    deadline = time.monotonic() + wait
    while job_dir.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    return not job_dir.exists()


def test_script_sees_a_terminal_and_runs_in_a_fresh_directory_that_is_removed() -> None:
    result, out = run('test -t 0 && test -t 1 && test -t 2 && stty size && echo "dir=$PWD home=$HOME"')
    assert result.state == "passed", out.text
    assert "50 132" in out.text
    match = re.search(r"dir=(\S+) home=(\S+)", out.text)
    assert match and match.group(1) == match.group(2)
    assert "travis-worker-job-" in match.group(1)
    assert removed(Path(match.group(1)))


def test_worker_environment_does_not_leak_into_the_build(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAVIS_WORKER_SECRET", "s3cret")
    result, out = run('test -z "${TRAVIS_WORKER_SECRET:-}"')
    assert result.state == "passed", out.text


def test_unexpected_exit_status_is_errored() -> None:
    result, _ = run("exit 42")
    assert result == BuildResult("errored", "the build script exited with unexpected status 42", 42)


def test_hard_limit_stops_the_build_and_its_children(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    start = time.monotonic()
    result, out = run(f"sleep 100 & echo $! > {pidfile}; echo started; sleep 100", Limits(1.0, 30, 10**6))
    elapsed = time.monotonic() - start
    assert result.state == "errored" and "hard time limit of 1 s" in (result.reason or "")
    assert result.exit_code is None
    assert 1.0 <= elapsed < 3.0
    assert out.text.rstrip().endswith(
        "The job exceeded the maximum time limit for jobs (1 s), and has been terminated."
    )
    assert not pid_alive(int(pidfile.read_text()))


def test_log_silence_limit() -> None:
    start = time.monotonic()
    result, out = run("echo a; sleep 0.5; echo b; sleep 100", Limits(60, 1.0, 10**6))
    elapsed = time.monotonic() - start
    assert result.state == "errored" and "no output for 1 s" in (result.reason or "")
    assert 1.5 <= elapsed < 3.5, elapsed
    assert "No output has been received in the last 1 seconds" in out.text.splitlines()[-1]


def test_log_length_cap() -> None:
    cap = 10_000
    result, out = run("yes 0123456789", Limits(60, 30, cap))
    assert result.state == "errored" and f"log length limit of {cap} bytes" in (result.reason or "")
    final = b"\r\n\r\nThe job exceeded the maximum log length (10000 bytes), and has been terminated.\r\n"
    data = b"".join(part for _, part in out.parts)
    assert data.endswith(final)
    assert len(data) - len(final) == cap


def test_output_exactly_at_the_cap_is_not_stopped() -> None:
    result, out = run("printf 12345", Limits(60, 30, 5))
    assert result.state == "passed", out.text


@pytest.mark.parametrize("ignore_term", [False, True], ids=["plain", "ignores-SIGTERM"])
def test_cancel_stops_within_two_seconds(tmp_path: Path, ignore_term: bool) -> None:
    pidfile = tmp_path / "pid"
    trap = "trap '' TERM; " if ignore_term else ""
    cancel = threading.Event()
    set_at: list[float] = []

    def fire() -> None:
        set_at.append(time.monotonic())
        cancel.set()

    timer = threading.Timer(0.5, fire)
    timer.start()
    try:
        result, out = run(
            f"{trap}sleep 100 & echo $! > {pidfile}; {trap}echo running; sleep 100", cancel=cancel
        )
        stopped = time.monotonic()
    finally:
        timer.cancel()
    assert result.state == "cancelled", out.text
    assert "Done: Job Cancelled" in out.text
    assert not pid_alive(int(pidfile.read_text()))
    assert stopped - set_at[0] < 2.0, stopped - set_at[0]


def test_cancel_before_start_does_not_run_the_script(tmp_path: Path) -> None:
    cancel = threading.Event()
    cancel.set()
    marker = tmp_path / "ran"
    result, _ = run(f"sleep 0.5; touch {marker}", cancel=cancel)
    assert result.state == "cancelled"
    time.sleep(0.7)
    assert not marker.exists()


def test_background_children_are_cleaned_up_after_a_normal_exit(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    result, _ = run(f"sleep 100 & echo $! > {pidfile}; true")
    assert result.state == "passed"
    assert not pid_alive(int(pidfile.read_text()))


def test_prepare_reports_an_unusable_work_root(tmp_path: Path) -> None:
    with pytest.raises(SandboxError, match="missing"):
        LocalExecutor(work_root=str(tmp_path / "missing")).prepare()
    with pytest.raises(SandboxError, match="not found on PATH"):
        LocalExecutor(bash="twt-no-such-bash").prepare()


def test_make_executor() -> None:
    assert isinstance(make_executor("local", project_dir=None, vm_name=None), LocalExecutor)
    with pytest.raises(ValueError, match=r"vms\.provider"):
        make_executor("docker", project_dir=None, vm_name=None)
    with pytest.raises(ValueError, match=r"vms\.project_dir"):
        make_executor("lxc", project_dir=None, vm_name="worker-1")


@pytest.mark.parametrize("spawned_ahead", [False, True], ids=["spawned-on-the-spot", "spawned-ahead"])
def test_build_dies_with_the_worker_even_on_kill_9(tmp_path: Path, spawned_ahead: bool) -> None:
    """A worker killed with SIGKILL mid-job must not leave its build running to the end (also a build whose
    process prepare() spawned ahead)."""
    marker = tmp_path / "finished"
    started = tmp_path / "started"
    code = (
        "import threading, sys\n"
        "from travis_worker.executor import Limits\n"
        "from travis_worker.executor_local import LocalExecutor\n"
        f"script = \"trap '' HUP; touch {started}; sleep 2; touch {marker}\"\n"
        "e = LocalExecutor()\n"
        f"if {spawned_ahead}: e.prepare(); assert e.waiting is not None\n"
        "e.run(script, lambda b: None, threading.Event(), Limits(60, 60, 10**6))\n"
    )
    worker = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.monotonic() + 10
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert started.exists()
    worker.kill()
    worker.wait(5)
    time.sleep(3)
    assert not marker.exists(), "the build outlived its worker"


def test_build_has_the_pty_as_controlling_terminal() -> None:
    result, out = run("test -r /dev/tty && test -w /dev/tty && echo ok > /dev/tty")
    assert result.state == "passed", out.text
    assert "ok" in out.text


def test_remove_stale_builds_only_takes_dead_workers_of_this_host(tmp_path: Path) -> None:
    from travis_worker.executor_local import owner_name, process_start

    gone = subprocess.Popen(["true"])
    gone.wait()
    host = os.uname().nodename
    names = {
        "live": owner_name(),  # this process: alive with this start time
        "dead": f"{host}_{gone.pid}_12345",  # exited
        # this pid is alive but with another start time: a reused pid, its first owner is dead
        "reused": f"{host}_{os.getpid()}_{int(process_start(os.getpid()) or 0) + 1}",
        "other-host": f"otherhost.invalid_{gone.pid}_1",
        "junk": "lost+found",
    }
    for name in names.values():
        (tmp_path / name / "travis-worker-job-x").mkdir(parents=True)
    removed = LocalExecutor(work_root=str(tmp_path)).remove_stale_builds()
    assert sorted(removed) == sorted([names["dead"], names["reused"]])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [names["live"], names["other-host"], "lost+found"]
    )


def test_builds_run_under_the_build_root_in_a_directory_of_this_process(tmp_path: Path) -> None:
    from travis_worker.executor_local import owner_name

    out = Recorder()
    result = LocalExecutor(work_root=str(tmp_path)).run('echo "dir=$PWD"', out, threading.Event(), ROOMY)
    assert result.state == "passed", out.text
    job_dir = Path(re.search(r"dir=(\S+)", out.text).group(1))
    assert job_dir.parent == tmp_path / owner_name()
    assert removed(job_dir) and job_dir.parent.is_dir()


def test_the_worker_s_executor_removes_a_build_directory_at_the_next_reset_not_as_the_build_ends(
    tmp_path: Path,
) -> None:
    """Issue #10 item 5: removing a clone (5-40 ms of file system calls on a thread of the worker) competed
    with the job's finish transaction and report tail; the worker's executor leaves it to the reset after
    the build (started once the tail is delivered), or to close()."""
    from travis_worker.executor import make_executor

    executor = make_executor("local", project_dir=None, vm_name=None, build_root=str(tmp_path))
    assert isinstance(executor, LocalExecutor)
    dirs = []
    for _ in range(2):
        executor.prepare()
        out = Recorder()
        assert executor.run('echo "dir=$PWD"', out, threading.Event(), ROOMY).state == "passed", out.text
        dirs.append(Path(re.search(r"dir=(\S+)", out.text).group(1)))
        time.sleep(0.3)
        assert dirs[-1].is_dir(), "removed before the reset"
    assert removed(dirs[0])  # by the second prepare()
    executor.close()
    assert removed(dirs[1])
