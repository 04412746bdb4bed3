"""Only the providers that run end to end are offered (issue #11 section 5): virtualbox (production) and lxc
(the lab). libvirt had a Vagrantfile block and argument-spec choices but never ran with these roles, so a box
set to it is refused at the start by each role's argument spec, naming the variable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
BIN = Path(sys.executable).parent

PLAY = """
- name: Provider check
  hosts: localhost
  gather_facts: false
  tasks:
    - name: The role with the provider under test
      ansible.builtin.include_role:
        name: travis.worker.{role}
      vars:
        {var}: "{provider}"
"""


def run_role(tmp_path: Path, role: str, var: str, provider: str) -> subprocess.CompletedProcess[str]:
    play = tmp_path / "play.yml"
    play.write_text(PLAY.format(role=role, var=var, provider=provider))
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "HOME": str(tmp_path)}
    argv = [str(BIN / "ansible-playbook"), "-i", "localhost,", "-c", "local", str(play),
            "-e", f"ansible_python_interpreter={sys.executable}"]  # fmt: skip
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    ("role", "var"),
    [("worker_vms", "worker_vms_provider"), ("lxc", "lxc_provider"), ("worker", "worker_vm_provider")],
)
def test_libvirt_is_refused_at_the_start_naming_the_variable(tmp_path: Path, role: str, var: str) -> None:
    proc = run_role(tmp_path, role, var, "libvirt")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "Validating arguments against arg spec 'main'" in out, out
    assert f"value of {var} must be one of: virtualbox, lxc" in out and "got: libvirt" in out, out


def test_the_templates_have_no_libvirt_block() -> None:
    for template in ("roles/worker_vms/templates/Vagrantfile.j2", "playbooks/templates/base.Vagrantfile.j2"):
        assert "libvirt" not in (ROOT / template).read_text(), template
