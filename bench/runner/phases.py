"""Where a real job's time goes in the runner: timestamps per phase of one in-process worker.

    .venv/bin/python bench/runner/phases.py [--jobs 40] [--warmup 3] [--src runner/src]

The same job as the benchmark's real jobs (bench.py): `local` executor, `http` reporter delivering to
lab/travis_lab/ciapp.py in this process, `script: true` from a local git repository, one job at a time on a
private redis-server. The worker's own code runs unchanged; its steps are wrapped to record the time each one
returns (the main loop is driven here: take, handle, as `Worker._loop` does). Prints, per phase, the median
and p90 of the time since the previous phase, in ms, from the moment the job was pushed to the queue.
``--src`` measures another checkout's runner (e.g. ``git archive`` of an older commit) with this harness.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
_ARGV = sys.argv[:-1]
_SRC = next((sys.argv[i + 1] for i, a in enumerate(_ARGV) if a == "--src"), str(ROOT / "runner" / "src"))
sys.path[:0] = [_SRC, str(ROOT / "lab"), str(Path(__file__).parent)]

from travis_lab.ciapp import CIApp  # noqa: E402
from travis_worker import executor_local, worker  # noqa: E402
from travis_worker.config import load_config  # noqa: E402

from bench import _ping, free_port, make_repo, percentile, wait_for  # noqa: E402


class Stamps:
    def __init__(self) -> None:
        self.current: list[tuple[str, float]] = []
        self.lock = threading.Lock()

    def mark(self, label: str) -> None:
        with self.lock:
            self.current.append((label, time.perf_counter()))

    def wrap(self, owner: Any, name: str, label: str | None = None) -> None:
        original = getattr(owner, name)

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            result = original(*args, **kwargs)
            self.mark(label or name)
            return result

        setattr(owner, name, wrapped)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--src", default=_SRC, help="the runner's source (default: this checkout's)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="twt-phases-"))
    port = free_port()
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        cwd=tmp,
    )
    stamps = Stamps()

    class App(CIApp):
        def _record(self, handler: Any) -> tuple[int, dict[str, Any]]:
            status, answer = super()._record(handler)
            with self._lock:
                body = self.requests[-1].body
            if isinstance(body, dict):
                label = body.get("state") or ("final part" if body.get("final") else "log part")
                stamps.mark(f"app: {label}")
            return status, answer

    app = App(username="bench", token="bench-token").start()
    try:
        import redis

        url = f"redis://127.0.0.1:{port}/0"
        wait_for(lambda: _ping(url), 10, "redis-server")
        path, commit = make_repo(tmp / "git")
        builds = tmp / "builds"
        builds.mkdir()
        cfg_path = tmp / "worker.yml"
        cfg_path.write_text(
            json.dumps(
                {
                    "redis": {"url": url, "namespace": "twphases"},
                    "queue": "bench",
                    "build_root": str(builds),
                    "travis": {"url": app.url, "username": "bench", "token": "bench-token"},
                }
            )
        )
        cfg = load_config(str(cfg_path), {})
        w = worker.Worker(cfg)
        for name in ("start", "finish"):
            stamps.wrap(w.queue, name, f"queue.{name}")
        stamps.wrap(w, "set_state")
        stamps.wrap(w.executor, "prepare", "executor.prepare")
        stamps.wrap(w.r, "rpush", "redis rpush")
        stamps.wrap(worker.LogStream, "close", "LogStream.close")
        stamps.wrap(worker, "LogStream", "LogStream()")
        stamps.wrap(worker, "build_script")
        stamps.wrap(executor_local, "spawn_in_pty", "script spawned")
        if hasattr(executor_local, "Waiting"):  # round 3: spawned ahead in prepare(), a job only hands over
            stamps.wrap(executor_local.Waiting, "start", "script handed to the waiting shell")
        stamps.wrap(executor_local, "stream_process", "script exited")
        w.queue.register()
        w.sender.start()
        client = redis.Redis.from_url(url)
        rows: dict[str, list[float]] = {}
        order: list[str] = []
        totals: list[float] = []
        for number in range(1, args.jobs + args.warmup + 1):
            time.sleep(0.05)
            payload = {
                "repository": {"slug": "bench/repo", "source_url": path},
                "job": {"id": number, "number": f"1.{number}", "commit": commit, "branch": "master"},
                "config": {"script": "true"},
            }
            with stamps.lock:
                stamps.current = []
            stamps.mark("enqueue")
            client.rpush("twphases:queue:bench", json.dumps({"class": "Travis::Worker", "args": [payload]}))
            taken = w._take()
            stamps.mark("taken (BLMOVE)")
            assert taken is not None
            w.handle(taken)
            stamps.mark("handle returned")
            wait_for(lambda: any(label == "app: finished" for label, _ in stamps.current), 10, "finished")
            if number <= args.warmup:
                continue
            with stamps.lock:
                events = sorted(stamps.current, key=lambda e: e[1])
            previous = events[0][1]
            seen: dict[str, int] = {}
            for label, at in events[1:]:
                seen[label] = seen.get(label, 0) + 1
                key = label if seen[label] == 1 else f"{label} #{seen[label]}"
                if key not in rows:
                    rows[key] = []
                    order.append(key)
                rows[key].append((at - previous) * 1000)
                previous = at
            finished = next(at for label, at in events if label == "app: finished")
            totals.append((finished - events[0][1]) * 1000)
        w.sender.stop()
        print(f"{args.jobs} jobs (after {args.warmup} warm-up), ms since the previous step, events by time")
        print("| step (ends) | p50 | p90 | jobs |")
        print("|---|---:|---:|---:|")
        for key in order:
            values = rows[key]
            p50, p90 = statistics.median(values), percentile(values, 90)
            print(f"| {key} | {p50:.2f} | {p90:.2f} | {len(values)} |")
        p50, p90 = statistics.median(totals), percentile(totals, 90)
        print(f"| enqueue -> app: finished | {p50:.2f} | {p90:.2f} | {len(totals)} |")
    finally:
        app.stop()
        server.terminate()
        server.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
