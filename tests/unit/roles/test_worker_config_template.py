"""The worker role's worker.<env>.yml, rendered by Ansible's template module from the role's defaults and
vars, is read by the runner's own config loader: metrics are off by default and turned on by the role."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from travis_worker.config import load_config

ROOT = Path(__file__).resolve().parents[3]
BIN = Path(sys.executable).parent

PLAYBOOK = """
- name: Render
  hosts: localhost
  gather_facts: false
  vars_files:
    - {root}/roles/worker/defaults/main.yml
    - {root}/roles/worker/vars/main.yml
  tasks:
    - name: Environment file
      ansible.builtin.template:
        src: {root}/roles/worker/templates/worker.env.yml.j2
        dest: "{{{{ out }}}}/worker.production.yml"
        mode: "0644"
"""


def render(tmp_path: Path, **extra: object) -> Path:
    out = tmp_path / "out"
    out.mkdir(parents=True)
    (tmp_path / "play.yml").write_text(PLAYBOOK.format(root=ROOT))
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "HOME": str(tmp_path)}
    variables = {"out": str(out), "ansible_python_interpreter": sys.executable}
    variables["travis_worker_vm_provider"] = "lxc"
    argv = [str(BIN / "ansible-playbook"), "-i", "localhost,", "-c", "local", str(tmp_path / "play.yml"),
            "-e", json.dumps({**variables, **extra})]  # fmt: skip
    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out / "worker.production.yml"


def test_metrics_off_by_default(tmp_path: Path) -> None:
    cfg = load_config(str(render(tmp_path)), {"VM": "worker-1"})
    assert cfg["metrics.port"] is None
    assert cfg["metrics.textfile"] is None


def test_metrics_turned_on_by_the_role(tmp_path: Path) -> None:
    path = render(
        tmp_path,
        worker_metrics_port=9150,
        worker_metrics_address="127.0.0.1",
        worker_metrics_textfile="/var/lib/node_exporter/travis-worker-{vm}.prom",
        worker_vm_count=2,
    )
    cfg = load_config(str(path), {"VM": "worker-2"})
    assert cfg["metrics.port"] == 9150
    assert cfg["metrics.address"] == "127.0.0.1"
    assert cfg["metrics.textfile"] == "/var/lib/node_exporter/travis-worker-{vm}.prom"
    assert cfg["vms.count"] == 2


def test_image_store_and_box_follow_the_worker_vms_role(tmp_path: Path) -> None:
    """Issue #13: the runner follows the published images of the worker_vms role's box in its image store."""
    cfg = load_config(str(render(tmp_path / "default")), {"VM": "worker-1"})
    assert cfg["vms.image_store"] == "/var/lib/travis-worker/images"
    assert cfg["vms.box"] is None  # no box known: the VMs keep their own snapshot
    path = render(
        tmp_path / "set", worker_vms_box_name="twlab/debian12", worker_vms_image_store="/srv/images"
    )
    cfg = load_config(str(path), {"VM": "worker-1"})
    assert (cfg["vms.box"], cfg["vms.image_store"]) == ("twlab/debian12", "/srv/images")
