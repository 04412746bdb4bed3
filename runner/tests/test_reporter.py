"""Reporter pieces in-process against a real redis-server and the real ciapp HTTP server."""

from __future__ import annotations

import json
import threading

import redis
from harness import wait_for
from travis_lab.ciapp import CIApp
from travis_worker.keys import Keys
from travis_worker.reporter import (
    LOG_PART_BYTES,
    HttpTransport,
    LogStream,
    RedisTransport,
    Sender,
    log_entry,
    state_entry,
)

K = Keys("resque")
WID = "host:1:builds"


def test_sender_redis_transport_in_order_and_skips_garbage(client: redis.Redis) -> None:
    outbox = K.outbox(WID)
    client.rpush(
        outbox,
        state_entry(1, "received", WID),
        "garbage{",
        log_entry(1, 1, "hi"),
        state_entry(1, "started", WID),
    )
    sender = Sender(client, K, WID, RedisTransport(K))
    sender.start()
    try:
        wait_for(lambda: client.llen(outbox) == 0, 10, "outbox drained")
    finally:
        sender.stop()
        sender.join(5)
    got = [json.loads(x) for x in client.lrange(K.reporting, 0, -1)]
    assert [(g["event"], g.get("state") or g.get("number")) for g in got] == [
        ("job:state", "received"),
        ("job:log", 1),
        ("job:state", "started"),
    ]


def test_http_transport_retries_through_refusals_in_order(client: redis.Redis) -> None:
    app = CIApp(username="u", token="t").start()
    outbox = K.outbox(WID)
    sender = Sender(client, K, WID, HttpTransport(app.url, "u", "t", timeout=2))
    try:
        app.refuse(True)
        sender.start()
        for n in range(1, 21):
            client.rpush(outbox, log_entry(7, n, f"part {n}"))
            sender.notify()
        wait_for(lambda: any(r.status == 503 for r in app.requests), 10, "a refused delivery")
        app.refuse(True, mode="close")
        threading.Event().wait(0.5)
        app.refuse(False)
        wait_for(lambda: client.llen(outbox) == 0, 20, "outbox drained after the outage")
        assert [r.body["number"] for r in app.accepted()] == list(range(1, 21))
        assert all(r.path == "/jobs/7/log" and r.method == "PUT" for r in app.accepted())
    finally:
        sender.stop()
        sender.join(5)
        app.stop()


def test_http_permanent_refusal_is_dropped_not_retried_forever(client: redis.Redis) -> None:
    app = CIApp(username="u", token="t").start()
    outbox = K.outbox(WID)
    client.rpush(outbox, json.dumps({"job_id": 1, "type": "state", "body": "not an object"}))
    client.rpush(outbox, state_entry(2, "received", WID))
    sender = Sender(client, K, WID, HttpTransport(app.url, "u", "t", timeout=2))
    sender.start()
    try:
        wait_for(lambda: client.llen(outbox) == 0, 10, "outbox drained")
        assert [r.status for r in app.requests] == [400, 200]
    finally:
        sender.stop()
        sender.join(5)
        app.stop()


def test_log_stream_numbers_parts_and_keeps_utf8_whole(client: redis.Redis) -> None:
    stream = LogStream(client, K, WID, 3, lambda: None, attempt=2)
    text = "héllo wörld ✓\n" * 2000
    data = text.encode()
    for i in range(0, len(data), 7):  # split inside multi-byte characters on purpose
        stream.write(data[i : i + 7])
    final = json.loads(stream.close())
    parts = [json.loads(x)["body"] for x in client.lrange(K.outbox(WID), 0, -1)]
    assert [p["number"] for p in parts] == list(range(1, len(parts) + 1))
    assert len(parts) >= 2 and all(len(p["log"]) <= LOG_PART_BYTES for p in parts)  # bounded parts
    assert "".join(p["log"] for p in parts) == text
    assert all(p["attempt"] == 2 for p in parts)
    assert final["body"] == {"id": 3, "attempt": 2, "number": len(parts) + 1, "log": "", "final": True}
