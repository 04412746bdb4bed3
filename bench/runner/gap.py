"""The time between two builds with a backlog: one in-process worker, N pre-filled real jobs.

    .venv/bin/python bench/runner/gap.py [--jobs 60] [--rounds 6] [NAME=RUNNER_SRC ...]

The same job as the benchmark's real jobs (bench.py): `local` executor, `http` reporter delivering to
lab/travis_lab/ciapp.py (its own process here), `script: true` from a local git repository, a private
redis-server. N jobs are pushed, then the worker's main loop is driven (take, handle, as `Worker._loop`
does) and the executor's output pump is timed: the gap is the time from one build's end (the pump returns)
to the next build's pump start, the part of a job's time in throughput that is neither its build nor its
queueing. Also: build p50, wall time and the worker process's CPU time per job. Each NAME=RUNNER_SRC is
measured in its own process, in alternating order over the rounds (default: this checkout's runner/src);
medians over the rounds are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def measure(src: str, jobs: int, url: str, app_url: str, repo: str, commit: str) -> dict[str, float]:
    """Runs in a child process (``--child``), with ``src`` first on sys.path."""
    sys.path[:0] = [src]
    import redis
    from travis_worker import executor_local, worker
    from travis_worker.config import load_config

    tmp = tempfile.mkdtemp(prefix="twt-gap-")
    cfg_path = Path(tmp) / "worker.yml"
    cfg_path.write_text(
        json.dumps(
            {
                "redis": {"url": url, "namespace": "twgap"},
                "queue": "bench",
                "build_root": tmp,
                "travis": {"url": app_url, "username": "bench", "token": "bench-token"},
            }
        )
    )
    w = worker.Worker(load_config(str(cfg_path), {}))
    enter: list[float] = []
    leave: list[float] = []
    pump = executor_local.stream_process

    def timed(*args: object, **kwargs: object) -> object:
        enter.append(time.perf_counter())
        try:
            return pump(*args, **kwargs)  # type: ignore[arg-type]
        finally:
            leave.append(time.perf_counter())

    executor_local.stream_process = timed  # type: ignore[assignment]
    w.queue.register()
    w.sender.start()
    w.reset_sandbox("start-up")
    client = redis.Redis.from_url(url)
    base = int(time.time() * 1000) % 10**9
    pipe = client.pipeline()
    for n in range(jobs):
        payload = {
            "repository": {"slug": "bench/repo", "source_url": repo},
            "job": {"id": base + n, "number": f"1.{n}", "commit": commit, "branch": "master"},
            "config": {"script": "true"},
        }
        pipe.rpush("twgap:queue:bench", json.dumps({"class": "Travis::Worker", "args": [payload]}))
    pipe.execute()
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(jobs):
        taken = w._take()
        assert taken is not None, "the queue ran dry"
        w.handle(taken)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    w.sender.drain(5)
    w.sender.stop()
    w.executor.close()
    shutil.rmtree(tmp, ignore_errors=True)
    gaps = [(enter[i + 1] - leave[i]) * 1000 for i in range(len(leave) - 1)]
    return {
        "gap_p50_ms": statistics.median(gaps),
        "build_p50_ms": statistics.median((b - a) * 1000 for a, b in zip(enter, leave)),
        "wall_per_job_ms": wall * 1000 / jobs,
        "cpu_per_job_ms": cpu * 1000 / jobs,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument(
        "--child", nargs=5, metavar=("SRC", "URL", "APP", "REPO", "COMMIT"), help=argparse.SUPPRESS
    )
    parser.add_argument("variants", nargs="*", help="NAME=RUNNER_SRC (default: this checkout's runner/src)")
    args = parser.parse_args()
    if args.child:
        src, url, app_url, repo, commit = args.child
        print(json.dumps(measure(src, args.jobs, url, app_url, repo, commit)))
        return 0
    sys.path[:0] = [str(Path(__file__).parent)]
    from bench import _ping, free_port, make_repo, wait_for

    variants = [v.split("=", 1) for v in args.variants] or [["this", str(ROOT / "runner" / "src")]]
    tmp = Path(tempfile.mkdtemp(prefix="twt-gap-"))
    port, app_port = free_port(), free_port()
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        cwd=tmp,
    )
    ciapp = [
        "-m",
        "travis_lab.ciapp",
        "--port",
        str(app_port),
        "--username",
        "bench",
        "--token",
        "bench-token",
    ]
    app = subprocess.Popen(
        [sys.executable, *ciapp],
        env={**os.environ, "PYTHONPATH": str(ROOT / "lab")},
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    results: dict[str, list[dict[str, float]]] = {name: [] for name, _ in variants}
    try:
        wait_for(lambda: _ping(url), 10, "redis-server")
        repo, commit = make_repo(tmp / "git")
        for number in range(args.rounds):
            for name, src in variants if number % 2 == 0 else variants[::-1]:
                child = [sys.executable, __file__, "--jobs", str(args.jobs), "--child", src, url]
                child += [f"http://127.0.0.1:{app_port}", repo, commit]
                out = subprocess.run(child, capture_output=True, text=True, check=False)
                if out.returncode:
                    raise SystemExit(f"gap: {name} failed:\n{out.stderr[-3000:]}")
                results[name].append(json.loads(out.stdout.splitlines()[-1]))
    finally:
        for proc in (server, app):
            proc.terminate()
            proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{args.jobs} pre-filled jobs x {args.rounds} rounds, medians over the rounds (ms)")
    print("| runner | gap between builds | build | wall per job | worker CPU per job |")
    print("|---|---:|---:|---:|---:|")
    for name, rows in results.items():
        med = {key: statistics.median(row[key] for row in rows) for key in rows[0]}
        print(
            f"| {name} | {med['gap_p50_ms']:.2f} | {med['build_p50_ms']:.2f} | {med['wall_per_job_ms']:.2f} "
            f"| {med['cpu_per_job_ms']:.2f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
