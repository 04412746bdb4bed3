"""Nothing is lost: kill -9 mid-job, Redis restarted mid-job, CI app outages, worker restarts."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import redis
from harness import WorkerProc, finished, job_json, make_repo, registered, reports, wait_for, worker_state
from travis_lab.ciapp import CIApp

KILL_TRIALS = 20
PARALLEL_WORKERS = 4


def push(client: redis.Redis, raw: str) -> None:
    client.sadd("resque:queues", "builds")
    client.rpush("resque:queue:builds", raw)


def test_kill9_mid_job_every_job_completes_once_elsewhere(tmp_path: Path, redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    repo = make_repo(tmp_path / "git")
    workers: list[WorkerProc] = []
    build_root = tmp_path / "builds"  # shared: each worker start removes the killed workers' builds
    build_root.mkdir()

    def spawn() -> WorkerProc:
        worker = WorkerProc(tmp_path, redis_url, f"w{len(workers)}", build_root=str(build_root))
        workers.append(worker)
        return worker

    try:
        done_file = (
            tmp_path / "side-effects.log"
        )  # what the builds themselves did (killed runs must not count)
        for _ in range(PARALLEL_WORKERS):
            spawn()
        for job_id in range(1, KILL_TRIALS + 1):
            push(client, job_json(job_id, repo, f"sleep 1.2; echo {job_id} >> {done_file}"))
        killed: dict[int, str] = {}  # job id -> worker id killed while running it
        deadline = time.monotonic() + 120
        while len(killed) < KILL_TRIALS:
            assert time.monotonic() < deadline, f"only {len(killed)} kills: {killed}"
            for worker in list(workers):
                if worker.proc.poll() is not None:
                    continue
                state = worker_state(client, worker)
                job_id = state.get("job_id")
                if state.get("state") == "working" and job_id and job_id not in killed:
                    started = [
                        r for r in reports(client) if r["job_id"] == job_id and r.get("state") == "started"
                    ]
                    if any(r["worker"] == worker.id for r in started):
                        worker.kill9()
                        killed[job_id] = worker.id
                        spawn()
            time.sleep(0.05)
        wait_for(lambda: len(finished(client)) == KILL_TRIALS, 90, "every killed job to finish elsewhere")
        time.sleep(1.0)  # a duplicate would show up here
        done = finished(client)
        assert sorted(done) == list(range(1, KILL_TRIALS + 1))
        for job_id, entries in done.items():
            assert len(entries) == 1, f"job {job_id} finished {len(entries)} times"
            assert entries[0]["result"] == "passed"
            assert entries[0]["worker"] != killed[job_id]
        side_effects = sorted(int(x) for x in done_file.read_text().split())
        assert side_effects == list(range(1, KILL_TRIALS + 1)), "a build ran to its end twice (or never)"
        assert client.llen("resque:failed") == 0
        assert client.llen("resque:queue:builds") == 0
        assert not list(client.scan_iter("resque:processing:*"))
        for job_id in killed:
            assert [r["state"] for r in reports(client) if r["job_id"] == job_id and "state" in r].count(
                "received"
            ) == 2
        live_pids = {str(w.proc.pid) for w in workers if w.proc.poll() is None}
        left = {p.name.split("_")[1] for p in build_root.iterdir()}
        assert left <= live_pids, f"build directories of killed workers left: {left - live_pids}"
        # what may stay is each live worker's next build directory, made ahead by its reset, still empty
        wait_for(
            lambda: all(not any(d.iterdir()) for d in build_root.glob("*/travis-worker-job-*")),
            10,
            "every finished build's directory removed",
        )
        ahead = [d.parent.name for d in build_root.glob("*/travis-worker-job-*")]
        assert len(ahead) == len(set(ahead)), f"more than one directory ahead per worker: {ahead}"
    finally:
        for worker in workers:
            worker.stop()


def test_redis_restarted_mid_job_loses_nothing(tmp_path: Path, persistent_redis) -> None:
    client = redis.Redis.from_url(persistent_redis.url, decode_responses=True)
    repo = make_repo(tmp_path / "git")
    worker = WorkerProc(tmp_path, persistent_redis.url, "w")
    try:
        wait_for(lambda: registered(client, worker), 15, "worker registration")
        push(client, job_json(1, repo, "for i in $(seq 1 30); do echo line-$i; sleep 0.1; done"))
        push(client, job_json(2, repo, "echo second"))
        wait_for(lambda: any(r.get("state") == "started" for r in reports(client)), 15, "job 1 start")
        persistent_redis.stop()
        time.sleep(1.5)  # the build keeps printing while Redis is down
        persistent_redis.start()
        client = redis.Redis.from_url(persistent_redis.url, decode_responses=True)
        wait_for(lambda: len(finished(client)) == 2, 40, "both jobs to finish after the restart")
        text = "".join(r["log"] for r in reports(client) if r["job_id"] == 1 and r["event"] == "job:log")
        for i in range(1, 31):
            assert f"line-{i}\r\n" in text
        numbers = [r["number"] for r in reports(client) if r["job_id"] == 1 and r["event"] == "job:log"]
        assert numbers == list(range(1, len(numbers) + 1))
        assert [d[0]["result"] for d in finished(client).values()] == ["passed", "passed"]
        assert "redis unavailable" in worker.log() or "heartbeat failed" in worker.log()
    finally:
        worker.stop()


def http_overrides(app: CIApp) -> dict[str, str]:
    return {"travis__url": app.url, "travis__username": "worker", "travis__token": "s3cret"}


def reports_in_order(app: CIApp) -> list[tuple[str, object]]:
    out = []
    for req in app.accepted():
        body = req.body
        out.append((req.path, body.get("state") or body.get("number")))
    return out


def test_http_outage_every_report_arrives_in_order(tmp_path: Path, redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    repo = make_repo(tmp_path / "git")
    app = CIApp(username="worker", token="s3cret").start()
    worker = WorkerProc(tmp_path, redis_url, "w", **http_overrides(app))
    try:
        wait_for(lambda: registered(client, worker), 15, "worker registration")
        app.refuse(True)
        push(client, job_json(1, repo, "for i in $(seq 1 10); do echo n-$i; sleep 0.1; done"))
        push(client, job_json(2, repo, "false"))
        wait_for(
            lambda: client.llen("resque:queue:builds") == 0 and client.get("resque:stat:processed") == "2",
            30,
            "both jobs done while the app is down",
        )
        app.refuse(True, mode="close")
        time.sleep(1.0)
        assert app.accepted() == []
        assert client.llen(f"resque:travis:outbox:{worker.id}") > 6
        app.refuse(False)
        wait_for(lambda: client.llen(f"resque:travis:outbox:{worker.id}") == 0, 20, "outbox drained")
        got = reports_in_order(app)
        for job_id, result in ((1, "passed"), (2, "failed")):
            mine = [(p, v) for p, v in got if p.startswith(f"/jobs/{job_id}")]
            states = [v for p, v in mine if p == f"/jobs/{job_id}"]
            parts = [v for p, v in mine if p.endswith("/log")]
            assert states == ["received", "started", "finished"]
            assert parts == list(range(1, len(parts) + 1))
            assert mine[-1] == (f"/jobs/{job_id}", "finished")
            last = next(r.body for r in reversed(app.accepted()) if r.path == f"/jobs/{job_id}")
            assert last["result"] == result
        assert all(r.authorized for r in app.requests)
        assert any(r.status == 503 for r in app.requests)
        log1 = "".join(r.body["log"] for r in app.accepted() if r.path == "/jobs/1/log")
        assert all(f"n-{i}\r\n" in log1 for i in range(1, 11))
    finally:
        worker.stop()
        app.stop()


def test_restarted_worker_outbox_is_delivered(tmp_path: Path, redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    repo = make_repo(tmp_path / "git")
    app = CIApp(username="worker", token="s3cret").start()
    first = WorkerProc(tmp_path, redis_url, "first", **http_overrides(app))
    second = None
    try:
        wait_for(lambda: registered(client, first), 15, "worker registration")
        app.refuse(True)
        push(client, job_json(9, repo, "echo before-restart"))
        wait_for(lambda: client.get("resque:stat:processed") == "1", 20, "job done while the app is down")
        first.signal(signal.SIGTERM)
        assert first.wait(30) == 0
        left = client.llen(f"resque:travis:outbox:{first.id}")
        assert left >= 4  # received, started, log part(s), final part, finished
        second = WorkerProc(tmp_path, redis_url, "second", **http_overrides(app))
        wait_for(lambda: not client.exists(f"resque:travis:outbox:{first.id}"), 20, "outbox taken over")
        app.refuse(False)
        wait_for(lambda: ("/jobs/9", "finished") in reports_in_order(app), 20, "reports after the restart")
        states = [v for p, v in reports_in_order(app) if p == "/jobs/9"]
        assert states == ["received", "started", "finished"]
        assert "before-restart" in "".join(r.body["log"] for r in app.accepted() if r.path == "/jobs/9/log")
        assert first.id not in client.smembers("resque:workers")
    finally:
        first.stop()
        if second:
            second.stop()
        app.stop()


def test_ciapp_checks_basic_auth() -> None:
    import requests

    app = CIApp(username="worker", token="s3cret").start()
    try:
        assert (
            requests.put(
                f"{app.url}/jobs/1", json={"state": "x"}, auth=("worker", "bad"), timeout=5
            ).status_code
            == 401
        )
        assert requests.put(f"{app.url}/jobs/1", json={"state": "x"}, auth=("worker", "s3cret"), timeout=5).ok
        assert (
            requests.put(f"{app.url}/nope", json={}, auth=("worker", "s3cret"), timeout=5).status_code == 404
        )
        assert [r.status for r in app.requests] == [401, 200, 404]
        assert json.dumps(app.requests[1].body) == '{"state": "x"}'
    finally:
        app.stop()
