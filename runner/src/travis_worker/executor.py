"""Executors run a build script in a sandbox and stream its output live.

* ``local``: a fresh temporary directory on this host (:mod:`travis_worker.executor_local`).
* ``virtualbox`` / ``lxc``: a Vagrant machine over SSH (:mod:`travis_worker.executor_vagrant`).

Both run the script under a pseudo-terminal in its own session (process group) and share
:func:`stream_process`, which enforces :class:`Limits` and cancellation.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import logging
import os
import select
import shutil
import signal
import struct
import subprocess
import termios
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional, Protocol

from .script import EXIT_ERRORED, EXIT_FAILED, EXIT_PASSED

log = logging.getLogger(__name__)

PROVIDERS = ("local", "virtualbox", "lxc")
_READ_SIZE = 64 * 1024
_POLL_SECONDS = 0.1
_TERM_GRACE_SECONDS = 0.5
_DRAIN_SECONDS = 0.5
_ROWS, _COLUMNS = 50, 132


@dataclass(frozen=True)
class Limits:
    hard_limit: float  # seconds for the whole build
    log_silence: float  # seconds without any output
    log_length: int  # bytes of log


@dataclass(frozen=True)
class BuildResult:
    state: str  # passed|failed|errored|cancelled
    reason: Optional[str]
    exit_code: Optional[int]
    # seconds the build script ran (hand-over to exit), if it ran; a measurement, not part of the result
    duration: Optional[float] = dataclasses.field(default=None, compare=False)


class SandboxError(RuntimeError):
    """prepare() could not reset the sandbox: the job goes back to the queue, the worker is errored."""


class Executor(Protocol):
    def prepare(self) -> None: ...

    def run(
        self,
        script: str,
        on_output: Callable[[bytes], None],
        cancel: threading.Event,
        limits: Limits,
        on_start: Optional[Callable[[], None]] = None,
    ) -> BuildResult:
        """Run ``script``; ``on_start`` is called once the build is under way (local: its process has the
        script; Vagrant: before the upload, whose SSH round trips take far longer than a report)."""


def result_for_exit(code: int) -> BuildResult:
    """Map the build script's exit status to a result (see :mod:`travis_worker.script`)."""
    if code == EXIT_PASSED:
        return BuildResult("passed", None, code)
    if code == EXIT_FAILED:
        return BuildResult("failed", None, code)
    if code == EXIT_ERRORED:
        return BuildResult("errored", None, code)
    if code < 0:
        return BuildResult("errored", f"the build script was killed by signal {-code}", code)
    return BuildResult("errored", f"the build script exited with unexpected status {code}", code)


def kill_group(proc: subprocess.Popen, grace: float = _TERM_GRACE_SECONDS) -> None:
    """SIGTERM the process group of ``proc`` (a session leader), wait ``grace`` s for it, SIGKILL the rest.

    Members still alive after the leader are killed at once: a build that ended or was stopped has no
    business leaving processes behind.
    """
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        if proc.poll() is None:  # started, but not yet its own session (setsid not reached)
            proc.kill()
            proc.wait()
        return
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def _session_prefix() -> Optional[list[str]]:
    """``setpriv --pdeathsig KILL setsid --ctty``: the build dies with the worker (even on kill -9) and
    gets the PTY as its controlling terminal, so the kernel hangs up the whole session when it ends.
    None when util-linux is missing (then Popen's ``start_new_session`` is used)."""
    setpriv, setsid = shutil.which("setpriv"), shutil.which("setsid")
    if setpriv and setsid:
        return [setpriv, "--pdeathsig", "KILL", setsid, "--ctty"]
    return None


def spawn_in_pty(
    argv: list[str], *, cwd: Optional[str], env: dict[str, str], pass_fds: tuple[int, ...] = ()
) -> tuple[subprocess.Popen, int]:
    """Start ``argv`` as a session leader with a PTY as its stdio; return (proc, PTY master).

    The process group id of the build is ``proc.pid``. The process must be spawned from the thread
    that waits for it (a parent-death signal follows the spawning thread).
    """
    prefix = _session_prefix()
    master, slave = os.openpty()
    # A real terminal size: tools that draw progress bars or wrap lines ask for it.
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", _ROWS, _COLUMNS, 0, 0))
    try:
        proc = subprocess.Popen(
            [*prefix, *argv] if prefix else argv,
            cwd=cwd,
            env=env,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            start_new_session=prefix is None,
            close_fds=True,
            pass_fds=pass_fds,
        )
    except BaseException:
        os.close(master)
        raise
    finally:
        os.close(slave)
    return proc, master


def _read(master: int) -> Optional[bytes]:
    """Read what is available; b"" when nothing yet, None at end of output."""
    try:
        data = os.read(master, _READ_SIZE)
    except OSError as exc:
        if exc.errno == errno.EIO:  # Linux: every slave descriptor closed
            return None
        if exc.errno in (errno.EAGAIN, errno.EINTR):
            return b""
        raise
    return data if data else None


def stream_process(
    proc: subprocess.Popen,
    master: int,
    on_output: Callable[[bytes], None],
    cancel: threading.Event,
    limits: Limits,
    stop: Optional[Callable[[], None]] = None,
    started: Optional[float] = None,
) -> BuildResult:
    """Pump the PTY of ``proc`` to ``on_output`` until it ends, a limit is hit or ``cancel`` is set.

    ``stop`` is called (after the local process group is killed) to stop work elsewhere, e.g. the
    remote process group behind an SSH client. ``master`` is closed on return. ``started``: the
    ``time.monotonic()`` at which the build began to run (default: now), from which the hard limit and the
    result's duration count.
    """
    started = last_output = time.monotonic() if started is None else started
    written = 0
    exited_at: Optional[float] = None
    stopped: Optional[BuildResult] = None
    try:
        while True:
            now = time.monotonic()
            if cancel.is_set():
                stopped = BuildResult("cancelled", "cancelled on request", None)
                message = "Done: Job Cancelled"
            elif now - started >= limits.hard_limit:
                stopped = BuildResult("errored", f"hard time limit of {limits.hard_limit:g} s exceeded", None)
                message = (
                    f"The job exceeded the maximum time limit for jobs ({limits.hard_limit:g} s), "
                    "and has been terminated."
                )
            elif now - last_output >= limits.log_silence:
                stopped = BuildResult(
                    "errored", f"no output for {limits.log_silence:g} s (log-silence limit)", None
                )
                message = (
                    f"No output has been received in the last {limits.log_silence:g} seconds, this "
                    "potentially indicates a stalled build or something wrong with the build itself."
                )
            if stopped is not None:
                break
            if exited_at is None and proc.poll() is not None:
                exited_at = now
            if exited_at is not None and now - exited_at >= _DRAIN_SECONDS:
                break  # the script is done; background children still hold the PTY open
            timeout = _POLL_SECONDS if exited_at is None else max(0.0, _DRAIN_SECONDS - (now - exited_at))
            ready, _, _ = select.select([master], [], [], min(timeout, _POLL_SECONDS))
            if not ready:
                continue
            data = _read(master)
            if data is None:
                break
            if not data:
                continue
            last_output = time.monotonic()
            room = limits.log_length - written
            if len(data) > room:
                if room > 0:
                    on_output(data[:room])
                written = limits.log_length
                stopped = BuildResult(
                    "errored", f"log length limit of {limits.log_length} bytes exceeded", None
                )
                message = (
                    f"The job exceeded the maximum log length ({limits.log_length} bytes), "
                    "and has been terminated."
                )
                break
            written += len(data)
            on_output(data)
    finally:
        kill_group(proc)
        if stopped is not None and stop is not None:
            try:
                stop()
            except Exception:  # the local side is stopped; report, never mask the result
                log.exception("stopping the remote build failed")
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL was sent
            log.error("build process %s did not exit after SIGKILL", proc.pid)
        os.close(master)
    duration = time.monotonic() - started
    if stopped is not None:
        on_output(f"\r\n\r\n{message}\r\n".encode())
        return dataclasses.replace(stopped, duration=duration)
    return dataclasses.replace(result_for_exit(proc.returncode), duration=duration)


def make_executor(
    provider: str,
    *,
    project_dir: Optional[str],
    vm_name: Optional[str],
    build_root: Optional[str] = None,
    image_store: Optional[str] = None,
    box: Optional[str] = None,
) -> Executor:
    """An executor for ``vms.provider``: ``local`` (builds in ``build_root``), ``virtualbox`` or ``lxc``.

    With ``box`` (``vms.box``) the Vagrant executors follow the images of that box in ``image_store``."""
    if provider == "local":
        from .executor_local import LocalExecutor

        return LocalExecutor(work_root=build_root, defer_removal=True)
    if provider in ("virtualbox", "lxc"):
        if not project_dir or not vm_name:
            raise ValueError(
                f"vms.provider {provider!r} needs vms.project_dir (the Vagrantfile's directory) and a VM name"
            )
        from .executor_vagrant import VagrantExecutor
        from .images import ImageStore

        images = ImageStore(image_store, box) if image_store and box else None
        return VagrantExecutor(provider, project_dir=project_dir, vm_name=vm_name, images=images)
    raise ValueError(f"vms.provider: {provider!r} is not one of {', '.join(PROVIDERS)}")
