"""The local build process spawned ahead (issue #10, round 3): prepare() spawns the next build's process,
a job only hands it its directory. Real bash, real PTY, real setpriv/setsid; no mocks."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from test_executor_local import ROOMY, Recorder, pid_alive, removed
from travis_worker.executor_local import LocalExecutor, owner_name

# What a build sees of its process: pid, session, cwd, HOME/TMPDIR, OLDPWD, open descriptors.
PROBE = (
    'echo "pid=$$ sid=$(ps -o sid= -p $$ | tr -d " ") pwd=$PWD home=$HOME tmp=$TMPDIR '
    'oldpwd=${OLDPWD-unset} twdir=${_tw_dir-unset}"; '
    'ls /proc/$$/fd > "$HOME/../fds-$$"; env | sort > "$HOME/../env-$$"'
)


def probe(executor: LocalExecutor) -> tuple[dict[str, str], str]:
    out = Recorder()
    result = executor.run(PROBE, out, threading.Event(), ROOMY)
    assert result.state == "passed", out.text
    fields = dict(re.findall(r"(\w+)=(\S*)", out.text))
    return fields, out.text


def test_prepare_spawns_the_next_build_which_run_uses(tmp_path: Path) -> None:
    executor = LocalExecutor(work_root=str(tmp_path))
    executor.prepare()
    waiting = executor.waiting
    assert waiting is not None and pid_alive(waiting.proc.pid, wait=0)
    fields, text = probe(executor)
    assert fields["pid"] == str(waiting.proc.pid), text  # the build ran in the process spawned ahead
    assert fields["sid"] == fields["pid"], "the build is its own session leader"
    assert executor.waiting is None  # used up: the next prepare() spawns the next one
    executor.prepare()
    assert executor.waiting is not None and executor.waiting.proc.pid != waiting.proc.pid
    executor.close()


def test_a_build_spawned_ahead_sees_what_a_freshly_spawned_one_sees(tmp_path: Path) -> None:
    """Same cwd, HOME, TMPDIR and environment; no OLDPWD, no helper variable, no pipe descriptor left."""
    executor = LocalExecutor(work_root=str(tmp_path))
    fresh, fresh_text = probe(executor)  # no prepare(): spawned on the spot
    executor.prepare()
    ahead, ahead_text = probe(executor)
    executor.close()
    assert ahead["pid"] != fresh["pid"]
    for fields, text in ((fresh, fresh_text), (ahead, ahead_text)):
        assert fields["pwd"] == fields["home"] == fields["tmp"], text
        assert Path(fields["pwd"]).name.startswith("travis-worker-job-"), text
        assert fields["oldpwd"] == "unset" and fields["twdir"] == "unset", text
    owner = Path(fresh["pwd"]).parent
    # the bash reading a script file keeps it open on fd 255; the sourced script is read at once
    fds = sorted((owner / f"fds-{ahead['pid']}").read_text().split(), key=int)
    assert fds == ["0", "1", "2"], "the pipe the script's directory came through is closed"

    def env_of(fields: dict[str, str]) -> dict[str, str]:
        lines = (owner / f"env-{fields['pid']}").read_text().splitlines()
        skip = ("_=", "PWD=", "HOME=", "TMPDIR=", "SHLVL=")  # per job directory, or bash's own
        return dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith(skip))

    assert env_of(ahead) == env_of(fresh)


def test_a_dead_process_spawned_ahead_is_replaced(tmp_path: Path) -> None:
    executor = LocalExecutor(work_root=str(tmp_path))
    executor.prepare()
    dead = executor.waiting
    assert dead is not None
    dead.proc.kill()
    dead.proc.wait(5)
    executor.prepare()  # after a build / at start-up: a dead one is replaced
    assert executor.waiting is not None and executor.waiting is not dead
    executor.waiting.proc.kill()
    executor.waiting.proc.wait(5)
    fields, text = probe(executor)  # died between prepare() and the job: run() spawns one on the spot
    assert fields["pid"] != str(dead.proc.pid), text


def test_one_spawned_by_another_thread_is_not_used(tmp_path: Path) -> None:
    """The parent-death signal follows the spawning thread: a process spawned by a thread that ends would
    be killed mid-build, so run() only uses one its own thread spawned."""
    executor = LocalExecutor(work_root=str(tmp_path))
    thread = threading.Thread(target=executor.prepare)
    thread.start()
    thread.join()
    other = executor.waiting
    assert other is not None
    fields, text = probe(executor)
    assert fields["pid"] != str(other.proc.pid), text
    assert not pid_alive(other.proc.pid)


def test_close_ends_the_process_spawned_ahead(tmp_path: Path) -> None:
    executor = LocalExecutor(work_root=str(tmp_path))
    executor.prepare()
    waiting = executor.waiting
    assert waiting is not None
    executor.close()
    assert executor.waiting is None
    assert not pid_alive(waiting.proc.pid)


def test_the_process_spawned_ahead_dies_with_the_worker_on_kill_9(tmp_path: Path) -> None:
    code = (
        "import sys, time\n"
        "from travis_worker.executor_local import LocalExecutor\n"
        f"e = LocalExecutor(work_root={str(tmp_path)!r})\n"
        "e.prepare()\n"
        "print(e.waiting.proc.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    worker = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        pid = int(worker.stdout.readline())
        assert pid_alive(pid, wait=0)
    finally:
        worker.kill()
        worker.wait(5)
    assert not pid_alive(pid, wait=3), "the build process spawned ahead outlived its worker"


def test_on_start_is_called_once_the_build_has_its_script(tmp_path: Path) -> None:
    """The worker wakes its report sender from on_start: after the hand-over, never before it (spawned
    ahead: the whole script written to the waiting shell's pipe and the pipe closed; spawned on the spot:
    build.sh written)."""
    from travis_worker.executor_local import owner_name

    executor = LocalExecutor(work_root=str(tmp_path))
    for spawned_ahead in (True, False):
        if spawned_ahead:
            executor.prepare()
        waiting = executor.waiting
        seen: list[object] = []

        def on_start(seen: list[object] = seen, waiting: object = waiting) -> None:
            if waiting is not None:
                seen.append(("pipe closed", waiting.go == -1))  # type: ignore[attr-defined]
            else:
                seen.append([p.name for p in (tmp_path / owner_name()).glob("travis-worker-job-*/build.sh")])

        out = Recorder()
        result = executor.run("echo ran", out, threading.Event(), ROOMY, on_start=on_start)
        assert result.state == "passed", out.text
        assert seen == ([("pipe closed", True)] if spawned_ahead else [["build.sh"]]), spawned_ahead
    executor.close()


# -- issue #10 item 5, round 5: the job's directory made ahead, the script through the pipe, rm -rf outside
def test_a_build_spawned_ahead_runs_in_the_directory_prepare_made_without_its_script_on_disk(
    tmp_path: Path,
) -> None:
    """Before, the job's directory was made and build.sh written between the pickup and the build's start
    (1.3 ms of file system calls on that path in bench/runner/phases.py); now prepare() makes the directory,
    and the script reaches the shell through its pipe (secure values never touch the disk)."""
    executor = LocalExecutor(work_root=str(tmp_path))
    executor.prepare()
    waiting = executor.waiting
    assert waiting is not None
    made = [p for p in (tmp_path / owner_name()).iterdir()]
    assert len(made) == 1 and made[0].name.startswith("travis-worker-job-") and not any(made[0].iterdir())
    out = Recorder()
    result = executor.run(
        'echo "dir=$PWD"; echo "files=$(ls -A | tr "\\n" ,)"', out, threading.Event(), ROOMY
    )
    assert result.state == "passed", out.text
    assert f"dir={made[0]}" in out.text
    assert "files=\r" in out.text or out.text.rstrip().endswith("files="), out.text
    executor.close()


def test_a_script_larger_than_the_pipe_buffer_reaches_the_shell_spawned_ahead_whole(tmp_path: Path) -> None:
    executor = LocalExecutor(work_root=str(tmp_path))
    executor.prepare()
    filler = "".join(f": line {n} {'x' * 60}\n" for n in range(4000))  # ~290 KB, the pipe holds 64 KiB
    out = Recorder()
    result = executor.run(f"echo first\n{filler}echo last; exit 0", out, threading.Event(), ROOMY)
    executor.close()
    assert result.state == "passed", out.text
    assert out.text.split() == ["first", "last"], out.text[-300:]


def test_an_empty_script_exits_the_waiting_shell_without_running_anything(tmp_path: Path) -> None:
    """close() gives the shell EOF with nothing written: it runs nothing (before, the same with exit 70)."""
    executor = LocalExecutor(work_root=str(tmp_path))
    executor.prepare()
    waiting = executor.waiting
    assert waiting is not None
    os.close(waiting.go)
    waiting.go = -1
    assert waiting.proc.wait(5) == 0
    executor.close()


def test_a_finished_build_s_directory_is_removed_by_an_rm_process_not_a_worker_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, shutil.rmtree ran on a thread of the worker (6-7 ms for this host's small clone, competing
    for the GIL with the next job's pickup and the state write, 2-3 ms longer per job in phases.py)."""
    from travis_worker import executor_local

    in_worker: list[str] = []
    real = executor_local.remove_tree
    monkeypatch.setattr(executor_local, "remove_tree", lambda path: (in_worker.append(path), real(path)))
    executor = LocalExecutor(work_root=str(tmp_path), defer_removal=True)
    dirs = []
    for _ in range(3):
        executor.prepare()
        fields, _ = probe(executor)
        dirs.append(Path(fields["pwd"]))
    executor.close()
    assert not [d for d in dirs if d.exists()]
    assert in_worker == []
    assert list((tmp_path / owner_name()).glob("travis-worker-job-*")) == []  # the last one and close()'s own


def test_a_directory_rm_cannot_remove_is_removed_by_the_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """rm -rf fails (as a non-root user, on a directory the build made read-only; here an `rm` that
    removes nothing and exits 1): the next prepare() or close() sees it and removes the rest itself."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "rm").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "rm").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    root = tmp_path / "builds"
    root.mkdir()
    executor = LocalExecutor(work_root=str(root), defer_removal=True)
    executor.prepare()
    fields, _ = probe(executor)
    job_dir = Path(fields["pwd"])
    executor.prepare()  # starts the failing rm
    executor.close()  # reaps it: removed by the worker
    assert removed(job_dir), "left behind after rm failed"


def test_the_build_s_duration_counts_from_the_hand_over_not_from_after_on_start(tmp_path: Path) -> None:
    """The worker marks the job in on_start (a Redis round trip) while the build already runs its script:
    that time is the build's (its duration, the hard limit), not the runner's own cost."""
    import time

    executor = LocalExecutor(work_root=str(tmp_path))
    for spawned_ahead in (True, False):
        if spawned_ahead:
            executor.prepare()
        out = Recorder()
        result = executor.run("true", out, threading.Event(), ROOMY, on_start=lambda: time.sleep(0.3))
        assert result.state == "passed", out.text
        assert result.duration is not None and result.duration >= 0.3, (spawned_ahead, result.duration)
    executor.close()
