"""End-to-end helpers: real worker subprocesses (local executor), a real git repository, job payloads."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
import yaml

RUNNER_SRC = Path(__file__).resolve().parents[1] / "src"
GIT_ENV = {
    "GIT_AUTHOR_NAME": "twt",
    "GIT_AUTHOR_EMAIL": "twt@example.invalid",
    "GIT_COMMITTER_NAME": "twt",
    "GIT_COMMITTER_EMAIL": "twt@example.invalid",
}


def worker_env(**extra: str) -> dict[str, str]:
    """This environment without the seed's worker overrides, with the runner's source importable."""
    env = {k: v for k, v in os.environ.items() if k not in ("QUEUE", "TRAVIS_ENV", "VM", "VERBOSE")}
    env["PYTHONPATH"] = str(RUNNER_SRC)
    env.update(extra)
    return env


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, step: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(step)


def make_repo(base: Path) -> tuple[str, str]:
    """A real git repository with one commit; returns (path, commit)."""
    repo = base / "repo"
    repo.mkdir(parents=True)
    env = {**os.environ, **GIT_ENV, "HOME": str(base)}
    for argv in (["init", "-q", "-b", "master"], ["commit", "-q", "--allow-empty", "-m", "initial"]):
        subprocess.run(["git", *argv], cwd=repo, env=env, check=True)
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=repo, env=env, check=True, capture_output=True, text=True
    )
    return str(repo), commit.stdout.strip()


def job_json(
    job_id: int,
    repo: tuple[str, str],
    script: str | list[str],
    *,
    timeouts: dict[str, Any] | None = None,
    **cfg: Any,
) -> str:
    path, commit = repo
    payload: dict[str, Any] = {
        "repository": {"slug": "twt/repo", "source_url": path},
        "job": {"id": job_id, "number": f"1.{job_id}", "commit": commit, "branch": "master"},
        "config": {"script": script, **cfg},
    }
    if timeouts:
        payload["timeouts"] = timeouts
    return json.dumps({"class": "Travis::Worker", "args": [payload]})


class WorkerProc:
    """`python -m travis_worker run` with its own config file and log file."""

    def __init__(
        self, tmp: Path, redis_url: str, name: str, env: dict[str, str] | None = None, **overrides: Any
    ) -> None:
        self.dir = tmp / name
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "tmp").mkdir(exist_ok=True)
        config: dict[str, Any] = {"redis": {"url": redis_url}, "heartbeat_interval": 0.2, "queue": "builds"}
        for key, value in overrides.items():
            node = config
            *parents, leaf = key.split("__")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
        self.config_path = self.dir / "worker.yml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = self.dir / "worker.log"
        env = worker_env(**(env or {}))
        env.update({"TMPDIR": str(self.dir / "tmp"), "TRAVIS_WORKER_CONFIG": ""})
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "travis_worker", "run", "--config", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        host = os.uname().nodename
        self.id = f"{host}:{self.proc.pid}:{config['queue']}"

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def registered(client: redis.Redis, worker: WorkerProc) -> bool:
    return client.hexists("resque:workers:heartbeat", worker.id)


def reports(client: redis.Redis, ns: str = "resque") -> list[dict[str, Any]]:
    return [json.loads(x) for x in client.lrange(f"{ns}:reporting:jobs", 0, -1)]


def finished(client: redis.Redis) -> dict[int, list[dict[str, Any]]]:
    out: dict[int, list[dict[str, Any]]] = {}
    for r in reports(client):
        if r.get("state") == "finished":
            out.setdefault(r["job_id"], []).append(r)
    return out


def worker_state(client: redis.Redis, worker: WorkerProc) -> dict[str, Any]:
    raw = client.hget("resque:travis:worker_state", worker.id)
    return json.loads(raw) if raw else {}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


Spawn = Callable[..., WorkerProc]  # the `spawn` fixture (conftest.py): start a worker process, registered
