"""No payload can take the fleet down, and a kill leaves no build behind: real worker processes, real
redis-server, local executor, real git repository."""

from __future__ import annotations

import io
import json
import os
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from harness import Spawn, finished, job_json, wait_for, worker_state
from travis_worker.cli import main as cli_main

DEEP = "[" * 1000 + "]" * 1000  # ~2 KB: the poison pill of issue 10


def push(client: redis.Redis, raw: str | bytes) -> None:
    client.sadd("resque:queues", "builds")
    client.rpush("resque:queue:builds", raw)


def failed(client: redis.Redis) -> list[dict[str, Any]]:
    return [json.loads(x) for x in client.lrange("resque:failed", 0, -1)]


def test_nested_json_with_two_workers_then_a_third_works(
    client: redis.Redis, spawn: Spawn, repo: tuple[str, str]
) -> None:
    first, second = spawn(), spawn()
    push(client, DEEP)
    wait_for(lambda: client.llen("resque:failed") == 1, 15, "the nested payload in failed")
    entry = failed(client)[0]
    assert entry["exception"] == "PayloadError"
    assert entry["error"] == "payload: JSON nested deeper than 100 levels"
    assert entry["payload"] == DEEP
    time.sleep(3 * 0.2 * 5)  # both reapers run (every 3 beats of 0.2 s, after 1 s connected)
    for worker in (first, second):
        assert worker.proc.poll() is None, worker.log()[-2000:]
        assert "Traceback" not in worker.log(), worker.log()[-2000:]
    third = spawn()
    push(client, job_json(1, repo, "true"))
    wait_for(lambda: 1 in finished(client), 30, "a normal job to finish")
    assert finished(client)[1][0]["result"] == "passed"
    for worker in (first, second, third):
        assert worker.proc.poll() is None, worker.log()[-2000:]
        assert client.llen(f"resque:processing:{worker.id}") == 0


def test_a_pill_left_by_a_dead_worker_does_not_stop_a_new_one(
    client: redis.Redis, spawn: Spawn, repo: tuple[str, str]
) -> None:
    """Today's fleet-wide failure: the dead worker's processing list holds the pill; the start-up reap
    and the heartbeat thread's reaper of the next worker decode it."""
    dead = "deadhost:4242:builds"
    client.rpush(f"resque:processing:{dead}", DEEP)
    client.hset("resque:workers:heartbeat", dead, "2000-01-01T00:00:00+00:00")
    client.sadd("resque:workers", dead)
    client.sadd("resque:travis:workers", dead)  # one of ours: only our workers are reaped
    worker = spawn()
    wait_for(lambda: client.llen("resque:failed") == 1, 15, "the pill in failed")
    entry = failed(client)[0]
    assert entry["exception"] == "PayloadError" and "nested deeper than 100 levels" in entry["error"]
    assert f"worker {dead} died" in entry["error"]
    push(client, job_json(1, repo, "true"))
    wait_for(lambda: 1 in finished(client), 30, "a normal job to finish")
    time.sleep(1.5)  # a few heartbeats and a reap round later
    assert worker.proc.poll() is None, worker.log()[-2000:]
    assert "heartbeat failed" not in worker.log()
    assert not client.exists(f"resque:processing:{dead}")


def test_invalid_utf8_command_goes_to_failed(
    client: redis.Redis, spawn: Spawn, repo: tuple[str, str]
) -> None:
    worker = spawn()
    push(client, job_json(1, repo, "echo \udc80").encode("ascii"))  # the JSON escape of a lone surrogate
    push(client, job_json(2, repo, "echo X").replace("X", "\\u00e9").encode().replace(b"\\u00e9", b"\xe9"))
    wait_for(lambda: client.llen("resque:failed") == 2, 15, "both payloads in failed")
    errors = [e["error"] for e in failed(client)]
    assert errors[0] == "config.script: not valid UTF-8 text (lone surrogate at character 5)"
    assert errors[1].startswith("payload: not UTF-8 (invalid continuation byte at byte")
    assert all(e["exception"] == "PayloadError" for e in failed(client))
    assert not finished(client) and worker.proc.poll() is None


def test_payload_over_the_size_limit_goes_to_failed(
    client: redis.Redis, spawn: Spawn, repo: tuple[str, str]
) -> None:
    worker = spawn()
    big = job_json(1, repo, ["echo " + "x" * 60_000] * 20)  # 1.2 MB of valid commands
    push(client, big)
    wait_for(lambda: client.llen("resque:failed") == 1, 15, "the large payload in failed")
    entry = failed(client)[0]
    assert entry["exception"] == "PayloadError"
    assert entry["error"] == (
        f"payload: {len(big)} bytes, more than the limit of 1048576 bytes (limits.payload_size)"
    )
    assert not finished(client) and worker.proc.poll() is None


def test_nested_json_on_the_command_channel_does_not_kill_cancel(
    client: redis.Redis, spawn: Spawn, repo: tuple[str, str]
) -> None:
    worker = spawn()
    time.sleep(0.5)  # subscribed
    client.publish("resque:worker.commands", DEEP)
    push(client, job_json(1, repo, "sleep 60"))
    wait_for(lambda: worker_state(client, worker).get("state") == "working", 15, "job 1 to start")
    time.sleep(0.5)
    client.publish("resque:worker.commands", json.dumps({"type": "cancel_job", "job_id": 1}))
    wait_for(lambda: 1 in finished(client), 10, "the cancelled job to finish")
    assert finished(client)[1][0]["result"] == "cancelled"


def test_cli_reads_hostile_data_without_a_traceback(
    client: redis.Redis,
    redis_url: str,
    tmp_path: Path,
    repo: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cfg = tmp_path / "cli.yml"
    cfg.write_text(f"redis:\n  url: {redis_url}\n")
    client.hset("resque:workers:heartbeat", "h:1:builds", "2026-01-01T00:00:00+00:00")
    client.hset("resque:travis:worker_state", "h:1:builds", DEEP)
    client.hset("resque:workers:heartbeat", "h:2:builds", "2026-01-01T00:00:00+00:00")
    client.hset("resque:travis:worker_state", "h:2:builds", '{"state": [], "heartbeat_interval": "x"}')
    client.set("resque:stat:processed:h:2:builds", "many")
    assert cli_main(["status", "--json", "--config", str(cfg)]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["id"], r["state"], r["processed"]) for r in rows] == [
        ("h:1:builds", "dead", 0),
        ("h:2:builds", "dead", 0),
    ]
    client.rpush("resque:failed", DEEP)
    assert cli_main(["failed", "--config", str(cfg)]) == 0
    assert "unreadable failed entry" in capsys.readouterr().out
    assert cli_main(["retry", "0", "--config", str(cfg)]) == 65
    assert "failed entry 0 is unreadable" in capsys.readouterr().err
    (tmp_path / "deep.json").write_text(DEEP)
    assert cli_main(["enqueue", "--config", str(cfg), str(tmp_path / "deep.json")]) == 65
    assert "nested deeper than 100 levels" in capsys.readouterr().err
    (tmp_path / "latin1.json").write_bytes(
        job_json(1, repo, "echo \xe9").replace("\\u00e9", "\xe9").encode("latin-1")
    )
    assert cli_main(["enqueue", "--config", str(cfg), str(tmp_path / "latin1.json")]) == 65
    assert "not UTF-8" in capsys.readouterr().err
    big = job_json(2, repo, ["echo " + "x" * 60_000] * 20)
    (tmp_path / "big.json").write_text(big)
    assert cli_main(["enqueue", "--config", str(cfg), str(tmp_path / "big.json")]) == 65
    assert "more than 1048576 bytes" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b'{"a": "\xff"}')))
    assert cli_main(["enqueue", "--config", str(cfg), "-"]) == 65
    assert "not UTF-8" in capsys.readouterr().err
    assert client.llen("resque:queue:builds") == 0


def test_kill9_leaves_no_build_directory_after_the_next_start(
    client: redis.Redis, spawn: Spawn, repo: tuple[str, str], tmp_path: Path
) -> None:
    root = tmp_path / "builds"
    root.mkdir()
    victim = spawn(build_root=str(root))
    flag = tmp_path / "first-run"
    push(client, job_json(1, repo, f"if [ ! -e {flag} ]; then touch {flag}; sleep 60; fi"))
    wait_for(lambda: worker_state(client, victim).get("state") == "working", 15, "job 1 to start")
    wait_for(flag.exists, 15, "the build script to start")
    assert list(root.glob("*/travis-worker-job-*/build/twt/repo/.git")), "the clone is in the build root"
    owner = [p.name for p in root.iterdir()]
    assert len(owner) == 1 and owner[0].split("_")[1] == str(victim.proc.pid)
    victim.kill9()
    assert (root / owner[0]).is_dir()  # what the kill leaves
    other = tmp_path / "elsewhere"
    (other / "keep").mkdir(parents=True)
    (root / "not-a-worker-dir").mkdir()
    (root / f"{os.uname().nodename}_{os.getpid()}_0").mkdir()  # a live pid whose start time differs: dead
    next_worker = spawn(build_root=str(root))
    wait_for(lambda: not (root / owner[0]).exists(), 10, "the dead worker's build directory removed")
    assert "removed the build directories of 2 dead worker(s)" in next_worker.log()
    assert (root / "not-a-worker-dir").is_dir() and (other / "keep").is_dir()
    wait_for(lambda: 1 in finished(client), 60, "the killed job to run again")
    assert [p.name.split("_")[1] for p in root.iterdir() if p.name != "not-a-worker-dir"] == [
        str(next_worker.proc.pid)
    ]
    # the job's directory is removed in the background after the build (docs/runner.md): it may outlive the
    # `finished` report by the time a removal takes on a busy disk (~40 ms here); what stays is the next
    # build's directory, made ahead by the reset after the build, still empty
    wait_for(
        lambda: [list(d.iterdir()) for d in root.glob("*/travis-worker-job-*")] == [[]],
        10,
        "the job's directory removed (the next build's, empty, made ahead)",
    )


def test_a_dead_heartbeat_thread_stops_the_worker_and_requeues_its_job(
    client: redis.Redis,
    redis_url: str,
    tmp_path: Path,
    repo: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Fault injection in-process: the reaper raises an unexpected error while a job runs (no payload can
    do that any more, a bug could). The worker must not go on looking alive with a dead heartbeat."""
    from travis_worker.config import load_config
    from travis_worker.worker import Worker

    cfg_path = tmp_path / "worker.yml"
    cfg_path.write_text(f"redis:\n  url: {redis_url}\nheartbeat_interval: 0.2\n")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the local executor's default build root
    worker = Worker(load_config(str(cfg_path), environ={}))
    real_reap = worker.reap

    def faulty_reap() -> None:
        if worker.current_job is not None:
            raise RuntimeError("injected reaper bug")
        real_reap()

    worker.reap = faulty_reap  # type: ignore[method-assign]
    push(client, job_json(1, repo, "sleep 30"))
    saved = {
        sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGQUIT, signal.SIGINT, signal.SIGUSR2)
    }
    guard = threading.Timer(20, worker.request_stop, args=("immediate",))  # the old code never stops
    guard.start()
    started = time.monotonic()
    try:
        code = worker.run()
    finally:
        guard.cancel()
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    assert code == 1
    assert time.monotonic() - started < 15
    assert worker.thread_failure is not None and "heartbeat" in worker.thread_failure
    head = json.loads(client.lindex("resque:queue:builds", 0))
    assert head["args"][0]["job"]["id"] == 1 and head.get("attempts", 0) == 0
    assert not client.exists(f"resque:processing:{worker.id}")
    assert not client.hexists("resque:workers:heartbeat", worker.id)
    assert not finished(client)
