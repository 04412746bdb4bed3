"""One home for the worker user: the roles (box, worker, worker_vms, the unit) and settings.yml agree.

With a non-default box_user and no box_user_home, the roles used /home/travis while settings.yml used
/home/<user>, so Vagrant (boxes under ~/.vagrant.d) and VirtualBox (registrations per user) looked in
different homes depending on who ran them.
Real ansible-playbook: the roles' defaults files are loaded on one host, the playbooks' settings.yml runs
on another (as reprovision.yml runs it, without the roles).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
BIN = Path(sys.executable).parent

PLAYBOOK = """
- name: The roles' view
  hosts: roles
  gather_facts: false
  tasks:
    - name: Load the role defaults and vars
      ansible.builtin.include_vars: "{{ root }}/roles/{{ item }}"
      loop:
        - box/defaults/main.yml
        - worker/defaults/main.yml
        - worker_vms/defaults/main.yml
        - worker_vms/vars/main.yml
    - name: Render the unit
      ansible.builtin.set_fact:
        unit: "{{ lookup('ansible.builtin.template', unit_template) }}"
      vars:
        unit_template: "{{ root }}/roles/worker/templates/travis-worker@.service.j2"
        worker_venv: /opt/travis-worker
        worker_config_dir: /etc/travis-worker
        worker_environment: production
    - name: Dump
      ansible.builtin.copy:
        dest: "{{ out }}/roles.json"
        mode: "0600"
        content: >-
          {{ {'box_user_home': box_user_home, 'worker_user_home': worker_user_home,
              'worker_vms_project_dir': worker_vms_project_dir,
              'worker_vm_project_dir': worker_vm_project_dir,
              'become_home': __worker_vms_become_user_vars.HOME,
              'unit_home': unit | regex_findall('Environment=HOME=(.*)') | first} | to_json }}

- name: The playbooks' view
  hosts: playbooks
  gather_facts: false
  tasks:
    - name: Settings
      ansible.builtin.include_tasks: "{{ root }}/playbooks/tasks/settings.yml"
    - name: Dump
      ansible.builtin.copy:
        dest: "{{ out }}/playbooks.json"
        mode: "0600"
        content: "{{ {'home': tw_user_env.HOME, 'project_dir': tw_project_dir, 'user': tw_user} | to_json }}"
"""


@pytest.mark.parametrize(
    ("extra", "home"),
    [
        ({"box_user": "ci"}, "/home/ci"),
        ({"box_user": "ci", "box_user_home": "/srv/ci"}, "/srv/ci"),
        ({}, "/home/travis"),
    ],
)
def test_roles_and_playbooks_use_the_same_home(tmp_path: Path, extra: dict, home: str) -> None:
    inv = tmp_path / "hosts.ini"
    inv.write_text(
        "".join(
            f"{name} ansible_connection=local ansible_python_interpreter={sys.executable}\n"
            for name in ("roles", "playbooks")
        )
    )
    (tmp_path / "play.yml").write_text(PLAYBOOK)
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "HOME": str(tmp_path)}
    extra_vars = json.dumps({**extra, "root": str(ROOT), "out": str(tmp_path)})
    proc = subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", str(inv), str(tmp_path / "play.yml"), "-e", extra_vars],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    roles = json.loads((tmp_path / "roles.json").read_text())
    playbooks = json.loads((tmp_path / "playbooks.json").read_text())
    assert roles == {
        "box_user_home": home,
        "worker_user_home": home,
        "worker_vms_project_dir": f"{home}/worker-vms",
        "worker_vm_project_dir": f"{home}/worker-vms",
        "become_home": home,
        "unit_home": home,
    }
    assert (playbooks["home"], playbooks["project_dir"]) == (home, f"{home}/worker-vms")
