"""The ``local`` executor: the build script runs with bash in a fresh directory on this host.

Build directories live under one root (``build_root``, default ``<TMPDIR>/travis-worker-builds``), in a
directory per worker process named ``<host>_<pid>_<start time in clock ticks>``; a worker killed with
``kill -9`` leaves its build there, and the next worker that starts on the host removes it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import stat
import tempfile
import threading
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


class LocalExecutor:
    """Runs each job in ``<build_root>/<owner>/travis-worker-job-XXXX`` (removed afterwards) as this user."""

    def __init__(self, *, work_root: Optional[str] = None, bash: str = "bash") -> None:
        self.work_root = work_root
        self.bash = bash

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

    def prepare(self) -> None:
        if shutil.which(self.bash) is None:
            raise SandboxError(f"local executor: {self.bash!r} not found on PATH; install bash")
        try:
            self._owner_dir()
        except OSError as exc:
            raise SandboxError(
                f"local executor: cannot create job directories in {self.root!r} ({exc.strerror}); "
                "create it or set build_root"
            ) from None
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise SandboxError(
                f"local executor: cannot create job directories in {self.root!r} (not writable)"
            )

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
    ) -> BuildResult:
        job_dir = tempfile.mkdtemp(prefix="travis-worker-job-", dir=self._owner_dir())
        try:
            script_path = os.path.join(job_dir, "build.sh")
            with open(script_path, "w", encoding="utf-8") as handle:
                handle.write(script)
            log.debug("running %s in %s", script_path, job_dir)
            proc, master = spawn_in_pty(
                [self.bash, "--noprofile", "--norc", script_path], cwd=job_dir, env=self._environment(job_dir)
            )
            return stream_process(proc, master, on_output, cancel, limits)
        finally:
            # Removed in the background (a clone takes 20-40 ms to delete on a busy host): the result is
            # reported without waiting. Not a daemon thread: the interpreter waits for it at exit.
            threading.Thread(target=remove_tree, args=(job_dir,), name="job-dir-cleanup").start()
