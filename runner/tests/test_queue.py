"""Queue against a real redis-server: resque keys, atomic moves, reaper (also concurrent), retry."""

from __future__ import annotations

import json
import threading

import pytest
import redis
from travis_worker.keys import Keys
from travis_worker.payload import PayloadError
from travis_worker.queue import Queue, attempts_of, now_iso, parse_iso, queue_of
from travis_worker.reporter import state_template

K = Keys("resque")


def make(client: redis.Redis, worker_id: str = "host:1:builds", max_attempts: int = 3) -> Queue:
    return Queue(client, K, "builds", worker_id, max_attempts)


def job(n: int) -> str:
    return json.dumps({"class": "Travis::Worker", "args": [{"n": n}]})


def test_push_and_take_are_resque_shaped(client: redis.Redis) -> None:
    q = make(client)
    q.register()
    q.push(job(1))
    assert client.smembers("resque:queues") == {"builds"}
    assert client.lrange("resque:queue:builds", 0, -1) == [job(1)]
    assert "host:1:builds" in client.smembers("resque:workers")
    assert parse_iso(client.hget("resque:workers:heartbeat", "host:1:builds")) is not None
    taken = q.take(1)
    assert taken is not None and taken.raw == job(1) and taken.error is None
    assert client.llen("resque:queue:builds") == 0
    assert client.lrange("resque:processing:host:1:builds", 0, -1) == [taken.raw]
    assert q.start(taken, now_iso(), 1) == 1  # the first run of job 1, numbered in the same round trip
    assert client.get("resque:travis:attempt:1") == "1" and client.ttl("resque:travis:attempt:1") > 0
    doc = json.loads(client.get("resque:worker:host:1:builds"))
    assert doc["queue"] == "builds" and doc["payload"] == json.loads(job(1)) and doc["run_at"]
    assert q.finish(taken, ["report"])
    assert client.llen("resque:processing:host:1:builds") == 0
    assert client.lrange("resque:travis:outbox:host:1:builds", 0, -1) == ["report"]
    assert client.get("resque:stat:processed") == "1"
    assert client.exists("resque:worker:host:1:builds") == 0


def test_start_writes_state_and_numbered_reports_in_the_same_script(client: redis.Redis) -> None:
    """Issue #10 round 2: the reports queued by start() carry the attempt number Redis counted."""
    q = make(client)
    q.push(job(7))
    taken = q.take(1)
    client.set("resque:travis:attempt:7", "2")  # two earlier runs
    writes = [("resque:travis:worker_state", "host:1:builds", '{"state": "working"}')]
    templates = [state_template(7, s, "host:1:builds") for s in ("received", "started")]
    assert q.start(taken, now_iso(), 7, hash_writes=writes, reports=templates) == 3
    assert client.hget("resque:travis:worker_state", "host:1:builds") == '{"state": "working"}'
    entries = [json.loads(e) for e in client.lrange("resque:travis:outbox:host:1:builds", 0, -1)]
    assert [(e["body"]["state"], e["body"]["attempt"], e["body"]["id"]) for e in entries] == [
        ("received", 3, 7),
        ("started", 3, 7),
    ]
    assert parse_iso(entries[0]["body"]["received_at"]) is not None
    assert client.get("resque:travis:attempt:7") == "3" and client.ttl("resque:travis:attempt:7") > 0
    assert json.loads(client.get("resque:worker:host:1:builds"))["payload"] == json.loads(job(7))


def test_take_returns_held_job_first(client: redis.Redis) -> None:
    q = make(client)
    client.rpush("resque:processing:host:1:builds", job(9))
    q.push(job(1))
    assert q.take(1).raw == job(9)


def test_take_times_out_empty(client: redis.Redis) -> None:
    assert make(client).take(0.1) is None


def test_fail_records_resque_fields(client: redis.Redis) -> None:
    q = make(client)
    q.push("not json{")
    raw = q.take(1)
    q.fail(raw, exception="PayloadError", error="payload: not JSON")
    entry = json.loads(client.lindex("resque:failed", 0))
    assert set(entry) == {"failed_at", "payload", "exception", "error", "backtrace", "worker", "queue"}
    assert entry["payload"] == "not json{" and entry["error"] == "payload: not JSON"
    assert entry["worker"] == "host:1:builds" and entry["queue"] == "builds"
    assert client.get("resque:stat:failed") == "1"
    assert client.llen("resque:processing:host:1:builds") == 0


def test_give_back_counts_attempts_then_fails(client: redis.Redis) -> None:
    q = make(client, max_attempts=2)
    q.push(job(1))
    raw = q.take(1)
    assert q.give_back(raw, count_attempt=True, reason="sandbox reset failed: boom") == "requeued"
    raw = client.lindex("resque:queue:builds", 0)
    assert attempts_of(raw) == 1
    raw = q.take(1)
    assert q.give_back(raw, count_attempt=True, reason="sandbox reset failed: boom") == "failed"
    entry = json.loads(client.lindex("resque:failed", 0))
    assert "sandbox reset failed: boom" in entry["error"] and "max_attempts=2" in entry["error"]
    assert client.llen("resque:queue:builds") == 0


def test_give_back_without_count_goes_to_head(client: redis.Redis) -> None:
    q = make(client)
    q.push(job(1))
    q.push(job(2))
    raw = q.take(1)
    q.give_back(raw, count_attempt=False, reason="stopping")
    assert [json.loads(x)["args"][0]["n"] for x in client.lrange("resque:queue:builds", 0, -1)] == [1, 2]


def test_reaper_requeues_at_head_and_moves_outbox(client: redis.Redis) -> None:
    dead = make(client, "deadhost:42:builds")
    dead.register()
    dead.push(job(1))
    dead.push(job(2))
    raw = dead.take(1)
    client.rpush("resque:travis:outbox:deadhost:42:builds", "r1", "r2")
    client.hset("resque:workers:heartbeat", "deadhost:42:builds", now_iso(0))
    live = make(client, "live:1:builds")
    live.register()
    client.rpush("resque:travis:outbox:live:1:builds", "mine")
    assert live.reap(dead_after=5) == {"deadhost:42:builds": ["requeued"]}
    head = client.lindex("resque:queue:builds", 0)
    assert json.loads(head)["args"][0]["n"] == 1 and attempts_of(head) == 1
    assert raw is not None
    assert client.lrange("resque:travis:outbox:live:1:builds", 0, -1) == ["mine", "r1", "r2"]
    assert "deadhost:42:builds" not in client.smembers("resque:workers")
    assert not client.hexists("resque:workers:heartbeat", "deadhost:42:builds")
    assert not client.exists(
        "resque:processing:deadhost:42:builds", "resque:travis:outbox:deadhost:42:builds"
    )


def test_reaper_leaves_live_workers_alone(client: redis.Redis) -> None:
    other = make(client, "other:2:builds")
    other.register()
    other.push(job(1))
    other.take(1)
    assert make(client, "me:1:builds").reap(dead_after=5) == {}
    assert client.llen("resque:processing:other:2:builds") == 1


def test_reaper_fails_after_max_attempts(client: redis.Redis) -> None:
    dead = make(client, "dead:1:builds", max_attempts=3)
    dead.register()
    client.rpush("resque:processing:dead:1:builds", json.dumps({"class": "X", "args": [{}], "attempts": 2}))
    client.hset("resque:workers:heartbeat", "dead:1:builds", now_iso(0))
    assert make(client, "me:1:builds", max_attempts=3).reap(5) == {"dead:1:builds": ["failed"]}
    entry = json.loads(client.lindex("resque:failed", 0))
    assert entry["exception"] == "MaxAttemptsExceeded"
    assert "worker dead:1:builds died" in entry["error"] and "3 of max_attempts=3" in entry["error"]
    assert client.llen("resque:queue:builds") == 0


def test_concurrent_reapers_requeue_each_job_once(client: redis.Redis) -> None:
    for d in range(10):
        wid = f"dead:{d}:builds"
        client.rpush(f"resque:processing:{wid}", job(d))
        client.rpush(f"resque:travis:outbox:{wid}", f"report-{d}")
        client.hset("resque:workers:heartbeat", wid, now_iso(0))
        client.sadd("resque:workers", wid)
        client.sadd("resque:travis:workers", wid)  # ours: registered by one of our workers
    reapers = [
        make(redis.Redis(connection_pool=client.connection_pool), f"live:{i}:builds") for i in range(8)
    ]
    for reaper in reapers:
        reaper.register()
    barrier = threading.Barrier(len(reapers))

    def go(q: Queue) -> None:
        barrier.wait()
        q.reap(5)

    threads = [threading.Thread(target=go, args=(q,)) for q in reapers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    queued = sorted(json.loads(x)["args"][0]["n"] for x in client.lrange("resque:queue:builds", 0, -1))
    assert queued == list(range(10))
    reports = []
    for i in range(8):
        reports += client.lrange(f"resque:travis:outbox:live:{i}:builds", 0, -1)
    assert sorted(reports) == sorted(f"report-{d}" for d in range(10))
    assert client.smembers("resque:workers") == {f"live:{i}:builds" for i in range(8)}


def test_retry_one_and_all(client: redis.Redis) -> None:
    q = make(client)
    for n in range(3):
        client.rpush(
            "resque:processing:host:1:builds", json.dumps({"class": "X", "args": [{"n": n}], "attempts": 3})
        )
    for raw in client.lrange("resque:processing:host:1:builds", 0, -1):
        q.fail(q.envelope(raw), exception="E", error="e")
    assert q.retry(1) == 1
    assert [json.loads(x) for x in client.lrange("resque:queue:builds", 0, -1)] == [
        {"class": "X", "args": [{"n": 1}]}
    ]
    assert client.llen("resque:failed") == 2
    assert q.retry(None) == 2
    assert client.llen("resque:failed") == 0 and client.llen("resque:queue:builds") == 3


def test_unregister_keeps_leftovers_for_the_reaper(client: redis.Redis) -> None:
    q = make(client)
    q.register()
    client.rpush("resque:travis:outbox:host:1:builds", "undelivered")
    assert q.unregister() is False
    assert parse_iso(client.hget("resque:workers:heartbeat", "host:1:builds")) == 0
    client.delete("resque:travis:outbox:host:1:builds")
    assert q.unregister() is True
    assert not client.sismember("resque:workers", "host:1:builds")


def test_queue_of_worker_id() -> None:
    assert queue_of("box.example:123:builds.linux") == "builds.linux"
    assert queue_of("h:1:a,b") == "a"


def test_give_back_after_being_reaped_does_not_duplicate(client: redis.Redis) -> None:
    q = make(client, "slow:1:builds")
    q.register()
    q.push(job(1))
    raw = q.take(1)
    client.hset("resque:workers:heartbeat", "slow:1:builds", now_iso(0))
    make(client, "live:2:builds").reap(5)  # the slow worker looked dead: its job was requeued
    assert q.give_back(raw, count_attempt=False, reason="stopping") == "gone"
    assert client.llen("resque:queue:builds") == 1


def test_foreign_or_unreadable_heartbeats_are_not_reaped(client: redis.Redis) -> None:
    client.hset("resque:workers:heartbeat", "ruby:1:builds", "sometime yesterday")
    client.rpush("resque:processing:ruby:1:builds", job(1))
    assert make(client, "me:1:builds").reap(5) == {}
    assert client.llen("resque:processing:ruby:1:builds") == 1
    assert parse_iso("2026-11-28T00:00:00Z") == parse_iso("2026-11-28T00:00:00+00:00")


def test_finish_after_being_reaped_queues_nothing(client: redis.Redis) -> None:
    q = make(client, "slow:1:builds")
    q.register()
    q.push(job(1))
    raw = q.take(1)
    client.hset("resque:workers:heartbeat", "slow:1:builds", now_iso(0))
    make(client, "live:2:builds").reap(5)
    assert q.finish(raw, ["final report"]) is None
    assert not client.exists("resque:travis:outbox:slow:1:builds")
    assert client.llen("resque:queue:builds") == 1


def test_reaper_fails_a_poison_pill_instead_of_dying(client: redis.Redis, redis_url: str) -> None:
    """A dead worker's processing list holding deep JSON, a 2 MB job and invalid UTF-8: the reaper sends
    each to failed with its reason and reaps a normal job next to them."""
    big = json.dumps({"class": "X", "args": [{"pad": "x" * 2 * 1024 * 1024}]})
    pills = ["[" * 1000 + "]" * 1000, big, b'{"\xff": 1}']
    client.rpush("resque:processing:dead:1:builds", *pills, job(1))
    client.hset("resque:workers:heartbeat", "dead:1:builds", now_iso(0))
    client.sadd("resque:travis:workers", "dead:1:builds")  # ours: only our workers are reaped
    # read as the worker reads Redis: str, with invalid bytes kept by surrogateescape
    reaper = redis.Redis.from_url(redis_url, decode_responses=True, encoding_errors="surrogateescape")
    outcomes = make(reaper, "me:1:builds").reap(5)
    assert outcomes == {"dead:1:builds": ["requeued", "failed", "failed", "failed"]}
    entries = [json.loads(x) for x in reaper.lrange("resque:failed", 0, -1)]
    assert [e["exception"] for e in entries] == ["PayloadError"] * 3
    errors = sorted(e["error"] for e in entries)
    assert "nested deeper than 100 levels" in errors[0] or "nested deeper than 100 levels" in errors[1]
    assert any("bytes, more than the limit of 1048576 bytes" in e for e in errors)
    assert any("not UTF-8" in e for e in errors)
    assert all("worker dead:1:builds died" in e for e in errors)
    assert [json.loads(x)["args"][0]["n"] for x in client.lrange("resque:queue:builds", 0, -1)] == [1]


def test_failed_and_retry_survive_unreadable_entries(client: redis.Redis) -> None:
    q = make(client)
    deep = "[" * 5000 + "]" * 5000
    client.rpush("resque:failed", deep, "[1, 2]", json.dumps({"payload": job(1), "queue": "builds"}))
    entries = q.failed()
    assert [e.get("error") for e in entries[:2]] == ["unreadable failed entry"] * 2
    assert entries[2]["payload"] == job(1)
    with pytest.raises(PayloadError, match="failed entry 0 is unreadable"):
        q.retry(0)
    assert q.retry(None) == 1
    assert client.lrange("resque:queue:builds", 0, -1) == [job(1)]
    assert client.lrange("resque:failed", 0, -1) == [deep, "[1, 2]"]


def test_reaper_reads_a_dead_workers_state_safely(client: redis.Redis) -> None:
    for n, state in enumerate(['{"vm": ["worker-1"]}', "[" * 5000 + "]" * 5000, '"idle"']):
        wid = f"dead:{n}:builds"
        client.hset("resque:workers:heartbeat", wid, now_iso(0))
        client.hset("resque:travis:worker_state", wid, state)
        client.rpush(f"resque:processing:{wid}", job(n))
    outcomes = make(client, "me:1:builds").reap(5)
    assert outcomes == {f"dead:{n}:builds": ["requeued"] for n in range(3)}
    assert client.hkeys("resque:travis:worker_state") == []
