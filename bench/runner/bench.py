"""Runner benchmark: pickup latency of an idle worker and no-op throughput of one worker process,
travis-worker vs rq's SimpleWorker, on the same redis-server in the same run.

    .venv/bin/python bench/runner/bench.py [--jobs 5000] [--samples 300]

Both sides run as real worker processes. A "no-op job" is, for travis-worker, a job whose `class` equals the
configured `noop_class`: it goes through the full queue path (BLMOVE into the per-worker processing list,
then one MULTI that removes it and counts it — at-least-once kept) but runs no build and sends no reports.
For rq it is `rq_jobs.noop`, run by `rq worker --worker-class rq.worker.SimpleWorker` (no fork).
Pickup latency = enqueue -> the job's completion signal (an RPUSH to a notify list, read with BLPOP), so it
includes the finishing step on both sides.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parents[2]
NOOP_CLASS = "TravisWorker::Noop"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: timed out waiting for {what}")
        time.sleep(0.01)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


class Side:
    name = ""

    def __init__(self, url: str, tmp: Path):
        self.url = url
        self.tmp = tmp
        self.r = redis.Redis.from_url(url, socket_timeout=None)
        self.proc: subprocess.Popen | None = None

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "runner" / "src"), str(Path(__file__).parent)])
        return env

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc = None


class TravisSide(Side):
    name = "travis-worker"

    def start(self) -> None:
        cfg = self.tmp / "worker.yml"
        cfg.write_text(
            json.dumps(
                {
                    "redis": {"url": self.url, "namespace": "twbench"},
                    "queue": "bench",
                    "noop_class": NOOP_CLASS,
                }
            )
        )
        with open(self.tmp / "travis-worker.log", "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "travis_worker", "run", "--config", str(cfg)],
                env={**self.env(), "TRAVIS_WORKER_CONFIG": ""},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for(lambda: self.r.hlen("twbench:workers:heartbeat") > 0, 20, "travis-worker to register")

    def enqueue(self, notify: str | None, pipe: redis.client.Pipeline | None = None) -> None:
        raw = json.dumps({"class": NOOP_CLASS, "args": [{"notify": notify} if notify else {}]})
        (pipe or self.r).rpush("twbench:queue:bench", raw)

    def fill(self, n: int, notify_last: str) -> None:
        pipe = self.r.pipeline(transaction=False)
        for i in range(n):
            self.enqueue(notify_last if i in (0, n - 1) else None, pipe)
        pipe.execute()


class RqSide(Side):
    name = "rq SimpleWorker"

    def __init__(self, url: str, tmp: Path):
        super().__init__(url, tmp)
        from rq import Queue

        self.queue = Queue("bench", connection=self.r)

    def start(self) -> None:
        with open(self.tmp / "rq.log", "ab") as log:
            self.proc = subprocess.Popen(
                [
                    str(Path(sys.executable).with_name("rq")),
                    "worker",
                    "--url",
                    self.url,
                    "--worker-class",
                    "rq.worker.SimpleWorker",
                    "--logging_level",
                    "WARNING",
                    "bench",
                ],
                env=self.env(),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for(
            lambda: any(k.startswith(b"rq:worker:") for k in self.r.keys("rq:worker:*")), 20, "rq to register"
        )
        time.sleep(0.5)

    def enqueue(self, notify: str | None, pipe: redis.client.Pipeline | None = None) -> None:
        self.queue.enqueue("rq_jobs.noop", notify, pipeline=pipe)

    def fill(self, n: int, notify_last: str) -> None:
        from rq import Queue

        jobs = [
            Queue.prepare_data("rq_jobs.noop", args=(notify_last if i in (0, n - 1) else None,))
            for i in range(n)
        ]
        for start in range(0, n, 1000):
            self.queue.enqueue_many(jobs[start : start + 1000])


def latency(side: Side, samples: int) -> list[float]:
    side.start()
    out = []
    try:
        for _ in range(samples + 10):
            key = f"twbench:notify:{uuid.uuid4().hex}"
            time.sleep(0.01)  # let the worker go idle (blocked on the queue) again
            t0 = time.perf_counter()
            side.enqueue(key)
            if side.r.blpop([key], timeout=10) is None:
                raise SystemExit(f"bench: {side.name} did not run a job within 10 s")
            out.append((time.perf_counter() - t0) * 1000)
    finally:
        side.stop()
    return out[10:]  # warm-up


def throughput(side: Side, jobs: int) -> float:
    key = f"twbench:notify:{uuid.uuid4().hex}"
    side.fill(jobs, key)
    side.start()
    try:
        first = side.r.blpop([key], timeout=60)
        last = side.r.blpop([key], timeout=600)
        if first is None or last is None:
            raise SystemExit(f"bench: {side.name} did not drain {jobs} jobs")
        elapsed = float(last[1]) - float(first[1])
    finally:
        side.stop()
    return (jobs - 1) / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--samples", type=int, default=300)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="twt-bench-"))
    port = free_port()
    server = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp),
        ],
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        wait_for(lambda: _ping(url), 10, "redis-server")
        results = {}
        for cls in (TravisSide, RqSide):
            redis.Redis.from_url(url).flushall()
            lat = latency(cls(url, tmp), args.samples)
            redis.Redis.from_url(url).flushall()
            tput = throughput(cls(url, tmp), args.jobs)
            results[cls.name] = (statistics.median(lat), percentile(lat, 99), tput)
        ours, theirs = results["travis-worker"], results["rq SimpleWorker"]
        rows = [
            ("pickup latency p50 (ms)", ours[0], theirs[0], theirs[0] / ours[0], "lower is better"),
            ("pickup latency p99 (ms)", ours[1], theirs[1], theirs[1] / ours[1], "lower is better"),
            ("no-op throughput (jobs/s)", ours[2], theirs[2], ours[2] / theirs[2], "higher is better"),
        ]
        print(
            f"redis-server {_version()}, {args.samples} latency samples, {args.jobs} no-op jobs, "
            f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}"
        )
        print("| metric | travis-worker | rq 3.0.0 SimpleWorker | advantage (x) |")
        print("|---|---:|---:|---:|")
        for name, a, b, ratio, _ in rows:
            print(f"| {name} | {a:.2f} | {b:.2f} | {ratio:.2f} |")
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def _ping(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url).ping())
    except redis.ConnectionError:
        return False


def _version() -> str:
    out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout
    return out.split("v=")[1].split()[0] if "v=" in out else "?"


if __name__ == "__main__":
    raise SystemExit(main())
