"""Living next to Ruby Resque on the same Redis (issue #10, section 2), against a real redis-server.

Resque's rules quoted here are from resque 3.0.0 (github.com/resque/resque, tag v3.0.0):
- lib/resque/worker.rb `all_workers_with_expired_heartbeats`: a worker is pruned when Redis `TIME` minus its
  `workers:heartbeat` stamp (`Time#iso8601`, written by `heartbeat!` from `data_store.server_time`) exceeds
  `Resque.prune_interval` (DEFAULT_PRUNE_INTERVAL, 300 s; heartbeats every 60 s).
- lib/resque/worker.rb `prune_dead_workers` (run at every Ruby worker's start-up): a worker with the same host
  and the same queue set whose pid is not in `ps -A -o pid,command | grep -E "[r]esque:work|..."` is
  unregistered with `unregister_worker`: if `<ns>:worker:<id>` holds a job, `Job#fail` pushes a `DirtyExit`
  failure (lib/resque/failure/redis.rb `save`: failed_at `%Y/%m/%d %H:%M:%S %Z`, payload, exception, error,
  backtrace, worker, queue) to `<ns>:failed`; then (lib/resque/data_store.rb `unregister_worker`) SREM
  `workers`, DEL `worker:<id>` and `worker:<id>:started`, HDEL `workers:heartbeat`, and `Stat.clear` DELs
  `stat:processed:<id>` and `stat:failed:<id>`.
`resque_prune_unregister` below issues exactly those Redis commands; `test_real_ruby_resque_prune...` runs the
real gem when it is installed (Debian bookworm has no ruby-resque package and rubygems.org is not reachable
from the lab, so there it skips).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import redis
from harness import WorkerProc, finished, job_json, make_repo, registered, reports, wait_for
from travis_worker.keys import Keys
from travis_worker.queue import Queue, now_iso

K = Keys("resque")
RUBY_ID = "rubyhost:4242:builds"


def redis_now(client: redis.Redis) -> float:
    seconds, micros = client.time()
    return seconds + micros / 1_000_000


def make(client: redis.Redis, worker_id: str) -> Queue:
    return Queue(client, K, "builds", worker_id, 3)


def ruby_register(client: redis.Redis, worker_id: str, age: float) -> None:
    """What a Resque 3.0 worker writes at start-up (register_worker + heartbeat!), its beat `age` s old."""
    stamp = datetime.fromtimestamp(int(redis_now(client) - age), timezone.utc).isoformat()  # Time#iso8601
    client.sadd("resque:workers", worker_id)
    client.set(f"resque:worker:{worker_id}:started", "2026-12-02 00:00:00 +0000")
    client.hset("resque:workers:heartbeat", worker_id, stamp)


def resque_prune_unregister(client: redis.Redis, worker_id: str) -> None:
    """Resque 3.0.0 `Worker#unregister_worker` without an exception argument, as `prune_dead_workers` calls it
    for a same-host, same-queues worker whose pid it does not see (see the module docstring)."""
    processing = client.get(f"resque:worker:{worker_id}")
    if processing:
        hash_ = json.loads(processing)
        record = {
            "failed_at": time.strftime("%Y/%m/%d %H:%M:%S UTC", time.gmtime()),
            "payload": hash_["payload"],
            "exception": "Resque::DirtyExit",
            "error": "Job still being processed",
            "backtrace": [],
            "worker": worker_id,
            "queue": hash_["queue"],
        }
        # Failure::Redis#save stores exception.class.to_s: "Resque::DirtyExit"
        client.rpush("resque:failed", json.dumps(record))
    pipe = client.pipeline(transaction=False)  # `@redis.pipelined`
    pipe.srem("resque:workers", worker_id)
    pipe.delete(f"resque:worker:{worker_id}")
    pipe.delete(f"resque:worker:{worker_id}:started")
    pipe.hdel("resque:workers:heartbeat", worker_id)
    pipe.delete(f"resque:stat:processed:{worker_id}")
    pipe.delete(f"resque:stat:failed:{worker_id}")
    pipe.execute()


# -- the reaper judges only our workers ------------------------------------------------------------------
def test_foreign_heartbeat_is_never_reaped_by_our_rule(client: redis.Redis) -> None:
    ruby_register(client, RUBY_ID, age=120)  # Resque beats every 60 s: 120 s is late, not dead
    ruby_register(client, "rubyhost:4243:builds", age=400)  # past Resque's prune_interval: Resque's business
    me = make(client, "me:1:builds")
    me.register()
    assert me.reap(dead_after=5) == {}
    assert client.hexists("resque:workers:heartbeat", RUBY_ID)
    assert client.hexists("resque:workers:heartbeat", "rubyhost:4243:builds")
    assert {RUBY_ID, "rubyhost:4243:builds"} <= client.smembers("resque:workers")
    assert client.exists(f"resque:worker:{RUBY_ID}:started")


def test_our_dead_worker_is_still_reaped_without_scan(client: redis.Redis) -> None:
    dead = make(client, "dead:7:builds")
    dead.register()
    dead.push(json.dumps({"class": "X", "args": [{"n": 1}]}))
    dead.take(1)
    client.hset("resque:workers:heartbeat", "dead:7:builds", now_iso(0))
    # half-registered: in our set, processing list and outbox, no heartbeat and no state at all
    client.sadd("resque:travis:workers", "half:8:builds")
    client.rpush("resque:processing:half:8:builds", json.dumps({"class": "X", "args": [{"n": 2}]}))
    client.rpush("resque:travis:outbox:half:8:builds", "report")
    for n in range(2000):  # a large shared keyspace
        client.set(f"other:app:key:{n}", n)
    scans = _calls(client, "scan")
    me = make(client, "me:1:builds")
    me.register()
    assert me.reap(dead_after=5) == {"dead:7:builds": ["requeued"], "half:8:builds": ["requeued"]}
    assert _calls(client, "scan") == scans
    assert client.llen("resque:queue:builds") == 2
    assert client.lrange("resque:travis:outbox:me:1:builds", 0, -1) == ["report"]
    assert client.smembers("resque:travis:workers") == {"me:1:builds"}


def test_our_worker_whose_heartbeat_a_resque_prune_removed_is_judged_by_its_state(
    client: redis.Redis,
) -> None:
    """Between a Resque prune (HDEL of our heartbeat field) and our next beat, other reapers must wait."""
    pruned = make(client, "pruned:3:builds")
    pruned.register()
    pruned.push(json.dumps({"class": "X", "args": [{"n": 1}]}))
    pruned.take(1)
    state = {"state": "working", "job_id": 1, "vm": None, "since": now_iso(), "heartbeat_interval": 1}
    client.hset(
        "resque:travis:worker_state", "pruned:3:builds", json.dumps({**state, "beat": redis_now(client)})
    )
    client.hdel("resque:workers:heartbeat", "pruned:3:builds")
    me = make(client, "me:1:builds")
    me.register()
    assert me.reap(dead_after=5) == {}
    assert client.llen("resque:processing:pruned:3:builds") == 1
    stale = {**state, "beat": redis_now(client) - 6}  # and if it really died after the prune: reaped
    client.hset("resque:travis:worker_state", "pruned:3:builds", json.dumps(stale))
    assert me.reap(dead_after=5) == {"pruned:3:builds": ["requeued"]}


def _calls(client: redis.Redis, command: str) -> int:
    return int(client.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0))


def test_heartbeats_and_reaper_use_redis_time_not_the_host_clock(
    client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow = make(client, "slowclock:1:builds")
    fast = make(client, "fastclock:2:builds")
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() - 30)  # this host's clock is 30 s behind
    slow.register()
    slow.beat()
    monkeypatch.setattr(time, "time", lambda: real() + 30)  # the reaper's host is 30 s ahead
    fast.register()
    assert fast.reap(dead_after=5) == {}
    monkeypatch.setattr(time, "time", real)
    assert client.sismember("resque:travis:workers", "slowclock:1:builds")


# -- end to end: real worker processes --------------------------------------------------------------------
@pytest.fixture
def workers(tmp_path: Path, redis_url: str, client: redis.Redis) -> Iterator[list[WorkerProc]]:
    started: list[WorkerProc] = []
    yield started
    for worker in started:
        worker.stop()


def test_ruby_style_heartbeat_120s_old_survives_30s_of_reaping(
    tmp_path: Path, redis_url: str, client: redis.Redis, workers: list[WorkerProc]
) -> None:
    """Acceptance: two of our workers, heartbeat_interval 1 (dead after 5 s, reaping every 3 s), for 30 s."""
    ruby_register(client, RUBY_ID, age=120)
    stamp = client.hget("resque:workers:heartbeat", RUBY_ID)
    for name in ("a", "b"):
        workers.append(WorkerProc(tmp_path, redis_url, name, heartbeat_interval=1))
    for worker in workers:
        wait_for(lambda w=worker: registered(client, w), 15, f"{worker.id} to register")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert client.hget("resque:workers:heartbeat", RUBY_ID) == stamp, "the Ruby worker was reaped"
        time.sleep(0.5)
    assert client.sismember("resque:workers", RUBY_ID)
    assert all(worker.proc.poll() is None for worker in workers)
    assert "reaped dead worker" not in "".join(worker.log() for worker in workers)


def test_resque_prune_of_a_working_worker_neither_aborts_nor_reruns_the_build(
    tmp_path: Path, redis_url: str, client: redis.Redis, workers: list[WorkerProc]
) -> None:
    repo = make_repo(tmp_path / "git")
    worker = WorkerProc(tmp_path, redis_url, "w", heartbeat_interval=0.3)
    workers.append(worker)
    wait_for(lambda: registered(client, worker), 15, "worker to register")
    client.rpush("resque:queue:builds", job_json(1, repo, "sleep 3; echo build-done"))
    wait_for(lambda: client.exists(f"resque:worker:{worker.id}"), 15, "the job to start")
    time.sleep(0.5)
    resque_prune_unregister(client, worker.id)
    assert client.llen("resque:failed") == 1  # what Resque wrote: a DirtyExit for a job that still runs
    wait_for(lambda: finished(client).get(1), 30, "job 1 to finish")
    time.sleep(1.5)  # a rerun would have started by now
    assert [entry["result"] for entry in finished(client)[1]] == ["passed"]
    runs = [r for r in reports(client) if r.get("state") == "received"]
    assert len(runs) == 1, "the build ran twice"
    assert client.llen("resque:failed") == 0, client.lrange("resque:failed", 0, -1)
    assert client.hexists("resque:workers:heartbeat", worker.id)
    assert client.sismember("resque:workers", worker.id)
    assert client.exists(f"resque:worker:{worker.id}:started")
    assert "registration removed by another Resque worker's prune" in worker.log()


def _ruby_resque() -> str | None:
    try:
        probe = subprocess.run(["ruby", "-e", 'require "resque"'], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "ruby is not installed"
    if probe.returncode != 0:
        return "resque gem not installed (Debian bookworm has no ruby-resque; rubygems.org unreachable)"
    return None


def test_real_ruby_resque_prune_of_a_working_worker(
    tmp_path: Path, redis_url: str, client: redis.Redis, workers: list[WorkerProc]
) -> None:
    """The same as above with the real gem: a Resque worker on our host and queue starts and prunes."""
    missing = _ruby_resque()
    if missing:
        pytest.skip(missing)
    repo = make_repo(tmp_path / "git")
    worker = WorkerProc(tmp_path, redis_url, "w", heartbeat_interval=0.3)
    workers.append(worker)
    wait_for(lambda: registered(client, worker), 15, "worker to register")
    client.rpush("resque:queue:builds", job_json(1, repo, "sleep 3; echo build-done"))
    wait_for(lambda: client.exists(f"resque:worker:{worker.id}"), 15, "the job to start")
    prune = 'Resque.redis = ARGV[0]; Resque::Worker.new("builds").prune_dead_workers'
    env: dict[str, Any] = {**os.environ}
    subprocess.run(["ruby", "-rresque", "-e", prune, redis_url], check=True, timeout=60, env=env)
    wait_for(lambda: finished(client).get(1), 30, "job 1 to finish")
    time.sleep(1.5)
    assert [entry["result"] for entry in finished(client)[1]] == ["passed"]
    assert len([r for r in reports(client) if r.get("state") == "received"]) == 1
    assert client.llen("resque:failed") == 0
