"""The local build process spawned ahead (issue #10, round 3): prepare() spawns the next build's process,
a job only hands it its directory. Real bash, real PTY, real setpriv/setsid; no mocks."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from pathlib import Path

from test_executor_local import ROOMY, Recorder, pid_alive
from travis_worker.executor_local import LocalExecutor

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
    """The worker wakes its report sender from on_start: after the hand-over, never before it."""
    from travis_worker.executor_local import owner_name

    executor = LocalExecutor(work_root=str(tmp_path))
    for spawned_ahead in (True, False):
        if spawned_ahead:
            executor.prepare()
        seen: list[list[str]] = []

        def on_start(seen: list[list[str]] = seen) -> None:
            seen.append([p.name for p in (tmp_path / owner_name()).glob("travis-worker-job-*/build.sh")])

        out = Recorder()
        result = executor.run("echo ran", out, threading.Event(), ROOMY, on_start=on_start)
        assert result.state == "passed", out.text
        assert seen == [["build.sh"]], spawned_ahead
    executor.close()
