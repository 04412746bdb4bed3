"""Issue #11 section 5: the controller's own setup. scripts/setup-controller in a fresh copy of this checkout
(git archive of HEAD) creates the venv with the pinned ansible-core and the collection link, installs no apt
package (dpkg's status file is untouched), and the production inventory's site.yml parses with it.
Real pip against the package index, ~50 s (52 s on 2026-12-02)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DPKG_STATUS = Path("/var/lib/dpkg/status")


@pytest.mark.integration
@pytest.mark.timeout(900)
def test_setup_controller_makes_a_working_controller_without_the_lab(tmp_path: Path) -> None:
    copy = tmp_path / "checkout"
    copy.mkdir()
    archive = subprocess.run(["git", "archive", "HEAD"], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(copy)], input=archive, check=True)
    dpkg_before = DPKG_STATUS.stat().st_mtime_ns if DPKG_STATUS.exists() else None
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "ANSIBLE_CONFIG")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if ".venv" not in p)

    proc = subprocess.run(
        ["scripts/setup-controller"], cwd=copy, env=env, capture_output=True, text=True, timeout=840
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (DPKG_STATUS.stat().st_mtime_ns if DPKG_STATUS.exists() else None) == dpkg_before

    pins = [
        line
        for line in (ROOT / "requirements.txt").read_text().splitlines()
        if line.startswith("ansible-core==")
    ]
    version = subprocess.run(
        [str(copy / ".venv/bin/ansible-playbook"), "--version"], capture_output=True, text=True, check=True
    ).stdout
    assert f"core {pins[0].split('==')[1]}]" in version, version
    link = copy / ".cache/collections/ansible_collections/travis/worker"
    assert link.is_symlink() and link.resolve() == copy.resolve()
    # no lab or test tools in the controller's venv
    for tool in ("pytest", "molecule", "ansible-lint"):
        assert not (copy / ".venv/bin" / tool).exists(), tool

    syntax = subprocess.run(
        [
            str(copy / ".venv/bin/ansible-playbook"),
            "-i",
            "inventories/production",
            "site.yml",
            "--syntax-check",
        ],
        cwd=copy,
        env={**env, "ANSIBLE_CONFIG": str(copy / "ansible.cfg")},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert syntax.returncode == 0, syntax.stdout + syntax.stderr
