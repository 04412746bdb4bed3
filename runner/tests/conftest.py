"""Runner test fixtures.

`redis_server` / `redis_url` come from the lab's pytest plugin (travis_lab.pytest_plugin). That server runs
without persistence, so the Redis-restart test uses `persistent_redis` below (appendonly, fsync always):
stop() and start() keep the data, as a production Redis with AOF would.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from harness import Spawn, WorkerProc, free_port, make_repo, registered, wait_for

RUNNER_SRC = Path(__file__).resolve().parents[1] / "src"


class RedisServer:
    """redis-server with appendonly + fsync always in a twt- temp dir; stop() keeps the data for start()."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="twt-redis-")
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                self.dir,
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
                "--daemonize",
                "no",
                "--loglevel",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except (redis.ConnectionError, redis.BusyLoadingError):
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"redis-server on port {self.port} did not start") from None
                time.sleep(0.02)
        client.close()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def persistent_redis() -> Iterator[RedisServer]:
    """A private persistent redis-server for tests that stop and restart it."""
    server = RedisServer()
    server.start()
    yield server
    server.cleanup()


@pytest.fixture
def client(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url, decode_responses=True)


@pytest.fixture
def repo(tmp_path: Path) -> tuple[str, str]:
    """A local git repository with one commit: (url, commit)."""
    return make_repo(tmp_path / "git")


@pytest.fixture
def spawn(tmp_path: Path, redis_url: str, client: redis.Redis) -> Iterator[Spawn]:
    """Start worker processes (waiting until each registered, unless wait=False); all stopped at the end."""
    workers: list[WorkerProc] = []

    def start(name: str = "w", *, wait: bool = True, url: str | None = None, **overrides: Any) -> WorkerProc:
        worker = WorkerProc(tmp_path, url or redis_url, f"{name}{len(workers)}", **overrides)
        workers.append(worker)
        if wait:
            target = redis.Redis.from_url(url) if url else client
            wait_for(lambda: registered(target, worker), 15, f"worker {worker.id} to register")
        return worker

    yield start
    for worker in workers:
        worker.stop()
