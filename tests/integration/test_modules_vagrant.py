"""Integration: travis.worker.vagrant_vm and vagrant_box against real Vagrant 2.3 + vagrant-lxc.

Modules run the way operators run them: ``ansible-playbook`` with the repository's ansible.cfg (the collection
is linked into .cache/collections by scripts/setup). Every step runs in ``--check --diff`` first, then for
real, then again (must report ``changed: false``), and the check-mode prediction must equal the real result.
VMs come from the lab's ``vagrant_project`` fixture (twt- project dirs and containers, destroyed afterwards).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PLAYBOOK = ROOT / ".venv" / "bin" / "ansible-playbook"
PROVISION = "echo provisioned > /etc/twt-provisioned"


def run_task(
    module: str, args: dict, tmp: Path, check: bool = False, diff: bool = False, timeout: int = 1200
) -> dict:
    """Run one travis.worker task on localhost with ansible-playbook; return its registered result."""
    tag = secrets.token_hex(3)
    out = tmp / f"result-{tag}.json"
    play = [
        {
            "name": f"twt {module}",
            "hosts": "localhost",
            "connection": "local",
            "gather_facts": False,
            "vars": {"ansible_python_interpreter": sys.executable},
            "tasks": [
                {
                    "name": f"Run travis.worker.{module}",
                    f"travis.worker.{module}": args,
                    "register": "twt_result",
                    "ignore_errors": True,
                },
                {
                    "name": "Save the result",
                    "ansible.builtin.copy": {"content": "{{ twt_result | to_json }}", "dest": str(out)},
                    "check_mode": False,
                    "diff": False,
                },
            ],
        }
    ]
    playbook = tmp / f"play-{tag}.yml"
    playbook.write_text(yaml.safe_dump(play))
    argv = [str(PLAYBOOK), "-i", "localhost,", str(playbook)]
    argv += ["--check"] if check else []
    argv += ["--diff"] if diff else []
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    proc = subprocess.run(
        argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert out.exists(), f"playbook did not produce a result:\n{proc.stdout}\n{proc.stderr}"
    result = json.loads(out.read_text())
    assert "Traceback" not in json.dumps(result), result
    return result


def ok(result: dict) -> dict:
    assert not result.get("failed"), result.get("msg") or result
    return result


def lxc_state(container: str) -> str:
    proc = subprocess.run(["lxc-info", "-n", container, "-sH"], capture_output=True, text=True, check=False)
    return proc.stdout.strip() if proc.returncode == 0 else "ABSENT"


def converge(module: str, args: dict, tmp: Path) -> tuple:
    """check+diff, real+diff, rerun. Asserts the check-mode prediction and idempotence."""
    predicted = ok(run_task(module, args, tmp, check=True, diff=True))
    real = ok(run_task(module, args, tmp, diff=True))
    rerun = ok(run_task(module, args, tmp))
    assert predicted["changed"] == real["changed"], (predicted, real)
    for key in ("changed_machines", "commands", "machines", "before", "added", "removed", "boxes"):
        if key in real:
            assert predicted[key] == real[key], (
                f"{key}: check mode predicted {predicted[key]}, got {real[key]}"
            )
    assert predicted.get("diff") == real.get("diff")
    assert rerun["changed"] is False, rerun
    return predicted, real


def test_vm_lifecycle_up_halt_provision_destroy(vagrant_project, tmp_path):
    project = vagrant_project(3, provision_script=PROVISION)
    base = {"project_dir": str(project.root), "provider": "lxc"}
    c1, c2, c3 = (project.machines[f"worker-{i}"] for i in (1, 2, 3))

    _, up = converge("vagrant_vm", dict(base, state="running", provision=False), tmp_path)
    assert up["changed"] is True and up["changed_machines"] == ["worker-1", "worker-2", "worker-3"]
    assert [m["state"] for m in up["machines"]] == ["running"] * 3
    assert up["diff"]["before"].count("not_created (lxc)") == 3
    assert [lxc_state(c) for c in (c1, c2, c3)] == ["RUNNING"] * 3

    _, halt = converge("vagrant_vm", dict(base, name="worker-1", state="halted"), tmp_path)
    assert halt["diff"] == {"before": "worker-1: running (lxc)\n", "after": "worker-1: stopped (lxc)\n"}
    assert lxc_state(c1) == "STOPPED" and lxc_state(c2) == "RUNNING"

    marker = subprocess.run(
        ["lxc-attach", "-n", c2, "--", "cat", "/etc/twt-provisioned"], capture_output=True
    )
    assert marker.returncode != 0, "provision=false must not have provisioned worker-2"
    _, prov = converge("vagrant_vm", dict(base, name="worker-2", state="provisioned"), tmp_path)
    assert prov["commands"][0][-3:] == ["provision", "worker-2", "--machine-readable"]
    marker = subprocess.run(
        ["lxc-attach", "-n", c2, "--", "cat", "/etc/twt-provisioned"], capture_output=True
    )
    assert marker.stdout.strip() == b"provisioned"

    _, gone = converge("vagrant_vm", dict(base, name="worker-3", state="absent"), tmp_path)
    assert gone["machines"] == [{"name": "worker-3", "state": "not_created", "provider": "lxc"}]
    assert lxc_state(c3) == "ABSENT"

    status = ok(run_task("vagrant_vm", dict(base, state="halted"), tmp_path, check=True))
    assert {m["name"]: m["state"] for m in status["before"]} == {
        "worker-1": "stopped",
        "worker-2": "running",
        "worker-3": "not_created",
    }
    assert status["changed_machines"] == ["worker-2"]

    unknown = run_task("vagrant_vm", dict(base, name=["worker-9"]), tmp_path)
    assert unknown["failed"] is True and unknown["error_kind"] == "unknown_machine"
    assert "worker-9" in unknown["msg"] and "worker-1" in unknown["msg"]

    _, absent = converge("vagrant_vm", dict(base, state="absent"), tmp_path)
    assert absent["changed_machines"] == ["worker-1", "worker-2"]
    assert [lxc_state(c) for c in (c1, c2, c3)] == ["ABSENT"] * 3


def test_vm_missing_box_fails_with_remedy(tmp_path):
    project = tmp_path / f"twt-nobox-{secrets.token_hex(3)}"
    project.mkdir()
    (project / "Vagrantfile").write_text(
        'Vagrant.configure("2") do |c|\n  c.vm.box = "twt-missing/box"\n'
        '  c.vm.define "worker-1" do |m|\n    m.vm.provider :lxc do |l|\n'
        f'      l.container_name = "{project.name}-w1"\n    end\n  end\nend\n'
    )
    result = run_task("vagrant_vm", {"project_dir": str(project), "provider": "lxc"}, tmp_path)
    assert result["failed"] is True
    assert result["error_kind"] == "box_not_found", result["msg"]
    assert "twt-missing/box" in result["msg"] and "vagrant_box" in result["msg"]
    assert result["rc"] == 1
    assert lxc_state(f"{project.name}-w1") == "ABSENT"


def tiny_box(path: Path, marker: str) -> str:
    """A minimal Vagrant-LXC box file (metadata.json + rootfs.tar.gz); returns its sha256."""
    work = path.parent / f"{path.stem}-work"
    (work / "rootfs" / "etc").mkdir(parents=True)
    (work / "rootfs" / "etc" / "twt-marker").write_text(marker)
    (work / "metadata.json").write_text(json.dumps({"provider": "lxc", "version": "1.0.0"}))
    with tarfile.open(work / "rootfs.tar.gz", "w:gz") as tar:
        tar.add(work / "rootfs", arcname="rootfs")
    with tarfile.open(path, "w:gz") as tar:
        tar.add(work / "metadata.json", arcname="metadata.json")
        tar.add(work / "rootfs.tar.gz", arcname="rootfs.tar.gz")
    shutil.rmtree(work)
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def twt_vagrant_home(tmp_path: Path):
    home = Path(f"/tmp/twt-vhome-{secrets.token_hex(4)}")
    home.mkdir()
    yield home
    shutil.rmtree(home, ignore_errors=True)


def test_box_add_remove_checksum_force(tmp_path, twt_vagrant_home):
    box1, box2 = tmp_path / "twt-one.box", tmp_path / "twt-two.box"
    sha1, sha2 = tiny_box(box1, "one"), tiny_box(box2, "two")
    name = f"twt-{secrets.token_hex(3)}/tiny"
    base = {"name": name, "provider": "lxc", "vagrant_home": str(twt_vagrant_home)}
    record_file = twt_vagrant_home / "boxes" / name.replace("/", "-VAGRANTSLASH-") / "0" / "lxc"
    record_file = record_file / "travis-worker-box.json"

    _, added = converge("vagrant_box", dict(base, src=str(box1), checksum=sha1), tmp_path)
    assert added["added"] == [{"name": name, "provider": "lxc", "version": "0"}]
    assert json.loads(record_file.read_text())["checksums"]["sha256"] == sha1

    mismatch = run_task("vagrant_box", dict(base, src=str(box2), checksum=sha2), tmp_path)
    assert mismatch["failed"] is True and mismatch["error_kind"] == "checksum_mismatch"
    assert name in mismatch["msg"] and "force: true" in mismatch["msg"]
    assert json.loads(record_file.read_text())["checksums"]["sha256"] == sha1  # untouched

    _, replaced = converge("vagrant_box", dict(base, src=str(box2), checksum=sha2, force=True), tmp_path)
    assert replaced["changed"] is True
    assert json.loads(record_file.read_text())["checksums"]["sha256"] == sha2
    rootfs = record_file.parent / "rootfs.tar.gz"
    with tarfile.open(rootfs) as tar:
        assert tar.extractfile("rootfs/etc/twt-marker").read() == b"two"

    _, versioned = converge("vagrant_box", dict(base, src=str(box1), version="1.2.3"), tmp_path)
    assert versioned["added"] == [{"name": name, "provider": "lxc", "version": "1.2.3"}]
    assert sorted(b["version"] for b in versioned["boxes"] if b["name"] == name) == ["0", "1.2.3"]
    record_123 = record_file.parents[2] / "1.2.3" / "lxc" / "travis-worker-box.json"
    before_123 = record_123.read_text()

    # force + checksum without version, two versions installed: v0 comes from box2, so nothing to do, and
    # the record of 1.2.3 (box1) is not touched.
    again = run_task("vagrant_box", dict(base, src=str(box2), checksum=sha2, force=True), tmp_path)
    assert again["changed"] is False and again["commands"] == [], again
    assert record_123.read_text() == before_123

    _, removed = converge("vagrant_box", dict(base, state="absent"), tmp_path)
    assert sorted(b["version"] for b in removed["removed"]) == ["0", "1.2.3"]
    assert [b for b in removed["boxes"] if b["name"] == name] == []
    assert not (twt_vagrant_home / "boxes" / name.replace("/", "-VAGRANTSLASH-")).exists()
