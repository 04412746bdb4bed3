"""The Vagrantfiles the collection writes are rendered by Ansible's template module and checked by the real
`vagrant validate` (which loads vagrant-lxc and refuses unknown provider settings), for every provider the
host's Vagrant can validate."""

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
- name: Render
  hosts: localhost
  gather_facts: false
  vars_files:
    - {root}/roles/worker_vms/defaults/main.yml
  tasks:
    - name: Worker VMs
      ansible.builtin.template:
        src: {root}/roles/worker_vms/templates/Vagrantfile.j2
        dest: "{{{{ out }}}}/workers/Vagrantfile"
        mode: "0644"
    - name: Base VM
      ansible.builtin.template:
        src: {root}/playbooks/templates/base.Vagrantfile.j2
        dest: "{{{{ out }}}}/base/Vagrantfile"
        mode: "0644"
"""


def render(tmp_path: Path, *extra: str) -> Path:
    out = tmp_path / "out"
    (out / "workers").mkdir(parents=True)
    (out / "base").mkdir()
    (tmp_path / "play.yml").write_text(PLAYBOOK.format(root=ROOT))
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "HOME": str(tmp_path)}
    argv = [str(BIN / "ansible-playbook"), "-i", "localhost,", "-c", "local", str(tmp_path / "play.yml"),
            "-e", f"out={out}", "-e", f"ansible_python_interpreter={sys.executable}",
            "-e", '{"__worker_vms_names": ["worker-1", "worker-2"]}', "-e", "worker_vms_count=2",
            "-e", "tw_box_name=travis/worker-base", "-e", "tw_name_prefix=travis-", *extra]  # fmt: skip
    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


def validate(project: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "VAGRANT_HOME": str(tmp_path / "vagrant.d"), "VAGRANT_CHECKPOINT_DISABLE": "1"}
    return subprocess.run(
        ["vagrant", "validate"], cwd=project, env=env, capture_output=True, text=True, timeout=120
    )


pytestmark = pytest.mark.skipif(shutil.which("vagrant") is None, reason="needs vagrant (scripts/setup)")


def test_lxc_vagrantfiles_are_valid_and_wait_two_minutes_for_an_address(tmp_path: Path) -> None:
    out = render(tmp_path, "-e", "worker_vms_provider=lxc", "-e", "tw_provider=lxc")
    for project in ("workers", "base"):
        text = (out / project / "Vagrantfile").read_text()
        assert "lxc.fetch_ip_tries = 40" in text, text
        proc = validate(out / project, tmp_path)
        assert proc.returncode == 0, f"{project}: {proc.stdout}{proc.stderr}"
    workers = (out / "workers" / "Vagrantfile").read_text()
    assert 'config.vm.define "worker-1"' in workers and 'config.vm.define "worker-2"' in workers


def test_the_setting_can_be_changed_and_a_wrong_key_is_caught(tmp_path: Path) -> None:
    out = render(
        tmp_path,
        "-e",
        "worker_vms_provider=lxc",
        "-e",
        "tw_provider=lxc",
        "-e",
        "worker_vms_lxc_fetch_ip_tries=5",
    )
    vagrantfile = out / "workers" / "Vagrantfile"
    assert "lxc.fetch_ip_tries = 5" in vagrantfile.read_text()
    # The check is real: vagrant-lxc refuses a setting it does not know, naming it.
    vagrantfile.write_text(vagrantfile.read_text().replace("fetch_ip_tries", "fetch_ip_tryes"))
    proc = validate(out / "workers", tmp_path)
    assert proc.returncode != 0 and "fetch_ip_tryes" in proc.stdout + proc.stderr
