"""box_export against real Vagrant + vagrant-lxc: export a provisioned machine, re-add it as a box, a machine
from the new box sees the provisioned marker; a rerun with the same digest changes nothing."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
log = logging.getLogger(__name__)
BIN = Path(sys.executable).parent


def run_task(module: str, args: dict[str, Any], check: bool = False, diff: bool = False, env=None) -> dict:
    """Run travis.worker.<module> on localhost with the `ansible` CLI; return its result (from --tree)."""
    tree = Path(tempfile.mkdtemp(prefix="twt-tree-"))
    argv = [
        str(BIN / "ansible"),
        "localhost",
        "-i",
        "localhost,",
        "-c",
        "local",
        "-m",
        f"travis.worker.{module}",
        "-a",
        json.dumps(args),
        "-e",
        f"ansible_python_interpreter={sys.executable}",
        "--tree",
        str(tree),
    ]
    if check:
        argv.append("--check")
    if diff:
        argv.append("--diff")
    full_env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), **(env or {})}
    try:
        proc = subprocess.run(argv, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=1200)
        try:
            result = json.loads((tree / "localhost").read_text())
        except (OSError, ValueError):
            pytest.fail(f"ansible wrote no result (rc {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    finally:
        shutil.rmtree(tree, ignore_errors=True)
    if proc.returncode != 0:  # the tree callback leaves `failed` out of the saved result
        result.setdefault("failed", True)
    return result


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="twt-bx-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def exported_box_name() -> Iterator[str]:
    """A Vagrant box name for the exported box; removed from VAGRANT_HOME after the test."""
    from travis_lab.vagrant import vagrant_env

    name = f"twt-exported-{uuid.uuid4().hex[:6]}"
    yield name
    subprocess.run(
        ["vagrant", "box", "remove", "--force", "--all", name],
        env=vagrant_env(),
        capture_output=True,
        timeout=300,
    )


def state_of(project: Any, machine: str) -> str:
    out = project.vagrant("status", machine, "--machine-readable").stdout
    for line in out.splitlines():
        parts = line.split(",")
        if len(parts) >= 4 and parts[1] == machine and parts[2] == "state":
            return parts[3]
    return "unknown"


def test_export_readd_and_clone_sees_marker(vagrant_project, exported_box_name: str, workdir: Path) -> None:
    from travis_lab.vagrant import make_project, vagrant_home

    tag = uuid.uuid4().hex[:8]
    base = vagrant_project(
        1, name_prefix="base-", provision_script=f"echo provisioned-{tag} > /opt/twt-marker"
    )
    machine = "base-1"
    base.up()
    log.info("vagrant up + provision of the base machine: %.1f s", base.timings["up"])
    assert base.ssh(machine, "cat /opt/twt-marker").stdout.strip() == f"provisioned-{tag}"
    base_hostkey = base.ssh(machine, "cat /etc/ssh/ssh_host_ed25519_key.pub").stdout.split()[1]
    box_path = workdir / "exported.box"
    args = {
        "project_dir": str(base.root),
        "name": machine,
        "path": str(box_path),
        "digest": "recipe-1",
        "vagrant_home": str(vagrant_home()),
    }

    predicted = run_task("box_export", args, check=True, diff=True)
    assert predicted.get("failed") is not True, predicted
    assert predicted["changed"] is True and predicted["halted"] is True and predicted["provider"] == "lxc"
    assert not box_path.exists()

    t0 = time.monotonic()
    done = run_task("box_export", args)
    log.info(
        "box_export (stop, archive, restart): %.1f s, %d bytes", time.monotonic() - t0, done.get("size", 0)
    )
    assert done.get("failed") is not True, done
    assert done["changed"] is True and done["halted"] is True and done["restarted"] is True
    assert box_path.stat().st_size == done["size"] > 1_000_000
    meta = json.loads(Path(str(box_path) + ".json").read_text())
    assert meta["digest"] == "recipe-1" and meta["sha256"] == done["sha256"]
    assert meta["source"]["machine"] == machine and meta["source"]["id"] == base.machines[machine]
    assert state_of(base, machine) == "running"  # started again after the export

    t0 = time.monotonic()
    again = run_task("box_export", args)
    log.info("box_export rerun, same digest: %.1f s", time.monotonic() - t0)
    assert again["changed"] is False and again["sha256"] == done["sha256"]
    assert run_task("box_export", args, check=True)["changed"] is False

    t0 = time.monotonic()
    base.vagrant("box", "add", "--name", exported_box_name, str(box_path))
    clone = make_project(1, box=exported_box_name, name_prefix="clone-")
    try:
        clone.up()
        log.info("box add + vagrant up of the clone: %.1f s", time.monotonic() - t0)
        assert clone.ssh("clone-1", "cat /opt/twt-marker").stdout.strip() == f"provisioned-{tag}"
        clone_hostkey = clone.ssh("clone-1", "cat /etc/ssh/ssh_host_ed25519_key.pub").stdout.split()[1]
        assert clone_hostkey != base_hostkey, "the clone kept the source machine's SSH host key"
        ids = {
            base.ssh(machine, "cat /etc/machine-id").stdout.strip(),
            clone.ssh("clone-1", "cat /etc/machine-id").stdout.strip(),
        }
        assert len(ids) == 2 and "" not in ids, f"machine-ids not regenerated: {ids}"
    finally:
        clone.destroy()
        shutil.rmtree(clone.root, ignore_errors=True)


def test_unknown_machine_fails_with_remedy(tmp_path: Path) -> None:
    project = tmp_path / "twt-empty"
    project.mkdir()
    result = run_task(
        "box_export", {"project_dir": str(project), "name": "nope", "path": str(tmp_path / "x.box")}
    )
    assert result["failed"] is True
    assert "machine 'nope'" in result["msg"] and "vagrant_vm" in result["msg"]
    assert "Traceback" not in json.dumps(result)
