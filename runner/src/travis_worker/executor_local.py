"""The ``local`` executor: the build script runs with bash in a fresh directory on this host.

The build's process (PTY + ``setpriv --pdeathsig KILL setsid --ctty bash``) is spawned ahead, in
:meth:`LocalExecutor.prepare` (after each build and at start-up, off the pickup path): it waits on a pipe,
and a job only writes its directory's path there (see :class:`Waiting`).

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
import subprocess
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


# The waiting shell: reads the job directory from its pipe, closes the pipe, takes the directory as its
# cwd, HOME and TMPDIR (what a freshly spawned build gets) and runs the build script in this same process.
# EOF or an empty line (the worker gone or closing) ends it with 70 before anything runs.
_WAIT = (
    'IFS= read -r _tw_dir <&{fd} && [ -n "$_tw_dir" ] || exit 70; exec {fd}<&-; '
    'cd -- "$_tw_dir" || exit 70; unset OLDPWD; export HOME="$_tw_dir" TMPDIR="$_tw_dir"; '
    "unset _tw_dir; . ./build.sh"
)


class Waiting:
    """A build process spawned ahead: session leader on its own PTY, blocked on reading a pipe.

    Spawned by the thread that later runs the build (the parent-death signal follows the spawning thread),
    so it dies with the worker, even on ``kill -9``."""

    def __init__(self, bash: str, owner_dir: str, env: dict[str, str]) -> None:
        read_end, self.go = os.pipe()
        try:
            os.set_inheritable(read_end, True)
            self.proc, self.master = spawn_in_pty(
                [bash, "--noprofile", "--norc", "-c", _WAIT.format(fd=read_end)],
                cwd=owner_dir,
                env=env,
                pass_fds=(read_end,),
            )
        except BaseException:
            os.close(self.go)
            raise
        finally:
            os.close(read_end)
        self.thread = threading.get_ident()

    def usable(self) -> bool:
        """Alive, and spawned by the calling thread."""
        return self.thread == threading.get_ident() and self.proc.poll() is None

    def start(self, job_dir: str) -> bool:
        """Hand the job directory over (its build.sh written); False if the process is gone."""
        go, self.go = self.go, -1
        try:
            os.write(go, job_dir.encode() + b"\n")  # far below PIPE_BUF: one atomic write
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
        """`defer_removal` (the worker's): a finished build's directory is removed by the next prepare()
        (the reset after the build, which the worker starts once the job's report tail is delivered), close()
        or run(), not as the build ends: removing it would compete with the job's last round trips and
        reports."""
        self.work_root = work_root
        self.bash = bash
        self.waiting: Optional[Waiting] = None  # the next build's process, spawned by prepare()
        self.defer_removal = defer_removal
        self._leftover: Optional[str] = None  # a finished build's directory, not removed yet

    def _remove_leftover(self) -> None:
        """Remove the last build's directory in the background (a clone takes 5-40 ms to delete)."""
        job_dir, self._leftover = self._leftover, None
        if job_dir is not None:
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

    def prepare(self) -> None:
        self._remove_leftover()
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
        if self.waiting is not None and not self.waiting.usable():
            self.close()
        if self.waiting is None:
            owner = self._owner_dir()
            try:
                self.waiting = Waiting(self.bash, owner, self._environment(owner))
            except OSError as exc:
                raise SandboxError(f"local executor: cannot start the build's shell: {exc}") from None

    def close(self) -> None:
        """Stop the build process spawned ahead, if any (the worker is stopping); remove the last build's
        directory."""
        self._remove_leftover()
        waiting, self.waiting = self.waiting, None
        if waiting is not None:
            waiting.close()

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
        job_dir = tempfile.mkdtemp(prefix="travis-worker-job-", dir=self._owner_dir())
        try:
            script_path = os.path.join(job_dir, "build.sh")
            with open(script_path, "w", encoding="utf-8") as handle:
                handle.write(script)
            log.debug("running %s in %s", script_path, job_dir)
            waiting, self.waiting = self.waiting, None
            if waiting is not None and waiting.usable() and waiting.start(job_dir):
                proc, master = waiting.proc, waiting.master
            else:  # none spawned ahead (run without prepare), or it died: spawn one now
                if waiting is not None:
                    log.warning("the build process spawned ahead is gone (or another thread's); spawning one")
                    waiting.close()
                proc, master = spawn_in_pty(
                    [self.bash, "--noprofile", "--norc", script_path],
                    cwd=job_dir,
                    env=self._environment(job_dir),
                )
            if on_start is not None:
                on_start()
            return stream_process(proc, master, on_output, cancel, limits)
        finally:
            # Removed in the background (a clone takes 5-40 ms to delete): the result is reported without
            # waiting; with defer_removal, only from the next prepare() on (after the report tail)
            self._leftover = job_dir
            if not self.defer_removal:
                self._remove_leftover()
