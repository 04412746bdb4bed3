"""travis_lab.net: the bridge counts as ready only with a live dnsmasq; a dead one gets lxc-net restarted.

`lo` stands in for "a bridge that exists"; a copy of `sleep` named `dnsmasq` stands in for the DHCP server
(its /proc/<pid>/comm really is `dnsmasq`), and the lxc-net script is a real shell script that records calls.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from travis_lab.errors import LabError
from travis_lab.net import dnsmasq_pid, ensure_bridge


@pytest.fixture
def fake_dnsmasq(tmp_path: Path) -> Iterator[Path]:
    exe = tmp_path / "bin" / "dnsmasq"
    exe.parent.mkdir()
    shutil.copy(shutil.which("sleep") or "/bin/sleep", exe)
    yield exe
    subprocess.run(["pkill", "-f", str(exe)], check=False)


def _lxc_net(tmp_path: Path, run_dir: Path, start_body: str) -> Path:
    script = tmp_path / "lxc-net"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> {tmp_path}/calls\n'
        'case "$1" in\n'
        f"  stop) rm -f {run_dir}/dnsmasq.pid {run_dir}/network_up ;;\n"
        f"  start) {start_body} ;;\n"
        "esac\n"
    )
    script.chmod(0o755)
    return script


def _start_fake(exe: Path, run_dir: Path) -> str:
    """lxc-net's start, as far as we need it: a daemonised dnsmasq, its pid file and the network_up flag."""
    return f"{exe} 30 >/dev/null 2>&1 & echo $! > {run_dir}/dnsmasq.pid; touch {run_dir}/network_up"


def test_missing_bridge_without_lxc_net_names_step_and_remedy(tmp_path: Path) -> None:
    with pytest.raises(LabError) as exc:
        ensure_bridge("twtnobr0", lxc_net=tmp_path / "lxc-net", run_dir=tmp_path, lock=tmp_path / "l")
    assert exc.value.step == "lxc-net"
    assert "twtnobr0" in exc.value.problem and "apt-get install" in exc.value.remedy


def test_failing_lxc_net_is_reported(tmp_path: Path) -> None:
    script = tmp_path / "lxc-net"
    script.write_text("#!/bin/sh\necho 'dnsmasq: failed to create listening socket' >&2\nexit 1\n")
    script.chmod(0o755)
    with pytest.raises(LabError) as exc:
        ensure_bridge("twtnobr0", lxc_net=script, run_dir=tmp_path, lock=tmp_path / "l")
    assert "exited 1" in exc.value.problem and "dnsmasq" in exc.value.problem
    assert "still missing" in exc.value.problem


def test_dnsmasq_pid_needs_a_live_dnsmasq(tmp_path: Path, fake_dnsmasq: Path) -> None:
    assert dnsmasq_pid(tmp_path) is None  # no pid file
    (tmp_path / "dnsmasq.pid").write_text("garbage\n")
    assert dnsmasq_pid(tmp_path) is None
    (tmp_path / "dnsmasq.pid").write_text(f"{os.getpid()}\n")  # alive, but python, not dnsmasq
    assert dnsmasq_pid(tmp_path) is None
    proc = subprocess.Popen([str(fake_dnsmasq), "30"])
    try:
        # Popen returns once the child's close-on-exec pipe closes; the kernel sets the new comm a moment
        # later in the same exec, so on a loaded host /proc/<pid>/comm can still say "python" here (seen once)
        deadline = time.monotonic() + 5
        while Path(f"/proc/{proc.pid}/comm").read_text().strip() != "dnsmasq" and time.monotonic() < deadline:
            time.sleep(0.01)
        (tmp_path / "dnsmasq.pid").write_text(f"{proc.pid}\n")
        assert dnsmasq_pid(tmp_path) == proc.pid
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert dnsmasq_pid(tmp_path) is None  # the pid file outlived its process: the CI failure of session 1


def test_bridge_up_with_dead_dnsmasq_restarts_lxc_net(tmp_path: Path, fake_dnsmasq: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "dnsmasq.pid").write_text("999999999\n")  # stale: that process is long gone
    (run_dir / "network_up").touch()
    script = _lxc_net(tmp_path, run_dir, _start_fake(fake_dnsmasq, run_dir))
    ensure_bridge("lo", lxc_net=script, run_dir=run_dir, lock=tmp_path / "lock")
    assert (tmp_path / "calls").read_text().splitlines() == ["stop force", "start"]
    pid = dnsmasq_pid(run_dir)
    assert pid is not None
    ensure_bridge("lo", lxc_net=script, run_dir=run_dir, lock=tmp_path / "lock")  # healthy now: no calls
    assert (tmp_path / "calls").read_text().splitlines() == ["stop force", "start"]


def test_restart_that_leaves_no_dnsmasq_is_an_error(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    script = _lxc_net(tmp_path, run_dir, "true")  # "succeeds" without starting dnsmasq
    with pytest.raises(LabError) as exc:
        ensure_bridge("lo", lxc_net=script, run_dir=run_dir, lock=tmp_path / "lock")
    assert "up but without a running dnsmasq" in exc.value.problem
    assert "stop force" in exc.value.remedy


def test_concurrent_callers_restart_once(tmp_path: Path, fake_dnsmasq: Path) -> None:
    """Six xdist workers call ensure_bridge at once in CI; only the first may restart lxc-net."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    script = _lxc_net(tmp_path, run_dir, "sleep 1; " + _start_fake(fake_dnsmasq, run_dir))
    code = (
        "from pathlib import Path; from travis_lab.net import ensure_bridge; "
        f"ensure_bridge('lo', lxc_net=Path('{script}'), run_dir=Path('{run_dir}'), "
        f"lock=Path('{tmp_path}/lock'))"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(4)]
    t0 = time.monotonic()
    assert [p.wait(timeout=60) for p in procs] == [0, 0, 0, 0]
    assert time.monotonic() - t0 < 30
    assert (tmp_path / "calls").read_text().splitlines() == ["stop force", "start"]
