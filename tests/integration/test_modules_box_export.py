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


def lab_box() -> Path:
    """The lab's cached Vagrant-LXC Debian box (built once by travis_lab, then reused)."""
    boxbuild = pytest.importorskip(
        "travis_lab.boxbuild", reason="the lab package travis_lab is not installed"
    )
    return Path(boxbuild.ensure_box().path)


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


class Vagrant:
    def __init__(self, project: Path, home: Path) -> None:
        self.project = project
        self.env = {**os.environ, "VAGRANT_HOME": str(home), "VAGRANT_CHECKPOINT_DISABLE": "1", "LANG": "C"}

    def __call__(self, *args: str, check: bool = True) -> str:
        proc = subprocess.run(
            ["vagrant", *args], cwd=self.project, env=self.env, capture_output=True, text=True, timeout=900
        )
        if check and proc.returncode != 0:
            pytest.fail(f"vagrant {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc.stdout

    def state(self, machine: str) -> str:
        for line in self("status", machine, "--machine-readable").splitlines():
            parts = line.split(",")
            if len(parts) >= 4 and parts[1] == machine and parts[2] == "state":
                return parts[3]
        return "unknown"


VAGRANTFILE = """Vagrant.configure("2") do |config|
  config.vm.box = "{box}"
  config.vm.synced_folder ".", "/vagrant", disabled: true
  config.vm.define "{machine}" do |m|
    m.vm.provider :lxc do |lxc|
      lxc.container_name = "{container}"
    end
    {provision}
  end
end
"""


@pytest.fixture
def exported_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    box = lab_box()
    tag = f"twt-bx-{uuid.uuid4().hex[:8]}"
    root = Path("/tmp") / tag
    root.mkdir()
    home = root / "vagrant.d"
    projects = {name: root / name for name in ("base", "clone")}
    for project in projects.values():
        project.mkdir()
    (projects["base"] / "Vagrantfile").write_text(
        VAGRANTFILE.format(
            box="twt/debian12",
            machine="base",
            container=f"{tag}-base",
            provision='m.vm.provision "shell", inline: "echo provisioned-' + tag + ' > /opt/twt-marker"',
        )
    )
    (projects["clone"] / "Vagrantfile").write_text(
        VAGRANTFILE.format(box="twt/exported", machine="clone", container=f"{tag}-clone", provision="")
    )
    base = Vagrant(projects["base"], home)
    clone = Vagrant(projects["clone"], home)
    base("box", "add", "--name", "twt/debian12", str(box))
    try:
        yield {"tag": tag, "root": root, "home": home, "base": base, "clone": clone, "projects": projects}
    finally:
        for vagrant in (clone, base):
            vagrant("destroy", "--force", check=False)
        shutil.rmtree(root, ignore_errors=True)


def test_export_readd_and_clone_sees_marker(exported_env: dict[str, Any]) -> None:
    env = exported_env
    base, clone, tag = env["base"], env["clone"], env["tag"]
    t0 = time.monotonic()
    base("up", "--provider=lxc")
    log.info("vagrant up + provision of the base machine: %.1f s", time.monotonic() - t0)
    assert base("ssh", "base", "-c", "cat /opt/twt-marker").strip() == f"provisioned-{tag}"
    base_hostkey = base("ssh", "base", "-c", "cat /etc/ssh/ssh_host_ed25519_key.pub").split()[1]
    box_path = env["root"] / "exported.box"
    args = {
        "project_dir": str(env["projects"]["base"]),
        "name": "base",
        "path": str(box_path),
        "digest": "recipe-1",
        "vagrant_home": str(env["home"]),
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
    assert meta["source"]["machine"] == "base" and meta["source"]["id"] == f"{tag}-base"
    assert base.state("base") == "running"  # started again after the export

    t0 = time.monotonic()
    again = run_task("box_export", args)
    log.info("box_export rerun, same digest: %.1f s", time.monotonic() - t0)
    assert again["changed"] is False and again["sha256"] == done["sha256"]
    assert run_task("box_export", args, check=True)["changed"] is False

    t0 = time.monotonic()
    clone("box", "add", "--name", "twt/exported", str(box_path))
    clone("up", "--provider=lxc")
    log.info("box add + vagrant up of the clone: %.1f s", time.monotonic() - t0)
    assert clone("ssh", "clone", "-c", "cat /opt/twt-marker").strip() == f"provisioned-{tag}"
    clone_hostkey = clone("ssh", "clone", "-c", "cat /etc/ssh/ssh_host_ed25519_key.pub").split()[1]
    assert clone_hostkey != base_hostkey, "the clone kept the source machine's SSH host key"
    ids = {v("ssh", m, "-c", "cat /etc/machine-id").strip() for v, m in ((base, "base"), (clone, "clone"))}
    assert len(ids) == 2 and "" not in ids, f"machine-ids not regenerated: {ids}"


def test_unknown_machine_fails_with_remedy(tmp_path: Path) -> None:
    project = tmp_path / "twt-empty"
    project.mkdir()
    result = run_task(
        "box_export", {"project_dir": str(project), "name": "nope", "path": str(tmp_path / "x.box")}
    )
    assert result["failed"] is True
    assert "machine 'nope'" in result["msg"] and "vagrant_vm" in result["msg"]
    assert "Traceback" not in json.dumps(result)
