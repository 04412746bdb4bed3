"""playbooks/files/image_converge.py: which worker VMs of this box report the image digest.

Run as the playbook runs it (python3 FILE ...), with two stand-ins on PATH: `systemctl` answering `show` in
systemd's property format (blank line between units, as `systemctl show A B` prints), and `travis-worker`
answering `status --json` with rows shaped like runner/src/travis_worker/cli.py worker_rows() plus the `image`
object the runner reports. Only this host's rows count (worker id `<hostname>:<pid>:<queue>`).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = ROOT / "playbooks" / "files" / "image_converge.py"
HOST = socket.gethostname()


def stubs(tmp_path: Path, units: dict[str, str], rows: list[dict]) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    show = "\n\n".join(f"Id=travis-worker@{vm}.service\nActiveState={state}" for vm, state in units.items())
    (bin_dir / "systemctl").write_text(f"#!/bin/sh\ncat <<'OUT'\n{show}\nOUT\n")
    (bin_dir / "systemctl").chmod(0o755)
    (tmp_path / "rows.json").write_text(json.dumps(rows))
    (bin_dir / "travis-worker").write_text(f"#!/bin/sh\ncat {tmp_path / 'rows.json'}\n")
    (bin_dir / "travis-worker").chmod(0o755)
    return bin_dir


def row(vm: str, digest: str | None, state: str = "idle", host: str = HOST, pid: int = 100) -> dict:
    image = {"version": "v-" + digest, "digest": digest} if digest else None
    return {"id": f"{host}:{pid}:builds", "state": state, "vm": vm, "job_id": None, "image": image}


def converge(bin_dir: Path, state_file: str, *vms: str, digest: str = "d2") -> dict:
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin"}
    argv = [
        sys.executable,
        str(SCRIPT),
        str(bin_dir / "travis-worker"),
        "/etc/w.yml",
        digest,
        state_file,
        "0",
        *vms,
    ]
    out = subprocess.run(argv, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def test_pending_stopped_and_switch_times_across_calls(tmp_path: Path) -> None:
    state = str(tmp_path / "state.json")
    units = {"worker-1": "active", "worker-2": "active", "worker-3": "inactive"}
    rows = [
        row("worker-1", "d1"),
        row("worker-2", "d2", state="busy"),
        row("worker-3", "d1", state="dead"),
        row("worker-1", "d2", host="otherbox"),  # another box's worker-1 on the same Redis: not ours
    ]
    first = converge(stubs(tmp_path, units, rows), state, "worker-1", "worker-2", "worker-3")
    assert first["converged"] is False
    assert first["pending"] == ["worker-1"] and first["stopped"] == ["worker-3"]
    assert first["vms"]["worker-2"]["switched_s"] is not None
    assert first["vms"]["worker-1"] == {
        "unit": "active",
        "state": "idle",
        "version": "v-d1",
        "digest": "d1",
        "switched_s": None,
    }

    rows[0] = row("worker-1", "d2", pid=101)
    second = converge(stubs(tmp_path, units, rows), state, "worker-1", "worker-2", "worker-3")
    assert second["converged"] is True and second["pending"] == []
    assert (
        second["vms"]["worker-2"]["switched_s"] == first["vms"]["worker-2"]["switched_s"]
    )  # first seen, kept
    assert second["vms"]["worker-1"]["switched_s"] >= second["vms"]["worker-2"]["switched_s"]
    assert json.loads(Path(state).read_text())["digest"] == "d2"


def test_a_live_row_wins_over_a_dead_one_and_no_state_file_with_dash(tmp_path: Path) -> None:
    units = {"worker-1": "active"}
    rows = [row("worker-1", "d2", state="dead", pid=1), row("worker-1", "d1", pid=2)]
    out = converge(stubs(tmp_path, units, rows), "-", "worker-1")
    assert out["pending"] == ["worker-1"] and out["vms"]["worker-1"]["digest"] == "d1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin", "rows.json"]


def test_a_runner_that_cannot_answer_counts_as_not_switched(tmp_path: Path) -> None:
    bin_dir = stubs(tmp_path, {"worker-1": "active"}, [])
    (bin_dir / "travis-worker").write_text("#!/bin/sh\necho 'redis: connection refused' >&2\nexit 3\n")
    out = converge(bin_dir, "-", "worker-1")
    assert out["converged"] is False and out["vms"]["worker-1"]["state"] == "absent"


def test_a_box_without_the_runner_reports_nothing(tmp_path: Path) -> None:
    bin_dir = stubs(tmp_path, {"worker-1": "inactive"}, [])
    (bin_dir / "travis-worker").unlink()
    out = converge(bin_dir, "-", "worker-1")
    assert out["stopped"] == ["worker-1"] and out["vms"]["worker-1"]["state"] == "absent"
