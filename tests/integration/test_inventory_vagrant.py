"""Integration: the travis.worker.vagrant inventory plugin on a real 3-machine Vagrant-LXC project."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from test_modules_vagrant import ok, run_task

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / ".venv" / "bin"


def ansible_env() -> dict:
    return dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1")


def plain(value):
    """ansible-inventory --list marks strings from inventory plugins as unsafe: {"__ansible_unsafe": v}."""
    if isinstance(value, dict) and set(value) == {"__ansible_unsafe"}:
        return value["__ansible_unsafe"]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


def inventory_list(inv: Path) -> dict:
    proc = subprocess.run(
        [str(BIN / "ansible-inventory"), "-i", str(inv), "--list"],
        cwd=ROOT,
        env=ansible_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return plain(json.loads(proc.stdout))


def test_inventory_lists_the_vms_and_ping_reaches_them(vagrant_project, tmp_path):
    project = vagrant_project(3)
    up = ok(run_task("vagrant_vm", {"project_dir": str(project.root), "provider": "lxc"}, tmp_path))
    assert up["changed"] is True

    inv = tmp_path / "twt-workers.vagrant.yml"
    inv.write_text(f"plugin: travis.worker.vagrant\nproject_dir: {project.root}\n")
    listed = inventory_list(inv)
    hostvars = listed["_meta"]["hostvars"]
    assert sorted(hostvars) == ["worker-1", "worker-2", "worker-3"]
    for name, hv in hostvars.items():
        assert hv["ansible_host"].startswith("10.0.3."), hv
        assert hv["ansible_user"] == "vagrant"
        assert hv["ansible_port"] == 22
        assert hv["ansible_ssh_private_key_file"].endswith(f"/.vagrant/machines/{name}/lxc/private_key")
        assert hv["vagrant_state"] == "running" and hv["vagrant_provider"] == "lxc"
    assert sorted(listed["vagrant_state_running"]["hosts"]) == ["worker-1", "worker-2", "worker-3"]
    assert sorted(listed["vagrant_provider_lxc"]["hosts"]) == ["worker-1", "worker-2", "worker-3"]

    ping = subprocess.run(
        [str(BIN / "ansible"), "-i", str(inv), "all", "-m", "ansible.builtin.ping", "-o"],
        cwd=ROOT,
        env=ansible_env(),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert ping.returncode == 0, ping.stdout + ping.stderr
    assert sorted(
        line.split()[0] for line in ping.stdout.splitlines() if "SUCCESS" in line and "pong" in line
    ) == [
        "worker-1",
        "worker-2",
        "worker-3",
    ], ping.stdout

    halt = ok(
        run_task(
            "vagrant_vm", {"project_dir": str(project.root), "name": "worker-2", "state": "halted"}, tmp_path
        )
    )
    assert halt["changed"] is True
    both = inventory_list(inv)
    assert both["vagrant_state_stopped"]["hosts"] == ["worker-2"]
    assert "ansible_host" not in both["_meta"]["hostvars"]["worker-2"]
    running = tmp_path / "twt-running.vagrant.yml"
    running.write_text(f"plugin: travis.worker.vagrant\nproject_dir: {project.root}\nrunning_only: true\n")
    assert sorted(inventory_list(running)["_meta"]["hostvars"]) == ["worker-1", "worker-3"]
