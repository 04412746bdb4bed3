"""Reports an app can trust (issue #10, section 3): attempts, atomic pops, masked URLs, secure env vars.
Real redis-server, real worker processes (local executor, real git), the real ciapp HTTP server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from harness import WorkerProc, finished, free_port, job_json, registered, reports, wait_for
from travis_lab.ciapp import CIApp
from travis_worker.keys import Keys
from travis_worker.reporter import HttpTransport, RedisTransport, Sender, log_entry, state_entry

K = Keys("resque")
WID = "host:1:builds"


@pytest.fixture
def workers() -> Iterator[list[WorkerProc]]:
    started: list[WorkerProc] = []
    yield started
    for worker in started:
        worker.stop()


def start(workers: list[WorkerProc], client: redis.Redis, *args: Any, **overrides: Any) -> WorkerProc:
    worker = WorkerProc(*args, **overrides)
    workers.append(worker)
    wait_for(lambda: registered(client, worker), 15, f"{worker.id} to register")
    return worker


def last_attempt_log(client: redis.Redis, job_id: int) -> str:
    """What docs/runner.md tells an app to do: keep the parts of the highest attempt, in part number order."""
    parts = [r for r in reports(client) if r["job_id"] == job_id and r["event"] == "job:log"]
    last = max(p["attempt"] for p in parts)
    mine = sorted((p for p in parts if p["attempt"] == last), key=lambda p: p["number"])
    assert [p["number"] for p in mine] == list(range(1, len(mine) + 1)) and mine[-1]["final"]
    return "".join(p["log"] for p in mine)


def test_rerun_after_a_worker_death_is_a_new_attempt_on_every_report(
    tmp_path: Path, redis_url: str, client: redis.Redis, repo: tuple[str, str], workers: list[WorkerProc]
) -> None:
    first = start(workers, client, tmp_path, redis_url, "a")
    client.rpush("resque:queue:builds", job_json(1, repo, ["echo run-begins", "sleep 2", "echo run-ends"]))
    wait_for(lambda: "run-begins" in json.dumps(reports(client)), 20, "the first run's output")
    first.kill9()
    start(workers, client, tmp_path, redis_url, "b")
    wait_for(lambda: finished(client).get(1), 40, "the rerun to finish")
    job_reports = [r for r in reports(client) if r["job_id"] == 1]
    assert all(isinstance(r["attempt"], int) for r in job_reports)
    states = [(r["state"], r["attempt"]) for r in job_reports if r["event"] == "job:state"]
    assert states == [("received", 1), ("started", 1), ("received", 2), ("started", 2), ("finished", 2)]
    first_parts = [r for r in job_reports if r["event"] == "job:log" and r["attempt"] == 1]
    assert first_parts and first_parts[0]["number"] == 1  # both runs number their parts from 1
    text = last_attempt_log(client, 1)
    # one run's worth: the echoed command, its output and its exit line, once each
    assert text.count("run-begins") == 3 and text.count("run-ends") == 3
    assert finished(client)[1][0]["result"] == "passed"


def test_http_sender_pops_only_the_report_it_delivered(client: redis.Redis) -> None:
    app = CIApp(username="u", token="t").start()
    outbox = K.outbox(WID)
    delivered, newer = state_entry(1, "received", WID), log_entry(1, 1, "newer, not delivered yet")
    client.rpush(outbox, delivered)
    transport = HttpTransport(app.url, "u", "t", timeout=2)
    deliver = transport.deliver

    def deliver_while_reaped(entry: dict[str, Any]) -> None:
        deliver(entry)
        # meanwhile a reaper moved our outbox away (we looked dead) and we queued a newer report
        client.rpush("resque:travis:outbox:reaper:2:builds", *client.lrange(outbox, 0, -1))
        client.delete(outbox)
        client.rpush(outbox, newer)

    transport.deliver = deliver_while_reaped  # type: ignore[method-assign]
    try:
        assert Sender(client, K, WID, transport)._send_batch()
        assert client.lrange(outbox, 0, -1) == [newer]
        assert [r.body["state"] for r in app.accepted()] == ["received"]
    finally:
        app.stop()


def test_redis_sender_delivers_and_pops_only_the_head_it_read(client: redis.Redis) -> None:
    outbox = K.outbox(WID)
    read, newer = state_entry(1, "received", WID), state_entry(1, "started", WID)
    client.rpush(outbox, newer)  # the head changed after the sender read `read`
    RedisTransport(K).send(client, outbox, [(read, json.loads(read))])
    assert client.lrange(outbox, 0, -1) == [newer]
    assert client.llen(K.reporting) == 0


def test_url_user_info_never_reaches_the_worker_log_or_the_build_log(
    tmp_path: Path, redis_url: str, client: redis.Redis, repo: tuple[str, str], workers: list[WorkerProc]
) -> None:
    closed = free_port()  # nothing listens: every delivery fails and is logged
    worker = start(
        workers,
        client,
        tmp_path,
        redis_url,
        "w",
        travis__url=f"http://worker:app-s3cret@127.0.0.1:{closed}/api",
        travis__username="worker",
        travis__token="t0ken",
    )
    payload = json.loads(job_json(1, repo, "true"))
    payload["args"][0]["repository"]["source_url"] = f"http://cloner:cl0ne-s3cret@127.0.0.1:{closed}/r.git"
    client.rpush("resque:queue:builds", json.dumps(payload))
    wait_for(lambda: worker.log().count("report delivery failed") >= 3, 30, "failed deliveries in the log")
    log = worker.log()
    assert "app-s3cret" not in log and "cl0ne-s3cret" not in log
    assert f"http://worker:***@127.0.0.1:{closed}/api/jobs/1" in log
    outbox = " ".join(client.lrange(K.outbox(worker.id), 0, -1))
    # the build log (clone command and git's errors) as queued for the app
    assert "cl0ne-s3cret" not in outbox
    assert "cloner:[secure]@" in outbox


def test_secure_env_vars_are_exported_but_never_in_the_build_log(
    tmp_path: Path, redis_url: str, client: redis.Redis, repo: tuple[str, str], workers: list[WorkerProc]
) -> None:
    start(workers, client, tmp_path, redis_url, "w")
    script = [
        'echo "values: $CFG_SECRET $REPO_SECRET $REPO_PUBLIC $PLAIN"',
        'test "$CFG_SECRET" = "cfg s3cret value" && test "$REPO_SECRET" = repo-s3cret',
        # the value written in two pieces 0.3 s apart (two log parts' worth of time): still masked
        'for i in 1 2 3; do printf %s "${REPO_SECRET:0:5}"; sleep 0.3; echo "${REPO_SECRET:5}"; done',
    ]
    payload = json.loads(job_json(1, repo, script))
    payload["args"][0]["config"]["env"] = [
        "PLAIN=shown",
        {"name": "CFG_SECRET", "value": "cfg s3cret value", "secure": True},
    ]
    payload["args"][0]["env_vars"] = [
        {"name": "REPO_SECRET", "value": "repo-s3cret", "public": False},
        {"name": "REPO_PUBLIC", "value": "visible", "public": True},
    ]
    client.rpush("resque:queue:builds", json.dumps(payload))
    wait_for(lambda: finished(client).get(1), 30, "job 1 to finish")
    assert finished(client)[1][0]["result"] == "passed"
    text = last_attempt_log(client, 1)
    assert "s3cret" not in text
    assert "$ export CFG_SECRET=[secure]" in text and "$ export REPO_SECRET=[secure]" in text
    assert "$ export REPO_PUBLIC=visible" in text and "$ export PLAIN=shown" in text
    assert "values: [secure] [secure] visible shown" in text
    assert text.count("[secure]\r\n") + text.count("[secure]\n") >= 3  # split across writes, still masked


def test_bad_secure_env_entry_is_a_payload_error(
    tmp_path: Path, redis_url: str, client: redis.Redis, repo: tuple[str, str], workers: list[WorkerProc]
) -> None:
    start(workers, client, tmp_path, redis_url, "w")
    payload = json.loads(job_json(1, repo, "true"))
    payload["args"][0]["env_vars"] = [{"name": "X", "value": "v", "public": "no"}]
    client.rpush("resque:queue:builds", json.dumps(payload))
    wait_for(lambda: client.llen("resque:failed"), 20, "the job in failed")
    entry = json.loads(client.lindex("resque:failed", 0))
    assert entry["exception"] == "PayloadError" and entry["error"].startswith("env_vars[0].public:")


def test_masking_helpers_on_every_split_and_url_form() -> None:
    from travis_worker.redact import Masker, mask_urls

    text = "a tok3n-value b tok3n-valuetok3n-value c sh0rt d x"
    expected = "a [secure] b [secure][secure] c [secure] d x"
    for cut in range(len(text) + 1):
        masker = Masker(["tok3n-value", "sh0rt", "x"])  # "x" is below the minimum length: not masked
        out = masker.feed(text[:cut]) + masker.feed(text[cut:]) + masker.feed("", final=True)
        assert out == expected, cut
    assert mask_urls("PUT http://u:p4ss@h:1/x, https://t0ken@github.com/a.git git@github.com:a/b.git") == (
        "PUT http://u:***@h:1/x, https://***@github.com/a.git git@github.com:a/b.git"
    )
