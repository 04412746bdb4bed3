"""Reporting: a durable per-worker outbox in Redis, delivered in order by a sender thread (http or redis)."""

from __future__ import annotations

import base64
import codecs
import contextlib
import http.client
import json
import logging
import os
import ssl
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from typing import Any, Protocol

import redis
import requests

from travis_worker.keys import Keys
from travis_worker.queue import now_iso
from travis_worker.redact import Masker, mask_urls

log = logging.getLogger(__name__)

BACKOFF_START = 0.1
BACKOFF_MAX = 3.0
LOG_PART_BYTES = 16 * 1024
LOG_FLUSH_INTERVAL = 0.25
# The app answered that it will never accept this report: retrying cannot help; it is logged and dropped.
PERMANENT_HTTP = (400, 404, 409, 410, 422)


# How many outbox entries the sender reads in one round trip (delivered in order, then popped together).
SEND_BATCH = 32

# KEYS: outbox; ARGV: the entries that were delivered, in order. Pops them only if they are still the head (a
# reaper may have moved the outbox meanwhile): never drops a newer, undelivered report. Returns the new head
# (up to SEND_BATCH entries; empty: the outbox is empty), so that the sender needs no LRANGE for its next
# batch nor to find the outbox empty; nil (None) when nothing was popped.
POP_DELIVERED_LUA = f"""
for i = 1, #ARGV do
  if redis.call('LINDEX', KEYS[1], i - 1) ~= ARGV[i] then return false end
end
redis.call('LTRIM', KEYS[1], #ARGV, -1)
return redis.call('LRANGE', KEYS[1], 0, {SEND_BATCH - 1})
"""
# KEYS: outbox, reporting list; ARGV: pairs of (outbox entry, its message). Delivery and pop in one step per
# entry, as long as the entry is still the outbox head; returns how many were delivered.
DELIVER_REDIS_LUA = """
local sent = 0
for i = 1, #ARGV, 2 do
  if redis.call('LINDEX', KEYS[1], 0) ~= ARGV[i] then return sent end
  redis.call('RPUSH', KEYS[2], ARGV[i + 1])
  redis.call('LPOP', KEYS[1])
  sent = sent + 1
end
return sent
"""


def state_entry(job_id: int, state: str, worker_id: str, attempt: int | str = 1, **fields: Any) -> str:
    """`attempt`: the run of the job this report belongs to (1, 2, ... at every start of the job)."""
    body = {
        "id": job_id,
        "state": state,
        "worker": worker_id,
        "attempt": attempt,
        f"{state}_at": now_iso(),
        **fields,
    }
    return json.dumps({"job_id": job_id, "type": "state", "body": body})


ATTEMPT_MARK = "\x00attempt\x00"


def state_template(job_id: int, state: str, worker_id: str, **fields: Any) -> tuple[str, str]:
    """`state_entry` split where its attempt number goes, for a writer that learns the number inside Redis
    (`Queue.start`): the entry is `before + str(attempt) + after`."""
    entry = state_entry(job_id, state, worker_id, ATTEMPT_MARK, **fields)
    before, after = entry.split(json.dumps(ATTEMPT_MARK))
    return before, after


def log_entry(job_id: int, number: int, content: str, final: bool = False, attempt: int = 1) -> str:
    """Log part `number` (from 1 in every attempt) of run `attempt` of the job."""
    body = {"id": job_id, "attempt": attempt, "number": number, "log": content, "final": final}
    return json.dumps({"job_id": job_id, "type": "log", "body": body})


class DeliveryError(Exception):
    pass


Batch = list[tuple[str, dict[str, Any]]]  # outbox entries from the head, in order: (raw, decoded)


class Transport(Protocol):
    def send(
        self,
        client: redis.Redis,
        outbox: str,
        batch: Batch,
        guard: AbstractContextManager[Any] | None = None,
        delivered: Callable[[], None] | None = None,
    ) -> list[str] | None:
        """Deliver the entries of `batch` in order and pop exactly those delivered (compare-and-pop); raise on
        a failure (after popping the ones delivered before it). Returns the outbox head after the pop when the
        pop read it (None: unknown). `guard` is held around the pop (the sender's `reads` lock); `delivered`
        is called once every entry was delivered, before the pop."""


class HttpTransport:
    """state: PUT <url>/jobs/<id>; log part: PUT <url>/jobs/<id>/log. JSON bodies, HTTP basic auth.

    Direct connections use one keep-alive ``http.client`` connection (a PUT costs the worker about a third of
    what it costs through requests); https verifies as requests does (``REQUESTS_CA_BUNDLE``,
    ``CURL_CA_BUNDLE``, else certifi's bundle). When the environment sets a proxy for the app's URL
    (``HTTP(S)_PROXY``/``ALL_PROXY``, not bypassed by ``NO_PROXY``), reports go through a requests session,
    which speaks to proxies."""

    def __init__(self, url: str, username: str, token: str, timeout: float = 10.0):
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._pop = None
        parts = urllib.parse.urlsplit(self.url)
        self._scheme, self._host, self._port = parts.scheme, parts.hostname or "", parts.port
        self._path = parts.path
        credentials = f"{username}:{token}".encode()
        self._headers = {
            "Authorization": "Basic " + base64.b64encode(credentials).decode("ascii"),
            "Content-Type": "application/json",
        }
        self._conn: http.client.HTTPConnection | None = None
        self.session: requests.Session | None = None
        if _needs_requests(self._scheme, self._host):
            self.session = requests.Session()
            self.session.auth = (username, token)

    def send(
        self,
        client: redis.Redis,
        outbox: str,
        batch: Batch,
        guard: AbstractContextManager[Any] | None = None,
        delivered: Callable[[], None] | None = None,
    ) -> list[str] | None:
        done: list[str] = []
        head = None
        try:
            for raw, entry in batch:
                self.deliver(entry)
                done.append(raw)
            if delivered is not None:
                delivered()
        finally:
            # at-least-once: a crash before this pop re-sends these reports after a restart
            if done:
                if self._pop is None:
                    self._pop = client.register_script(POP_DELIVERED_LUA)
                with guard or contextlib.nullcontext():
                    head = self._pop(keys=[outbox], args=done)
                if head is None:
                    log.info(
                        "outbox %s changed during delivery (taken over by a reaper); none popped", outbox
                    )
        return head

    def deliver(self, entry: dict[str, Any]) -> None:
        suffix = f"/jobs/{entry['job_id']}" + ("/log" if entry["type"] == "log" else "")
        shown = mask_urls(self.url + suffix)
        try:
            if self.session is not None:
                resp = self.session.put(self.url + suffix, json=entry["body"], timeout=self.timeout)
                status, text = resp.status_code, resp.text
            else:
                status, text = self._put(self._path + suffix, json.dumps(entry["body"]).encode())
        except (requests.RequestException, http.client.HTTPException, OSError) as exc:
            self.close()
            raise DeliveryError(mask_urls(f"PUT {shown}: {exc.__class__.__name__}: {exc}")) from None
        if status in PERMANENT_HTTP:
            log.error("PUT %s refused for good (HTTP %s: %.200s); report dropped", shown, status, text)
            return
        if not 200 <= status < 300:
            raise DeliveryError(f"PUT {shown}: HTTP {status}")

    def _put(self, path: str, body: bytes) -> tuple[int, str]:
        """PUT on the kept-alive connection; once more on a new one if the app had closed the old one."""
        for reused in (self._conn is not None, False):
            if self._conn is None:
                self._conn = self._connect()
            try:
                self._conn.request("PUT", path, body=body, headers=self._headers)
                resp = self._conn.getresponse()
                text = resp.read().decode("utf-8", "replace")
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.close()
                if reused:
                    continue  # an idle keep-alive connection the app closed: PUT is idempotent
                raise
            if resp.will_close:
                self.close()
            return resp.status, text
        raise AssertionError("unreachable")  # pragma: no cover

    def _connect(self) -> http.client.HTTPConnection:
        if self._scheme == "https":
            context = _tls_context()
            return _OneSendHTTPSConnection(self._host, self._port, timeout=self.timeout, context=context)
        return _OneSendHTTPConnection(self._host, self._port, timeout=self.timeout)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class _OneSend:
    """http.client writes a request's headers and its body with two sends (two segments with TCP_NODELAY,
    which http.client sets: the app is woken for the headers, then again for the body); a report's body is
    small bytes, so it goes out with its headers in one send. The bytes on the wire are the same."""

    def _send_output(self, message_body: Any = None, encode_chunked: bool = False) -> None:
        buffer = getattr(self, "_buffer", None)
        if not isinstance(message_body, bytes) or encode_chunked or not isinstance(buffer, list):
            super()._send_output(message_body, encode_chunked)  # type: ignore[misc]
            return
        buffer.extend((b"", b""))
        message = b"\r\n".join(buffer) + message_body
        del buffer[:]
        self.send(message)  # type: ignore[attr-defined]


class _OneSendHTTPConnection(_OneSend, http.client.HTTPConnection):
    pass


class _OneSendHTTPSConnection(_OneSend, http.client.HTTPSConnection):
    pass


def _tls_context() -> ssl.SSLContext:
    """Verification as requests does it: REQUESTS_CA_BUNDLE or CURL_CA_BUNDLE (a file or a directory), else
    certifi's bundle."""
    bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    bundle = bundle or requests.certs.where()
    if os.path.isdir(bundle):
        return ssl.create_default_context(capath=bundle)
    return ssl.create_default_context(cafile=bundle)


def _needs_requests(scheme: str, host: str) -> bool:
    """A proxy from the environment applies to the app's URL (requests speaks to proxies)."""
    proxies = urllib.request.getproxies()
    proxy = proxies.get(scheme) or proxies.get("all")
    return bool(proxy) and not urllib.request.proxy_bypass(host)


class RedisTransport:
    """Reports go to list `<ns>:reporting:jobs`; delivery and outbox pop are one transaction."""

    def __init__(self, keys: Keys):
        self.keys = keys
        self._deliver = None

    @staticmethod
    def message(entry: dict[str, Any]) -> str:
        return json.dumps({"event": f"job:{entry['type']}", "job_id": entry["job_id"], **entry["body"]})

    def send(
        self,
        client: redis.Redis,
        outbox: str,
        batch: Batch,
        guard: AbstractContextManager[Any] | None = None,
        delivered: Callable[[], None] | None = None,
    ) -> list[str] | None:
        if self._deliver is None:
            self._deliver = client.register_script(DELIVER_REDIS_LUA)
        args = [value for raw, entry in batch for value in (raw, self.message(entry))]
        self._deliver(keys=[outbox, self.keys.reporting], args=args)  # delivered and popped at once
        if delivered is not None:
            delivered()
        return None


class Sender(threading.Thread):
    """Delivers the outbox head in order, up to SEND_BATCH entries at a time, and pops those delivered; on
    failure waits with exponential backoff and tries again.

    Where the head comes from, without a Redis round trip when it can: the entries a job's finish transaction
    queued into an empty outbox, handed over in memory (`queue_tail`); else the head the last compare-and-pop
    read (`POP_DELIVERED_LUA`); else one LRANGE (at start-up, after a failure, or whenever in doubt)."""

    def __init__(self, client: redis.Redis, keys: Keys, worker_id: str, transport: Transport):
        super().__init__(name="reporter", daemon=True)
        self.r = client
        self.keys = keys
        self.outbox = keys.outbox(worker_id)
        self.transport = transport
        self.wake = threading.Event()
        self.stopping = threading.Event()
        # set when the sender found the outbox empty and nothing was queued since: a hint for wait_idle(),
        # never a guarantee (a notify() racing with the check may leave it set for a moment)
        self.idle = threading.Event()
        # held by this thread around every read of the outbox (LRANGE, the compare-and-pop) and by queue_tail
        # around the finish transaction: what queue_tail hands over was never read by this thread
        self.reads = threading.Lock()
        self._handed: list[str] | None = None  # the outbox head, handed over by queue_tail
        self._known: list[str] | None = None  # the outbox head as the last compare-and-pop read it

    def run(self) -> None:
        backoff = BACKOFF_START
        while not self.stopping.is_set():
            # a notify() since the last clear (which came before the last compare-and-pop) may have queued
            # entries after the head that pop read: then an empty head it read is not trusted
            notified = self.wake.is_set()
            self.wake.clear()  # before looking: a notify() from now on is never lost
            try:
                if self._send_batch(trust_empty=not notified):
                    backoff = BACKOFF_START
                    continue
                if not self.wake.is_set():
                    self.idle.set()
                self.wake.wait(1.0)
            except (redis.RedisError, DeliveryError) as exc:
                log.warning("report delivery failed (%s); retrying in %.1fs", exc, backoff)
                self.stopping.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
            except Exception:  # a bug must not silently stop reporting: log it, keep the report, retry
                log.exception("report delivery crashed; retrying in %.1fs", backoff)
                self.stopping.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)

    def _head(self, trust_empty: bool) -> tuple[list[str], bool]:
        """(the outbox head, whether it was handed over by queue_tail: then it was the whole outbox)."""
        with self.reads:
            handed, self._handed = self._handed, None
            known, self._known = self._known, None
            if handed is not None:
                return handed, True
            if known or (known is not None and trust_empty):
                return known, False
            return self.r.lrange(self.outbox, 0, SEND_BATCH - 1), False

    def _send_batch(self, trust_empty: bool = False) -> bool:
        """Deliver what is at the outbox head (up to SEND_BATCH entries, up to the first unreadable one, which
        is dropped when it is the head). False when the outbox was empty."""
        raws, handed = self._head(trust_empty)
        if not raws:
            return False
        batch: Batch = []
        for raw in raws:
            entry = _outbox_entry(raw)
            if entry is None:
                break
            batch.append((raw, entry))
        if not batch:
            log.error("dropping unreadable outbox entry %.200r", raws[0])
            pipe = self.r.pipeline(transaction=True)
            pipe.lrem(self.outbox, 1, raws[0])
            pipe.execute()
            return True
        self._known = self.transport.send(
            self.r, self.outbox, batch, guard=self.reads, delivered=self._tail_delivered if handed else None
        )
        return True

    def _tail_delivered(self) -> None:
        """A handed-over tail (the whole outbox) is delivered: idle for wait_idle() unless something was
        queued since; the worker's reset need not wait for the compare-and-pop's round trip."""
        if not self.wake.is_set():
            self.idle.set()

    def queue_tail(self, entries: list[str], push: Callable[[], int | None]) -> int | None:
        """Run `push`, a Redis write that appends `entries` to the outbox (a job's finish transaction) and
        returns the outbox's length after it (None: it appended nothing), then wake the sender. When the
        outbox then held exactly `entries`, they are its head: they are handed to the sender in memory, which
        delivers them without reading the outbox first (and still pops them with the compare-and-pop).
        Returns what `push` returned; its exceptions propagate."""
        with self.reads:  # no read of the outbox by the sender between the push and the hand-over
            length = push()
            if entries and length == len(entries) and len(entries) <= SEND_BATCH:
                self._handed = list(entries)
        self.notify()
        return length

    def notify(self) -> None:
        self.idle.clear()
        self.wake.set()

    def wait_idle(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s until everything queued so far was delivered (True), without a Redis
        round trip: the worker lets the sender deliver a job's report tail before it starts the sandbox reset,
        which would compete with it for the CPUs and the GIL. A handed-over tail counts as delivered when the
        app answered its last report, before the compare-and-pop that removes it from the outbox."""
        return self.idle.wait(timeout)

    def drain(self, timeout: float) -> bool:
        """Wait until the outbox is empty (True) or timeout (False)."""
        deadline = time.monotonic() + timeout
        self.notify()
        while time.monotonic() < deadline:
            try:
                if self.r.llen(self.outbox) == 0:
                    return True
            except redis.RedisError:
                pass
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()


def _outbox_entry(raw: str) -> dict[str, Any] | None:
    try:
        entry = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    if not isinstance(entry, dict) or not {"job_id", "type", "body"} <= entry.keys():
        return None
    return entry


def push_with_retry(action: Callable[[], Any], what: str, give_up: threading.Event | None = None) -> bool:
    """Run a Redis write until it succeeds (backoff, logged). False only if give_up was set meanwhile."""
    backoff = BACKOFF_START
    while True:
        try:
            action()
            return True
        except redis.RedisError as exc:
            if give_up is not None and give_up.is_set():
                return False
            log.warning("redis unavailable while %s (%s); retrying in %.1fs", what, exc, backoff)
            time.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)


class LogFlusher:
    """One long-lived thread per worker that queues the log parts of the current `LogStream` every
    LOG_FLUSH_INTERVAL s (or at once when a stream has LOG_PART_BYTES waiting): no thread started per job."""

    def __init__(self, name: str = "log-flusher", *, once: bool = False) -> None:
        """`once`: the thread ends when its (only) stream is closed."""
        self.once = once
        self._stream: LogStream | None = None
        self._wake = threading.Event()
        self._guard = threading.Lock()
        self._name = name
        self._thread: threading.Thread | None = None

    def attach(self, stream: LogStream) -> None:
        with self._guard:
            self._stream = stream
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
                self._thread.start()

    def detach(self, stream: LogStream) -> None:
        with self._guard:
            if self._stream is stream:
                self._stream = None

    def wake(self) -> None:
        self._wake.set()

    def _loop(self) -> None:
        while True:
            self._wake.wait(LOG_FLUSH_INTERVAL)
            self._wake.clear()
            stream = self._stream
            if stream is None and self.once:
                return
            if stream is not None and not stream.closed:
                stream.flush()


class LogStream:
    """Collects build output as it arrives and appends numbered log parts to the outbox in the background
    (on the worker's `LogFlusher` thread, or on a thread of its own without one)."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        worker_id: str,
        job_id: int,
        notify: Callable[[], None],
        *,
        attempt: int = 1,
        secrets: Iterable[str] = (),
        flusher: LogFlusher | None = None,
    ):
        self.r = client
        self.outbox = keys.outbox(worker_id)
        self.job_id = job_id
        self.attempt = attempt
        self.notify = notify
        self.number = 0
        self._masker = Masker(secrets)  # secure values never reach the outbox
        self._buf: list[str] = []
        self._size = 0
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._closed = threading.Event()
        self._flusher = flusher or LogFlusher(f"log-{job_id}", once=True)
        self._flusher.attach(self)

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def write(self, data: bytes) -> None:
        text = self._decoder.decode(data)
        with self._lock:
            self._buf.append(text)
            self._size += len(text)
            big = self._size >= LOG_PART_BYTES
        if big:
            self._flusher.wake()

    def flush(self) -> None:
        """Queue what was written since the last flush as log parts (the worker's thread, every 0.25 s)."""
        with self._flush_lock:
            if self._closed.is_set():
                return  # what is left goes out with close()'s entries
            parts = self._parts(final=False)
            if not parts:
                return
            push_with_retry(lambda: self.r.rpush(self.outbox, *parts), f"queueing log part {self.number}")
            self.notify()

    def _parts(self, final: bool) -> list[str]:
        """The buffered text as numbered log parts, at most LOG_PART_BYTES characters each even when this
        thread fell behind the build. Call with _flush_lock held."""
        with self._lock:
            text = "".join(self._buf)
            self._buf.clear()
            self._size = 0
        text = self._masker.feed(text, final=final)
        parts = []
        for start in range(0, len(text), LOG_PART_BYTES):
            self.number += 1
            part = text[start : start + LOG_PART_BYTES]
            parts.append(log_entry(self.job_id, self.number, part, attempt=self.attempt))
        return parts

    def close(self) -> list[str]:
        """Stop the thread (not waiting for it to be scheduled); returns the entries not queued yet, for the
        finishing transaction to queue in the same round trip: the last log parts (if any output came since
        the last flush), then the final (empty) part. No write may follow."""
        self._closed.set()
        self._flusher.detach(self)  # a flush the flusher is in finishes first (_flush_lock)
        if self._flusher.once:
            self._flusher.wake()  # its thread ends by itself (not waiting for it to be scheduled)
        tail = self._decoder.decode(b"", final=True)
        if tail:
            with self._lock:
                self._buf.append(tail)
        with self._flush_lock:
            parts = self._parts(final=True)
        return [*parts, log_entry(self.job_id, self.number + 1, "", final=True, attempt=self.attempt)]
