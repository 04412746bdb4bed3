"""Unit tests of the travis.worker.vagrant inventory plugin.

``ansible-inventory`` runs the real plugin; ``vagrant_binary`` points to a small replay script that checks
each argv against recorded outputs (tests/unit/fixtures/vagrant) and fails on anything unexpected.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from ansible_collections.travis.worker.plugins.inventory.vagrant import group_name, host_vars_from_ssh

ROOT = Path(__file__).resolve().parents[4]
FIXTURES = ROOT / "tests" / "unit" / "fixtures" / "vagrant"
ANSIBLE_INVENTORY = ROOT / ".venv" / "bin" / "ansible-inventory"

REPLAY = r"""#!{python}
import json, os, sys
table = json.load(open({table!r}))
args = sys.argv[1:]
with open({log!r}, "a") as log:
    log.write(json.dumps({{"argv": args, "env": {{k: os.environ.get(k) for k in ("LANG", "VAGRANT_CWD",
        "VAGRANT_HOME")}}}}) + "\n")
for entry in table:
    if entry["args"] == args:
        rec = json.load(open(entry["fixture"]))
        sys.stdout.write(rec["stdout"]); sys.stderr.write(rec["stderr"]); sys.exit(rec["rc"])
sys.stderr.write("replay: unexpected vagrant argv %r\n" % (args,)); sys.exit(99)
"""


@pytest.fixture
def fake_vagrant(tmp_path: Path):
    def make(table: list) -> tuple:
        table_file = tmp_path / "table.json"
        table_file.write_text(
            json.dumps([{"args": args, "fixture": str(FIXTURES / f"{name}.json")} for args, name in table])
        )
        log = tmp_path / "calls.jsonl"
        script = tmp_path / "vagrant"
        script.write_text(REPLAY.format(python=sys.executable, table=str(table_file), log=str(log)))
        script.chmod(0o755)
        return script, log

    return make


def plain(value):
    """ansible-inventory --list marks strings from inventory plugins as unsafe: {"__ansible_unsafe": v}."""
    if isinstance(value, dict) and set(value) == {"__ansible_unsafe"}:
        return value["__ansible_unsafe"]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


def run_inventory(tmp_path: Path, config: dict) -> subprocess.CompletedProcess:
    project = tmp_path / "twt-project"
    project.mkdir(exist_ok=True)
    (project / "Vagrantfile").write_text('Vagrant.configure("2") { |c| }\n')
    inv = tmp_path / "twt.vagrant.yml"
    inv.write_text(
        json.dumps(dict({"plugin": "travis.worker.vagrant", "project_dir": str(project)}, **config))
    )
    env = dict(
        os.environ,
        ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
        ANSIBLE_COLLECTIONS_PATH=str(ROOT / ".cache" / "collections"),
        ANSIBLE_INVENTORY_ENABLED="travis.worker.vagrant",
        ANSIBLE_INVENTORY_UNPARSED_FAILED="true",
    )
    return subprocess.run(
        [str(ANSIBLE_INVENTORY), "-i", str(inv), "--list"], cwd=ROOT, env=env, capture_output=True, text=True
    )


def test_lists_machines_with_ssh_details_and_groups(tmp_path, fake_vagrant):
    script, log = fake_vagrant(
        [
            (["status", "--machine-readable"], "vbox_status_mixed"),
            (["ssh-config", "worker-1"], "vbox_ssh_config_worker1"),
        ]
    )
    proc = run_inventory(tmp_path, {"vagrant_binary": str(script), "vagrant_home": str(tmp_path / "vhome")})
    assert proc.returncode == 0, proc.stderr
    inv = json.loads(proc.stdout)
    hostvars = plain(inv["_meta"]["hostvars"])
    assert sorted(hostvars) == ["worker-1", "worker-2", "worker-3", "worker-4", "worker-5"]
    w1 = hostvars["worker-1"]
    assert w1["ansible_host"] == "127.0.0.1"
    assert w1["ansible_port"] == 2222
    assert w1["ansible_user"] == "vagrant"
    assert w1["ansible_ssh_private_key_file"].endswith(".vagrant/machines/worker-1/virtualbox/private_key")
    assert "StrictHostKeyChecking=no" in w1["ansible_ssh_common_args"]
    assert w1["vagrant_state"] == "running" and w1["vagrant_provider"] == "virtualbox"
    assert "ansible_host" not in hostvars["worker-2"]
    assert hostvars["worker-5"]["vagrant_state"] == "not_created"
    assert inv["vagrant_state_running"]["hosts"] == ["worker-1"]
    assert inv["vagrant_state_poweroff"]["hosts"] == ["worker-2"]
    assert len(inv["vagrant_provider_virtualbox"]["hosts"]) == 5
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert [c["argv"] for c in calls] == [["status", "--machine-readable"], ["ssh-config", "worker-1"]]
    assert calls[0]["env"]["LANG"] == "C"
    assert calls[0]["env"]["VAGRANT_HOME"] == str(tmp_path / "vhome")
    assert calls[0]["env"]["VAGRANT_CWD"] == str(tmp_path / "twt-project")


def test_running_only_and_keyed_groups(tmp_path, fake_vagrant):
    script, _ = fake_vagrant(
        [
            (["status", "--machine-readable"], "vbox_status_mixed"),
            (["ssh-config", "worker-1"], "vbox_ssh_config_worker1"),
        ]
    )
    config = {
        "vagrant_binary": str(script),
        "running_only": True,
        "keyed_groups": [{"key": "vagrant_provider", "prefix": "by"}],
        "group_prefix": "vm_",
    }
    proc = run_inventory(tmp_path, config)
    assert proc.returncode == 0, proc.stderr
    inv = json.loads(proc.stdout)
    assert sorted(inv["_meta"]["hostvars"]) == ["worker-1"]
    assert inv["by_virtualbox"]["hosts"] == ["worker-1"]
    assert inv["vm_state_running"]["hosts"] == ["worker-1"]


def test_no_running_machine_needs_no_ssh_config(tmp_path, fake_vagrant):
    script, log = fake_vagrant([(["status", "--machine-readable"], "lxc_status_not_created")])
    proc = run_inventory(tmp_path, {"vagrant_binary": str(script)})
    assert proc.returncode == 0, proc.stderr
    inv = json.loads(proc.stdout)
    assert inv["vagrant_state_not_created"]["hosts"] == ["worker-1", "worker-2"]
    assert inv["vagrant_provider_lxc"]["hosts"] == ["worker-1", "worker-2"]
    assert len(log.read_text().splitlines()) == 1


def test_vagrant_error_is_reported_with_the_remedy(tmp_path, fake_vagrant):
    script, _ = fake_vagrant([(["status", "--machine-readable"], "lxc_status_no_vagrantfile")])
    proc = run_inventory(tmp_path, {"vagrant_binary": str(script)})
    assert proc.returncode != 0
    assert "no Vagrantfile found" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_project_dir_fails_clearly(tmp_path):
    inv = tmp_path / "twt.vagrant.yml"
    inv.write_text(json.dumps({"plugin": "travis.worker.vagrant", "project_dir": str(tmp_path / "nope")}))
    env = dict(
        os.environ,
        ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
        ANSIBLE_INVENTORY_ENABLED="travis.worker.vagrant",
        ANSIBLE_INVENTORY_UNPARSED_FAILED="true",
    )
    proc = subprocess.run(
        [str(ANSIBLE_INVENTORY), "-i", str(inv), "--list"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert proc.returncode != 0
    assert "no Vagrantfile in project_dir" in proc.stderr


def test_helpers():
    assert group_name("vagrant_", "provider", "libvirt-x") == "vagrant_provider_libvirt_x"
    assert host_vars_from_ssh({"hostname": "10.0.3.5", "port": "22", "user": "vagrant"}, "") == {
        "ansible_host": "10.0.3.5",
        "ansible_port": 22,
        "ansible_user": "vagrant",
    }


def test_recorded_lxc_project(tmp_path, fake_vagrant):
    """Real vagrant-lxc recordings: worker-1 stopped, worker-2 and worker-3 running."""
    script, _ = fake_vagrant(
        [
            (["status", "--machine-readable"], "lxc_status_after_halt"),
            (["ssh-config", "worker-2", "worker-3"], "lxc_ssh_config_3"),
        ]
    )
    proc = run_inventory(tmp_path, {"vagrant_binary": str(script)})
    assert proc.returncode == 0, proc.stderr
    inv = json.loads(proc.stdout)
    hostvars = plain(inv["_meta"]["hostvars"])
    assert hostvars["worker-2"]["ansible_host"] == "10.0.3.81"
    assert hostvars["worker-3"]["ansible_port"] == 22
    assert hostvars["worker-3"]["ansible_ssh_private_key_file"].endswith("/worker-3/lxc/private_key")
    assert "ansible_host" not in hostvars["worker-1"]
    assert inv["vagrant_state_stopped"]["hosts"] == ["worker-1"]
    assert sorted(inv["vagrant_state_running"]["hosts"]) == ["worker-2", "worker-3"]


def test_ssh_config_failure_falls_back_per_machine(tmp_path, fake_vagrant):
    """One machine not ready for SSH (recorded error) does not hide the others."""
    script, _ = fake_vagrant(
        [
            (["status", "--machine-readable"], "vbox_status_all_running"),
            (["ssh-config", "worker-1"], "vbox_ssh_config_worker1"),
            (["ssh-config", "worker-2"], "lxc_ssh_config_stopped"),
        ]
    )
    proc = run_inventory(tmp_path, {"vagrant_binary": str(script), "running_only": True})
    assert proc.returncode == 0, proc.stderr
    hostvars = plain(json.loads(proc.stdout)["_meta"]["hostvars"])
    assert hostvars["worker-1"]["ansible_port"] == 2222
    assert "ansible_host" not in hostvars["worker-2"]
    assert "no SSH details for machine 'worker-2'" in proc.stderr
    assert "not running or not reachable over SSH" in proc.stderr
