"""Helpers shared by the script and executor tests: a real local git repository and job payloads.

(No tests here; the name keeps the file in the script tests' namespace.)
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any, Optional

from travis_worker.payload import Job, parse_job

GIT_ENV = {
    "GIT_AUTHOR_NAME": "twt",
    "GIT_AUTHOR_EMAIL": "twt@example.invalid",
    "GIT_COMMITTER_NAME": "twt",
    "GIT_COMMITTER_EMAIL": "twt@example.invalid",
    "GIT_CONFIG_NOSYSTEM": "1",
}


def git(*args: str, cwd: Path) -> str:
    env = {**os.environ, **GIT_ENV, "HOME": str(cwd)}
    done = subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True)
    return done.stdout.strip()


def make_repo(
    base: Path, slug: str = "owner/name", files: Optional[dict[str, str]] = None
) -> tuple[Path, str]:
    """A real repository at ``<base>/<slug>.git`` (non-bare work tree) with one commit on ``master``.

    Returns (repository path, commit id).
    """
    repo = base / f"{slug}.git"
    repo.mkdir(parents=True)
    git("init", "-q", "-b", "master", cwd=repo)
    for name, text in (files or {".travis.yml": "language: generic\nscript: true\n"}).items():
        (repo / name).write_text(text)
    git("add", "-A", cwd=repo)
    git("commit", "-q", "-m", "initial", cwd=repo)
    return repo, git("rev-parse", "HEAD", cwd=repo)


def payload(
    commit: str,
    config: dict[str, Any],
    *,
    slug: str = "owner/name",
    branch: str = "master",
    job_id: int = 1,
    source_url: Optional[str] = None,
    timeouts: Optional[dict[str, Any]] = None,
) -> dict[str, Any]:
    repository: dict[str, Any] = {"slug": slug}
    if source_url is not None:
        repository["source_url"] = source_url
    body: dict[str, Any] = {
        "uuid": "2f1c4c1e-0d2b-4a8e-9c1a-6f2d3e4b5a6c",
        "repository": repository,
        "job": {"id": job_id, "number": "1.1", "commit": commit, "branch": branch},
        "config": config,
    }
    if timeouts is not None:
        body["timeouts"] = timeouts
    return body


def envelope(body: Any) -> str:
    return json.dumps({"class": "Travis::Worker::Job", "args": [body]})


def job_for(commit: str, config: dict[str, Any], **kwargs: Any) -> Job:
    return parse_job(envelope(payload(commit, config, **kwargs)))
