"""Issue #11 section 3: with the VirtualBox provider, VirtualBox's service VBoxSVC (which launches every VM)
runs in travis-vboxsvc.service, never in a travis-worker@ unit. The worker role's units and helper are
rendered by Ansible's template module and their structure checked; the helper's READY handshake runs
against a stand-in VBoxSVC that speaks the protocol VirtualBox 7.1's server.cpp implements (write "READY"
to the --inherit-startup-pipe fd once serving) - VirtualBox itself cannot run here."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
BIN = Path(sys.executable).parent
TEMPLATES = ROOT / "roles" / "worker" / "templates"

PLAYBOOK = """
- name: Render
  hosts: localhost
  gather_facts: false
  vars_files:
    - {root}/roles/worker/defaults/main.yml
  tasks:
    - name: Render the units and the helper
      ansible.builtin.template:
        src: "{root}/roles/worker/templates/{{{{ item }}}}.j2"
        dest: "{{{{ out }}}}/{{{{ item }}}}"
        mode: "{{{{ '0755' if item == 'travis-vboxsvc' else '0644' }}}}"
      loop: [travis-worker@.service, travis-worker.target, travis-vboxsvc.service, travis-vboxsvc]
"""


def render(tmp_path: Path, *extra: str) -> Path:
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "play.yml").write_text(PLAYBOOK.format(root=ROOT))
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "HOME": str(tmp_path)}
    argv = [str(BIN / "ansible-playbook"), "-i", "localhost,", "-c", "local", str(tmp_path / "play.yml"),
            "-e", f"out={out}", "-e", f"ansible_python_interpreter={sys.executable}", *extra]  # fmt: skip
    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


def unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A systemd unit file as {section: {key: [values in order]}} (keys may repeat, as systemd allows)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def words(values: list[str]) -> list[str]:
    return [w for v in values for w in v.split()]


def test_virtualbox_units_keep_vboxsvc_and_the_vms_out_of_every_worker_unit(tmp_path: Path) -> None:
    out = render(tmp_path, "-e", "worker_vm_provider=virtualbox")
    worker, svc = unit(out / "travis-worker@.service"), unit(out / "travis-vboxsvc.service")

    # VBoxSVC has a unit of its own; the workers need it, start after it (after its READY), stop before it.
    assert "travis-vboxsvc.service" in words(worker["Unit"]["Requires"])
    assert "travis-vboxsvc.service" in words(worker["Unit"]["After"])
    assert "travis-worker.target" in words(svc["Unit"]["Before"])
    # ... and nothing ties it to a worker or to the workers' target: stopping workers never stops it.
    for key in ("PartOf", "BindsTo", "Requires", "Requisite"):
        assert not any("travis-worker" in v for v in svc["Unit"].get(key, [])), key
    assert svc["Install"]["WantedBy"] == ["multi-user.target"]

    # No worker unit starts VBoxSVC; the VBoxSVC unit runs it in the foreground through its helper.
    worker_exec = [v for k, vs in worker["Service"].items() if k.startswith("Exec") for v in vs]
    assert not any("VBoxSVC" in v or "travis-vboxsvc" in v for v in worker_exec), worker_exec
    helper = "/usr/local/libexec/travis-vboxsvc"
    assert svc["Service"]["ExecStart"] == [f"{helper} run"]
    assert svc["Service"]["ExecStartPre"] == [f"{helper} pre-start"]
    assert svc["Service"]["ExecStartPost"] == [f"{helper} wait-ready"]
    assert svc["Service"]["ExecStop"] == [f"{helper} stop-vms"]
    assert svc["Service"]["Type"] == ["exec"] and svc["Service"]["Restart"] == ["on-failure"]

    # Same user, home and /tmp as the workers: their VBoxManage calls find this VBoxSVC at
    # /tmp/.vbox-$LOGNAME-ipc/ipcd (systemd sets LOGNAME from User=) and start no VBoxSVC of their own.
    for key in ("User", "Group", "WorkingDirectory"):
        assert svc["Service"][key] == worker["Service"][key], key
    home = [e for e in worker["Service"]["Environment"] if e.startswith("HOME=")]
    assert home and home[0] in svc["Service"]["Environment"]
    for u in (worker, svc):
        assert "PrivateTmp" not in u["Service"] and "PrivateUsers" not in u["Service"]
        assert not any(
            e.startswith(("LOGNAME=", "USER=", "VBOX_IPC_SOCKETID=")) for e in u["Service"]["Environment"]
        )
    assert "vboxusers" in svc["Service"]["SupplementaryGroups"]

    # The helper execs VBoxSVC in the foreground: no --auto-shutdown (-A), --automate (-a), --daemonize (-d).
    script = (out / "travis-vboxsvc").read_text()
    [run_line] = [line for line in script.splitlines() if line.strip().startswith('exec "$vboxsvc"')]
    assert "--inherit-startup-pipe 3" in run_line
    for flag in ("--auto-shutdown", "--automate", "--daemonize", " -A", " -a", " -d"):
        assert flag not in run_line, flag
    assert "vboxsvc=/usr/lib/virtualbox/VBoxSVC" in script


def test_lxc_units_have_no_vboxsvc_dependency(tmp_path: Path) -> None:
    out = render(tmp_path, "-e", "worker_vm_provider=lxc")
    worker = unit(out / "travis-worker@.service")
    assert "travis-vboxsvc" not in (out / "travis-worker@.service").read_text()
    assert "Requires" not in worker["Unit"]


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="needs shellcheck")
def test_helper_passes_shellcheck(tmp_path: Path) -> None:
    out = render(tmp_path, "-e", "worker_vm_provider=virtualbox")
    proc = subprocess.run(
        ["shellcheck", "-s", "sh", str(out / "travis-vboxsvc")], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


STAND_IN = """#!/bin/sh
# stand-in for VBoxSVC: records its arguments, then (as server.cpp does) writes READY to the startup pipe fd
echo "$@" > {out}/args
{ready}
exec sleep 30
"""


@pytest.mark.parametrize("ready", [True, False])
def test_helper_waits_for_vboxsvc_ready(tmp_path: Path, ready: bool) -> None:
    fake = tmp_path / "VBoxSVC"
    fake.write_text(STAND_IN.format(out=tmp_path, ready="printf READY >&3; exec 3>&-" if ready else "exit 1"))
    fake.chmod(0o755)
    out = render(tmp_path, "-e", "worker_vm_provider=virtualbox", "-e", f"worker_vboxsvc_path={fake}",
                 "-e", "worker_vboxsvc_start_timeout=20", "-e", f"worker_user={os.getuid()}")  # fmt: skip
    helper = out / "travis-vboxsvc"
    runtime = tmp_path / "run"
    runtime.mkdir()
    env = {**os.environ, "RUNTIME_DIRECTORY": str(runtime)}
    subprocess.run([str(helper), "pre-start"], env=env, check=True, timeout=60)
    assert (runtime / "ready").exists()
    main = subprocess.Popen([str(helper), "run"], env=env)
    try:
        waited = subprocess.run(
            [str(helper), "wait-ready"], env=env, capture_output=True, text=True, timeout=60
        )
        if ready:
            assert waited.returncode == 0, waited.stderr
            assert main.poll() is None  # VBoxSVC keeps serving
            assert (tmp_path / "args").read_text().split() == ["--inherit-startup-pipe", "3"]
        else:
            assert waited.returncode == 1
            assert "did not report READY" in waited.stderr
        assert not (runtime / "ready").exists()
    finally:
        main.kill()
        main.wait()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_vboxsvc_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    """systemd's own parser accepts every key of the unit (the helper path points at an existing program, as
    `verify` checks that every Exec command exists)."""
    out = render(tmp_path, "-e", "worker_vm_provider=virtualbox", "-e", "worker_vboxsvc_helper=/bin/true")
    proc = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(out / "travis-vboxsvc.service")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stdout + proc.stderr
