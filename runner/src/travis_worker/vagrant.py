"""Thin, testable wrappers around the ``vagrant``, ``VBoxManage`` and ``ssh`` command lines.

Every call is an argv list (no shell), runs with ``LANG=C`` so the output we parse is not translated,
and goes through a :data:`Runner` so unit tests can assert argv and replay recorded output.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

log = logging.getLogger(__name__)

SANDBOX_SNAPSHOT = "sandbox"
_NO_SNAPSHOTS = "does not have any snapshots"


@dataclass(frozen=True)
class Completed:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str


# Runner(argv, cwd=..., timeout=..., input=...) -> Completed
Runner = Callable[..., Completed]


class CommandError(RuntimeError):
    """A CLI call failed; ``str(e)`` names the command, its status and the tail of its stderr."""

    def __init__(self, completed: Completed, what: str = "") -> None:
        tail = (completed.stderr or completed.stdout).strip().splitlines()[-5:]
        detail = " | ".join(tail) if tail else "no output"
        command = " ".join(completed.argv)
        super().__init__(
            f"{what + ': ' if what else ''}`{command}` exited with {completed.returncode}: {detail}"
        )
        self.completed = completed


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update({"LANG": "C", "LC_ALL": "C"})
    return env


def run_cli(
    argv: list[str], *, cwd: Optional[str] = None, timeout: float = 600, input: Optional[str] = None
) -> Completed:
    """Run a command to completion; a missing binary or a timeout becomes a failed :class:`Completed`."""
    log.debug("running %s (cwd=%s)", argv, cwd)
    try:
        done = subprocess.run(
            argv,
            cwd=cwd,
            env=cli_env(),
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
    except FileNotFoundError:
        return Completed(argv, 127, "", f"{argv[0]}: command not found; is it installed and on PATH?")
    except subprocess.TimeoutExpired as exc:
        stderr = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        return Completed(argv, 124, "", f"timed out after {timeout:g} s. {stderr}")
    return Completed(argv, done.returncode, done.stdout, done.stderr)


def parse_ssh_config(text: str) -> dict[str, dict[str, str]]:
    """``vagrant ssh-config`` output -> {host: {lower-case option: value}} (first value wins, like ssh)."""
    hosts: dict[str, dict[str, str]] = {}
    current: Optional[dict[str, str]] = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition(" ")
        key, value = key.lower(), value.strip().strip('"')
        if key == "host":
            current = hosts.setdefault(value, {})
        elif current is not None:
            current.setdefault(key, value)
    return hosts


def virtualbox_id(project_dir: str, vm_name: str) -> str:
    """The VirtualBox machine UUID vagrant recorded for ``vm_name``."""
    path = Path(project_dir) / ".vagrant" / "machines" / vm_name / "virtualbox" / "id"
    try:
        uuid = path.read_text().strip()
    except OSError as exc:
        raise FileNotFoundError(
            f"no VirtualBox id for VM {vm_name!r} at {path} ({exc.strerror}); run `vagrant up {vm_name}` "
            f"in {project_dir} first"
        ) from None
    if not uuid:
        raise FileNotFoundError(f"{path} is empty; run `vagrant up {vm_name}` in {project_dir}")
    return uuid


def parse_machinereadable(text: str) -> dict[str, str]:
    """``key="value"`` lines of VBoxManage --machinereadable output."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip().strip('"')] = value.strip().strip('"')
    return values


class Vagrant:
    """``vagrant`` commands run in the Vagrantfile's directory."""

    def __init__(self, project_dir: str, *, runner: Runner = run_cli, binary: str = "vagrant") -> None:
        self.project_dir = project_dir
        self.runner = runner
        self.binary = binary

    def _run(self, *args: str, timeout: float = 900) -> Completed:
        done = self.runner([self.binary, *args], cwd=self.project_dir, timeout=timeout)
        if done.returncode != 0:
            raise CommandError(done)
        return done

    def ssh_config(self, vm_name: str) -> str:
        return self._run("ssh-config", vm_name, timeout=120).stdout

    def destroy(self, vm_name: str) -> None:
        self._run("destroy", "-f", vm_name)

    def up(self, vm_name: str, provider: str) -> None:
        self._run("up", vm_name, f"--provider={provider}")


# VBoxManage's `VMState` values (VBoxManageInfo.cpp, machineStateToName() with fShort, VirtualBox 7.0/7.1).
# Offline: the VM process is gone, `snapshot restore` and `startvm` may run.
OFFLINE_STATES = frozenset({"poweroff", "saved", "aborted", "aborted-saved", "teleported"})
# Online states `controlvm poweroff` ends (Console::powerDown(): Running, Paused, Stuck; it cancels a save, a
# teleport or a live snapshot in progress). Any other state is a transition: wait for it to end.
POWER_OFF_STATES = frozenset(
    {
        "running",
        "paused",
        "gurumeditation",
        "saving",
        "livesnapshotting",
        "teleporting",
        "teleportingpausedvm",
    }
)
# Errors of a VM whose session VirtualBox has not released yet (a moment after `controlvm poweroff` returns):
# Machine::lockMachine()/launchVMProcess() "is already locked by a session (or being locked or unlocked)"
# (VBOX_E_INVALID_OBJECT_STATE), a machine state still in transition (VBOX_E_INVALID_VM_STATE).
TRANSIENT_ERRORS = ("VBOX_E_INVALID_OBJECT_STATE", "VBOX_E_INVALID_VM_STATE", "already locked")
_VBOX_ERROR = "VBoxManage: error:"
_STARTED = "has been successfully started"


def transient(error: CommandError) -> bool:
    """True when ``error`` is VirtualBox still releasing the VM's session or state: worth a retry."""
    text = error.completed.stdout + error.completed.stderr
    return any(marker in text for marker in TRANSIENT_ERRORS)


class VBoxManage:
    """The few ``VBoxManage`` commands of a snapshot reset.

    Like Vagrant's driver (plugins/providers/virtualbox/driver/base.rb, execute()), exit 0 with a
    ``VBoxManage: error:`` line on stderr is a failure.
    """

    def __init__(self, *, runner: Runner = run_cli, binary: str = "VBoxManage") -> None:
        self.runner = runner
        self.binary = binary

    def _run(self, *args: str, timeout: float = 300) -> Completed:
        done = self.runner([self.binary, *args], timeout=timeout)
        if done.returncode != 0 or _VBOX_ERROR in done.stderr:
            raise CommandError(done)
        return done

    def state(self, uuid: str) -> str:
        """``VMState`` of ``showvminfo``: running, paused, saved, poweroff, aborted, gurumeditation, ..."""
        return parse_machinereadable(self._run("showvminfo", uuid, "--machinereadable").stdout).get(
            "VMState", ""
        )

    def snapshots(self, uuid: str) -> list[str]:
        done = self.runner([self.binary, "snapshot", uuid, "list", "--machinereadable"], timeout=120)
        if done.returncode != 0:
            if _NO_SNAPSHOTS in done.stdout + done.stderr:
                return []
            raise CommandError(done)
        values = parse_machinereadable(done.stdout)
        return [
            value for key, value in values.items() if key == "SnapshotName" or key.startswith("SnapshotName-")
        ]

    def take_snapshot(self, uuid: str, name: str) -> None:
        self._run("snapshot", uuid, "take", name, timeout=900)

    def poweroff(self, uuid: str) -> None:
        self._run("controlvm", uuid, "poweroff")

    def restore_snapshot(self, uuid: str, name: str) -> None:
        self._run("snapshot", uuid, "restore", name, timeout=900)

    def start_headless(self, uuid: str) -> None:
        """``startvm --type headless``; exit 1 after "... has been successfully started." is a start.

        VBoxManageMisc.cpp (handleStartVM) prints that line once the power-up progress succeeded; Vagrant's
        driver (version_5_0.rb, start()) accepts it whatever the exit code ("Some systems return an exit
        code 1").
        """
        done = self.runner([self.binary, "startvm", uuid, "--type", "headless"], timeout=300)
        if _STARTED in done.stdout:
            return
        if done.returncode != 0 or _VBOX_ERROR in done.stderr:
            raise CommandError(done)


LXC_SANDBOX_HELPER = "/usr/local/sbin/travis-worker-lxc-sandbox"
NO_LXC_SNAPSHOT = 10  # the helper's `status` exit code when the container has no snapshot


def lxc_container(project_dir: str, vm_name: str) -> Optional[str]:
    """The LXC container name vagrant-lxc recorded for ``vm_name``; None while the machine is not created."""
    path = Path(project_dir) / ".vagrant" / "machines" / vm_name / "lxc" / "id"
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def lxc_private_key(project_dir: str, vm_name: str) -> Path:
    """The machine's Vagrant key (vagrant-lxc's ``private_key``; `vagrant ssh-config` names it if present)."""
    return Path(project_dir) / ".vagrant" / "machines" / vm_name / "lxc" / "private_key"


class LxcSandbox:
    """The LXC provider's sandbox: ``travis-worker-lxc-sandbox status|save|reset CONTAINER``.

    The helper (installed by the travis.worker.lxc role, root-owned) is run directly as root, otherwise
    through ``sudo -n`` (the role's sudoers entry lets the worker user run exactly that file). The VM's
    rootfs is an overlay: a clean lower layer (its own saved copy or a published image) plus a small upper
    layer that ``reset`` empties before it starts the container again.
    """

    def __init__(self, *, runner: Runner = run_cli, helper: str = LXC_SANDBOX_HELPER) -> None:
        self.runner = runner
        self.helper = helper

    def available(self) -> bool:
        return os.path.isfile(self.helper) and os.access(self.helper, os.X_OK)

    def _run(
        self, action: str, container: str, *args: str, timeout: float, ok: tuple[int, ...] = (0,)
    ) -> Completed:
        prefix = [] if os.geteuid() == 0 else ["sudo", "-n"]
        done = self.runner([*prefix, self.helper, action, container, *args], timeout=timeout)
        if done.returncode not in ok:
            raise CommandError(done)
        return done

    def exists(self, container: str) -> bool:
        """True when the VM has a clean lower layer to reset to (its own saved copy or an image)."""
        # 1 is sudo refusing, not "no snapshot": only the helper's own code means that
        return self._run("status", container, timeout=60, ok=(0, NO_LXC_SNAPSHOT)).returncode == 0

    def save(self, container: str) -> None:
        self._run("save", container, timeout=1800)

    def reset(self, container: str, image: Optional[str] = None, wait: float = 120) -> dict[str, Any]:
        """Stop, empty the upper layer, optionally put ``image``'s rootfs under it, start; its JSON."""
        args = ["--image", image] if image else []
        done = self._run("reset", container, *args, "--timeout", str(max(1, int(wait))), timeout=wait + 600)
        try:
            info = json.loads(done.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            info = None
        if not isinstance(info, dict) or not isinstance(info.get("ip"), str):
            raise CommandError(done, "the sandbox helper printed no JSON with an ip")
        return info
