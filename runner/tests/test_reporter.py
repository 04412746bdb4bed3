"""Reporter pieces in-process against a real redis-server and the real ciapp HTTP server."""

from __future__ import annotations

import json
import ssl
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
import redis
from harness import wait_for
from travis_lab.ciapp import CIApp
from travis_worker.keys import Keys
from travis_worker.reporter import (
    LOG_PART_BYTES,
    DeliveryError,
    HttpTransport,
    LogFlusher,
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


def test_wait_idle_returns_once_what_was_queued_is_delivered_and_is_bounded(client: redis.Redis) -> None:
    """The worker waits for a job's report tail before its sandbox reset: wait_idle() is True once the
    entries queued before notify() were delivered, and gives up after its timeout while the app refuses."""
    app = CIApp(username="u", token="t").start()
    outbox = K.outbox(WID)
    sender = Sender(client, K, WID, HttpTransport(app.url, "u", "t", timeout=2))
    try:
        sender.start()
        wait_for(sender.idle.is_set, 10, "an idle sender (empty outbox)")
        client.rpush(
            outbox, *[log_entry(3, n, f"part {n}") for n in range(1, 4)], state_entry(3, "finished", WID)
        )
        sender.notify()
        assert sender.wait_idle(10)
        assert client.llen(outbox) == 0
        assert [r.body.get("state") or r.body["number"] for r in app.accepted()] == [1, 2, 3, "finished"]
        app.refuse(True)
        client.rpush(outbox, state_entry(4, "received", WID))
        sender.notify()
        assert not sender.wait_idle(0.3), "idle although the app refused the report"
        assert client.llen(outbox) == 1
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


def commands(client: redis.Redis, name: str) -> int:
    """Successful calls of command `name` since CONFIG RESETSTAT (a first EVALSHA fails with NOSCRIPT)."""
    stats = client.info("commandstats").get(f"cmdstat_{name}", {})
    failed = int(stats.get("failed_calls", 0)) + int(stats.get("rejected_calls", 0))
    return int(stats.get("calls", 0)) - failed


def test_sender_reads_and_pops_a_batch_in_one_round_trip_each(client: redis.Redis) -> None:
    """Three reports queued at once (what a job's end queues): one LRANGE and one compare-and-pop, not a
    LINDEX and a pop per report."""
    app = CIApp(username="u", token="t").start()
    outbox = K.outbox(WID)
    entries = [log_entry(4, 1, "x"), log_entry(4, 2, "", final=True), state_entry(4, "finished", WID)]
    client.rpush(outbox, *entries)
    client.config_resetstat()
    sender = Sender(client, K, WID, HttpTransport(app.url, "u", "t", timeout=2))
    sender.start()
    try:
        wait_for(lambda: len(app.accepted()) == 3, 10, "three reports delivered")
        wait_for(lambda: client.llen(outbox) == 0, 10, "outbox drained")
    finally:
        sender.stop()
        sender.join(5)
        app.stop()
    bodies = [r.body for r in app.accepted()]
    assert [b.get("number") or b.get("state") for b in bodies] == [1, 2, "finished"]
    assert commands(client, "evalsha") + commands(client, "eval") == 1
    assert commands(client, "lindex") == 3  # the three compare steps inside that one script
    assert commands(client, "lpop") == 0
    assert commands(client, "lrange") <= 2  # the batch, then (maybe) one look at the empty outbox


def test_http_batch_pops_only_what_was_delivered_before_a_failure(client: redis.Redis) -> None:
    app = CIApp(username="u", token="t").start()
    outbox = K.outbox(WID)
    entries = [state_entry(5, "received", WID), state_entry(5, "started", WID), log_entry(5, 1, "x")]
    client.rpush(outbox, *entries)
    transport = HttpTransport(app.url, "u", "t", timeout=2)
    deliver = transport.deliver

    def deliver_then_outage(entry: dict[str, Any]) -> None:
        deliver(entry)
        app.refuse(True)  # the app goes away after the first report

    transport.deliver = deliver_then_outage  # type: ignore[method-assign]
    try:
        with pytest.raises(DeliveryError):
            Sender(client, K, WID, transport)._send_batch()
        assert client.lrange(outbox, 0, -1) == entries[1:]
        assert [r.body["state"] for r in app.accepted()] == ["received"]
    finally:
        app.stop()


def test_log_stream_numbers_parts_and_keeps_utf8_whole(client: redis.Redis) -> None:
    stream = LogStream(client, K, WID, 3, lambda: None, attempt=2)
    text = "héllo wörld ✓\n" * 2000
    data = text.encode()
    for i in range(0, len(data), 7):  # split inside multi-byte characters on purpose
        stream.write(data[i : i + 7])
    *last, final_entry = stream.close()  # not queued yet: the worker's finishing transaction queues them
    final = json.loads(final_entry)
    queued = client.lrange(K.outbox(WID), 0, -1)
    parts = [json.loads(x)["body"] for x in [*queued, *last]]
    assert [p["number"] for p in parts] == list(range(1, len(parts) + 1))
    assert len(parts) >= 2 and all(len(p["log"]) <= LOG_PART_BYTES for p in parts)  # bounded parts
    assert "".join(p["log"] for p in parts) == text
    assert all(p["attempt"] == 2 for p in parts)
    assert final["body"] == {"id": 3, "attempt": 2, "number": len(parts) + 1, "log": "", "final": True}


def test_log_stream_close_leaves_the_last_parts_to_the_finishing_transaction(client: redis.Redis) -> None:
    """Output written just before the build ended is not pushed on its own (a round trip and a sender wake-up
    while the job finishes): close() returns it with the final part, for queue.finish to queue atomically."""
    woken = []
    stream = LogStream(client, K, WID, 9, lambda: woken.append(1), attempt=1)
    stream.write(b"last words\r\n")
    entries = [json.loads(e)["body"] for e in stream.close()]
    assert client.llen(K.outbox(WID)) == 0 and not woken
    assert entries == [
        {"id": 9, "attempt": 1, "number": 1, "log": "last words\r\n", "final": False},
        {"id": 9, "attempt": 1, "number": 2, "log": "", "final": True},
    ]


def test_one_log_flusher_thread_serves_the_streams_of_successive_jobs(client: redis.Redis) -> None:
    """Issue #10 round 2: no thread per job; the worker's flusher queues each stream's parts every 0.25 s."""
    flusher = LogFlusher()
    before = {t.ident for t in threading.enumerate()}
    for job_id in (1, 2):
        stream = LogStream(client, K, WID, job_id, lambda: None, flusher=flusher)
        stream.write(f"job {job_id} output\r\n".encode())
        wait_for(lambda n=job_id: client.llen(K.outbox(WID)) == n, 5, "the periodic flush")
        stream.write(b"after the flush\r\n")
        last = [json.loads(e)["body"]["log"] for e in stream.close()]
        assert last == ["after the flush\r\n", ""]  # left to the finishing transaction, not flushed
    new = [t for t in threading.enumerate() if t.ident not in before]
    assert [t.name for t in new] == ["log-flusher"]
    queued = [json.loads(e)["body"] for e in client.lrange(K.outbox(WID), 0, -1)]
    assert [(b["id"], b["number"], b["log"]) for b in queued] == [
        (1, 1, "job 1 output\r\n"),
        (2, 1, "job 2 output\r\n"),
    ]
    stream = LogStream(
        client, K, WID, 3, lambda: None
    )  # without a flusher: a thread of its own, ended by close
    own = next(t for t in threading.enumerate() if t.name == "log-3")
    stream.close()
    own.join(2)
    assert not own.is_alive()


def test_http_transport_reconnects_when_the_app_dropped_the_kept_alive_connection() -> None:
    app = CIApp(username="u", token="t").start()
    transport = HttpTransport(f"http://127.0.0.1:{app.port}/", "u", "t", timeout=2)
    try:
        transport.deliver(json.loads(state_entry(1, "received", WID)))
        app.refuse(True, mode="close")  # the app drops the connection
        with pytest.raises(DeliveryError):
            transport.deliver(json.loads(state_entry(1, "started", WID)))
        app.refuse(False)
        transport.deliver(json.loads(state_entry(1, "started", WID)))
        assert [(r.path, r.body["state"], r.authorized) for r in app.accepted()] == [
            ("/jobs/1", "received", True),
            ("/jobs/1", "started", True),
        ]
    finally:
        transport.close()
        app.stop()


def test_http_transport_uses_requests_when_a_proxy_applies(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NO_PROXY", "no_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")  # a bundle: still direct
    assert HttpTransport("https://ci.example.org/api", "u", "t").session is None
    assert HttpTransport("http://ci.example.org/api", "u", "t").session is None
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example.org:3128")
    assert HttpTransport("https://ci.example.org/api", "u", "t").session is not None
    monkeypatch.setenv("NO_PROXY", "ci.example.org")
    assert HttpTransport("https://ci.example.org/api", "u", "t").session is None


def test_http_transport_https_verifies_with_the_environments_ca_bundle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """https on the direct connection: the app's certificate is checked against REQUESTS_CA_BUNDLE (as
    requests does), and refused without it (certifi's bundle does not know a self-signed certificate)."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    app = CIApp(username="u", token="t")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    app._server.socket = context.wrap_socket(app._server.socket, server_side=True)
    app.start()
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    try:
        monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
        untrusted = HttpTransport(f"https://127.0.0.1:{app.port}", "u", "t", timeout=5)
        with pytest.raises(DeliveryError, match="CERTIFICATE_VERIFY_FAILED"):
            untrusted.deliver(json.loads(state_entry(1, "received", WID)))
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))
        trusted = HttpTransport(f"https://127.0.0.1:{app.port}", "u", "t", timeout=5)
        assert trusted.session is None  # the direct connection, not requests
        trusted.deliver(json.loads(state_entry(1, "started", WID)))
        trusted.close()
        accepted = [(r.path, r.body["state"], r.authorized) for r in app.accepted()]
        assert accepted == [("/jobs/1", "started", True)]
    finally:
        app.stop()


def counting_lrange(client: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The outbox reads (LRANGE round trips) of `client`'s users: one item per call."""
    calls: list[int] = []
    lrange = client.lrange

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return lrange(*args, **kwargs)

    monkeypatch.setattr(client, "lrange", counted)
    return calls


def test_the_compare_and_pop_reads_the_next_head_no_lrange_after_a_batch(
    client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue #10 item 5: the compare-and-pop returns the outbox head after it, so 40 queued reports cost one
    LRANGE (not three: 32, then 8, then one to find the outbox empty) and the sender is idle right after."""
    app = CIApp(username="u", token="t").start()
    outbox = K.outbox(WID)
    client.rpush(outbox, *[log_entry(6, n, f"part {n}") for n in range(1, 41)])
    reads = counting_lrange(client, monkeypatch)
    sender = Sender(client, K, WID, HttpTransport(app.url, "u", "t", timeout=2))
    sender.start()
    try:
        assert sender.wait_idle(10)
        assert client.llen(outbox) == 0
        assert [r.body["number"] for r in app.accepted()] == list(range(1, 41))
        assert len(reads) == 1
        client.rpush(outbox, state_entry(6, "finished", WID))  # queued later: notify() makes it read again
        sender.notify()
        assert sender.wait_idle(10)
        assert app.accepted()[-1].body["state"] == "finished" and client.llen(outbox) == 0
        assert len(reads) == 2
    finally:
        sender.stop()
        sender.join(5)
        app.stop()


def test_queue_tail_hands_the_entries_over_when_they_are_the_whole_outbox(
    client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue #10 item 5: a job's tail queued into an empty outbox is delivered without an LRANGE first (the
    sender gets it in memory) and still popped by the compare-and-pop; queued behind an undelivered report it
    is not handed over: the sender reads the outbox and delivers the older report first."""
    app = CIApp(username="u", token="t").start()
    outbox = K.outbox(WID)
    sender = Sender(client, K, WID, HttpTransport(app.url, "u", "t", timeout=2))
    sender.start()
    try:
        assert sender.wait_idle(10)  # its first look at the (empty) outbox
        reads = counting_lrange(client, monkeypatch)
        tail = [log_entry(8, 1, "x"), log_entry(8, 2, "", final=True), state_entry(8, "finished", WID)]
        assert sender.queue_tail(tail, lambda: client.rpush(outbox, *tail)) == 3
        assert sender.wait_idle(10)
        assert [r.body.get("number") or r.body.get("state") for r in app.accepted()] == [1, 2, "finished"]
        wait_for(lambda: client.llen(outbox) == 0, 10, "the compare-and-pop")  # may follow wait_idle()
        assert reads == []
        app.refuse(True)
        older = state_entry(9, "received", WID)
        client.rpush(outbox, older)  # not delivered yet (the app refuses)
        sender.notify()
        wait_for(lambda: any(r.status == 503 for r in app.requests), 10, "a refused delivery")
        tail = [log_entry(9, 1, "", final=True), state_entry(9, "finished", WID)]
        assert sender.queue_tail(tail, lambda: client.rpush(outbox, *tail)) == 3
        app.refuse(False)
        wait_for(lambda: client.llen(outbox) == 0, 20, "outbox drained")
        assert [r.body.get("number") or r.body.get("state") for r in app.accepted()][3:] == [
            "received",
            1,
            "finished",
        ]
        assert reads
    finally:
        sender.stop()
        sender.join(5)
        app.stop()


def test_a_hand_over_is_not_delivered_twice_when_the_sender_read_it_first(client: redis.Redis) -> None:
    """The sender never reads the outbox between the finish transaction and the hand-over (`reads` lock): a
    tail it could have read itself is handed over only when it did not."""
    app = CIApp(username="u", token="t").start()
    outbox = K.outbox(WID)
    sender = Sender(client, K, WID, HttpTransport(app.url, "u", "t", timeout=2))
    try:
        tail = [log_entry(10, 1, "", final=True), state_entry(10, "finished", WID)]
        got: list[bool] = []

        def push() -> int:
            length = client.rpush(outbox, *tail)
            # the sender tries to read meanwhile: it must wait for the hand-over
            reader = threading.Thread(target=lambda: got.append(sender._send_batch()))
            reader.start()
            reader.join(0.3)
            assert reader.is_alive(), "the sender read the outbox during the finish transaction"
            threads.append(reader)
            return length

        threads: list[threading.Thread] = []
        sender.queue_tail(tail, push)
        threads[0].join(10)
        assert got == [True] and not sender._send_batch(trust_empty=True)
        assert [r.body.get("number") or r.body.get("state") for r in app.accepted()] == [1, "finished"]
        assert client.llen(outbox) == 0
    finally:
        app.stop()


def test_a_report_goes_out_with_its_headers_in_one_send() -> None:
    """Issue #10 item 5: http.client sent a PUT's headers and body separately (with TCP_NODELAY: two
    segments, the app woken twice); the transport sends both at once, and the app gets the same request."""
    app = CIApp(username="u", token="t").start()
    transport = HttpTransport(app.url, "u", "t", timeout=2)
    sent: list[bytes] = []
    connect = transport._connect

    def recording() -> Any:
        conn = connect()
        send = conn.send

        def counted(data: Any) -> None:
            sent.append(bytes(data))
            send(data)

        conn.send = counted  # type: ignore[method-assign]
        return conn

    transport._connect = recording  # type: ignore[method-assign]
    try:
        for n in (1, 2):
            transport.deliver(json.loads(log_entry(11, n, f"part {n}")))
        assert len(sent) == 2, sent
        assert sent[1].startswith(b"PUT /jobs/11/log HTTP/1.1\r\n") and sent[1].endswith(b'"final": false}')
        assert [(r.path, r.body["number"], r.status) for r in app.requests] == [
            ("/jobs/11/log", 1, 200),
            ("/jobs/11/log", 2, 200),
        ]
    finally:
        transport.close()
        app.stop()


def test_a_handed_over_tail_is_idle_once_delivered_before_its_compare_and_pop(client: redis.Redis) -> None:
    """Issue #10 item 5, round 5: the worker waits for a job's report tail before its reset; the tail's pop
    (a Redis round trip, 0.3-0.5 ms) need not be waited for: wait_idle() is True once the app answered the
    last report. The pop still follows, and only then is the outbox empty."""
    app = CIApp(username="u", token="t").start()
    outbox = K.outbox(WID)
    transport = HttpTransport(app.url, "u", "t", timeout=2)
    sender = Sender(client, K, WID, transport)
    sender.start()
    release = threading.Event()
    popping = threading.Event()
    try:
        assert sender.wait_idle(10)
        real_register = client.register_script

        def held_register(script: str) -> Any:
            pop = real_register(script)

            def held(*args: Any, **kwargs: Any) -> Any:
                popping.set()
                release.wait(10)
                return pop(*args, **kwargs)

            return held

        client.register_script = held_register  # type: ignore[method-assign]
        tail = [log_entry(8, 1, "x"), log_entry(8, 2, "", final=True), state_entry(8, "finished", WID)]
        sender.queue_tail(tail, lambda: client.rpush(outbox, *tail))
        assert sender.wait_idle(5), "not idle while the delivered tail waits for its pop"
        assert popping.is_set() and client.llen(outbox) == 3
        assert [r.body.get("number") or r.body.get("state") for r in app.accepted()] == [1, 2, "finished"]
        release.set()
        wait_for(lambda: client.llen(outbox) == 0, 10, "the compare-and-pop")
    finally:
        release.set()
        sender.stop()
        sender.join(5)
        app.stop()
