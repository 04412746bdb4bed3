"""Runner benchmark: travis-worker vs rq's SimpleWorker, one worker process each, same redis-server, same run.

    .venv/bin/python bench/runner/bench.py [--only real|noop] [--real-jobs 200] [--jobs 5000] [--samples 300]
                                           [--json bench/results/runner-real-jobs.json]

Real build jobs (``--real-jobs``): travis-worker with the ``local`` executor and the ``http`` reporter (what
the ``worker`` role configures when ``worker_travis_url`` is set) delivering to lab/travis_lab/ciapp.py, a
real HTTP stand-in of the CI app, in this process; each job is ``script: true`` from a local git repository
(clone --depth=50 --branch, checkout -qf <commit>). rq runs ``rq_jobs.build``, the same work by hand (fresh
directory, the same clone and checkout, ``bash -c true``, directory removed). Latency: an idle worker, enqueue
one job, wait until it is finished (ours: the ``finished`` report arrived at the app; rq: the job's last
statement pushed the completion time). Throughput: N jobs pre-filled, time between the first and the last
completion. Our own cost per job: latency minus the build script's run time (from the moment the script is
handed to its process to that process's exit: clone, checkout, script), which the worker measures and exposes
in ``travis_worker_build_duration_seconds``; the bench scrapes the worker's metrics port before and after each
job.

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
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
import requests

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


# -- real build jobs ---------------------------------------------------------------------------------------
class StampingApp:
    """lab/travis_lab/ciapp.py's CIApp, plus the arrival time of every job's `finished` report."""

    def __init__(self) -> None:
        from travis_lab.ciapp import CIApp

        stamps: dict[int, float] = {}
        arrived = threading.Condition()

        class App(CIApp):
            def _record(self, handler: Any) -> tuple[int, dict[str, Any]]:
                status, answer = super()._record(handler)
                now = time.time()
                with self._lock:
                    body = self.requests[-1].body
                if status == 200 and isinstance(body, dict) and body.get("state") == "finished":
                    with arrived:
                        stamps.setdefault(int(body["id"]), now)
                        arrived.notify_all()
                return status, answer

        self.app = App(username="bench", token="bench-token").start()
        self.stamps = stamps
        self.arrived = arrived

    def wait(self, job_id: int, timeout: float) -> float:
        with self.arrived:
            if not self.arrived.wait_for(lambda: job_id in self.stamps, timeout):
                raise SystemExit(f"bench: job {job_id} did not finish within {timeout} s")
            return self.stamps[job_id]


class RealTravisSide(Side):
    name = "travis-worker"

    def __init__(self, url: str, tmp: Path, repo: tuple[str, str], app: StampingApp):
        super().__init__(url, tmp)
        self.repo = repo
        self.app = app
        self.metrics_port = free_port()
        self.next_id = 1

    def start(self) -> None:
        builds = self.tmp / "tw-builds"
        builds.mkdir(exist_ok=True)
        cfg = self.tmp / "worker-real.yml"
        cfg.write_text(
            json.dumps(
                {
                    "redis": {"url": self.url, "namespace": "twreal"},
                    "queue": "bench",
                    "travis": {"url": self.app.app.url, "username": "bench", "token": "bench-token"},
                    "metrics": {"port": self.metrics_port, "address": "127.0.0.1"},
                }
            )
        )
        with open(self.tmp / "travis-worker-real.log", "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "travis_worker", "run", "--config", str(cfg)],
                env={**self.env(), "TRAVIS_WORKER_CONFIG": "", "TMPDIR": str(builds)},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for(lambda: self.r.hlen("twreal:workers:heartbeat") > 0, 20, "travis-worker to register")

    def payload(self) -> tuple[int, str]:
        job_id, self.next_id = self.next_id, self.next_id + 1
        path, commit = self.repo
        payload = {
            "repository": {"slug": "bench/repo", "source_url": path},
            "job": {"id": job_id, "number": f"1.{job_id}", "commit": commit, "branch": "master"},
            "config": {"script": "true"},
        }
        return job_id, json.dumps({"class": "Travis::Worker", "args": [payload]})

    def build_seconds(self) -> tuple[float, float]:
        """(count, sum) of travis_worker_build_duration_seconds, scraped from the worker's metrics port."""
        from prometheus_client.parser import text_string_to_metric_families

        text = requests.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10).text
        found = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name.startswith("travis_worker_build_duration_seconds_"):
                    found[sample.name.rsplit("_", 1)[1]] = sample.value
        return found["count"], found["sum"]

    def latency(self, jobs: int, warmup: int) -> tuple[list[float], list[float], list[float]]:
        """Per job, in ms: enqueue -> finished at the app, the runner's own cost (that minus the build
        script's run time), and the report tail (the finish transaction -> `finished` at the app). The finish
        transaction's time is when the job left the worker's processing list (a keyspace event, `lrem`)."""
        self.r.config_set("notify-keyspace-events", "Kl")
        finishes: list[float] = []
        pubsub = self.r.pubsub(ignore_subscribe_messages=True)
        pubsub.psubscribe(
            **{
                "__keyspace@*__:twreal:processing:*": lambda m: (
                    finishes.append(time.time()) if m["data"] == b"lrem" else None
                )
            }
        )
        listener = pubsub.run_in_thread(sleep_time=0.05, daemon=True)
        self.start()
        walls, own, tails = [], [], []
        try:
            for i in range(jobs + warmup):
                time.sleep(0.05)  # let the worker go idle (blocked on the queue) again
                count, total = self.build_seconds()
                job_id, raw = self.payload()
                t0 = time.time()
                self.r.rpush("twreal:queue:bench", raw)
                done = self.app.wait(job_id, 120)
                wait_for(lambda c=count: self.build_seconds()[0] > c, 10, "the build duration metric")
                build = self.build_seconds()[1] - total
                # the event may be handled after the app's thread stamped `finished`: count it at that stamp
                wait_for(lambda t0=t0: any(t > t0 for t in finishes), 10, f"job {job_id} finish transaction")
                finish = min(min(t for t in finishes if t > t0), done)
                if i >= warmup:
                    walls.append((done - t0) * 1000)
                    own.append((done - t0 - build) * 1000)
                    tails.append((done - finish) * 1000)
        finally:
            self.stop()
            listener.stop()
            listener.join(5)  # it may be inside a read: close the connection only after it ended
            pubsub.close()
        return walls, own, tails

    def throughput(self, jobs: int) -> tuple[int, float]:
        """(completions - 1, seconds from the first to the last completion) of `jobs` pre-filled jobs."""
        ids = []
        pipe = self.r.pipeline(transaction=False)
        for _ in range(jobs):
            job_id, raw = self.payload()
            ids.append(job_id)
            pipe.rpush("twreal:queue:bench", raw)
        pipe.execute()
        self.start()
        try:
            first = self.app.wait(ids[0], 120)
            last = max(self.app.wait(job_id, 600) for job_id in ids)
        finally:
            self.stop()
        return jobs - 1, last - first


class RealRqSide(RqSide):
    def __init__(self, url: str, tmp: Path, repo: tuple[str, str]):
        super().__init__(url, tmp)
        self.repo = repo

    def env(self) -> dict[str, str]:
        builds = self.tmp / "rq-builds"
        builds.mkdir(exist_ok=True)
        return {**super().env(), "TMPDIR": str(builds)}

    def args(self, notify: str | None) -> tuple[Any, ...]:
        path, commit = self.repo
        return (path, commit, "master", "true", notify)

    def latency(self, jobs: int, warmup: int) -> list[float]:
        self.start()
        out = []
        try:
            for i in range(jobs + warmup):
                key = f"twbench:notify:{uuid.uuid4().hex}"
                time.sleep(0.05)
                t0 = time.time()
                self.queue.enqueue("rq_jobs.build", *self.args(key))
                done = self.r.blpop([key], timeout=120)
                if done is None:
                    raise SystemExit("bench: rq did not finish a build within 120 s")
                if i >= warmup:
                    out.append((float(done[1]) - t0) * 1000)
        finally:
            self.stop()
        return out

    def throughput(self, jobs: int) -> tuple[int, float]:
        from rq import Queue

        key = f"twbench:notify:{uuid.uuid4().hex}"
        prepared = [Queue.prepare_data("rq_jobs.build", args=self.args(key)) for _ in range(jobs)]
        self.queue.enqueue_many(prepared)
        self.start()
        try:
            stamps = [self.r.blpop([key], timeout=600) for _ in range(jobs)]
            if any(stamp is None for stamp in stamps):
                raise SystemExit(f"bench: rq did not drain {jobs} builds")
        finally:
            self.stop()
        times = sorted(float(stamp[1]) for stamp in stamps if stamp)
        return jobs - 1, times[-1] - times[0]


def real_jobs(url: str, tmp: Path, jobs: int, json_path: Path | None, rounds: int = 4) -> None:
    """`jobs` per side for latency and as many for throughput, in `rounds` alternating rounds (ours first in
    even rounds, rq first in odd ones) so that a change of the host's load hits both sides alike."""
    repo = make_repo(tmp / "git")
    app = StampingApp()
    load_start = os.getloadavg()
    started = time.time()
    warmup = 3  # per round: each round starts fresh worker processes
    walls: list[float] = []
    own: list[float] = []
    tails: list[float] = []
    rq_walls: list[float] = []
    tput = {"ours": [0, 0.0], "rq": [0, 0.0]}
    ours = RealTravisSide(url, tmp, repo, app)
    try:
        for number in range(rounds):
            share = jobs // rounds + (1 if number < jobs % rounds else 0)
            order = ("ours", "rq") if number % 2 == 0 else ("rq", "ours")
            for side in order:
                redis.Redis.from_url(url).flushall()
                if side == "ours":
                    w, o, tail = ours.latency(share, warmup)
                    walls += w
                    own += o
                    tails += tail
                    done, seconds = ours.throughput(share)
                else:
                    rq_walls += RealRqSide(url, tmp, repo).latency(share, warmup)
                    redis.Redis.from_url(url).flushall()
                    done, seconds = RealRqSide(url, tmp, repo).throughput(share)
                tput[side][0] += done
                tput[side][1] += seconds
            print(f"round {number + 1}/{rounds} done, loadavg {os.getloadavg()[0]:.2f}", flush=True)
    finally:
        app.app.stop()
    ours_tput = tput["ours"][0] / tput["ours"][1]
    rq_tput = tput["rq"][0] / tput["rq"][1]
    load_end = os.getloadavg()
    result = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "commit": _commit(),
        "loadavg": {"start": [round(x, 2) for x in load_start], "end": [round(x, 2) for x in load_end]},
        "jobs": jobs,
        "travis_worker": {
            "jobs_per_s": round(ours_tput, 2),
            "p50_ms": round(statistics.median(walls), 1),
            "p99_ms": round(percentile(walls, 99), 1),
            "own_cost_ms": round(statistics.median(own), 2),
        },
        "rq": {
            "jobs_per_s": round(rq_tput, 2),
            "p50_ms": round(statistics.median(rq_walls), 1),
            "p99_ms": round(percentile(rq_walls, 99), 1),
        },
    }
    tw, rq = result["travis_worker"], result["rq"]
    print(
        f"real build jobs ({jobs} per side and measure, script: true from a local git repository), "
        f"{result['date']}, commit {result['commit']}, redis-server {_version()}, {os.cpu_count()} CPUs, "
        f"loadavg {load_start[0]:.2f} at start, {load_end[0]:.2f} at end"
    )
    print(
        "| metric | travis-worker (local, http reports) | rq 3.0.0 SimpleWorker | travis-worker vs rq (x) |"
    )
    print("|---|---:|---:|---:|")
    print(
        f"| throughput (jobs/s) | {tw['jobs_per_s']:.2f} | {rq['jobs_per_s']:.2f} | "
        f"{tw['jobs_per_s'] / rq['jobs_per_s']:.2f} |"
    )
    print(
        f"| enqueue -> finished p50 (ms) | {tw['p50_ms']:.1f} | {rq['p50_ms']:.1f} | "
        f"{rq['p50_ms'] / tw['p50_ms']:.2f} |"
    )
    print(
        f"| enqueue -> finished p99 (ms) | {tw['p99_ms']:.1f} | {rq['p99_ms']:.1f} | "
        f"{rq['p99_ms'] / tw['p99_ms']:.2f} |"
    )
    print(f"| own cost per job p50 (ms): latency - build script run time | {tw['own_cost_ms']:.2f} | - | - |")
    before_tail = [o - t for o, t in zip(own, tails)]
    print(
        f"own cost p90/p99 {percentile(own, 90):.2f}/{percentile(own, 99):.2f} ms; build script run time "
        f"p50 {statistics.median([w - o for w, o in zip(walls, own)]):.1f} ms; of the own cost: up to the "
        f"finish transaction p50 {statistics.median(before_tail):.2f} ms, finish transaction -> `finished` "
        f"at the app (last log part, final part, finished report) p50 {statistics.median(tails):.2f} ms"
    )
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"written {json_path}")


def make_repo(base: Path) -> tuple[str, str]:
    """A real git repository (branch master, one commit with a file); returns (path, commit)."""
    repo = base / "repo"
    repo.mkdir(parents=True)
    env = {
        **os.environ,
        "HOME": str(base),
        "GIT_AUTHOR_NAME": "bench",
        "GIT_AUTHOR_EMAIL": "bench@example.invalid",
    }
    env.update(GIT_COMMITTER_NAME="bench", GIT_COMMITTER_EMAIL="bench@example.invalid")
    (repo / "README").write_text("benchmark repository\n")
    for argv in (["init", "-q", "-b", "master"], ["add", "README"], ["commit", "-q", "-m", "initial"]):
        subprocess.run(["git", *argv], cwd=repo, env=env, check=True)
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=repo, env=env, check=True, capture_output=True, text=True
    )
    return str(repo), commit.stdout.strip()


def _commit() -> str:
    head = subprocess.run(
        ["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True, text=True
    )
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True
    )
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=("real", "noop"), help="run one of the two comparisons")
    parser.add_argument("--jobs", type=int, default=5000, help="no-op jobs for the no-op throughput")
    parser.add_argument("--samples", type=int, default=300, help="no-op latency samples")
    parser.add_argument("--real-jobs", type=int, default=200, help="real build jobs (latency and throughput)")
    parser.add_argument(
        "--rounds", type=int, default=4, help="alternating rounds the real jobs are split into"
    )
    parser.add_argument("--json", type=Path, help="write the real-job figures to this file")
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
        if args.only != "noop":
            real_jobs(url, tmp, args.real_jobs, args.json, args.rounds)
        if args.only == "real":
            return 0
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
