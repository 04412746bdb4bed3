"""LXC "worker box" containers made from the cached box rootfs: systemd, sshd, nesting-ready.

A container is created by unpacking the rootfs tarball into /var/lib/lxc/NAME/rootfs and writing
its config ourselves (seconds, no template), then started; we wait for its DHCP address and sshd.
Every container is recorded in the lab state before anything is written, and teardown refuses
names the lab did not create or that lack a lab prefix.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import secrets
import shlex
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from travis_lab import net
from travis_lab.errors import LabError
from travis_lab.sshkey import SSH_OPTS, lab_keypair, ssh_argv
from travis_lab.state import State, check_name
from travis_lab.steps import run

log = logging.getLogger(__name__)

LXC_PATH = Path("/var/lib/lxc")
HOST_CA_DIR = Path("/usr/local/share/ca-certificates")  # the host's extra CAs: an egress proxy's, a company's
INNER_SUBNET = "10.0.4.0/24"

CONFIG = """\
# Written by travis-lab ({name}): a worker box container that can run nested LXC (Vagrant-LXC).
lxc.include = /usr/share/lxc/config/common.conf
lxc.tty.dir =
lxc.cgroup.devices.allow = c 10:200 rwm
lxc.include = /usr/share/lxc/config/nesting.conf
lxc.arch = {arch}
lxc.rootfs.path = dir:{rootfs}
lxc.uts.name = {name}
lxc.net.0.type = veth
lxc.net.0.link = {bridge}
lxc.net.0.flags = up
lxc.net.0.hwaddr = {mac}
lxc.apparmor.profile = unconfined
lxc.mount.auto =
lxc.mount.auto = cgroup:rw proc:rw sys:mixed
"""


def _data(name: str) -> str:
    return resources.files("travis_lab").joinpath(f"data/{name}").read_text()


def unique_name(prefix: str = "twlab-") -> str:
    name = f"{prefix}box-{secrets.token_hex(3)}"
    check_name(name, prefix)
    return name


@dataclass
class BoxContainer:
    """A running worker box container reachable as root over SSH with the lab key."""

    name: str
    ip: str
    ssh_key: Path
    lxc_path: Path = LXC_PATH
    cache_dir: Path | None = field(default=None, repr=False)

    def run(
        self, cmd: str, check: bool = True, timeout: float | None = 600
    ) -> subprocess.CompletedProcess[str]:
        """Run a shell command inside via lxc-attach (as root, clean env)."""
        argv = [
            "lxc-attach",
            "-n",
            self.name,
            "-P",
            str(self.lxc_path),
            "--clear-env",
            "--set-var",
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "--set-var",
            "DEBIAN_FRONTEND=noninteractive",
            "--",
            "/bin/sh",
            "-c",
            cmd,
        ]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        if check and proc.returncode != 0:
            raise LabError(
                f"run in {self.name}",
                f"`{cmd}` exited {proc.returncode}:\n{(proc.stdout + proc.stderr).strip()[-3000:]}",
                f"inspect with `lxc-attach -n {self.name}`",
            )
        return proc

    def ssh_command(self) -> list[str]:
        return ssh_argv(self.ssh_key, "root", self.ip)

    def ssh(
        self, cmd: str, check: bool = True, timeout: float | None = 600
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [*self.ssh_command(), cmd], capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and proc.returncode != 0:
            raise LabError(
                f"ssh {self.name}",
                f"`{cmd}` exited {proc.returncode}: {proc.stderr.strip()[-2000:]}",
                f"try `{shlex.join(self.ssh_command())}`",
            )
        return proc

    def inventory(self, fmt: str = "ini", group: str = "worker_boxes") -> str:
        """An Ansible inventory (INI or YAML) with this container in `group`."""
        common = " ".join(SSH_OPTS)
        hostvars = {
            "ansible_host": self.ip,
            "ansible_user": "root",
            "ansible_ssh_private_key_file": str(self.ssh_key),
            "ansible_ssh_common_args": common,
            "ansible_python_interpreter": "/usr/bin/python3",
        }
        if fmt == "ini":
            line = " ".join(f"{k}={shlex.quote(v)}" for k, v in hostvars.items())
            return f"[{group}]\n{self.name} {line}\n"
        if fmt == "yaml":
            import yaml

            return yaml.safe_dump(
                {"all": {"children": {group: {"hosts": {self.name: hostvars}}}}}, sort_keys=False
            )
        raise ValueError(f"inventory format must be 'ini' or 'yaml', not {fmt!r}")

    def trust_host_cas(self, source: Path = HOST_CA_DIR) -> list[str]:
        """Give this container the host's extra CA certificates, for apt and pip: copied into its
        /usr/local/share/ca-certificates, `update-ca-certificates` run, pip told to use the system bundle.
        Without them a box behind an intercepting proxy cannot reach PyPI or the Debian mirror. Returns the
        certificate names (none: nothing to do)."""
        certs = sorted(source.glob("*.crt")) if source.is_dir() else []
        if not certs:
            return []
        rootfs = self.lxc_path / self.name / "rootfs"
        target = rootfs / "usr/local/share/ca-certificates"
        target.mkdir(parents=True, exist_ok=True)
        for cert in certs:
            (target / cert.name).write_bytes(cert.read_bytes())
        pip_conf = rootfs / "etc/pip.conf"
        if "cert" not in (pip_conf.read_text() if pip_conf.is_file() else ""):
            with pip_conf.open("a", encoding="utf-8") as fh:
                fh.write("[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n")
        self.run("update-ca-certificates >/dev/null")
        return [c.name for c in certs]

    def destroy(self) -> None:
        destroy_container(self.name, cache_dir=self.cache_dir, lxc_path=self.lxc_path)


def _bridge_network(bridge: str) -> ipaddress.IPv4Network | None:
    out = subprocess.run(
        ["ip", "-4", "-o", "addr", "show", "dev", bridge], capture_output=True, text=True, check=False
    ).stdout
    for word in out.split():
        if "/" in word and word[0].isdigit():
            return ipaddress.ip_interface(word).network
    return None


def container_ips(name: str, lxc_path: Path = LXC_PATH) -> list[str]:
    proc = subprocess.run(
        ["lxc-info", "-n", name, "-P", str(lxc_path), "-iH"], capture_output=True, text=True, check=False
    )
    return [w for w in proc.stdout.split() if ":" not in w]


def container_state(name: str, lxc_path: Path = LXC_PATH) -> str:
    proc = subprocess.run(
        ["lxc-info", "-n", name, "-P", str(lxc_path), "-sH"], capture_output=True, text=True, check=False
    )
    return proc.stdout.strip() or "ABSENT"


def bridge_ip(name: str, bridge: str = net.BRIDGE, lxc_path: Path = LXC_PATH) -> str | None:
    """The container's address on the host bridge (not its inner lxcbr0), or None."""
    network = _bridge_network(bridge)
    for ip in container_ips(name, lxc_path):
        if network is None or ipaddress.ip_address(ip) in network:
            return ip
    return None


def _wait_ip(name: str, bridge: str, lxc_path: Path, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ip = bridge_ip(name, bridge, lxc_path)
        if ip:
            return ip
        if container_state(name, lxc_path) not in ("RUNNING", "STARTING"):
            break
        time.sleep(0.5)
    raise LabError(
        "container-ip",
        f"{name} got no DHCP address on {bridge} within {timeout:.0f} s "
        f"(state {container_state(name, lxc_path)})",
        f"check the bridge's dnsmasq (`ps aux | grep dnsmasq`, /usr/libexec/lxc/lxc-net restart) and "
        f"`lxc-attach -n {name} -- networkctl status eth0`",
    )


def _wait_ssh(name: str, ip: str, key: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((ip, 22), timeout=2):
                pass
        except OSError as exc:
            last = str(exc)
            time.sleep(0.5)
            continue
        proc = subprocess.run(
            [*ssh_argv(key, "root", ip), "true"], capture_output=True, text=True, check=False
        )
        if proc.returncode == 0:
            return
        last = proc.stderr.strip()
        time.sleep(0.5)
    raise LabError(
        "container-ssh",
        f"sshd in {name} ({ip}) not reachable within {timeout:.0f} s: {last}",
        f"`lxc-attach -n {name} -- systemctl status ssh twlab-ssh-hostkeys`",
    )


def _seed_rootfs(rootfs: Path, name: str, pubkey: str) -> None:
    """Per-container files written before first boot: hostname, root's key, nesting fixes."""
    (rootfs / "etc/hostname").write_text(name + "\n")
    (rootfs / "etc/hosts").write_text(
        f"127.0.0.1 localhost\n127.0.1.1 {name}\n::1 localhost ip6-localhost ip6-loopback\n"
    )
    ssh = rootfs / "root/.ssh"
    ssh.mkdir(mode=0o700, parents=True, exist_ok=True)
    (ssh / "authorized_keys").write_text(pubkey)
    os.chmod(ssh / "authorized_keys", 0o600)
    fix = rootfs / "usr/local/sbin/twlab-cgroup-fix"
    fix.parent.mkdir(parents=True, exist_ok=True)
    fix.write_text(_data("twlab-cgroup-fix"))
    fix.chmod(0o755)
    units = rootfs / "etc/systemd/system"
    (units / "twlab-cgroup-fix.service").write_text(_data("twlab-cgroup-fix.service"))
    wants = units / "multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    link = wants / "twlab-cgroup-fix.service"
    if not link.is_symlink():
        link.symlink_to("/etc/systemd/system/twlab-cgroup-fix.service")
    dropin = units / "lxc-net.service.d"
    dropin.mkdir(parents=True, exist_ok=True)
    (dropin / "twlab-nested.conf").write_text(_data("lxc-net-nested.conf"))
    (rootfs / "etc/default").mkdir(parents=True, exist_ok=True)
    (rootfs / "etc/default/lxc-net").write_text(_data("lxc-net.default"))
    (rootfs / "etc/apt/apt.conf.d/90twlab-confold").write_text(_data("apt-confold.conf"))


def _claim(name: str, lxc_path: Path, cache_dir: Path | None, **info: object) -> Path:
    """Refuse a name that exists, record it in the lab state before anything is written (so a failed
    create is still cleaned up), and return the lab's SSH key."""
    base = lxc_path / name
    if base.exists() or container_state(name, lxc_path) != "ABSENT":
        raise LabError(
            "container",
            f"container {name} already exists at {base}",
            f"pick another name, or `python -m travis_lab down {name}` if the lab made it",
        )
    key = lab_keypair(cache_dir)
    State(cache_dir).add(name, lxc_path=str(lxc_path), **info)
    return key


def _start_new(name: str, arch: str, bridge: str, lxc_path: Path, key: Path, timeout: float) -> str:
    """Write the config of the new container `name` (its rootfs in place, a fresh MAC), start it, wait for its
    DHCP address and sshd; return the address."""
    base = lxc_path / name
    mac = "00:16:3e:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(3))
    (base / "config").write_text(
        CONFIG.format(name=name, arch=arch, rootfs=base / "rootfs", bridge=bridge, mac=mac)
    )
    run(
        ["lxc-start", "-n", name, "-P", str(lxc_path), "-d", "-o", str(base / "start.log"), "-l", "INFO"],
        "container-start",
        f"see {base / 'start.log'}",
    )
    ip = _wait_ip(name, bridge, lxc_path, timeout)
    _wait_ssh(name, ip, key, timeout)
    return ip


def _remove_failed(name: str, what: str, cache_dir: Path | None, lxc_path: Path) -> None:
    """Remove the half-made container `name` after a failure, keeping the original error the caller raises."""
    log.error("%s: %s failed; removing it", name, what)
    try:
        destroy_container(name, cache_dir=cache_dir, lxc_path=lxc_path)
    except Exception as exc:  # keep the original error
        log.error("cleanup of %s failed too: %s", name, exc)


def create_container(
    name: str,
    rootfs_tarball: Path,
    *,
    arch: str = "amd64",
    cache_dir: Path | None = None,
    lxc_path: Path = LXC_PATH,
    bridge: str = net.BRIDGE,
    timeout: float = 120,
) -> BoxContainer:
    """Create, start and wait for a worker box container `name` (must carry a lab prefix)."""
    check_name(name)
    if shutil.which("lxc-start") is None:
        raise LabError(
            "container", "LXC tools are not installed", "apt-get install --no-install-recommends lxc"
        )
    net.ensure_bridge(bridge)
    base = lxc_path / name
    key = _claim(name, lxc_path, cache_dir)
    t0 = time.monotonic()
    try:
        rootfs = base / "rootfs"
        rootfs.mkdir(parents=True)
        os.chmod(base, 0o770)
        run(
            [
                "tar",
                "-xzf",
                str(rootfs_tarball),
                "--strip-components=2",
                "--numeric-owner",
                "--xattrs",
                "--xattrs-include=*",
                "-C",
                str(rootfs),
            ],
            "container-unpack",
            f"check {rootfs_tarball} (rebuild: python -m travis_lab box build --force) "
            "and free disk under /var/lib/lxc",
        )
        _seed_rootfs(rootfs, name, key.with_suffix(".pub").read_text())
        ip = _start_new(name, arch, bridge, lxc_path, key, timeout)
    except BaseException:
        _remove_failed(name, "creating", cache_dir, lxc_path)
        raise
    log.info("container %s up at %s in %.1f s", name, ip, time.monotonic() - t0)
    return BoxContainer(name=name, ip=ip, ssh_key=key, lxc_path=lxc_path, cache_dir=cache_dir)


def stop_container(name: str, *, lxc_path: Path = LXC_PATH, timeout: int = 120) -> None:
    """Shut `name` down cleanly (its systemd stops its units), killing it after `timeout` s."""
    check_name(name)
    subprocess.run(
        ["lxc-stop", "-n", name, "-P", str(lxc_path), "-t", str(timeout)], capture_output=True, check=False
    )
    if container_state(name, lxc_path) != "STOPPED":
        subprocess.run(["lxc-stop", "-n", name, "-P", str(lxc_path), "-k"], capture_output=True, check=False)


def clone_container(
    name: str,
    source: str,
    *,
    cache_dir: Path | None = None,
    lxc_path: Path = LXC_PATH,
    bridge: str = net.BRIDGE,
    timeout: float = 120,
) -> BoxContainer:
    """Create `name` as a full copy of the stopped lab container `source` (its nested VMs and all), with its
    own hostname, MAC address and machine-id (systemd-networkd's DHCP client id comes from the machine-id:
    two clones with the same one would get the same address), then start it and wait for its DHCP address
    and sshd. A full copy, not an overlay snapshot: the nested VMs' overlay upper layers cannot live on an
    overlayfs."""
    check_name(name)
    check_name(source)
    src = lxc_path / source
    if container_state(source, lxc_path) != "STOPPED" or not (src / "rootfs").is_dir():
        raise LabError(
            "container-clone",
            f"the source container {source} is not a stopped lab container (state "
            f"{container_state(source, lxc_path)})",
            f"stop it first (lxc-stop -n {source}) or build it again",
        )
    base = lxc_path / name
    key = _claim(name, lxc_path, cache_dir, cloned_from=source)
    t0 = time.monotonic()
    try:
        base.mkdir()
        os.chmod(base, 0o770)
        rootfs = base / "rootfs"
        run(
            ["cp", "-a", "--reflink=auto", str(src / "rootfs"), str(rootfs)],
            "container-clone",
            f"free disk under {lxc_path} (a converged box is about 2 GB)",
        )
        _seed_rootfs(rootfs, name, key.with_suffix(".pub").read_text())
        (rootfs / "etc/machine-id").write_text(secrets.token_hex(16) + "\n")
        arch = next(
            (line.split("=", 1)[1].strip() for line in (src / "config").read_text().splitlines()
             if line.startswith("lxc.arch")),
            "amd64",
        )  # fmt: skip
        ip = _start_new(name, arch, bridge, lxc_path, key, timeout)
    except BaseException:
        _remove_failed(name, f"cloning from {source}", cache_dir, lxc_path)
        raise
    log.info("container %s cloned from %s, up at %s in %.1f s", name, source, ip, time.monotonic() - t0)
    return BoxContainer(name=name, ip=ip, ssh_key=key, lxc_path=lxc_path, cache_dir=cache_dir)


def destroy_container(name: str, *, cache_dir: Path | None = None, lxc_path: Path = LXC_PATH) -> None:
    """Stop and remove `name` if (and only if) the lab created it."""
    check_name(name)
    state = State(cache_dir)
    if not state.owns(name):
        raise LabError(
            "teardown",
            f"{name} is not in the lab state {state.path}: the lab did not create it",
            "remove it by hand if you are sure it is yours (lxc-destroy -f -n NAME)",
        )
    if container_state(name, lxc_path) != "ABSENT":
        subprocess.run(["lxc-stop", "-n", name, "-P", str(lxc_path), "-k"], capture_output=True, check=False)
        proc = subprocess.run(
            ["lxc-destroy", "-n", name, "-P", str(lxc_path), "-f"],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0 and container_state(name, lxc_path) != "ABSENT":
            raise LabError(
                "teardown",
                f"lxc-destroy {name} failed: {proc.stderr.strip()}",
                f"check `lxc-info -n {name}` and mounts under {lxc_path / name}",
            )
    base = lxc_path / name
    if base.exists():
        from travis_lab.cache import safe_rmtree

        safe_rmtree(base)
    state.remove(name)
    log.info("container %s removed", name)


def lab_containers(cache_dir: Path | None = None, prefix: str | None = None) -> list[str]:
    names = State(cache_dir).names()
    return [n for n in names if prefix is None or n.startswith(prefix)]


def stale_test_containers(cache_dir: Path | None = None) -> list[str]:
    """twt- containers in the lab state whose creating process no longer exists."""
    stale = []
    for name, info in State(cache_dir).entries().items():
        pid = info.get("pid")
        if name.startswith("twt-") and isinstance(pid, int) and not _pid_alive(pid):
            stale.append(name)
    return sorted(stale)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
