"""Vagrant side of the lab: register the built box with Vagrant, and throwaway multi-machine projects."""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from travis_lab import cache
from travis_lab.boxbuild import BoxArtifact
from travis_lab.errors import LabError
from travis_lab.net import ensure_bridge

log = logging.getLogger(__name__)

BOX_NAME = "twlab/debian12"
MARKER = "twlab-box.sha256"


def vagrant_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("VAGRANT_CHECKPOINT_DISABLE", "1")
    env.setdefault("VAGRANT_DEFAULT_PROVIDER", "lxc")
    env.setdefault("VAGRANT_NO_COLOR", "1")
    return env


def vagrant_home() -> Path:
    return Path(os.environ.get("VAGRANT_HOME") or Path.home() / ".vagrant.d")


def box_dirs(name: str) -> list[Path]:
    """Provider dirs of every version of box `name` in VAGRANT_HOME (…/boxes/NAME/VERSION/lxc)."""
    base = vagrant_home() / "boxes" / name.replace("/", "-VAGRANTSLASH-")
    return sorted(base.glob("*/lxc")) if base.is_dir() else []


def registered_sha(name: str) -> str | None:
    for d in box_dirs(name):
        marker = d / MARKER
        if marker.is_file() and (d / "rootfs.tar.gz").is_file():
            return marker.read_text().strip()
    return None


def _vagrant(
    argv: list[str], cwd: Path | None = None, timeout: float = 1800
) -> subprocess.CompletedProcess[str]:
    if shutil.which("vagrant") is None:
        raise LabError(
            "vagrant",
            "vagrant is not installed",
            "apt-get install --no-install-recommends vagrant vagrant-lxc (scripts/setup)",
        )
    return subprocess.run(
        ["vagrant", *argv],
        cwd=cwd,
        env=vagrant_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def ensure_vagrant_box(art: BoxArtifact, name: str = BOX_NAME, cache_dir: Path | None = None) -> str:
    """Add the built box to Vagrant as `name`, once per box sha256 (file-locked); return `name`.

    A failed add is rolled back (`vagrant box remove`), so no half-registered box stays behind.
    """
    lock = cache.cache_root(cache_dir) / "locks" / f"vagrant-box-{name.replace('/', '_')}.lock"
    with cache.locked(lock, f"vagrant box lock {name}"):
        if registered_sha(name) == art.sha256:
            log.info("vagrant box %s already matches %s", name, art.path.name)
            return name
        t0 = time.monotonic()
        proc = _vagrant(["box", "add", "--force", "--name", name, str(art.path)])
        dirs = box_dirs(name)
        if proc.returncode != 0 or not dirs:
            _vagrant(["box", "remove", "--force", "--all", name])
            raise LabError(
                "vagrant-box-add",
                f"`vagrant box add {name} {art.path}` failed "
                f"(exit {proc.returncode}): {(proc.stdout + proc.stderr).strip()[-1500:]}",
                "rebuild the box (python -m travis_lab box build --force) and check free disk "
                f"under {vagrant_home()}",
            )
        for d in dirs:
            (d / MARKER).write_text(art.sha256 + "\n")
        log.info("vagrant box %s added from %s in %.1f s", name, art.path, time.monotonic() - t0)
        return name


VAGRANTFILE = """\
# Written by travis-lab for a throwaway test project.
Vagrant.configure("2") do |config|
  config.vm.box = {box}
  config.vm.synced_folder ".", "/vagrant", disabled: {no_sync}
{machines}end
"""

MACHINE = """\
  config.vm.define {name} do |m|
    m.vm.hostname = {name}
    m.vm.provider :lxc do |lxc|
      lxc.container_name = {container}
    end
{provision}  end
"""


def _rb(s: str) -> str:
    return json.dumps(s)  # a JSON string is a valid Ruby double-quoted literal for our inputs


def render_vagrantfile(
    box: str,
    machines: dict[str, str],
    provision_script: str | None = None,
    synced_folder: bool = False,
) -> str:
    """Vagrantfile text for `machines` ({machine: container_name}) on `box` (provider lxc)."""
    prov = f'    m.vm.provision "shell", inline: {_rb(provision_script)}\n' if provision_script else ""
    blocks = "".join(
        MACHINE.format(name=_rb(m), container=_rb(c), provision=prov) for m, c in machines.items()
    )
    return VAGRANTFILE.format(box=_rb(box), no_sync="false" if synced_folder else "true", machines=blocks)


@dataclass
class VagrantProject:
    """A Vagrant project directory with N machines on the lab box (provider lxc)."""

    root: Path
    machines: dict[str, str]  # machine name -> LXC container name
    timings: dict[str, float] = field(default_factory=dict)

    def vagrant(
        self, *args: str, check: bool = True, timeout: float = 1800
    ) -> subprocess.CompletedProcess[str]:
        proc = _vagrant(list(args), cwd=self.root, timeout=timeout)
        if check and proc.returncode != 0:
            raise LabError(
                f"vagrant {args[0]}",
                f"`vagrant {' '.join(args)}` in {self.root} exited "
                f"{proc.returncode}:\n{(proc.stdout + proc.stderr).strip()[-3000:]}",
                f"cd {self.root} && vagrant {' '.join(args)} --debug",
            )
        return proc

    def up(self, timeout: float = 1800) -> None:
        ensure_bridge()  # the box's containers attach to lxcbr0 (/etc/lxc/default.conf)
        t0 = time.monotonic()
        self.vagrant("up", "--provider=lxc", timeout=timeout)
        self.timings["up"] = round(time.monotonic() - t0, 1)
        log.info(
            "vagrant up of %d machine(s) in %s took %.1f s", len(self.machines), self.root, self.timings["up"]
        )

    def ssh(self, machine: str, cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.vagrant("ssh", machine, "-c", cmd, "--", "-o", "LogLevel=ERROR", check=check, timeout=600)

    def ssh_config(self, machine: str) -> dict[str, str]:
        out = self.vagrant("ssh-config", machine).stdout
        conf: dict[str, str] = {}
        for line in out.splitlines():
            parts = line.strip().split(None, 1)
            if len(parts) == 2:
                conf.setdefault(parts[0], parts[1].strip('"'))
        return conf

    def inventory(self, group: str = "worker_vms") -> str:
        """INI inventory for the machines (after `up`), from `vagrant ssh-config`."""
        lines = [f"[{group}]"]
        for m in self.machines:
            c = self.ssh_config(m)
            lines.append(
                f"{m} ansible_host={c['HostName']} ansible_port={c.get('Port', '22')} "
                f"ansible_user={c['User']} ansible_ssh_private_key_file={c['IdentityFile']} "
                "ansible_ssh_common_args='-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null' "
                "ansible_python_interpreter=/usr/bin/python3"
            )
        return "\n".join(lines) + "\n"

    def destroy(self) -> None:
        """`vagrant destroy -f`, then make sure each of this project's containers is gone."""
        t0 = time.monotonic()
        # The VMs are throwaway: kill and remove this project's containers directly (vagrant-lxc's own
        # shutdown + destroy takes 20-40 s per machine), then let Vagrant forget them.
        for container in self.machines.values():
            if Path("/var/lib/lxc", container).exists():
                subprocess.run(["lxc-stop", "-n", container, "-k"], capture_output=True, check=False)
                subprocess.run(["lxc-destroy", "-n", container, "-f"], capture_output=True, check=False)
        killed = time.monotonic()
        proc = self.vagrant("destroy", "-f", check=False, timeout=600)
        log.info(
            "destroy %s: containers removed in %.1f s, vagrant destroy %.1f s",
            self.root.name,
            killed - t0,
            time.monotonic() - killed,
        )
        leftovers = []
        for container in self.machines.values():
            if Path("/var/lib/lxc", container).exists():
                subprocess.run(["lxc-stop", "-n", container, "-k"], capture_output=True, check=False)
                subprocess.run(["lxc-destroy", "-n", container, "-f"], capture_output=True, check=False)
                if Path("/var/lib/lxc", container).exists():
                    leftovers.append(container)
        self.timings["destroy"] = round(time.monotonic() - t0, 1)
        if leftovers:
            raise LabError(
                "vagrant destroy",
                f"containers left after destroy in {self.root}: {leftovers} "
                f"(vagrant said: {(proc.stdout + proc.stderr).strip()[-800:]})",
                "lxc-destroy -f -n NAME for each",
            )


def make_project(
    n: int,
    box: str = BOX_NAME,
    name_prefix: str = "worker-",
    provision_script: str | None = None,
    prefix: str = "twt-",
    parent: Path | None = None,
    synced_folder: bool = False,
) -> VagrantProject:
    """A temp dir `<prefix>…` with a Vagrantfile for machines `<name_prefix>1..n`."""
    if n < 1:
        raise ValueError(f"a Vagrant project needs at least 1 machine, not {n}")
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]*", name_prefix):
        raise ValueError(f"machine name prefix {name_prefix!r}: use lowercase letters, digits and '-'")
    root = Path(tempfile.mkdtemp(prefix=f"{prefix}{secrets.token_hex(2)}-", dir=parent))
    tag = root.name.replace("_", "")[:20]
    machines = {f"{name_prefix}{i}": f"{tag}-{name_prefix}{i}" for i in range(1, n + 1)}
    (root / "Vagrantfile").write_text(render_vagrantfile(box, machines, provision_script, synced_folder))
    return VagrantProject(root=root, machines=machines)
