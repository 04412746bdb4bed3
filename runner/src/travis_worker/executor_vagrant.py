"""The Vagrant executors: the build script runs inside one machine of a Vagrant project over SSH.

* ``virtualbox``: before each job the VM is powered off (any online state: running, paused, guru
  meditation, ...), snapshot ``sandbox`` restored and started headless; both retried a few times while
  VirtualBox still releases the VM's session. A missing ``sandbox`` snapshot, or one that cannot be restored
  or started, is not retaken from the VM's current state: the VM is re-created from its box (``vagrant
  destroy`` + ``vagrant up``) and the snapshot taken of that clean VM; worker log and build log say so.
  The live snapshot resumes at the time it was taken, so the guest clock is set from the worker host's
  clock over SSH (``sudo -n date -u -s @EPOCH``) before the build; the build log's first line shows it.
* ``virtualbox`` with an image store (``vms.image_store``, ``vms.box``): when the store's ``current`` image is
  another than the VM's, the reset replaces the VM by a linked clone of the image VM's snapshot first (see
  ``_switch_virtualbox`` and docs/runner.md, "Images"); a failed switch leaves the VM as it was.
* ``lxc``: vagrant-lxc has no snapshots; the helper ``travis-worker-lxc-sandbox`` (travis.worker.lxc role)
  makes the machine's rootfs an overlay: a clean read-only lower layer (the VM's own saved copy, taken once
  when missing so the recipes applied to it are in it, or a published image's ``rootfs/``) and a small upper
  layer. A reset stops the container, empties the upper layer and starts it with ``lxc-start`` (no ``vagrant
  up``), then the SSH config's HostName is set to the address the helper read. Without the helper the
  machine is destroyed and brought up fresh from its box (the recipes applied in place are then lost; a
  warning says so).

The worker resets the VM after each build and at start-up (:mod:`travis_worker.worker`), so an idle worker
holds a clean, started VM. Images (:mod:`travis_worker.images`): when ``vms.box`` is set and the image store
has a ``current`` version for it that the VM does not run, the reset moves the VM onto it
(:meth:`VagrantExecutor.wanted_image` decides, for every provider; LXC: the helper's ``--image``, and the
image's ``private_key`` becomes the machine's Vagrant key). :attr:`VagrantExecutor.image` is the image the VM
runs (None: its own snapshot), reported in the worker's state and written to the store's ``users/<vm>``.

SSH options come from ``vagrant ssh-config <vm>``. The remote script runs (``ssh -tt``) as the leader
of the PTY session sshd made for it and writes its process group id to ``~/.travis-worker/pgid``; a
limit or a cancel kills the local ``ssh`` client and that remote group (``kill -KILL -- -PGID``). If the
worker dies, the ssh client dies with it and sshd hangs up the remote session.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import tempfile
import threading
import time
import uuid as uuidlib
from pathlib import Path
from typing import Callable, Optional

from .executor import BuildResult, Limits, SandboxError, spawn_in_pty, stream_process
from .images import Image, ImageError, ImageStore, read_image
from .vagrant import (
    OFFLINE_STATES,
    POWER_OFF_STATES,
    SANDBOX_SNAPSHOT,
    CommandError,
    LxcSandbox,
    Runner,
    Vagrant,
    VBoxManage,
    cli_env,
    lxc_container,
    lxc_private_key,
    parse_ssh_config,
    run_cli,
    transient,
    virtualbox_id,
)

log = logging.getLogger(__name__)

VBOX_IMAGE_RECORD = "travis_image.json"  # beside Vagrant's id: {"uuid", "version", "digest", "box"}
VAGRANT_PROVISIONED = "action_provision"  # Vagrant's provisioning sentinel in the machine's data dir
REMOTE_DIR = "$HOME/.travis-worker"
_UPLOAD = f'mkdir -p "{REMOTE_DIR}" && rm -f "{REMOTE_DIR}/pgid" && cat > "{REMOTE_DIR}/build.sh"'
# sshd makes the login shell of a PTY session a session leader; `exec` keeps that pid, so the build's
# process group id is `$$`. A dropped connection hangs up that session (SIGHUP to the whole group).
REMOTE_RUN = (
    f'cd "$HOME" && echo $$ > "{REMOTE_DIR}/pgid" && exec bash --noprofile --norc "{REMOTE_DIR}/build.sh"'
)
_KILL = (
    f'f="{REMOTE_DIR}/pgid"; for i in 1 2 3 4 5 6 7 8 9 10; do [ -s "$f" ] && break; sleep 0.1; done; '
    'pg=$(cat "$f" 2>/dev/null) && kill -KILL -- "-$pg"'
)
REMOTE_KILL = f"exec bash -c {shlex.quote(_KILL)}"  # bash: dash's kill takes no process-group "--"
# Sets the guest clock to the host's UTC time (the placeholder) and prints the guest's time before and after.
REMOTE_CLOCK = (
    'before=$(date -u +%s) && sudo -n date -u -s "@{epoch}" >/dev/null && echo "$before $(date -u +%s)"'
)
SSH_OPTIONS = (
    "-o",
    "BatchMode=yes",
    "-o",
    "ConnectTimeout=10",
    "-o",
    "ServerAliveInterval=15",
    "-o",
    "ServerAliveCountMax=4",
)


class VagrantExecutor:
    def __init__(
        self,
        provider: str,
        *,
        project_dir: str,
        vm_name: str,
        runner: Runner = run_cli,
        ssh: str = "ssh",
        state_dir: Optional[str] = None,
        ready_timeout: float = 300.0,
        spawn: Callable[..., tuple] = spawn_in_pty,
        kill_wait: float = 1.0,
        lxc_sandbox: Optional[LxcSandbox] = None,
        retry_sleep: float = 1.0,
        retries: int = 5,
        settle_timeout: float = 60.0,
        clock: Callable[[], float] = time.time,
        images: Optional[ImageStore] = None,
        new_uuid: Callable[[], str] = lambda: str(uuidlib.uuid4()),
        switch_retry_after: float = 600.0,
    ) -> None:
        if provider not in ("virtualbox", "lxc"):
            raise ValueError(f"vms.provider: {provider!r} is not a Vagrant provider (virtualbox, lxc)")
        self.provider = provider
        self.project_dir = project_dir
        self.vm_name = vm_name
        self.runner = runner
        self.ssh = ssh
        self.state_dir = state_dir
        self.ready_timeout = ready_timeout
        self.spawn = spawn
        self.kill_wait = kill_wait
        self.vagrant = Vagrant(project_dir, runner=runner)
        self.vbox = VBoxManage(runner=runner)
        self.lxc_sandbox = lxc_sandbox or LxcSandbox(runner=runner)
        self.retry_sleep = retry_sleep
        self.retries = retries
        self.settle_timeout = settle_timeout
        self.clock = clock
        self._ssh_config: Optional[str] = None
        self._host: Optional[str] = None
        self._ssh_text: Optional[str] = None  # `vagrant ssh-config` output, read once (LXC: HostName updated)
        self._ip: Optional[str] = None  # LXC: the address the helper read after the last start
        self._identity: Optional[str] = None  # LXC: the image's key, installed as the machine's Vagrant key
        self.images = images
        self.image: Optional[Image] = None  # the published image the VM runs; None: its own snapshot
        self._declined: Optional[str] = None  # a `current` version not taken (incomplete, other provider)
        self.switched = False  # the last reset moved the VM onto another image
        self.new_uuid = new_uuid
        self.switch_retry_after = switch_retry_after
        self._switch_failed: dict[str, float] = {}  # version -> monotonic time of its last failed switch
        # lines for the start of the next build's log (re-created VM, guest clock)
        self.notes: list[str] = []

    def __repr__(self) -> str:
        return f"VagrantExecutor({self.provider}, {self.project_dir}, {self.vm_name})"

    # --- sandbox reset ---------------------------------------------------------------------------

    def prepare(self) -> None:
        started = time.monotonic()
        self.notes = []
        self.switched = False
        try:
            if self.provider == "virtualbox":
                self._reset_virtualbox()
            else:
                self._reset_lxc()
            self._load_ssh_config()
            self._wait_for_ssh()
            if self.provider == "virtualbox":
                self._set_guest_clock()
        except (CommandError, OSError, ImageError) as exc:
            raise SandboxError(
                f"VM {self.vm_name} ({self.provider}, project {self.project_dir}): sandbox reset failed: "
                f"{exc}"
            ) from exc
        image = "its own snapshot" if self.image is None else f"image {self.image.version}"
        switched = " (switched)" if self.switched else ""
        log.info(
            "VM %s reset (%s) in %.2f s: %s%s",
            self.vm_name,
            self.provider,
            time.monotonic() - started,
            image,
            switched,
        )

    # --- images: which image the VM should run (every provider) -----------------------------------

    # Providers whose reset moves the VM onto a newly published image. VirtualBox: add it once
    # _reset_virtualbox switches (linked clone of the image's snapshot) and calls adopt_image().
    SWITCH_PROVIDERS = frozenset({"lxc", "virtualbox"})

    def wanted_image(self) -> Optional[Image]:
        """The published image (``current``) this reset should move the VM onto; None: keep what it runs."""
        if self.images is None or self.provider not in self.SWITCH_PROVIDERS:
            return None
        try:
            image = self.images.current()
        except (OSError, ImageError) as exc:
            log.warning(
                "VM %s: the published image is not readable, keeping what it runs: %s", self.vm_name, exc
            )
            self._declined = self._current_version()
            return None
        if image is None:
            self._declined = self._current_version()
            return None
        if image.provider != self.provider:
            log.warning(
                "VM %s: %s is a %s image, this worker runs %s VMs: not switching",
                self.vm_name,
                image.path,
                image.provider,
                self.provider,
            )
            self._declined = image.version
            return None
        self._declined = None
        if self.image is not None and self.image.version == image.version:
            return None
        return image

    def _current_version(self) -> Optional[str]:
        try:
            return self.images.current_version() if self.images else None
        except (OSError, ImageError):
            return None

    def switch_due(self) -> bool:
        """Cheap (one readlink): has ``current`` moved to a version this VM does not run yet?"""
        if self.images is None or self.provider not in self.SWITCH_PROVIDERS:
            return False
        version = self._current_version()
        if version is None or version == self._declined:
            return False
        return self.image is None or version != self.image.version

    def adopt_image(self, image: Optional[Image]) -> None:
        """Record the image the VM runs now (None: its own snapshot), also in the store's ``users/<vm>``."""
        self.image = image
        if self.images is None:
            return
        try:
            self.images.record_user(self.vm_name, image)
        except OSError as exc:  # pruning then does not know this VM uses it: say so loudly
            log.error("VM %s: could not record its image in %s/users: %s", self.vm_name, self.images.dir, exc)

    def _reset_virtualbox(self) -> None:
        if self._switch_virtualbox_if_due():
            return  # a fresh linked clone, booted once, `sandbox` just taken of it: that is the clean state
        uuid = virtualbox_id(self.project_dir, self.vm_name)
        if SANDBOX_SNAPSHOT not in self.vbox.snapshots(uuid):
            self._recreate_virtualbox(f"it has no snapshot {SANDBOX_SNAPSHOT!r}")
            return
        self._power_off(uuid)
        try:
            self._retry(lambda: self.vbox.restore_snapshot(uuid, SANDBOX_SNAPSHOT))
            self._retry(lambda: self.vbox.start_headless(uuid))
        except CommandError as exc:
            if transient(exc):  # still locked after the retries: not the snapshot's fault
                raise
            self._recreate_virtualbox(
                f"its snapshot {SANDBOX_SNAPSHOT!r} could not be restored and started: {exc}"
            )

    def _power_off(self, uuid: str) -> None:
        """Bring the VM to an offline state: power off any online one, wait out transitions."""
        deadline = time.monotonic() + self.settle_timeout
        while True:
            state = self.vbox.state(uuid)
            if state in OFFLINE_STATES:
                return
            if state in POWER_OFF_STATES:
                log.info("VM %s is %s: powering it off", self.vm_name, state)
                try:
                    self.vbox.poweroff(uuid)
                except CommandError as exc:
                    if not transient(exc) or time.monotonic() >= deadline:
                        raise
                    log.info("VM %s: power-off refused for now, retrying: %s", self.vm_name, exc)
                else:
                    continue  # read the state again: poweroff returns before the session is released
            if time.monotonic() >= deadline:
                raise SandboxError(
                    f"VM {self.vm_name} ({uuid}) is still {state or 'in an unknown state'!r} after "
                    f"{self.settle_timeout:g} s; see `VBoxManage showvminfo {uuid}`"
                )
            time.sleep(self.retry_sleep)

    def _retry(self, step: Callable[[], None]) -> None:
        """Run ``step``; retry (bounded) while VirtualBox reports the session or state still in transition."""
        for attempt in range(1, self.retries + 1):
            try:
                step()
                return
            except CommandError as exc:
                if attempt == self.retries or not transient(exc):
                    raise
                log.info(
                    "VM %s: VirtualBox not ready (try %d/%d): %s", self.vm_name, attempt, self.retries, exc
                )
                time.sleep(self.retry_sleep)

    def _recreate_virtualbox(self, why: str) -> None:
        """Re-create the VM from its box and take ``sandbox`` of that clean VM (as GitLab's executor does)."""
        message = (
            f"VM {self.vm_name}: {why}; re-creating it from its box (vagrant destroy + up) and taking "
            f"snapshot {SANDBOX_SNAPSHOT!r} of it. The recipes applied to the VM are not in it until "
            f"playbooks/reprovision.yml (or site.yml with the worker stopped) runs again."
        )
        log.warning("%s", message)
        self.notes.append(message)
        self.vagrant.destroy(self.vm_name)
        self.vagrant.up(self.vm_name, "virtualbox")
        self.vbox.take_snapshot(virtualbox_id(self.project_dir, self.vm_name), SANDBOX_SNAPSHOT)

    # --- VirtualBox: switching to a published image (issue #13) ------------------------------------

    def _vbox_data_dir(self) -> Path:
        return Path(self.project_dir) / ".vagrant" / "machines" / self.vm_name / "virtualbox"

    def _vbox_recorded_image(self) -> Optional[Image]:
        """The image this VM runs per its record (``travis_image.json`` beside Vagrant's ``id``).

        The record counts only while it names Vagrant's current id: a VM re-created from its box has a new
        id, so it runs no image.
        """
        assert self.images is not None
        try:
            record = json.loads((self._vbox_data_dir() / VBOX_IMAGE_RECORD).read_text(encoding="utf-8"))
            current = virtualbox_id(self.project_dir, self.vm_name)
        except (OSError, ValueError):
            return None
        if not isinstance(record, dict) or record.get("uuid") != current:
            return None
        try:
            return read_image(self.images.dir / str(record.get("version")))
        except (OSError, ImageError) as exc:
            log.warning("VM %s: the image it runs is not readable in the store: %s", self.vm_name, exc)
            return None

    def _switch_virtualbox_if_due(self) -> bool:
        """Move the VM onto the store's ``current`` image when it runs another one; True when it did.

        A failed switch leaves the VM on what it ran (the normal reset follows), says why in the worker
        log and the next build's log, is not retried while idle (``switch_due``) and is tried again at a
        job boundary after ``switch_retry_after`` s.
        """
        if self.images is None:
            return False
        self.image = self._vbox_recorded_image()
        target = self.wanted_image()
        if target is not None:
            failed_at = self._switch_failed.get(target.version)
            if failed_at is None or time.monotonic() - failed_at >= self.switch_retry_after:
                try:
                    self._switch_virtualbox(target)
                    self.switched = True
                    return True
                except (CommandError, OSError, ValueError, KeyError, SandboxError) as exc:
                    self._switch_failed[target.version] = time.monotonic()
                    self._declined = target.version
                    was = (
                        f"image {self.image.version}" if self.image else "the VM it had (no published image)"
                    )
                    message = (
                        f"VM {self.vm_name}: switching to image {target.box} {target.version} failed; it "
                        f"stays on {was}: {exc}"
                    )
                    log.warning("%s", message)
                    self.notes.append(message)
        self.adopt_image(self.image)
        return False

    def _switch_virtualbox(self, image: Image) -> None:
        """Replace the VM by a linked clone of the image VM's snapshot; delete the old VM once it works.

        Power the old VM off (the clone gets the same forwarded ports), ``clonevm --options link`` under a
        temporary name and a new UUID, rename the old VM (the Vagrantfile's ``vb.name`` is unique, and
        Vagrant's SetName refuses a name another VM holds), point Vagrant at the clone (``id``, and the
        image's ``private_key`` as Vagrant's Import#clone copies the master's), ``vagrant up --no-provision``
        (its boot actions for a created VM: name, forwarded ports, NICs, memory/cpus, hostname), take
        ``sandbox``, wait for SSH. Any failure before that: the clone is deleted and Vagrant points at the
        old VM again, under its old name.
        """
        started = time.monotonic()
        spec = json.loads((image.path / "vm.json").read_text(encoding="utf-8"))
        source, snapshot = str(spec["uuid"]), str(spec["snapshot"])
        key = (image.path / "private_key").read_bytes()
        data_dir = self._vbox_data_dir()
        id_file, key_file = data_dir / "id", data_dir / "private_key"
        old = id_file.read_text(encoding="utf-8").strip() if id_file.is_file() else ""
        kept = {
            n: (data_dir / n).read_bytes()
            for n in ("private_key", VAGRANT_PROVISIONED)
            if (data_dir / n).is_file()
        }
        old_name = ""
        if old:
            try:
                old_name = self.vbox.info(old).get("name", "")
            except CommandError as exc:
                if "VBOX_E_OBJECT_NOT_FOUND" not in exc.completed.stderr:
                    raise
                # Vagrant's id names a VM VirtualBox no longer has: the clone replaces it, nothing to retire
                log.warning(
                    "VM %s: its VirtualBox VM %s is gone; replacing it by the clone", self.vm_name, old
                )
                old = ""
        if old:
            self._power_off(old)
        new = self.new_uuid()
        log.info("VM %s: switching to image %s %s (linked clone %s of %s, snapshot %r)", self.vm_name,
                 image.box, image.version, new, source, snapshot)  # fmt: skip
        self.vbox.clone_linked(
            source, snapshot, name=f"travis-{self.vm_name}-{image.version}-{new[:8]}", uuid=new
        )
        renamed = False
        try:
            if old and old_name:
                self.vbox.rename(old, f"{old_name}-retired-{old[:8]}")
                renamed = True
            data_dir.mkdir(parents=True, exist_ok=True)
            _write_atomic(id_file, new.encode(), 0o644)
            _write_atomic(key_file, key, 0o600)
            self.vagrant.up(self.vm_name, "virtualbox", provision=False)
            self.vbox.take_snapshot(new, SANDBOX_SNAPSHOT)
            self._load_ssh_config()
            self._wait_for_ssh()
        except (CommandError, OSError, SandboxError):
            self._undo_switch(new, old, old_name if renamed else "", kept)
            raise
        # Vagrant's Provision action removed the sentinel naming the old id and, with --no-provision, wrote
        # none: write it for the clone ("1.5:<id>", lib/vagrant/action/builtin/provision.rb), or the next
        # plain `vagrant up` of this machine would run the provisioners on the image again.
        _write_atomic(data_dir / VAGRANT_PROVISIONED, f"1.5:{new}".encode(), 0o644)
        record = {"uuid": new, "version": image.version, "digest": image.digest, "box": image.box}
        _write_atomic(data_dir / VBOX_IMAGE_RECORD, json.dumps(record).encode(), 0o644)
        self.adopt_image(image)
        if old:
            try:
                self.vbox.unregister_delete(old)
            except CommandError as exc:
                log.warning("VM %s: the replaced VM %s is still registered; delete it with `VBoxManage "
                            "unregistervm %s --delete`: %s", self.vm_name, old, old, exc)  # fmt: skip
        note = (
            f"VM {self.vm_name}: switched to image {image.box} {image.version} (digest {image.digest[:12]}) "
            f"in {time.monotonic() - started:.1f} s: linked clone {new} of {source} snapshot {snapshot!r}"
        )
        log.info("%s", note)
        self.notes.append(note)

    def _undo_switch(self, new: str, old: str, old_name: str, kept: dict[str, bytes]) -> None:
        """Best effort: delete the clone, point Vagrant at the old VM again under its old name.

        ``kept``: the files of Vagrant's data dir the switch replaced (private_key, the provision sentinel).
        """
        data_dir = self._vbox_data_dir()
        for step, action in (
            ("power off the clone", lambda: self._power_off(new)),
            ("delete the clone", lambda: self.vbox.unregister_delete(new)),
            ("rename the old VM back", lambda: self.vbox.rename(old, old_name) if old_name else None),
        ):
            try:
                action()
            except (CommandError, OSError, SandboxError) as exc:
                log.warning("VM %s: after the failed switch, could not %s: %s", self.vm_name, step, exc)
        if old:
            _write_atomic(data_dir / "id", old.encode(), 0o644)
        else:
            (data_dir / "id").unlink(missing_ok=True)
        for name in ("private_key", VAGRANT_PROVISIONED):
            if name in kept:
                _write_atomic(data_dir / name, kept[name], 0o600 if name == "private_key" else 0o644)
            else:
                (data_dir / name).unlink(missing_ok=True)
        self._ssh_config = self._host = None

    def _set_guest_clock(self) -> None:
        """The live snapshot resumes at the time it was taken: set the guest clock to the host's UTC time."""
        now = self.clock()
        done = self.runner([*self._ssh_argv(), REMOTE_CLOCK.format(epoch=f"{now:.3f}")], timeout=30)
        fields = done.stdout.split()
        if done.returncode != 0 or len(fields) != 2 or not all(f.isdigit() for f in fields):
            note = f"Guest clock NOT set (the build runs with the snapshot's time): {CommandError(done)}"
            log.warning("VM %s: %s", self.vm_name, note)
        else:
            before, after = int(fields[0]), int(fields[1])
            note = (
                f"Guest clock set from the worker host: {_utc(after)} (was {_utc(before)}, "
                f"{after - before:+d} s)"
            )
            log.info("VM %s: %s", self.vm_name, note)
        self.notes.append(note)

    def _reset_lxc(self) -> None:
        container = lxc_container(self.project_dir, self.vm_name)
        self._ip = None
        if not self.lxc_sandbox.available():
            log.warning(
                "VM %s: %s is missing, so the VM is re-created from its box before each build and the "
                "recipes applied to it are lost; converge the box (travis.worker.lxc role) to install it",
                self.vm_name,
                self.lxc_sandbox.helper,
            )
            self.vagrant.destroy(self.vm_name)
            self.vagrant.up(self.vm_name, "lxc")
            return
        if container is None:
            log.info("VM %s is not created: bringing it up from its box", self.vm_name)
            self.vagrant.up(self.vm_name, "lxc")
            container = lxc_container(self.project_dir, self.vm_name)
            if container is None:
                raise OSError(f"`vagrant up {self.vm_name}` left no .vagrant/machines/{self.vm_name}/lxc/id")
        target = self.wanted_image()
        # a VM on an image (or moving onto one) has its clean lower layer: no status call on that path
        if target is None and self.image is None and not self.lxc_sandbox.exists(container):
            log.info("VM %s (container %s) has no snapshot %r: taking it now", self.vm_name, container,
                     SANDBOX_SNAPSHOT)  # fmt: skip
            self.lxc_sandbox.save(container)
        if target is not None:
            log.info(
                "VM %s: moving onto image %s (digest %.12s)", self.vm_name, target.version, target.digest
            )
        info = self.lxc_sandbox.reset(
            container, str(target.path) if target else None, wait=self.ready_timeout
        )
        self._ip = info["ip"]
        self.switched = info.get("switched") is True
        on = info.get("image")
        image = self.images.image_of(on) if self.images is not None and isinstance(on, str) else None
        if isinstance(on, str) and image is None:
            log.warning("VM %s runs %s, which is not an image of %s", self.vm_name, on, self.images)
        self._identity = self._install_key(image) if image is not None else None
        self.adopt_image(image)

    def _install_key(self, image: Image) -> str:
        """Make the image's ``private_key`` the machine's Vagrant key (the image accepts only that one)."""
        path = lxc_private_key(self.project_dir, self.vm_name)
        try:
            key = image.private_key.read_bytes()
        except OSError as exc:
            raise OSError(f"image {image.path} has no readable private_key ({exc.strerror})") from None
        try:
            if path.read_bytes() == key:
                return str(path)
        except OSError:
            pass
        tmp = path.with_name(f".{path.name}.tmp")
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as handle:
            handle.write(key)
        os.replace(tmp, path)
        log.info("VM %s: its Vagrant key is now the one of image %s", self.vm_name, image.version)
        return str(path)

    def _load_ssh_config(self) -> None:
        if self._ip is None or self._ssh_text is None:
            self._ssh_text = self.vagrant.ssh_config(self.vm_name)
        text = self._ssh_text
        if self._ip is not None:  # LXC, started by the helper: the address it read, no `vagrant ssh-config`
            text = _rewrite_ssh_config(text, self._ip, self._identity)
        hosts = parse_ssh_config(text)
        host = self.vm_name if self.vm_name in hosts else next(iter(hosts), None)
        if host is None or "hostname" not in hosts[host]:
            raise SandboxError(
                f"VM {self.vm_name} (project {self.project_dir}): `vagrant ssh-config {self.vm_name}` "
                f"printed no Host with a HostName (is the VM running?): {text.strip()[:200]!r}"
            )
        if self.state_dir is None:
            self.state_dir = tempfile.mkdtemp(prefix="travis-worker-ssh-")
        path = os.path.join(self.state_dir, f"ssh-config-{self.vm_name}")
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)
        self._ssh_config, self._host = path, host

    def _ssh_argv(self, *extra: str) -> list[str]:
        assert self._ssh_config and self._host
        return [self.ssh, "-F", self._ssh_config, *SSH_OPTIONS, *extra, self._host]

    def _wait_for_ssh(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while True:
            done = self.runner([*self._ssh_argv(), "true"], timeout=30)
            if done.returncode == 0:
                return
            if time.monotonic() >= deadline:
                raise CommandError(done, f"SSH not ready after {self.ready_timeout:g} s")
            time.sleep(0.25)

    # --- the build -------------------------------------------------------------------------------

    def run(
        self,
        script: str,
        on_output: Callable[[bytes], None],
        cancel: threading.Event,
        limits: Limits,
        on_start: Optional[Callable[[], None]] = None,
    ) -> BuildResult:
        if on_start is not None:  # the upload's SSH round trips are slow: no reason to hold anything back
            on_start()
        try:
            if self._ssh_config is None:
                self._load_ssh_config()
            upload = self.runner([*self._ssh_argv(), _UPLOAD], timeout=120, input=script)
            if upload.returncode != 0:
                raise CommandError(upload, "uploading the build script")
        except (CommandError, OSError, SandboxError) as exc:
            self._write_notes(on_output)
            reason = f"VM {self.vm_name}: {exc}"
            on_output(f"\r\n{reason}\r\n".encode())
            return BuildResult("errored", reason, None)
        self._write_notes(on_output)
        env = cli_env()
        env["TERM"] = "xterm"
        proc, master = self.spawn([*self._ssh_argv("-tt", "-q"), REMOTE_RUN], cwd=None, env=env)
        result = stream_process(proc, master, on_output, cancel, limits, stop=self._kill_remote)
        if result.exit_code == 255:
            return BuildResult(
                "errored", f"the SSH connection to VM {self.vm_name} failed (ssh exit 255)", 255
            )
        return result

    def _write_notes(self, on_output: Callable[[bytes], None]) -> None:
        for note in self.notes:
            on_output(f"{note}\r\n".encode())
        self.notes = []

    def _kill_remote(self) -> None:
        """Kill the remote process group; wait at most ``kill_wait`` s, then let it finish in the background.

        The local ssh client is already dead, so the job is stopped from the worker's point of view;
        bounding the wait keeps a cancel within its 2 s even when a new SSH connection is slow.
        """
        thread = threading.Thread(target=self._kill_remote_now, name=f"kill-{self.vm_name}", daemon=True)
        thread.start()
        thread.join(self.kill_wait)
        if thread.is_alive():
            log.info(
                "VM %s: remote kill still running after %.1f s; continuing", self.vm_name, self.kill_wait
            )

    def _kill_remote_now(self) -> None:
        done = self.runner([*self._ssh_argv(), REMOTE_KILL], timeout=30)
        if done.returncode != 0:
            log.warning(
                "VM %s: killing the remote build may have failed: %s", self.vm_name, CommandError(done)
            )


def _rewrite_ssh_config(text: str, ip: str, identity: Optional[str]) -> str:
    """``vagrant ssh-config`` output with HostName ``ip`` and, when given, ``identity`` as the only key."""
    lines = []
    for line in text.splitlines():
        key = line.strip().split(" ", 1)[0].lower()
        indent = line[: len(line) - len(line.lstrip())]
        if key == "hostname":
            line = f"{indent}HostName {ip}"
        elif key == "identityfile" and identity is not None:
            if any(seen.strip().lower().startswith("identityfile ") for seen in lines):
                continue
            line = f'{indent}IdentityFile "{identity}"'
        lines.append(line)
    return "\n".join(lines) + "\n"


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _utc(epoch: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
