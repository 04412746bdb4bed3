# Copyright (c) travis.worker developers
# MIT License (see galaxy.yml)
"""The one runner for the ``vagrant`` CLI, shared by the travis.worker modules and the inventory plugin.

Stable API (other modules import these names; extend, do not break):

``VagrantRunner(execute, binary, project_dir=None, vagrant_home=None, timeout=None, timeout_binary=None,
dry_run=False)``
    Runs ``vagrant`` with argv lists only and the environment ``LANG=C``, ``LC_ALL=C``, ``LC_MESSAGES=C``,
    ``VAGRANT_NO_COLOR=1``, ``VAGRANT_CHECKPOINT_DISABLE=1``, ``VAGRANT_CWD=project_dir`` and
    ``VAGRANT_HOME`` (if given).
    ``execute`` is a callable ``execute(argv, cwd, env) -> (rc, stdout, stderr)``; build one with
    ``module_executor(module)`` (goes through ``module.run_command``); controller-side code
    (the inventory plugin) passes its own subprocess one.
    With ``timeout`` (seconds) every command is wrapped in coreutils ``timeout`` (rc 124 = timed out).
    Methods (all raise ``VagrantError`` on failure):
      ``run(args, machine=None, box=None, machine_readable=True, env=None) -> VagrantResult``
      ``status(names=None, provider=None) -> list[Machine]``   (``vagrant status --machine-readable``)
      ``box_list() -> list[Box]``                              (``vagrant box list --machine-readable``)
      ``ssh_config(names) -> dict[str, dict[str, str]]``       (``vagrant ssh-config NAMES``, keys lower-case)
      ``up/halt/destroy/provision/reload(names, ...)``, ``box_add(...)``, ``box_remove(...)``: these change
      things; with ``dry_run=True`` (check mode) they run nothing and return a ``VagrantResult`` with rc 0
      and the exact argv (``.cmd``) a real run would use. Reading methods always run.
``runner_from_module(module, project_dir=None, vagrant_home=None, timeout=None) -> VagrantRunner``
    Finds ``vagrant`` (and ``timeout``) with ``module.get_bin_path``; ``fail_json`` with a remedy if missing.
``fail_from_error(module, error, **extra)``
    ``module.fail_json(msg=..., rc=..., stdout=..., stderr=..., cmd=..., error_kind=..., **extra)``.
``VagrantError(msg, kind, rc=None, stdout='', stderr='', cmd=None)``: ``kind`` is one of ``ERROR_KINDS``.
``classify(rc, stdout, stderr, cmd, machine=None, box=None) -> VagrantError``: the error classifier
    (vagrant missing, provider missing/unusable, unknown machine, box not found, VirtualBox lock,
    disk full, timeout, ...).
``parse_machine_readable(text) -> list[MachineReadableLine]``, ``unescape(text)``, ``parse_ssh_config(text)``,
``parse_status(lines)``, ``parse_box_list(lines)``, ``parse_box_architectures(lines)`` (Vagrant 2.4's
``box-architecture`` lines), ``error_exit(lines)``.
``Machine(name, state, provider)`` and ``Box(name, provider, version)`` are NamedTuples
    (``._asdict()`` for JSON).
``box_directory(vagrant_home, name, version, provider) -> str``: where Vagrant unpacks a box;
``default_vagrant_home()``.
``HALTED_STATES``, ``RUNNING_STATES``, ``NOT_CREATED``, ``HALTED_STATE_BY_PROVIDER`` describe provider states
(VirtualBox, LXC, libvirt, docker).

Why not python-vagrant for the calls: python-vagrant 1.0.0 starts its own subprocesses (so
``module.run_command``, argv assertions in unit tests and stderr capture are bypassed), lets stderr go to the
terminal, builds a wrong ``box update`` argv and ignores ``base`` in ``package``. Its machine-readable
parsing is a few lines and is reproduced here (same field rules: ``timestamp,target,type,data...``,
``%!(VAGRANT_COMMA)`` and ``\\n`` escapes).
"""

from __future__ import annotations

import os
import re
from typing import NamedTuple, Optional

from ansible_collections.travis.worker.plugins.module_utils.cli import (
    C_LOCALE,
    CommandError,
    CommandRunner,
    Executor,
    module_executor,
)

__all__ = [
    "ERROR_KINDS",
    "HALTED_STATES",
    "HALTED_STATE_BY_PROVIDER",
    "NOT_CREATED",
    "RUNNING_STATES",
    "Box",
    "Executor",
    "Machine",
    "MachineReadableLine",
    "VagrantError",
    "VagrantResult",
    "VagrantRunner",
    "box_directory",
    "classify",
    "default_vagrant_home",
    "error_exit",
    "fail_from_error",
    "module_executor",
    "parse_box_architectures",
    "parse_box_list",
    "parse_machine_readable",
    "parse_ssh_config",
    "parse_status",
    "runner_from_module",
    "unescape",
]

ERROR_KINDS = (
    "vagrant_missing",
    "timeout_missing",
    "no_vagrantfile",
    "provider_missing",
    "provider_unusable",
    "unknown_machine",
    "box_not_found",
    "box_download",
    "box_corrupt",
    "machine_locked",
    "disk_full",
    "timeout",
    "ssh_not_ready",
    "vagrant_error",
)

NOT_CREATED = "not_created"
RUNNING_STATES = frozenset({"running"})
# States in which a machine exists and is not running (VirtualBox, LXC, libvirt, docker, hyperv).
HALTED_STATES = frozenset({"poweroff", "aborted", "saved", "stopped", "shutoff", "off", "frozen", "paused"})
# The state a provider reports after ``vagrant halt``.
HALTED_STATE_BY_PROVIDER = {
    "virtualbox": "poweroff",
    "lxc": "stopped",
    "libvirt": "shutoff",
    "docker": "stopped",
}


class MachineReadableLine(NamedTuple):
    timestamp: str
    target: str
    type: str
    data: list


class Machine(NamedTuple):
    name: str
    state: str
    provider: str


class Box(NamedTuple):
    name: str
    provider: str
    version: str


class VagrantResult(NamedTuple):
    rc: int
    stdout: str
    stderr: str
    cmd: list
    lines: list


class VagrantError(CommandError):
    """A failed vagrant command, with a message an operator can act on (``kind``: one of ERROR_KINDS)."""

    def __init__(
        self, msg: str, kind: str = "vagrant_error", rc=None, stdout: str = "", stderr: str = "", cmd=None
    ):
        super().__init__(msg, cmd=cmd, rc=rc, stdout=stdout, stderr=stderr)
        self.msg = msg
        self.kind = kind

    def as_dict(self) -> dict:
        return self.fail_kwargs()

    def fail_kwargs(self) -> dict:
        return {
            "msg": self.msg,
            "error_kind": self.kind,
            "rc": self.rc,
            "stdout": self.stdout,
            "stderr": self.stderr,
            "cmd": self.cmd,
        }


def unescape(text: str) -> str:
    """Undo Vagrant's machine-readable escaping of one data field."""
    return text.replace("%!(VAGRANT_COMMA)", ",").replace("\\n", "\n").replace("\\r", "\r")


def parse_machine_readable(text: str) -> list:
    """Parse ``vagrant --machine-readable`` stdout; lines that are not in the format are skipped."""
    lines = []
    for raw in text.splitlines():
        parts = raw.split(",")
        if len(parts) < 3 or not parts[0].isdigit():
            continue
        lines.append(MachineReadableLine(parts[0], parts[1], parts[2], [unescape(p) for p in parts[3:]]))
    return lines


def error_exit(lines: list) -> tuple:
    """Return (error class, message) of the ``error-exit`` line, or ('', '')."""
    for line in lines:
        if line.type == "error-exit":
            cls = line.data[0] if line.data else ""
            return cls, ",".join(line.data[1:])
    return "", ""


def parse_status(lines: list) -> list:
    """Machines from ``vagrant status --machine-readable``, in the Vagrantfile's order."""
    order: list = []
    state: dict = {}
    provider: dict = {}
    for line in lines:
        if not line.target or not line.data:
            continue
        if line.target not in order:
            order.append(line.target)
        if line.type == "state":
            state[line.target] = line.data[0]
        elif line.type == "provider-name" or (line.type == "metadata" and line.data[0] == "provider"):
            provider[line.target] = line.data[-1]
    return [Machine(n, state.get(n, "unknown"), provider.get(n, "")) for n in order if n in state]


def parse_box_list(lines: list) -> list:
    """Boxes from ``vagrant box list --machine-readable``: ``box-name``, ``box-provider``, ``box-version``."""
    boxes: list = []
    current: dict = {}
    for line in lines:
        if line.type == "box-name":
            if current:
                boxes.append(current)
            current = {"name": line.data[0], "provider": "", "version": "0"}
        elif line.type == "box-provider" and current:
            current["provider"] = line.data[0]
        elif line.type == "box-version" and current:
            current["version"] = line.data[0]
    if current:
        boxes.append(current)
    return [Box(b["name"], b["provider"], b["version"]) for b in boxes]


def parse_box_architectures(lines: list) -> dict:
    """{(name, provider, version): [architecture, ...]} from ``vagrant box list --machine-readable``.

    Vagrant >= 2.4 prints a ``box-architecture`` line after each box block (``n/a`` for a box without one) and
    repeats the block per architecture, so ``parse_box_list`` gives one ``Box`` per architecture; Vagrant 2.3
    prints no such line (every box maps to ``[]``)."""
    field_of = {"box-provider": "provider", "box-version": "version", "box-architecture": "arch"}
    blocks: list = []
    for line in lines:
        if line.type == "box-name":
            blocks.append({"name": line.data[0], "provider": "", "version": "0", "arch": None})
        elif line.type in field_of and blocks and line.data:
            blocks[-1][field_of[line.type]] = line.data[0]
    result: dict = {}
    for block in blocks:
        archs = result.setdefault((block["name"], block["provider"], block["version"]), [])
        if block["arch"] not in (None, "n/a") and block["arch"] not in archs:
            archs.append(block["arch"])
    return result


def parse_ssh_config(text: str) -> dict:
    """Parse ``vagrant ssh-config`` (OpenSSH format) into {host: {option-lowercase: value}}."""
    hosts: dict = {}
    current = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, _sep, value = line.partition(" ")
        value = value.strip().strip('"')
        if key.lower() == "host":
            current = hosts.setdefault(value, {})
        elif current is not None:
            current.setdefault(key.lower(), value)
    return hosts


def box_directory(vagrant_home: str, name: str, version: str, provider: str) -> str:
    """The directory where Vagrant unpacked box ``name`` ``version`` for ``provider``.

    Vagrant 2.3 uses ``boxes/NAME/VERSION/PROVIDER``; Vagrant >= 2.4 may add an architecture level
    (``boxes/NAME/VERSION/ARCH/PROVIDER``), which is found if it exists.
    """
    version_dir = os.path.join(vagrant_home, "boxes", name.replace("/", "-VAGRANTSLASH-"), version)
    direct = os.path.join(version_dir, provider)
    if os.path.isdir(direct) or not os.path.isdir(version_dir):
        return direct
    for arch in sorted(os.listdir(version_dir)):
        candidate = os.path.join(version_dir, arch, provider)
        if os.path.isdir(candidate):
            return candidate
    return direct


def default_vagrant_home() -> str:
    return os.environ.get("VAGRANT_HOME") or os.path.expanduser("~/.vagrant.d")


# VBoxManage's lock error as Vagrant's VBoxManageError quotes it: 7.x "The machine 'X' is already locked by a
# session (or being locked or unlocked)", 6.1 "... is already locked for a session (or being unlocked)".
_LOCK_RE = re.compile(r"The machine '([^']+)' is already locked (?:by|for) a session")


def classify(rc, stdout: str, stderr: str, cmd, machine=None, box=None) -> VagrantError:
    """Map a failed vagrant command to an operator message (names the machine/box, says the remedy)."""
    lines = parse_machine_readable(stdout)
    cls, detail = error_exit(lines)
    detail = detail or stderr.strip() or stdout.strip()
    text = "\n".join((stdout, stderr, detail))
    what = f"machine '{machine}'" if machine else (f"box '{box}'" if box else "vagrant")
    command = " ".join(str(c) for c in (cmd or []))

    def err(kind: str, msg: str) -> VagrantError:
        return VagrantError(f"{msg} (command: {command}; rc={rc})", kind, rc, stdout, stderr, cmd)

    if rc == 124 and cmd and os.path.basename(str(cmd[0])) == "timeout":
        return err(
            "timeout", f"{what}: vagrant did not finish within the timeout; raise 'timeout' or check the VM"
        )
    if "No space left on device" in text or "ENOSPC" in text:
        return err(
            "disk_full",
            f"{what}: disk full (No space left on device); free space under VAGRANT_HOME, "
            "the project dir and the provider's VM directory, then retry",
        )
    lock = _LOCK_RE.search(text)
    if lock:
        return err(
            "machine_locked",
            f"{what}: VirtualBox machine '{lock.group(1)}' is locked by another session "
            "(a VBoxManage/GUI/other vagrant call holds it); wait for it to finish, or run "
            f"'VBoxManage startvm {lock.group(1)} --type emergencystop' if that session is dead, then retry",
        )
    if cls == "Vagrant::Errors::MachineActionLockedError":
        return err(
            "machine_locked",
            f"{what}: another vagrant process is running an action on this machine (Vagrant locks each "
            "machine for one process at a time); wait for it to finish, or if no vagrant/ruby process is "
            "left, retry. Vagrant said: " + detail.splitlines()[0],
        )
    if cls == "Vagrant::Errors::MachineNotFound":
        return err(
            "unknown_machine",
            f"{what} is not defined in the Vagrantfile; check the machine name "
            "(see 'vagrant status' in the project dir)",
        )
    if cls == "Vagrant::Errors::ProviderNotFound":
        return err(
            "provider_missing",
            f"{what}: Vagrant has no such provider; install the provider plugin "
            "(e.g. 'vagrant plugin install vagrant-lxc' or the vagrant-lxc package) or fix 'provider'. "
            f"Vagrant said: {detail}",
        )
    if "not supported by this version of Vagrant" in text:
        supported = re.search(
            r"use Vagrant:\s*((?:\d+\.\d+(?:, |%!\(VAGRANT_COMMA\) )?)+)", text.replace("\\n", "\n")
        )
        listed = supported.group(1).replace("%!(VAGRANT_COMMA)", ",").strip() if supported else "see below"
        return err(
            "provider_unusable",
            f"{what}: this Vagrant cannot drive the installed VirtualBox (its driver map lists {listed}); "
            "install a Vagrant that lists that VirtualBox (VirtualBox 7.1 needs Vagrant >= 2.4.2: in the "
            "travis.worker.vagrant role vagrant_source: hashicorp with vagrant_version) - reinstalling "
            f"VirtualBox does not help. Vagrant said: {detail}",
        )
    if cls == "Vagrant::Errors::ProviderNotUsable":
        return err(
            "provider_unusable",
            f"{what}: the provider is installed in Vagrant but not usable on this host "
            f"(for VirtualBox: install VirtualBox and put VBoxManage on PATH). Vagrant said: {detail}",
        )
    if cls in (
        "Vagrant::Errors::BoxAddShortNotFound",
        "Vagrant::Errors::BoxNotFound",
        "Vagrant::Errors::BoxRemoveNotFound",
        "Vagrant::Errors::BoxNotFoundWithProvider",
        "Vagrant::Errors::BoxRemoveProviderNotFound",
        "Vagrant::Errors::BoxRemoveVersionNotFound",
    ):
        return err(
            "box_not_found",
            f"{what}: box not found; add it first (travis.worker.vagrant_box with 'src') "
            f"or fix config.vm.box / the box name. Vagrant said: {detail}",
        )
    if cls == "Vagrant::Errors::DownloaderError":
        return err(
            "box_download",
            f"{what}: could not read the box file/URL; check 'src' exists and is readable. "
            f"Vagrant said: {detail}",
        )
    if cls == "Vagrant::Errors::BoxUnpackageFailure":
        return err(
            "box_corrupt",
            f"{what}: the box file is not a valid box archive (corrupt or truncated); "
            f"rebuild or re-download it. Vagrant said: {detail}",
        )
    if cls == "Vagrant::Errors::NoEnvironmentError":
        return err(
            "no_vagrantfile", "no Vagrantfile found in 'project_dir' or its parents; check project_dir"
        )
    if cls == "Vagrant::Errors::SSHNotReady" or "not yet ready for SSH" in text:
        return err("ssh_not_ready", f"{what} is not running or not reachable over SSH; start it first")
    if "Vagrant could not detect VirtualBox" in text:
        return err("provider_unusable", f"{what}: VirtualBox is not installed or VBoxManage is not on PATH")
    return err("vagrant_error", f"{what}: vagrant failed: {detail.strip() or 'no output'}")


class VagrantRunner(CommandRunner):
    """Run vagrant commands for one project (``project_dir``) and one ``VAGRANT_HOME``."""

    program = "vagrant"
    error_type = VagrantError

    def __init__(
        self,
        execute: Executor,
        binary: str,
        project_dir=None,
        vagrant_home=None,
        timeout=None,
        timeout_binary=None,
        dry_run: bool = False,
    ):
        super().__init__(None, binary, execute=execute, dry_run=dry_run)
        self.project_dir = project_dir
        self.vagrant_home = vagrant_home
        self.timeout = timeout
        self.timeout_binary = timeout_binary or "timeout"

    def environment(self) -> dict:
        return self.env()

    def env(self) -> dict:
        env = dict(C_LOCALE, VAGRANT_NO_COLOR="1", VAGRANT_CHECKPOINT_DISABLE="1")
        if self.project_dir:
            env["VAGRANT_CWD"] = self.project_dir
        if self.vagrant_home:
            env["VAGRANT_HOME"] = self.vagrant_home
        return env

    def argv(self, args: list, machine_readable: bool = True) -> list:
        argv = super().argv(args)
        if machine_readable:
            argv.append("--machine-readable")
        if self.timeout:
            argv = [self.timeout_binary, "--kill-after=30", str(int(self.timeout)), *argv]
        return argv

    def run(
        self, args: list, machine=None, box=None, machine_readable: bool = True, env=None
    ) -> VagrantResult:
        argv = self.argv(args, machine_readable)
        rc, out, err = self.call(argv, self.project_dir, env)
        lines = parse_machine_readable(out) if machine_readable else []
        failed = rc != 0 or (machine_readable and error_exit(lines)[0])
        if failed:
            raise classify(rc, out, err, argv, machine=machine, box=box)
        return VagrantResult(rc, out, err, argv, lines)

    # --- reading -------------------------------------------------------------------------------------------
    def status(self, names=None, provider=None) -> list:
        names = list(names or [])
        env = {"VAGRANT_DEFAULT_PROVIDER": provider} if provider else None
        machine = names[0] if len(names) == 1 else None
        result = self.run(["status", *names], machine=machine, env=env)
        machines = parse_status(result.lines)
        return [m for m in machines if m.name in names] if names else machines

    def box_list(self) -> list:
        return parse_box_list(self.run(["box", "list"]).lines)

    def ssh_config(self, names) -> dict:
        names = list(names)
        result = self.run(
            ["ssh-config", *names], machine=names[0] if len(names) == 1 else None, machine_readable=False
        )
        return parse_ssh_config(result.stdout)

    # --- acting ---------------------------------------------------------------------------------------------
    def _act(self, args: list, machine=None, box=None) -> VagrantResult:
        """Run a command that changes something; with ``dry_run`` only return the argv it would run."""
        argv = self.argv(args)
        if self.skip(argv):
            return VagrantResult(0, "", "", argv, [])
        return self.run(args, machine=machine, box=box)

    @staticmethod
    def _flag(value, name: str) -> list:
        if value is None:
            return []
        return [f"--{name}"] if value else [f"--no-{name}"]

    def _machine(self, names) -> Optional[str]:
        return ", ".join(names) if names else None

    def up(self, names, provider=None, provision=None, parallel=None) -> VagrantResult:
        args = ["up", *names]
        if provider:
            args.append(f"--provider={provider}")
        args += self._flag(provision, "provision") + self._flag(parallel, "parallel")
        return self._act(args, machine=self._machine(names))

    def halt(self, names, force: bool = False) -> VagrantResult:
        return self._act(["halt", *names, *(["--force"] if force else [])], machine=self._machine(names))

    def destroy(self, names, parallel=None) -> VagrantResult:
        args = ["destroy", "--force", *names] + (["--parallel"] if parallel else [])
        return self._act(args, machine=self._machine(names))

    def provision(self, names) -> VagrantResult:
        return self._act(["provision", *names], machine=self._machine(names))

    def reload(self, names, provision=None) -> VagrantResult:
        return self._act(
            ["reload", *names, *self._flag(provision, "provision")], machine=self._machine(names)
        )

    def box_add(
        self,
        src: str,
        name=None,
        provider=None,
        version=None,
        checksum=None,
        checksum_type=None,
        force: bool = False,
    ) -> VagrantResult:
        args = ["box", "add"]
        if name:
            args += ["--name", name]
        if provider:
            args += ["--provider", provider]
        if version:
            args += ["--box-version", version]
        if checksum:
            args += ["--checksum", checksum, "--checksum-type", checksum_type or "sha256"]
        if force:
            args.append("--force")
        args.append(src)
        return self._act(args, box=name or src)

    def box_remove(
        self,
        name: str,
        provider=None,
        version=None,
        all_versions: bool = False,
        force: bool = False,
        architecture=None,
        all_architectures: bool = False,
    ) -> VagrantResult:
        args = ["box", "remove", name]
        if provider:
            args += ["--provider", provider]
        if version:
            args += ["--box-version", version]
        elif all_versions:
            args.append("--all")
        # Vagrant >= 2.4 only: several architectures of one version fail with BoxRemoveMultiArchitecture.
        if architecture:
            args += ["--architecture", architecture]
        elif all_architectures:
            args.append("--all-architectures")
        if force:
            args.append("--force")
        return self._act(args, box=name)


def runner_from_module(module, project_dir=None, vagrant_home=None, timeout=None) -> VagrantRunner:
    """Build a runner for an AnsibleModule; ``fail_json`` (with the remedy) if vagrant/timeout are missing."""
    binary = module.get_bin_path("vagrant")
    if not binary:
        module.fail_json(
            msg="vagrant is not installed or not on PATH for this user; install Vagrant "
            "(Debian: apt-get install vagrant) and rerun",
            error_kind="vagrant_missing",
            rc=None,
        )
    timeout_binary = None
    if timeout:
        timeout_binary = module.get_bin_path("timeout")
        if not timeout_binary:
            module.fail_json(
                msg="'timeout' was set but the coreutils 'timeout' command is not on PATH; install "
                "coreutils or unset 'timeout'",
                error_kind="timeout_missing",
                rc=None,
            )
    return VagrantRunner(
        module_executor(module),
        binary,
        project_dir=project_dir,
        vagrant_home=vagrant_home,
        timeout=timeout,
        timeout_binary=timeout_binary,
    )


def fail_from_error(module, error: VagrantError, **extra) -> None:
    """``fail_json`` with the classified message plus rc, stdout, stderr and cmd of the command."""
    result = error.as_dict()
    result.update(extra)
    module.fail_json(**result)
