"""The collection builds into a tarball that ansible-galaxy installs, and ansible-doc lists its plugins."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _run(argv: list[str], cwd: Path, env: dict[str, str]) -> str:
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{argv} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_build_install_and_list(tmp_path: Path) -> None:
    galaxy = yaml.safe_load((ROOT / "galaxy.yml").read_text())
    assert (galaxy["namespace"], galaxy["name"]) == ("travis", "worker")
    # An isolated Ansible: no ansible.cfg from the checkout, so the checkout link cannot answer for us.
    cfg = tmp_path / "ansible.cfg"
    cfg.write_text(f"[defaults]\ncollections_path = {tmp_path / 'installed'}\n")
    env = {**os.environ, "ANSIBLE_CONFIG": str(cfg), "HOME": str(tmp_path)}
    env.pop("ANSIBLE_COLLECTIONS_PATH", None)
    _run(
        [str(BIN / "ansible-galaxy"), "collection", "build", "--output-path", str(tmp_path), str(ROOT)],
        tmp_path,
        env,
    )
    tarball = tmp_path / f"travis-worker-{galaxy['version']}.tar.gz"
    with tarfile.open(tarball) as tar:
        names = set(tar.getnames())
    assert "galaxy.yml" not in names and "MANIFEST.json" in names
    assert not any(n.startswith((".venv", ".cache", ".git/")) or ".egg-info" in n for n in names)
    assert "meta/runtime.yml" in names and "site.yml" in names

    _run(
        [
            str(BIN / "ansible-galaxy"),
            "collection",
            "install",
            "-p",
            str(tmp_path / "installed"),
            str(tarball),
        ],
        tmp_path,
        env,
    )
    listed = _run([str(BIN / "ansible-doc"), "-l", "travis.worker"], tmp_path, env)
    modules = sorted(p.stem for p in (ROOT / "plugins" / "modules").glob("*.py") if p.stem != "__init__")
    for name in modules:
        assert f"travis.worker.{name}" in listed, f"{name} missing from ansible-doc -l:\n{listed}"
    assert modules, "the collection ships no modules"
