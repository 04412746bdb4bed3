"""End to end: real worker processes, real redis-server, local executor, real git clones."""

from __future__ import annotations

import io
import json
import signal
import socket
import time
from pathlib import Path

import pytest
import redis
from harness import Spawn, WorkerProc, finished, free_port, job_json, reports, wait_for, worker_state
from travis_worker.cli import main as cli_main
from travis_worker.queue import parse_iso


def push(client: redis.Redis, raw: str) -> None:
    client.sadd("resque:queues", "builds")
    client.rpush("resque:queue:builds", raw)


def states(client: redis.Redis, job_id: int) -> list[str]:
    return [r["state"] for r in reports(client) if r["job_id"] == job_id and r["event"] == "job:state"]


def log_text(client: redis.Redis, job_id: int) -> str:
    parts = [r for r in reports(client) if r["job_id"] == job_id and r["event"] == "job:log"]
    assert [p["number"] for p in parts] == list(range(1, len(parts) + 1))
    assert parts and parts[-1]["final"] and not any(p["final"] for p in parts[:-1])
    return "".join(p["log"] for p in parts)


def test_pass_fail_error_with_real_clone(client: redis.Redis, spawn: Spawn, repo: tuple[str, str]) -> None:
    spawn()
    push(client, job_json(1, repo, "test -d .git && echo cloned-ok"))
    push(client, job_json(2, repo, "false"))
    push(client, job_json(3, repo, "true", install="exit 3"))
    wait_for(lambda: len(finished(client)) == 3, 30, "three jobs to finish")
    result = {job_id: entries[0]["result"] for job_id, entries in finished(client).items()}
    assert result == {1: "passed", 2: "failed", 3: "errored"}
    for job_id in (1, 2, 3):
        assert states(client, job_id) == ["received", "started", "finished"]
    assert "cloned-ok" in log_text(client, 1)
    assert client.get("resque:stat:processed") == "3"
    assert client.llen("resque:failed") == 0


def test_bad_payloads_fail_and_worker_continues(
    client: redis.Redis, spawn: Spawn, repo: tuple[str, str]
) -> None:
    spawn()
    push(client, "{not json")
    push(client, json.dumps({"class": "X", "args": []}))
    push(client, job_json(5, repo, "true").replace("twt/repo", "a b"))
    push(client, job_json(6, repo, "true"))
    wait_for(lambda: 6 in finished(client), 30, "the good job after the bad ones")
    failed = [json.loads(x) for x in client.lrange("resque:failed", 0, -1)]
    assert [f["exception"] for f in failed] == ["PayloadError"] * 3
    assert "not JSON" in failed[0]["error"]
    assert failed[0]["payload"] == "{not json"
    assert "args" in failed[1]["error"]
    assert "repository.slug" in failed[2]["error"]


def test_graceful_stop_finishes_current_job_and_takes_no_new(
    client: redis.Redis, spawn: Spawn, repo: tuple[str, str]
) -> None:
    worker = spawn()
    push(client, job_json(1, repo, "sleep 1.5; echo slept"))
    push(client, job_json(2, repo, "true"))
    wait_for(lambda: "started" in states(client, 1), 15, "job 1 to start")
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    assert finished(client)[1][0]["result"] == "passed"
    assert 2 not in finished(client)
    assert client.llen("resque:queue:builds") == 1
    assert not client.sismember("resque:workers", worker.id)


def test_graceful_stop_requeues_after_shutdown_timeout(
    client: redis.Redis, spawn: Spawn, repo: tuple[str, str]
) -> None:
    worker = spawn(shutdown_timeout=1)
    push(client, job_json(1, repo, "sleep 60"))
    wait_for(lambda: "started" in states(client, 1), 15, "job 1 to start")
    t0 = time.monotonic()
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    assert time.monotonic() - t0 < 6
    assert 1 not in finished(client)
    head = json.loads(client.lindex("resque:queue:builds", 0))
    assert head["args"][0]["job"]["id"] == 1


@pytest.mark.parametrize("how", ["SIGQUIT", "double SIGINT"])
def test_immediate_stop_requeues(client: redis.Redis, spawn: Spawn, repo: tuple[str, str], how: str) -> None:
    worker = spawn()
    push(client, job_json(1, repo, "sleep 60"))
    push(client, job_json(2, repo, "true"))
    wait_for(lambda: "started" in states(client, 1), 15, "job 1 to start")
    t0 = time.monotonic()
    if how == "SIGQUIT":
        worker.signal(signal.SIGQUIT)
    else:
        worker.signal(signal.SIGINT)
        time.sleep(0.2)
        worker.signal(signal.SIGINT)
    assert worker.wait(30) == 0
    assert time.monotonic() - t0 < 5
    assert 1 not in finished(client)
    queued = [json.loads(x)["args"][0]["job"]["id"] for x in client.lrange("resque:queue:builds", 0, -1)]
    assert queued == [1, 2]


def test_pause_and_resume(client: redis.Redis, spawn: Spawn, repo: tuple[str, str]) -> None:
    worker = spawn()
    worker.signal(signal.SIGUSR2)
    wait_for(lambda: worker_state(client, worker).get("state") == "paused", 10, "paused state")
    push(client, job_json(1, repo, "true"))
    time.sleep(1.5)
    assert client.llen("resque:queue:builds") == 1
    worker.signal(signal.SIGUSR2)
    wait_for(lambda: 1 in finished(client), 15, "job after resume")


def test_start_up_removes_this_boxs_old_form_vm_entry(client: redis.Redis, spawn: Spawn) -> None:
    """`vm_state` entries of the old form (field = VM name) left by an earlier runner: the runner removes its
    own box's at start-up and leaves another box's."""
    host = socket.gethostname()
    client.hset(
        "resque:travis:vm_state", "worker-7", json.dumps({"state": "idle", "worker": f"{host}:1:builds"})
    )
    client.hset(
        "resque:travis:vm_state", "worker-8", json.dumps({"state": "idle", "worker": "otherbox:1:builds"})
    )
    spawn(vm="worker-7")
    wait_for(lambda: client.hexists("resque:travis:vm_state", f"{host}:worker-7"), 15, "the new entry")
    wait_for(lambda: not client.hexists("resque:travis:vm_state", "worker-7"), 5, "the old entry removed")
    assert client.hexists("resque:travis:vm_state", "worker-8")


def test_cancel_within_two_seconds(client: redis.Redis, spawn: Spawn, repo: tuple[str, str]) -> None:
    spawn(vm="worker-7")
    push(client, job_json(42, repo, "sleep 60"))
    wait_for(lambda: "started" in states(client, 42), 15, "job 42 to start")
    state = json.loads(client.hget("resque:travis:vm_state", f"{socket.gethostname()}:worker-7"))
    assert state["state"] == "working" and state["job_id"] == 42 and state["worker"]
    t0 = time.time()
    client.publish("resque:worker.commands", json.dumps({"type": "cancel_job", "job_id": 42}))
    wait_for(lambda: 42 in finished(client), 10, "cancelled job to finish")
    done = finished(client)[42][0]
    assert done["result"] == "cancelled"
    # the build was stopped and the job finished (finished_at is taken after the executor returned) within 2 s
    assert parse_iso(done["finished_at"]) - t0 < 2.0
    assert "Cancelled" in log_text(client, 42)


def test_limits_end_to_end(client: redis.Redis, spawn: Spawn, repo: tuple[str, str]) -> None:
    spawn(limits__log_length=20000)
    push(client, job_json(1, repo, "sleep 30", timeouts={"hard_limit": 1}))
    push(client, job_json(2, repo, "echo start; sleep 30", timeouts={"log_silence": 1}))
    push(client, job_json(3, repo, "yes | head -c 100000; sleep 5"))
    wait_for(lambda: len(finished(client)) == 3, 40, "three limited jobs")
    done = {job_id: entries[0] for job_id, entries in finished(client).items()}
    assert all(d["result"] == "errored" for d in done.values())
    assert "hard time limit" in done[1]["reason"]
    assert "log-silence" in done[2]["reason"]
    assert "log length" in done[3]["reason"]
    assert "maximum log length" in log_text(client, 3)


def test_status_and_failed_cli(
    client: redis.Redis,
    spawn: Spawn,
    repo: tuple[str, str],
    redis_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    worker = spawn(vm="worker-1")
    push(client, job_json(1, repo, "sleep 60"))
    push(client, "garbage")
    wait_for(lambda: "started" in states(client, 1), 15, "job 1 to start")
    cfg = tmp_path / "cli.yml"
    cfg.write_text(f"redis:\n  url: {redis_url}\n")
    assert cli_main(["status", "--json", "--config", str(cfg)]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["id"], r["state"], r["job_id"], r["vm"]) for r in rows] == [
        (worker.id, "working", 1, "worker-1")
    ]
    assert rows[0]["heartbeat_age"] < 1.0
    client.publish("resque:worker.commands", json.dumps({"type": "cancel_job", "job_id": 1}))
    wait_for(lambda: client.llen("resque:failed") == 1, 15, "garbage in failed")
    assert cli_main(["failed", "--config", str(cfg)]) == 0
    assert "PayloadError: payload: not JSON" in capsys.readouterr().out
    worker.kill9()
    client.hset("resque:workers:heartbeat", worker.id, "2000-01-01T00:00:00+00:00")
    assert cli_main(["status", "--config", str(cfg)]) == 0
    assert "dead" in capsys.readouterr().out
    assert cli_main(["retry", "7", "--config", str(cfg)]) == 3
    assert cli_main(["retry", "--all", "--config", str(cfg)]) == 0
    assert client.lrange("resque:queue:builds", 0, -1) == ["garbage"]


def test_enqueue_cli(
    redis_url: str,
    client: redis.Redis,
    tmp_path: Path,
    repo: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cfg = tmp_path / "cli.yml"
    cfg.write_text(f"redis:\n  url: {redis_url}\n")
    bare = json.loads(job_json(3, repo, "true"))["args"][0]
    (tmp_path / "bare.json").write_text(json.dumps(bare))
    assert cli_main(["enqueue", "--queue", "other", "--config", str(cfg), str(tmp_path / "bare.json")]) == 0
    assert json.loads(client.lindex("resque:queue:other", 0)) == {"class": "Travis::Worker", "args": [bare]}
    assert "other" in client.smembers("resque:queues")
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps(json.loads(job_json(4, repo, "true")))))
    assert cli_main(["enqueue", "--config", str(cfg), "-"]) == 0
    assert json.loads(client.lindex("resque:queue:builds", 0))["args"][0]["job"]["id"] == 4
    (tmp_path / "bad.json").write_text(json.dumps({"class": "X", "args": [{"repository": {}}]}))
    assert cli_main(["enqueue", "--config", str(cfg), str(tmp_path / "bad.json")]) == 65


def test_sandbox_failure_at_start_up_marks_errored_and_takes_no_job(
    client: redis.Redis, spawn: Spawn, repo: tuple[str, str]
) -> None:
    # a real SandboxError: the local executor cannot find bash on this worker's PATH. The worker resets its
    # sandbox at start-up (issue #13), so it is errored before it takes anything: the job stays queued.
    worker = spawn(env={"PATH": "/nonexistent-twt-path"})
    push(client, job_json(1, repo, "true"))
    wait_for(lambda: worker_state(client, worker).get("state") == "errored", 15, "errored state")
    time.sleep(0.5)
    head = json.loads(client.lindex("resque:queue:builds", 0))
    assert head["args"][0]["job"]["id"] == 1 and head.get("attempts", 0) == 0
    assert states(client, 1) == []
    assert client.llen(f"resque:processing:{worker.id}") == 0
    assert "sandbox reset failed (start-up" in worker.log()


def test_sigterm_while_redis_is_unreachable_stops_at_once(tmp_path: Path) -> None:
    """A worker started while its Redis is unreachable retries registering, but a stop (systemctl stop or
    restart, e.g. to give it a corrected Redis URL) ends it at once: it has taken no job. Before, it retried
    until systemd's stop timeout killed it (found when a box copy's workers kept a gone Redis's URL)."""
    worker = WorkerProc(tmp_path, f"redis://127.0.0.1:{free_port()}/0", "w1")
    try:
        wait_for(lambda: "registering worker" in worker.log(), 20, "the worker to try its Redis")
        t0 = time.monotonic()
        worker.signal(signal.SIGTERM)
        assert worker.wait(15) == 0, worker.log()
        assert time.monotonic() - t0 < 10, worker.log()
        assert "stopped before Redis could be reached: no job was taken" in worker.log()
    finally:
        worker.stop()
