"""playbooks/tasks/vm_sandbox.yml through real ansible-playbook and the real `vagrant` of this host.

The VirtualBox path: this host has Vagrant 2.3.4 but no VirtualBox, so `vagrant snapshot list` in a VirtualBox
project fails for real (exit 1, "Vagrant could not detect VirtualBox!"), like any failed read on a VM host.
The play must fail there: before, the failure was ignored, the restore skipped and the recipes would
have landed on the last build's leftovers (then saved as the clean image by `snapshot save --force`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
BIN = Path(sys.executable).parent

PLAYBOOK = """
- name: The VM host's sandbox step
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Settings as tasks/settings.yml resolves them
      ansible.builtin.set_fact:
        tw_project_dir: "{{ project }}"
        tw_provider: virtualbox
        tw_user: "{{ lookup('env', 'USER') | default('root', true) }}"
        tw_user_env: {HOME: "{{ project }}", LANG: C}
    - name: The sandbox step
      ansible.builtin.include_tasks: "{{ tasks }}/vm_sandbox.yml"
      vars:
        tw_box: localhost
        tw_vm: worker-1
        tw_sandbox_action: "{{ action }}"
"""


@pytest.mark.skipif(
    shutil.which("vagrant") is None, reason="needs the vagrant package (apt-get install vagrant)"
)
def test_a_failed_snapshot_list_fails_the_play(tmp_path: Path) -> None:
    project = tmp_path / "project"
    machine = project / ".vagrant" / "machines" / "worker-1" / "virtualbox"
    machine.mkdir(parents=True)
    (machine / "id").write_text("7d1c8f5e-4b2a-4c19-9a77-3e0f2b6d9c01\n")
    (project / "Vagrantfile").write_text(
        'Vagrant.configure("2") do |config|\n  config.vm.box = "travis/worker-base"\n'
        '  config.vm.define "worker-1"\nend\n'
    )
    (tmp_path / "play.yml").write_text(PLAYBOOK)
    inventory = tmp_path / "hosts.ini"
    inventory.write_text(f"localhost ansible_connection=local ansible_python_interpreter={sys.executable}\n")
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "HOME": str(tmp_path), "LANG": "C"}
    proc = subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", str(inventory), str(tmp_path / "play.yml"),
         "-e", f"project={project}", "-e", f"tasks={ROOT / 'playbooks' / 'tasks'}", "-e", "action=restore"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    assert "List the snapshots of worker-1" in out and "Vagrant could not detect VirtualBox" in out, out[
        -3000:
    ]
    assert "Restore or save the sandbox snapshot" not in out  # stopped at the failed read
    assert "Destroy the VM" not in out  # a failed read is not "no snapshot": nothing re-created
