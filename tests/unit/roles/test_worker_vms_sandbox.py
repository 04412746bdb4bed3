"""site.yml and the `sandbox` snapshot: recipes go onto the clean snapshot and end up in it.

The worker_vms role's task files run through real ansible-playbook (local connection). `vagrant` is a stand-in
on PATH that replays recorded output (tests/unit/fixtures/vagrant_sandbox/*.json, each with its provenance)
and logs every call; VirtualBox cannot run here. worker-1 has a `sandbox` snapshot, worker-2 has none.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
BIN = Path(sys.executable).parent
RECORDINGS = ROOT / "tests" / "unit" / "fixtures" / "vagrant_sandbox"

STUB = """#!{python}
import json, os, sys
from pathlib import Path
argv = ["vagrant", *sys.argv[1:]]
with open(os.environ["TW_VAGRANT_LOG"], "a") as log:
    log.write(json.dumps(argv) + "\\n")
for path in sorted(Path(os.environ["TW_VAGRANT_RECORDINGS"]).glob("*.json")):
    rec = json.loads(path.read_text())
    if rec["argv"] == argv:
        sys.stdout.write(rec["stdout"]); sys.stderr.write(rec["stderr"]); sys.exit(rec["rc"])
sys.stderr.write(f"no recording for {{argv}}\\n"); sys.exit(97)
"""

PLAYBOOK = """
- name: Play 1 of site.yml, the box (after bringing the VMs up)
  hosts: box
  gather_facts: false
  tasks:
    - name: Restore the managed VMs that have a snapshot
      ansible.builtin.include_role:
        name: travis.worker.worker_vms
        tasks_from: sandbox
      vars:
        worker_vms_sandbox_action: restore
        worker_vms_sandbox_vms: [worker-1, worker-2]
    - name: The VMs as inventory.yml adds them
      ansible.builtin.add_host:
        name: "{{ item }}.box"
        groups: [travis_worker_vms]
        worker_vms_box_host: box
        worker_vms_vm_name: "{{ item }}"
      loop: [worker-1, worker-2]

- name: Play 2 of site.yml, the recipes (worker-2's failed)
  hosts: travis_worker_vms
  gather_facts: false
  tasks:
    - name: Mark the recipes as applied
      ansible.builtin.set_fact:
        worker_vms_recipes_applied: true
      when: worker_vms_vm_name == 'worker-1'

- name: Play 3 of site.yml, the box
  hosts: box
  gather_facts: false
  tasks:
    - name: Workers
      ansible.builtin.include_role:
        name: travis.worker.worker_vms
        tasks_from: workers
      vars:
        worker_vms_start_workers: false
"""


def run_play(
    tmp_path: Path, inventory: str, playbook: str, *extra: str
) -> tuple[subprocess.CompletedProcess[str], list]:
    """Run `playbook` against `inventory` with the recording-backed `vagrant` stub first on PATH; return the
    finished process and the argv (without the program) of every vagrant call, in order."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    stub = bindir / "vagrant"
    stub.write_text(STUB.format(python=sys.executable))
    stub.chmod(0o755)
    calls = tmp_path / "calls.jsonl"
    inv = tmp_path / "hosts.ini"
    inv.write_text(inventory)
    (tmp_path / "play.yml").write_text(playbook)
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
        "HOME": str(tmp_path),
        "PATH": f"{bindir}:{os.environ['PATH']}",
        "TW_VAGRANT_LOG": str(calls),
        "TW_VAGRANT_RECORDINGS": str(RECORDINGS),
    }
    proc = subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", str(inv), str(tmp_path / "play.yml"), *extra],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    argvs = [json.loads(line)[1:] for line in calls.read_text().splitlines()] if calls.exists() else []
    return proc, argvs


def test_site_restores_before_and_retakes_after_the_recipes(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    inventory = (
        f"box ansible_connection=local ansible_python_interpreter={sys.executable} ansible_become=false "
        f"worker_vms_provider=virtualbox worker_vms_project_dir={project} worker_vms_count=2\n"
    )
    proc, argvs = run_play(tmp_path, inventory, PLAYBOOK)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert argvs == [
        # play 1: back to the clean snapshot where there is one; worker-2 (none) is provisioned as it is
        ["snapshot", "list", "worker-1"],
        ["snapshot", "list", "worker-2"],
        ["snapshot", "restore", "--no-provision", "worker-1", "sandbox"],
        # play 3: the snapshot retaken with the recipes, only for the VM whose recipes were applied
        ["snapshot", "list", "worker-1"],
        ["snapshot", "save", "--force", "worker-1", "sandbox"],
    ]


VM_SANDBOX = """
- name: reprovision in_place's restore step on a VM host
  hosts: worker-2@box
  gather_facts: false
  tasks:
    - name: The box's settings
      ansible.builtin.set_fact:
        tw_project_dir: "{{ project }}"
        tw_provider: virtualbox
        tw_user: root
        tw_user_env: {HOME: "{{ project }}", LANG: C}
      delegate_to: box
      delegate_facts: true
    - name: Restore
      ansible.builtin.include_tasks: "{{ root }}/playbooks/tasks/vm_sandbox.yml"
      vars:
        tw_box: box
        tw_vm: worker-2
        tw_sandbox_action: restore
"""


def test_restore_without_a_snapshot_recreates_the_vm_from_its_box(tmp_path: Path) -> None:
    """worker-2 has no `sandbox`: it is re-created from its box, not provisioned (and saved) as it is."""
    project = tmp_path / "project"
    project.mkdir()
    python = sys.executable
    inventory = "".join(
        f"{name} ansible_connection=local ansible_become=false ansible_python_interpreter={python}\n"
        for name in ("box", "worker-2@box")
    )
    proc, argvs = run_play(tmp_path, inventory, VM_SANDBOX, "-e", f"project={project}", "-e", f"root={ROOT}")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "has no `sandbox` snapshot to restore: re-creating it from its box" in " ".join(
        proc.stdout.split()
    )
    assert argvs == [
        ["snapshot", "list", "worker-2"],
        ["destroy", "-f", "worker-2"],
        ["up", "worker-2", "--provider=virtualbox"],
    ]


def test_sandbox_recordings_carry_their_provenance() -> None:
    names = sorted(RECORDINGS.glob("*.json"))
    assert names
    for path in names:
        provenance = json.loads(path.read_text()).get("provenance", {})
        assert all(provenance.get(key) for key in ("program", "version", "source")), path.name
