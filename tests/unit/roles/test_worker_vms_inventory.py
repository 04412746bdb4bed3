"""worker_vms: the VM hosts of *every* box of the play reach the recipe group, not only the first box's.

add_host runs once per play with the first host's variables; a fleet inventory has many boxes. This runs the
role's inventory_add.yml through real ansible-playbook with two boxes (local connection) whose `vagrant
ssh-config` details (`worker_vms_ssh`, what inventory.yml parses) are given as facts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
BIN = Path(sys.executable).parent

PLAYBOOK = """
- name: Two boxes describe their VMs
  hosts: boxes
  gather_facts: false
  tasks:
    - name: What vagrant ssh-config would have given
      ansible.builtin.set_fact:
        worker_vms_ssh: "{{ vms }}"
        worker_vms_proxy_command: "ssh -W %h:%p {{ inventory_hostname }}"
    - name: Add them
      ansible.builtin.include_role:
        name: travis.worker.worker_vms
        tasks_from: inventory_add

- name: Report the recipe group
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Dump
      ansible.builtin.copy:
        dest: "{{ out }}"
        content: >-
          {{ groups['travis_worker_vms'] | default([]) | sort
             | map('extract', hostvars) | map('dict2items')
             | map('selectattr', 'key', 'in', ['inventory_hostname', 'ansible_host', 'ansible_port',
                   'worker_vms_box_host', 'worker_vms_vm_name', 'ansible_ssh_common_args',
                   'ansible_ssh_private_key_file'])
             | map('items2dict') | list | to_json }}
        mode: "0600"
"""


def test_vms_of_every_box_are_added(tmp_path: Path) -> None:
    inv = tmp_path / "hosts.json"
    vms_a = [
        ["worker-1", "10.0.4.11", "22", "vagrant", "/k/a1"],
        ["worker-2", "10.0.4.12", "22", "vagrant", "/k/a2"],
    ]
    vms_b = [["worker-1", "10.0.4.21", "2222", "vagrant", "/k/b1"]]
    inv.write_text(
        json.dumps(
            {
                "boxes": {
                    "hosts": {
                        "box-a": {
                            "vms": vms_a,
                            "ansible_connection": "local",
                            "worker_vms_ssh_proxy": "auto",
                        },
                        "box-b": {"vms": vms_b, "ansible_connection": "ssh", "worker_vms_ssh_proxy": "auto"},
                    }
                },
                "all": {"vars": {"ansible_python_interpreter": sys.executable}},
            }
        )
    )
    (tmp_path / "play.yml").write_text(PLAYBOOK)
    out = tmp_path / "out.json"
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "HOME": str(tmp_path)}
    proc = subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", str(inv), str(tmp_path / "play.yml"), "-e", f"out={out}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    hosts = {h["inventory_hostname"]: h for h in json.loads(out.read_text())}
    assert sorted(hosts) == ["worker-1.box-a", "worker-1.box-b", "worker-2.box-a"]
    b1 = hosts["worker-1.box-b"]
    assert (b1["ansible_host"], int(b1["ansible_port"]), b1["worker_vms_box_host"]) == (
        "10.0.4.21",
        2222,
        "box-b",
    )
    assert b1["ansible_ssh_private_key_file"].endswith("/vm-keys/box-b/worker-1")
    assert "ProxyCommand=ssh -W %h:%p box-b" in b1["ansible_ssh_common_args"]  # box-b's own jump, not box-a's
    a2 = hosts["worker-2.box-a"]
    assert a2["worker_vms_vm_name"] == "worker-2" and a2["ansible_host"] == "10.0.4.12"
    assert "ProxyCommand" not in a2["ansible_ssh_common_args"]  # local connection: no jump
