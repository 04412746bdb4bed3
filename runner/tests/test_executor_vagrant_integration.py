"""The Vagrant executor against real Vagrant-LXC machines (lab fixture ``vagrant_project``).

A real repository on this host is served with ``git daemon`` on the LXC bridge; each job resets the
machine to its sandbox snapshot (the lxc role's ``travis-worker-lxc-sandbox``, run from the checkout: a copy
of the container's rootfs, restored with rsync) and clones over the network.
"""

from __future__ import annotations

import re
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_script_support import job_for, make_repo
from travis_worker.executor import Limits, make_executor
from travis_worker.executor_vagrant import VagrantExecutor
from travis_worker.script import build_script
from travis_worker.vagrant import LxcSandbox, lxc_container

pytestmark = pytest.mark.integration

# The lab box has no git; a build box always has it. Fast when the box already carries git.
PROVISION = (
    "command -v git >/dev/null || { apt-get update -qq && "
    "DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends git >/dev/null; }"
)
LIMITS = Limits(hard_limit=600, log_silence=300, log_length=4 * 1024 * 1024)
HELPER = Path(__file__).resolve().parents[2] / "roles/lxc/files/travis-worker-lxc-sandbox"


class Recorder:
    def __init__(self) -> None:
        self.parts: list[tuple[float, bytes]] = []

    def __call__(self, data: bytes) -> None:
        self.parts.append((time.monotonic(), data))

    @property
    def text(self) -> str:
        return b"".join(p for _, p in self.parts).decode("utf-8", "replace")


def survivors(proj: object) -> str:
    """Remote ``sleep`` processes alive after up to 10 s (the remote kill may end in the background)."""
    deadline = time.monotonic() + 10
    while True:
        left = proj.ssh("worker-1", "pgrep -u vagrant -x sleep || true").stdout.strip()  # type: ignore[attr-defined]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.5)


def free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@pytest.fixture()
def project(vagrant_project) -> Iterator[object]:
    proj = vagrant_project(1, name_prefix="worker-", provision_script=PROVISION)
    proj.up()
    yield proj


def gateway_of(proj: object) -> str:
    route = proj.ssh("worker-1", "ip -4 route show default").stdout  # type: ignore[attr-defined]
    match = re.search(r"default via (\d+\.\d+\.\d+\.\d+)", route)
    assert match, route
    return match.group(1)


@pytest.fixture()
def git_daemon(tmp_path: Path, project: object) -> Iterator[tuple[str, Path]]:
    host = gateway_of(project)
    base = tmp_path / "git"
    base.mkdir()
    port = free_port(host)
    proc = subprocess.Popen(
        [
            "git",
            "daemon",
            "--reuseaddr",
            "--export-all",
            f"--base-path={base}",
            f"--listen={host}",
            f"--port={port}",
            "--informative-errors",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection((host, port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        yield f"git://{host}:{port}", base
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_vagrant_lxc_passed_failed_errored(project: object, git_daemon: tuple[str, Path]) -> None:
    url, base = git_daemon
    _, commit = make_repo(base, files={".travis.yml": "script: true\n", "check.sh": "test -f .travis.yml\n"})
    root = str(project.root)  # type: ignore[attr-defined]
    executor = VagrantExecutor(
        "lxc", project_dir=root, vm_name="worker-1", lxc_sandbox=LxcSandbox(helper=str(HELPER))
    )
    container = lxc_container(root, "worker-1")
    project.ssh("worker-1", "sudo touch /etc/twt-recipe")  # type: ignore[attr-defined]  # "a recipe applied"
    cases = [
        ({"install": "true", "script": ["bash check.sh", "test -t 1", "whoami"]}, "passed", 0),
        ({"install": "true", "script": "false"}, "failed", 1),
        ({"install": "exit 1", "script": "true"}, "errored", 2),
    ]
    timings = []
    for job_id, (config, state, code) in enumerate(cases, 1):
        started = time.monotonic()
        executor.prepare()
        prepared = time.monotonic()
        # the same machine, reset: the recipe (in the snapshot taken at the first prepare) kept, the last
        # build's dirt gone
        assert lxc_container(root, "worker-1") == container
        state_in_vm = project.ssh("worker-1", "ls /etc/twt-recipe ~/dirt 2>&1; true").stdout  # type: ignore[attr-defined]
        assert "/etc/twt-recipe" in state_in_vm and "cannot access" in state_in_vm, state_in_vm
        out = Recorder()
        result = executor.run(
            build_script(job_for(commit, config, job_id=job_id), git_base_url=url),
            out,
            threading.Event(),
            LIMITS,
        )
        timings.append((state, round(prepared - started, 1), round(time.monotonic() - prepared, 1)))
        assert (result.state, result.exit_code) == (state, code), out.text
        assert f"$ git clone --depth=50 --branch=master -- {url}/owner/name.git" in out.text
        if state == "passed":
            assert "vagrant" in out.text.replace("$ whoami", "")
        project.ssh("worker-1", "touch ~/dirt && sudo rm /etc/twt-recipe")  # type: ignore[attr-defined]
    print("prepare/run seconds:", timings)


def test_vagrant_lxc_cancel_and_hard_limit_kill_the_remote_group(project: object) -> None:
    executor = make_executor("lxc", project_dir=str(project.root), vm_name="worker-1")  # type: ignore[attr-defined]
    script = "sleep 300 & echo started; sleep 300\n"
    # cancel
    cancel = threading.Event()
    out = Recorder()
    set_at: list[float] = []

    def fire() -> None:
        while not any(b"started" in p for _, p in out.parts):
            time.sleep(0.05)
        set_at.append(time.monotonic())
        cancel.set()

    threading.Thread(target=fire, daemon=True).start()
    result = executor.run(script, out, cancel, LIMITS)
    stopped = time.monotonic() - set_at[0]
    assert result.state == "cancelled", out.text
    assert stopped < 2.0, stopped
    left = survivors(project)
    assert left == "", f"remote sleep processes survived the cancel: {left}"
    # hard limit
    out = Recorder()
    started = time.monotonic()
    result = executor.run(script, out, threading.Event(), Limits(3, 300, 10**6))
    assert result.state == "errored" and "hard time limit" in (result.reason or ""), out.text
    assert time.monotonic() - started < 6
    left = survivors(project)
    assert left == "", f"remote sleep processes survived the hard limit: {left}"
    # the worker dies (its ssh client is SIGKILLed, no remote kill is sent): sshd hangs the session up
    procs: list[subprocess.Popen] = []
    real_spawn = executor.spawn  # type: ignore[attr-defined]

    def spawn(argv: list[str], **kwargs: object) -> tuple:
        proc, master = real_spawn(argv, **kwargs)
        procs.append(proc)
        return proc, master

    executor.spawn = spawn  # type: ignore[attr-defined]
    out = Recorder()
    results: list[object] = []
    runner = threading.Thread(
        target=lambda: results.append(executor.run(script, out, threading.Event(), LIMITS))
    )
    runner.start()
    deadline = time.monotonic() + 30
    while not any(b"started" in p for _, p in out.parts) and time.monotonic() < deadline:
        time.sleep(0.05)
    procs[0].kill()
    runner.join(15)
    assert results and results[0].state == "errored", out.text  # type: ignore[attr-defined]
    left = survivors(project)
    assert left == "", f"remote sleep processes survived the dropped connection: {left}"
    print(f"cancel stopped in {stopped:.2f} s")
