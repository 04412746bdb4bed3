"""Benchmark: an idle worker's time from taking a job to the build's first command, and the sandbox reset.

    .venv/bin/python bench/reprovision/pickup.py [--builds 20] [--vms 1] [--json FILE]

A fresh lab box is converged by site.yml (not measured), then `--builds` demo builds run one after another:
each is enqueued only when every worker reports `idle` in Redis (an idle worker, nothing else queued) and the
previous build has finished. Per build, from the reports the runner sends (`<ns>:reporting:jobs`):

- taken: the `received_at` of the job's `received` report (the worker took the job from the queue);
- started: the `started_at` of its `started` report (the runner is about to upload and run the build script);
- first command: the build's first own command, `before_install: echo TWT-T0 $(date +%s.%N)`, prints the epoch
  time inside the VM; it runs right after the checkout (the clone is part of the build). The VMs are LXC
  containers on the same kernel: one clock for the runner and the VM.

The sandbox reset time comes from the runner's journal on the box: its `VM <vm> reset (<provider>) in <s> s`
lines (the executor's own measure of the whole reset) written during the measured builds.

Prints p50 (min-max) of taken -> first command, taken -> started and of the reset, and writes them as JSON.
`measure()` is also used by run.py, on a lab it has already converged. Not a timed test.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parents[2]
NS = "resque"
MARK = "TWT-T0"
RESET_LINE = re.compile(r"VM (\S+) reset \((\w+)\) in ([0-9.]+) s")


@dataclass
class Build:
    job_id: int
    taken: float  # epoch seconds
    started: float
    first_cmd: float
    result: str

    @property
    def to_started(self) -> float:
        return self.started - self.taken

    @property
    def to_first_cmd(self) -> float:
        return self.first_cmd - self.taken


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def reports(client: redis.Redis, job_id: int) -> list[dict[str, Any]]:
    """Every report (state and log) of the job in the Redis reporting list, in order."""
    out = []
    for raw in client.lrange(f"{NS}:reporting:jobs", 0, -1):
        entry = json.loads(raw)  # the redis reporter's {"event": "job:state"|"job:log", "job_id", **body}
        kind = entry["event"].split(":", 1)[1] if "event" in entry else entry.get("type", "state")
        body = entry.get("body", entry)
        if int(body.get("id", -1)) == job_id:
            out.append({**body, "type": kind})
    return out


def workers_idle(client: redis.Redis) -> bool:
    states = [json.loads(v) for v in client.hvals(f"{NS}:travis:worker_state")]
    return bool(states) and all(s.get("state") == "idle" for s in states)


def enqueue(client: redis.Redis, git_url: str, commit: str, job_id: int) -> None:
    payload = {
        "uuid": f"twt-pickup-{job_id}",
        "repository": {"slug": "twt/pickup", "source_url": f"{git_url}/demo.git"},
        "job": {"id": job_id, "number": "1.1", "commit": commit, "branch": "main"},
        "config": {
            "before_install": [f"echo {MARK} $(date +%s.%N)"],
            "script": ["python3 -m unittest test_calc"],
        },
        "timeouts": {"hard_limit": 600, "log_silence": 300},
    }
    client.sadd(f"{NS}:queues", "builds")
    client.rpush(f"{NS}:queue:builds", json.dumps({"class": "Travis::Worker", "args": [payload]}))


def one_build(client: redis.Redis, git_url: str, commit: str, timeout: float = 600) -> Build:
    deadline = time.monotonic() + timeout
    while not workers_idle(client):  # an idle worker: also after the reset that follows a build
        if time.monotonic() > deadline:
            states = client.hgetall(f"{NS}:travis:worker_state")
            raise SystemExit(f"pickup: workers not idle after {timeout:.0f} s: {states}")
        time.sleep(0.2)
    time.sleep(1)  # idle for a moment, as a worker waiting for work is
    job_id = int(time.time() * 1000) % 1_000_000_000
    enqueue(client, git_url, commit, job_id)
    while time.monotonic() < deadline:
        got = reports(client, job_id)
        states = {r["state"]: r for r in got if r["type"] == "state"}
        if "finished" in states:
            text = "".join(r.get("log", "") for r in got if r["type"] == "log")
            m = re.search(rf"^{MARK} ([0-9.]+)\s*$", text, re.M)
            if m is None or "received" not in states or "started" not in states:
                raise SystemExit(
                    f"pickup: job {job_id} has no {MARK} line or no received/started report: {got}"
                )
            return Build(
                job_id,
                epoch(states["received"]["received_at"]),
                epoch(states["started"]["started_at"]),
                float(m.group(1)),
                states["finished"].get("result", "?"),
            )
        time.sleep(0.2)
    raise SystemExit(f"pickup: job {job_id} not finished after {timeout:.0f} s")


def resets_since(box: Any, since: float) -> list[float]:
    """Reset durations the runners logged on the box since epoch `since`."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(since - 1))
    cmd = f"TZ=UTC journalctl -q -o short-unix -u 'travis-worker@*' --since '{stamp}'"
    out = []
    for line in box.ssh(cmd, timeout=120).stdout.splitlines():  # "<epoch.usec> <host> <unit>[pid]: <message>"
        m = RESET_LINE.search(line)
        if m and float(line.split(" ", 1)[0]) >= since:
            out.append(float(m.group(3)))
    return out


def spread(values: list[float]) -> dict[str, float]:
    return {
        "p50": round(statistics.median(values), 2),
        "min": round(min(values), 2),
        "max": round(max(values), 2),
    }


def measure(client: redis.Redis, box: Any, git_url: str, commit: str, builds: int) -> dict[str, Any]:
    """`builds` builds one after another on idle workers; the figures as a dict (see the module doc)."""
    since = time.time()
    done: list[Build] = []
    for i in range(builds):
        b = one_build(client, git_url, commit)
        done.append(b)
        print(
            f"  build {i + 1}/{builds} job {b.job_id}: {b.result}, taken->started {b.to_started:.2f} s, "
            f"taken->first command {b.to_first_cmd:.2f} s",
            flush=True,
        )
    deadline = time.monotonic() + 300
    while (
        not workers_idle(client) and time.monotonic() < deadline
    ):  # the last build's reset, if after the build
        time.sleep(0.5)
    resets = resets_since(box, since)
    return {
        "builds": builds,
        "failed": sum(b.result != "passed" for b in done),
        "pickup_to_first_cmd_s": spread([b.to_first_cmd for b in done]),
        "pickup_to_started_s": spread([b.to_started for b in done]),
        "reset_s": spread(resets) if resets else None,
        "resets_logged": len(resets),
    }


def commit_of_tree() -> str:
    return subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()


def main(argv: list[str] | None = None) -> int:
    from travis_lab.boxbuild import ensure_box
    from travis_lab.scratch import scratch_lab

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--builds", type=int, default=20)
    parser.add_argument(
        "--vms", type=int, default=1, help="worker VMs on the box (site.yml worker_vms_count)"
    )
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = Path(tempfile.mkdtemp(prefix="twt-bench-"))
    head = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "commit": commit_of_tree()}
    with scratch_lab("twt-bench-", ensure_box(), work, keep=args.keep, PYTHONUNBUFFERED="1") as lab:
        argv_play = [str(ROOT / ".venv/bin/ansible-playbook"), "-i", str(ROOT / "inventories/lab"),
                     "-i", str(lab.inventory), str(ROOT / "site.yml"),
                     "-e", f"worker_vms_count={args.vms}", "-e", "worker_build_isolation=true"]  # fmt: skip
        t0 = time.monotonic()
        log = work / "site.log"
        with log.open("w") as fh:
            rc = subprocess.run(
                argv_play, cwd=ROOT, env=lab.env, stdout=fh, stderr=subprocess.STDOUT
            ).returncode
        print(f"site.yml: rc={rc} in {time.monotonic() - t0:.0f} s (log {log})", flush=True)
        if rc != 0:
            raise SystemExit(f"pickup: site.yml failed, see {log}")
        client = redis.Redis.from_url(lab.redis_url, decode_responses=True)
        one_build(client, lab.git_url, lab.commit, timeout=900)  # warm-up, not counted (first clone, caches)
        load_before = os.getloadavg()
        figures = measure(client, lab.box, lab.git_url, lab.commit, args.builds)
        load_after = os.getloadavg()
    result = {
        **head,
        "vms": args.vms,
        "loadavg": [round(x, 2) for x in load_before],  # 1/5/15 min, when the measured builds began
        "loadavg_end": [round(x, 2) for x in load_after],
        **figures,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if figures["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
