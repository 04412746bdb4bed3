"""playbooks/tasks/prune_boxes.yml removes a pruned box version's linked-clone master VM, and only then.

Real ansible-playbook and the real `vagrant` 2.3.4 of this host: three versions of a VirtualBox box are added
from a local catalog (box add/list/remove need no VirtualBox).
Vagrant's import_master.rb would have written each version's `master_id`; the test writes them,
and a Vagrant machine index entry that still uses version 2.
VirtualBox cannot run here: `VBoxManage` is a stand-in that logs its calls and answers with the recorded
`unregistervm --delete` output (tests/unit/fixtures/vboxmanage_prune, with its provenance).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
BIN = Path(sys.executable).parent
RECORDING = ROOT / "tests" / "unit" / "fixtures" / "vboxmanage_prune" / "unregistervm_delete.json"
BOX = "travis/worker-base"
BOX_DIR = "travis-VAGRANTSLASH-worker-base"
MASTERS = {"1": "0b7e2f4c-1111-4c2e-9d7a-5e3c2b1a0f11", "2": "0b7e2f4c-2222-4c2e-9d7a-5e3c2b1a0f22"}

STUB = """#!{python}
import json, os, sys
with open(os.environ["TW_VBOX_LOG"], "a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\\n")
rec = json.load(open(os.environ["TW_VBOX_RECORDING"]))
if sys.argv[1:2] == ["unregistervm"] and sys.argv[3:] == ["--delete"]:
    sys.stdout.write(rec["stdout"]); sys.stderr.write(rec["stderr"]); sys.exit(rec["rc"])
sys.exit(97)
"""

PLAYBOOK = """
- name: Prune on a box
  hosts: box
  gather_facts: false
  tasks:
    - name: Settings
      ansible.builtin.include_tasks: "{{ root }}/playbooks/tasks/settings.yml"
    - name: Prune
      ansible.builtin.include_tasks: "{{ root }}/playbooks/tasks/prune_boxes.yml"
      vars:
        tw_recipe_digest: x
"""


@pytest.mark.skipif(
    shutil.which("vagrant") is None, reason="needs the vagrant package (apt-get install vagrant)"
)
def test_prune_removes_the_master_vm_of_a_removed_version_only(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    src = tmp_path / "src"
    src.mkdir()
    (src / "metadata.json").write_text('{"provider": "virtualbox"}')
    (src / "box.ovf").write_text("not a real VM\n")
    with tarfile.open(tmp_path / "vb.box", "w:gz") as tar:
        for name in ("metadata.json", "box.ovf"):
            tar.add(src / name, arcname=name)
    versions = [
        {"version": v, "providers": [{"name": "virtualbox", "url": f"file://{tmp_path}/vb.box"}]}
        for v in "123"
    ]
    (tmp_path / "catalog.json").write_text(json.dumps({"name": BOX, "versions": versions}))
    env = {**os.environ, "HOME": str(home), "LANG": "C"}
    for version in "123":
        subprocess.run(
            ["vagrant", "box", "add", "--box-version", version, "--provider", "virtualbox",
             f"file://{tmp_path}/catalog.json"],
            env=env, check=True, capture_output=True, timeout=180,
        )  # fmt: skip
    boxes = home / ".vagrant.d" / "boxes" / BOX_DIR
    for version, uuid in MASTERS.items():
        (boxes / version / "virtualbox" / "master_id").write_text(uuid)
    index = home / ".vagrant.d" / "data" / "machine-index"
    index.mkdir(parents=True, exist_ok=True)
    entry = {"name": "default", "provider": "virtualbox", "vagrantfile_path": str(tmp_path / "other"),
             "extra_data": {"box": {"name": BOX, "provider": "virtualbox", "version": "2"}}}  # fmt: skip
    (index / "index").write_text(json.dumps({"version": 1, "machines": {"a1b2": entry}}))

    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "VBoxManage").write_text(STUB.format(python=sys.executable))
    (bindir / "VBoxManage").chmod(0o755)
    calls = tmp_path / "vbox-calls.jsonl"
    project = tmp_path / "project"
    project.mkdir()
    inv = tmp_path / "hosts.ini"
    inv.write_text(
        f"box ansible_connection=local ansible_python_interpreter={sys.executable} ansible_become=false "
        f"worker_vms_provider=virtualbox worker_vms_count=0 box_user_home={home} "
        f"worker_vms_project_dir={project} "
        f"playbooks_state_dir={tmp_path / 'state'} reprovision_keep=1\n"
    )
    (tmp_path / "play.yml").write_text(PLAYBOOK)
    (tmp_path / "files").symlink_to(ROOT / "playbooks" / "files")  # as for a play in playbooks/
    proc = subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", str(inv), str(tmp_path / "play.yml"), "-e", f"root={ROOT}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**env, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "PATH": f"{bindir}:{os.environ['PATH']}",
             "TW_VBOX_LOG": str(calls), "TW_VBOX_RECORDING": str(RECORDING)},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    # `vagrant box remove` deletes <version>/virtualbox (and may leave the empty <version> directory)
    assert sorted(p.parent.name for p in boxes.glob("*/virtualbox")) == ["2", "3"], proc.stdout[
        -6000:
    ]  # 2: a machine still uses it
    assert [json.loads(line) for line in calls.read_text().splitlines()] == [
        ["unregistervm", MASTERS["1"], "--delete"]
    ]


def test_prune_recording_carries_its_provenance() -> None:
    provenance = json.loads(RECORDING.read_text())["provenance"]
    assert all(provenance.get(key) for key in ("program", "version", "source"))
