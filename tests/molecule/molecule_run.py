"""Run a Molecule scenario (`molecule test -s <scenario>`) from the repository root, output streamed live.

One test file per scenario (test_molecule_<scenario>.py), so that `scripts/test` runs them side by side
(pytest-xdist `--dist loadfile`).

The scenarios need LXC, the lab's base box and redis-server on this machine (see molecule/*/molecule.yml);
each one creates its own twt- box container and removes it at the end.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = ROOT / ".venv" / "bin"
LOGS = ROOT / ".cache" / "logs"

log = logging.getLogger(__name__)


def _env(scenario: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["ANSIBLE_CONFIG"] = str(ROOT / "ansible.cfg")
    env["VIRTUAL_ENV"] = str(ROOT / ".venv")
    # a unique twt- container per run, so concurrent runs and leftovers never collide
    env["TWT_MOLECULE_BOX"] = f"twt-mol-{scenario[:5]}-{uuid.uuid4().hex[:6]}"
    env.setdefault("PY_COLORS", "0")
    env.setdefault("ANSIBLE_FORCE_COLOR", "0")
    return env


def run_scenario(scenario: str) -> None:
    """`molecule test -s scenario`; fails the calling test with the last 200 lines when it fails."""
    argv = [str(VENV_BIN / "molecule"), "test", "-s", scenario]
    started = time.monotonic()
    proc = subprocess.Popen(
        argv, cwd=ROOT, env=_env(scenario), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert proc.stdout is not None
    # The whole output also goes to .cache/logs/molecule-<scenario>.log: under xdist pytest keeps a passing
    # test's output to itself, and scripts/test prints the PLAY RECAP lines from there.
    LOGS.mkdir(parents=True, exist_ok=True)
    tail: list[str] = []
    with open(LOGS / f"molecule-{scenario}.log", "w", encoding="utf-8") as saved:
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            saved.write(line)
            tail = [*tail[-199:], line]
        rc = proc.wait()
        took = time.monotonic() - started
        saved.write(f"==> molecule test -s {scenario}: rc {rc} in {took:.0f} s\n")
    log.info("molecule test -s %s: rc %s in %.0f s", scenario, rc, took)
    last = "".join(tail)
    assert rc == 0, f"`molecule test -s {scenario}` exited {rc} after {took:.0f} s; last lines:\n{last}"
