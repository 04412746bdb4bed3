"""The rq side of the benchmark: a no-op job and a real build job, each signalling completion (same signal as
ours: an RPUSH of the completion time to a notify list)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time

from rq import get_current_job

# What travis-worker's build script exports for git (no prompts, no command-running transports).
GIT_ENV = {
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_ASKPASS": "/bin/false",
    "GIT_ALLOW_PROTOCOL": "file:git:http:https:ssh",
}


def _notify(notify: str | None) -> None:
    if notify:
        job = get_current_job()
        assert job is not None
        job.connection.rpush(notify, repr(time.time()))


def noop(notify: str | None = None) -> None:
    _notify(notify)


def build(url: str, commit: str, branch: str, script: str, notify: str | None = None) -> int:
    """The work of a travis-worker `local` build, done by hand: a fresh directory, `git clone --depth=50
    --branch`, `git checkout -qf <commit>`, submodules if any, the script with bash, the directory removed.
    Returns the script's exit status (0 expected)."""
    env = {**os.environ, **GIT_ENV}
    work = tempfile.mkdtemp(prefix="rq-bench-job-")
    try:
        build_dir = os.path.join(work, "build", "repo")
        _run(["git", "clone", "--depth=50", f"--branch={branch}", "--", url, build_dir], work, env)
        _run(["git", "-c", "advice.detachedHead=false", "checkout", "-qf", commit, "--"], build_dir, env)
        if os.path.exists(os.path.join(build_dir, ".gitmodules")):
            _run(["git", "submodule", "update", "--init", "--recursive"], build_dir, env)
        status = _run(["bash", "-c", script], build_dir, env, check=False)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _notify(notify)
    return status


def _run(argv: list[str], cwd: str, env: dict[str, str], check: bool = True) -> int:
    return subprocess.run(argv, cwd=cwd, env=env, check=check, capture_output=True).returncode
