"""The ``local`` executor: the build script runs with bash in a fresh temporary directory on this host."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
from typing import Callable, Optional

from .executor import BuildResult, Limits, SandboxError, spawn_in_pty, stream_process

log = logging.getLogger(__name__)

# Only these variables of the worker's environment reach a local build (no worker secrets).
_PASSED_ENV = ("PATH", "LANG", "LC_ALL", "TZ", "USER", "LOGNAME", "SHELL")


class LocalExecutor:
    """Runs each job in ``<tmp>/travis-worker-job-XXXX`` (removed afterwards) as this user."""

    def __init__(self, *, work_root: Optional[str] = None, bash: str = "bash") -> None:
        self.work_root = work_root
        self.bash = bash

    def prepare(self) -> None:
        if shutil.which(self.bash) is None:
            raise SandboxError(f"local executor: {self.bash!r} not found on PATH; install bash")
        root = self.work_root or tempfile.gettempdir()
        if not os.access(root, os.W_OK | os.X_OK):
            raise SandboxError(f"local executor: cannot create job directories in {root!r} (not writable)")

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
        job_dir = tempfile.mkdtemp(prefix="travis-worker-job-", dir=self.work_root)
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
            threading.Thread(target=shutil.rmtree, args=(job_dir, True), name="job-dir-cleanup").start()
