"""Reporting: a durable per-worker outbox in Redis, delivered in order by a sender thread (http or redis)."""

from __future__ import annotations

import codecs
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
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


# KEYS: outbox; ARGV: the entry that was delivered. Pops it only if it is still the head (a reaper may have
# moved the outbox meanwhile): never drops a newer, undelivered report.
POP_DELIVERED_LUA = """
if redis.call('LINDEX', KEYS[1], 0) ~= ARGV[1] then return 0 end
redis.call('LPOP', KEYS[1])
return 1
"""
# KEYS: outbox, reporting list; ARGV: the outbox entry, its message. Delivery and pop in one step.
DELIVER_REDIS_LUA = """
if redis.call('LINDEX', KEYS[1], 0) ~= ARGV[1] then return 0 end
redis.call('RPUSH', KEYS[2], ARGV[2])
redis.call('LPOP', KEYS[1])
return 1
"""


def state_entry(job_id: int, state: str, worker_id: str, attempt: int = 1, **fields: Any) -> str:
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


def log_entry(job_id: int, number: int, content: str, final: bool = False, attempt: int = 1) -> str:
    """Log part `number` (from 1 in every attempt) of run `attempt` of the job."""
    body = {"id": job_id, "attempt": attempt, "number": number, "log": content, "final": final}
    return json.dumps({"job_id": job_id, "type": "log", "body": body})


class DeliveryError(Exception):
    pass


class Transport(Protocol):
    def send(self, client: redis.Redis, outbox: str, raw: str, entry: dict[str, Any]) -> None:
        """Deliver `entry` (the outbox head `raw`) and pop exactly that entry; raise on failure."""


class HttpTransport:
    """state: PUT <url>/jobs/<id>; log part: PUT <url>/jobs/<id>/log. JSON bodies, HTTP basic auth."""

    def __init__(self, url: str, username: str, token: str, timeout: float = 10.0):
        self.url = url.rstrip("/")
        self.session = requests.Session()
        self.session.auth = (username, token)
        self.timeout = timeout
        self._pop = None

    def send(self, client: redis.Redis, outbox: str, raw: str, entry: dict[str, Any]) -> None:
        self.deliver(entry)
        # at-least-once: a crash right here re-sends this report after a restart
        if self._pop is None:
            self._pop = client.register_script(POP_DELIVERED_LUA)
        if not self._pop(keys=[outbox], args=[raw]):
            log.info("outbox %s changed during delivery (taken over by a reaper); nothing popped", outbox)

    def deliver(self, entry: dict[str, Any]) -> None:
        suffix = "/log" if entry["type"] == "log" else ""
        url = f"{self.url}/jobs/{entry['job_id']}{suffix}"
        shown = mask_urls(url)
        try:
            resp = self.session.put(url, json=entry["body"], timeout=self.timeout)
        except requests.RequestException as exc:
            raise DeliveryError(mask_urls(f"PUT {shown}: {exc.__class__.__name__}: {exc}")) from None
        if resp.status_code in PERMANENT_HTTP:
            status, body = resp.status_code, resp.text
            log.error("PUT %s refused for good (HTTP %s: %.200s); report dropped", shown, status, body)
            return
        if not 200 <= resp.status_code < 300:
            raise DeliveryError(f"PUT {shown}: HTTP {resp.status_code}")


class RedisTransport:
    """Reports go to list `<ns>:reporting:jobs`; delivery and outbox pop are one transaction."""

    def __init__(self, keys: Keys):
        self.keys = keys
        self._deliver = None

    @staticmethod
    def message(entry: dict[str, Any]) -> str:
        return json.dumps({"event": f"job:{entry['type']}", "job_id": entry["job_id"], **entry["body"]})

    def send(self, client: redis.Redis, outbox: str, raw: str, entry: dict[str, Any]) -> None:
        if self._deliver is None:
            self._deliver = client.register_script(DELIVER_REDIS_LUA)
        self._deliver(keys=[outbox, self.keys.reporting], args=[raw, self.message(entry)])


class Sender(threading.Thread):
    """Delivers the outbox head, then pops it; on failure waits with exponential backoff and tries again."""

    def __init__(self, client: redis.Redis, keys: Keys, worker_id: str, transport: Transport):
        super().__init__(name="reporter", daemon=True)
        self.r = client
        self.keys = keys
        self.outbox = keys.outbox(worker_id)
        self.transport = transport
        self.wake = threading.Event()
        self.stopping = threading.Event()

    def run(self) -> None:
        backoff = BACKOFF_START
        while not self.stopping.is_set():
            self.wake.clear()  # before looking: a notify() from now on is never lost
            try:
                if self._send_one():
                    backoff = BACKOFF_START
                    continue
                self.wake.wait(1.0)
            except (redis.RedisError, DeliveryError) as exc:
                log.warning("report delivery failed (%s); retrying in %.1fs", exc, backoff)
                self.stopping.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
            except Exception:  # a bug must not silently stop reporting: log it, keep the report, retry
                log.exception("report delivery crashed; retrying in %.1fs", backoff)
                self.stopping.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)

    def _send_one(self) -> bool:
        raw = self.r.lindex(self.outbox, 0)
        if raw is None:
            return False
        try:
            entry = json.loads(raw)
            if not isinstance(entry, dict) or not {"job_id", "type", "body"} <= entry.keys():
                raise ValueError("not an outbox entry")
        except ValueError:
            log.error("dropping unreadable outbox entry %.200r", raw)
            pipe = self.r.pipeline(transaction=True)
            pipe.lrem(self.outbox, 1, raw)
            pipe.execute()
            return True
        self.transport.send(self.r, self.outbox, raw, entry)
        return True

    def notify(self) -> None:
        self.wake.set()

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


class LogStream:
    """Collects build output as it arrives and appends numbered log parts to the outbox in the background."""

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
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"log-{job_id}", daemon=True)
        self._thread.start()

    def write(self, data: bytes) -> None:
        text = self._decoder.decode(data)
        with self._lock:
            self._buf.append(text)
            self._size += len(text)
            big = self._size >= LOG_PART_BYTES
        if big:
            self._wake.set()

    def _loop(self) -> None:
        while not self._closed.is_set():
            self._wake.wait(LOG_FLUSH_INTERVAL)
            self._wake.clear()
            self.flush()

    def flush(self, final: bool = False) -> None:
        with self._flush_lock:
            with self._lock:
                text = "".join(self._buf)
                self._buf.clear()
                self._size = 0
            text = self._masker.feed(text, final=final)
            if not text:
                return
            # Parts are at most LOG_PART_BYTES characters even when this thread fell behind the build.
            for start in range(0, len(text), LOG_PART_BYTES):
                self.number += 1
                part = text[start : start + LOG_PART_BYTES]
                entry = log_entry(self.job_id, self.number, part, attempt=self.attempt)
                push_with_retry(
                    lambda e=entry: self.r.rpush(self.outbox, e), f"queueing log part {self.number}"
                )
            self.notify()

    def close(self) -> str:
        """Flush everything; returns the final (empty) log part entry for the finishing transaction."""
        self._closed.set()
        self._wake.set()
        self._thread.join()
        tail = self._decoder.decode(b"", final=True)
        if tail:
            with self._lock:
                self._buf.append(tail)
        self.flush(final=True)
        return log_entry(self.job_id, self.number + 1, "", final=True, attempt=self.attempt)
