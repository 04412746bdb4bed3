"""The ``local`` executor: the build script runs with bash in a fresh directory on this host.

The build's process (PTY + ``setpriv --pdeathsig KILL setsid --ctty bash``) and its directory are made ahead,
in :meth:`LocalExecutor.prepare` (after each build and at start-up, off the pickup path): the process waits in
its directory on a pipe, and a job only writes its script there (see :class:`Waiting`).

Build directories live under one root (``build_root``, default ``<TMPDIR>/travis-worker-builds``), in a
directory per worker process named ``<host>_<pid>_<start time in clock ticks>``; a worker killed with
``kill -9`` leaves its build there, and the next worker that starts on the host removes it. A finished
build's directory is removed by an ``rm -rf`` process (the worker's threads do no file system work for it),
and by :func:`remove_tree` in the worker when that fails (e.g. a directory the build made read-only).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import stat
import subprocess
import tempfile
import threading
import time
from typing import Any, Callable, Optional

from .executor import BuildResult, Limits, SandboxError, spawn_in_pty, stream_process

log = logging.getLogger(__name__)

# Only these variables of the worker's environment reach a local build (no worker secrets).
_PASSED_ENV = ("PATH", "LANG", "LC_ALL", "TZ", "USER", "LOGNAME", "SHELL")
DEFAULT_ROOT_NAME = "travis-worker-builds"


def process_start(pid: int) -> Optional[str]:
    """The start time of process ``pid`` (clock ticks after boot, /proc/<pid>/stat field 22), None if it
    does not exist. With the pid it names one process: a reused pid has another start time."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            data = handle.read()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2 :].split()  # after "pid (comm) ": field 3 onwards
    return fields[19].decode() if len(fields) > 19 else None


def owner_name(pid: Optional[int] = None) -> str:
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}_{pid}_{process_start(pid) or '0'}"


def _is_dead_owner(name: str, host: str) -> bool:
    """True for ``<host>_<pid>_<start>`` of this host whose process is gone (anything else: not ours)."""
    parts = name.rsplit("_", 2)
    if len(parts) != 3 or parts[0] != host or not parts[1].isdigit():
        return False
    return process_start(int(parts[1])) != parts[2]


def remove_tree(path: str) -> None:
    """rm -rf, also through directories a build made read-only (e.g. a Go module cache)."""

    def retry_writable(func: Any, failed: str, _exc: Any) -> None:
        parent = os.path.dirname(failed)
        try:
            os.chmod(parent, stat.S_IRWXU)
            if os.path.isdir(failed) and not os.path.islink(failed):
                os.chmod(failed, stat.S_IRWXU)
            func(failed)
        except OSError:
            pass

    shutil.rmtree(path, onerror=retry_writable)


# The waiting shell, started in its job directory (its cwd, HOME and TMPDIR, as a freshly spawned build's):
# sources the build script from its pipe (bash reads all of it, up to EOF, before running any of it); the
# worker puts ``exec N<&-`` in front, so the build does not keep the pipe. EOF with nothing written (the
# worker gone or closing) runs nothing: the shell exits.
_WAIT = ". /dev/fd/{fd}"


class Waiting:
    """A build process spawned ahead in its job directory: session leader on its own PTY, blocked on reading
    its script from a pipe.

    Spawned by the thread that later runs the build (the parent-death signal follows the spawning thread),
    so it dies with the worker, even on ``kill -9``."""

    def __init__(self, bash: str, job_dir: str, env: dict[str, str]) -> None:
        read_end, self.go = os.pipe()
        try:
            os.set_inheritable(read_end, True)
            self.proc, self.master = spawn_in_pty(
                [bash, "--noprofile", "--norc", "-c", _WAIT.format(fd=read_end)],
                cwd=job_dir,
                env=env,
                pass_fds=(read_end,),
            )
        except BaseException:
            os.close(self.go)
            raise
        finally:
            os.close(read_end)
        self.fd = read_end  # its number in the waiting shell (pass_fds keeps it)
        self.job_dir = job_dir
        self.thread = threading.get_ident()

    def usable(self) -> bool:
        """Alive, and spawned by the calling thread."""
        return self.thread == threading.get_ident() and self.proc.poll() is None

    def start(self, script: str) -> bool:
        """Hand the build script over (the pipe closed after it: the shell runs it); False if the process is
        gone before it had all of it."""
        go, self.go = self.go, -1
        data = memoryview(f"exec {self.fd}<&-\n{script}".encode())
        try:
            while data:  # a script beyond the pipe's buffer: the shell reads while we write
                data = data[os.write(go, data) :]
        except OSError:
            return False
        finally:
            os.close(go)
        return True

    def close(self) -> None:
        """End it unused (worker stopping): EOF on its pipe, then SIGKILL; its PTY closed."""
        if self.go >= 0:
            os.close(self.go)
            self.go = -1
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        os.close(self.master)


class LocalExecutor:
    """Runs each job in ``<build_root>/<owner>/travis-worker-job-XXXX`` (removed afterwards) as this user."""

    def __init__(
        self, *, work_root: Optional[str] = None, bash: str = "bash", defer_removal: bool = False
    ) -> None:
        """`defer_removal` (the worker's): a finished build's directory is removed from the next prepare()
        on (the reset after the build, which the worker starts once the job's report tail is delivered),
        close() or run(), not as the build ends: removing it would compete with the job's last round trips
        and reports."""
        self.work_root = work_root
        self.bash = bash
        self.waiting: Optional[Waiting] = None  # the next build's process and directory, made by prepare()
        self.defer_removal = defer_removal
        self._leftover: Optional[str] = None  # a finished build's directory, not removed yet
        self._removals: list[tuple[str, subprocess.Popen]] = []  # rm -rf processes not reaped yet

    def _remove_leftover(self) -> None:
        """Start removing the last build's directory (a clone takes 5-40 ms to delete): an ``rm -rf``
        process, checked (and reaped) by the next prepare() or close()."""
        job_dir, self._leftover = self._leftover, None
        if job_dir is not None:
            self._remove(job_dir)

    def _remove(self, job_dir: str) -> None:
        self._reap_removals()
        try:
            rm = subprocess.Popen(
                ["rm", "-rf", "--", job_dir],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        except OSError as exc:
            log.debug("rm -rf not started (%s); removing %s in the worker", exc, job_dir)
            self._remove_in_thread(job_dir)
            return
        self._removals.append((job_dir, rm))

    def _reap_removals(self, wait: float = 0.0) -> None:
        """Reap the finished ``rm -rf`` processes (waiting up to ``wait`` s for the others); a directory one
        could not remove (read-only parts, ...) is removed by :func:`remove_tree` instead."""
        pending = []
        for job_dir, rm in self._removals:
            if wait:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    rm.wait(timeout=wait)
            rm.poll()
            if rm.returncode is None:
                pending.append((job_dir, rm))
            elif os.path.lexists(job_dir):
                log.debug("rm -rf %s exited %s; removing the rest in the worker", job_dir, rm.returncode)
                self._remove_in_thread(job_dir)
        self._removals = pending

    @staticmethod
    def _remove_in_thread(job_dir: str) -> None:
        # Not a daemon thread: the interpreter waits for it at exit.
        threading.Thread(target=remove_tree, args=(job_dir,), name="job-dir-cleanup").start()

    @property
    def root(self) -> str:
        """The build root: ``work_root`` (must exist) or ``<TMPDIR>/travis-worker-builds`` (created)."""
        return self.work_root or os.path.join(tempfile.gettempdir(), DEFAULT_ROOT_NAME)

    def _owner_dir(self) -> str:
        if self.work_root is None:
            os.makedirs(self.root, mode=0o700, exist_ok=True)
        path = os.path.join(self.root, owner_name())
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, mode=0o700)  # a configured build_root must exist: no silent mkdir -p of a typo
        return path

    def _job_dir(self) -> str:
        return tempfile.mkdtemp(prefix="travis-worker-job-", dir=self._owner_dir())

    def prepare(self) -> None:
        """The sandbox reset: the last build's directory removed, the next build's directory and process
        (waiting for its script) made, unless a usable one is there already."""
        self._remove_leftover()
        if self.waiting is not None and not self.waiting.usable():
            self._drop_waiting()
        if self.waiting is not None:
            return
        if shutil.which(self.bash) is None:
            raise SandboxError(f"local executor: {self.bash!r} not found on PATH; install bash")
        try:
            job_dir = self._job_dir()
        except OSError as exc:
            raise SandboxError(
                f"local executor: cannot create job directories in {self.root!r} ({exc.strerror}); "
                "create it or set build_root"
            ) from None
        try:
            self.waiting = Waiting(self.bash, job_dir, self._environment(job_dir))
        except OSError as exc:
            self._remove(job_dir)
            raise SandboxError(f"local executor: cannot start the build's shell: {exc}") from None

    def _drop_waiting(self) -> None:
        """End the process spawned ahead (unused) and remove its directory."""
        waiting, self.waiting = self.waiting, None
        if waiting is not None:
            waiting.close()
            self._remove(waiting.job_dir)

    def close(self) -> None:
        """Stop the build process spawned ahead, if any (the worker is stopping); remove the last build's
        directory and its own (waiting for the removals, up to 10 s)."""
        self._remove_leftover()
        self._drop_waiting()
        self._reap_removals(wait=10.0)

    def remove_stale_builds(self) -> list[str]:
        """Remove the build directories of dead worker processes of this host; returns their names."""
        if not os.path.isdir(self.root):
            return []
        host = socket.gethostname()
        removed = []
        for name in sorted(os.listdir(self.root)):
            path = os.path.join(self.root, name)
            if _is_dead_owner(name, host) and os.path.isdir(path) and not os.path.islink(path):
                remove_tree(path)
                removed.append(name)
        return removed

    def _environment(self, home: str) -> dict[str, str]:
        env = {name: os.environ[name] for name in _PASSED_ENV if name in os.environ}
        env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
        env.setdefault("LANG", "C.UTF-8")
        env.update({"HOME": home, "TERM": "xterm", "TMPDIR": home})
        return env

    def run(
        self,
        script: str,
        on_output: Callable[[bytes], None],
        cancel: threading.Event,
        limits: Limits,
        on_start: Optional[Callable[[], None]] = None,
    ) -> BuildResult:
        self._remove_leftover()
        waiting, self.waiting = self.waiting, None
        job_dir = None
        try:
            if waiting is not None and waiting.usable() and waiting.start(script):
                job_dir = waiting.job_dir
                proc, master = waiting.proc, waiting.master
                log.debug("build script handed to the shell waiting in %s", job_dir)
            else:  # none spawned ahead (run without prepare), or it died: spawn one now
                if waiting is not None:
                    log.warning("the build process spawned ahead is gone (or another thread's); spawning one")
                    waiting.close()
                    job_dir = waiting.job_dir  # made by prepare(), empty
                else:
                    job_dir = self._job_dir()
                script_path = os.path.join(job_dir, "build.sh")
                with open(script_path, "w", encoding="utf-8") as handle:
                    handle.write(script)
                log.debug("running %s in %s", script_path, job_dir)
                proc, master = spawn_in_pty(
                    [self.bash, "--noprofile", "--norc", script_path],
                    cwd=job_dir,
                    env=self._environment(job_dir),
                )
            started = time.monotonic()  # the script runs from here on, also while on_start does its work
            if on_start is not None:
                on_start()
            return stream_process(proc, master, on_output, cancel, limits, started=started)
        finally:
            # Removed in the background (a clone takes 5-40 ms to delete): the result is reported without
            # waiting; with defer_removal, only from the next prepare() on (after the report tail)
            if job_dir is not None:
                self._leftover = job_dir
            if not self.defer_removal:
                self._remove_leftover()
