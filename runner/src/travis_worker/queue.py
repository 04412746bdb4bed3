"""The resque-compatible queue: take with BLMOVE, finish/fail/requeue atomically, reap dead workers."""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from typing import Any

import redis

from travis_worker.keys import Keys, host_of, vm_field
from travis_worker.payload import DEFAULT_MAX_PAYLOAD, Envelope, PayloadError, read_envelope

log = logging.getLogger(__name__)
REAP_RETRIES = 20
ATTEMPT_TTL = 30 * 86400
FAILED_LOOKBACK = 100  # how far back restore_registration looks in <ns>:failed
# What Resque 3.0 (lib/resque/worker.rb prune_dead_workers/unregister_worker) records for a pruned job
RESQUE_PRUNE_EXCEPTIONS = ("Resque::DirtyExit", "Resque::PruneDeadWorkerDirtyExit")
# KEYS: processing, outbox, stat:processed, stat:processed:<id>, worker:<id>[, notify]
# ARGV: raw job, completion time, outbox entries...
# Returns the outbox's length after the push (nil when the job was no longer ours: nothing queued).
FINISH_LUA = """
if not redis.call('LPOS', KEYS[1], ARGV[1]) then return false end
local length = 0
for i = 3, #ARGV do length = redis.call('RPUSH', KEYS[2], ARGV[i]) end
redis.call('LREM', KEYS[1], 1, ARGV[1])
redis.call('INCR', KEYS[3])
redis.call('INCR', KEYS[4])
redis.call('DEL', KEYS[5])
if KEYS[6] then redis.call('RPUSH', KEYS[6], ARGV[2]) end
return length
"""


def now_iso(ts: float | None = None) -> str:
    """Heartbeat timestamps: ISO 8601 in UTC with microseconds (Ruby's Time.parse reads them)."""
    return datetime.fromtimestamp(time.time() if ts is None else ts, timezone.utc).isoformat()


def server_time(client: redis.Redis) -> float:
    """Redis `TIME` (seconds): one clock for every worker's heartbeats and reaper, as Resque does."""
    seconds, micros = client.time()
    return seconds + micros / 1_000_000


def parse_iso(value: str | bytes | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode()
    if value.endswith("Z"):  # Python < 3.11 fromisoformat does not read "Z"
        value = value[:-1] + "+00:00"
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        try:
            return float(value)
        except ValueError:
            return None


def resque_time(ts: float | None = None) -> str:
    """resque's failed_at format."""
    return time.strftime("%Y/%m/%d %H:%M:%S UTC", time.gmtime(time.time() if ts is None else ts))


def make_worker_id(queue: str, host: str | None = None, pid: int | None = None) -> str:
    import os

    return f"{host or socket.gethostname()}:{pid or os.getpid()}:{queue}"


def queue_of(worker_id: str) -> str:
    """`host:pid:queue` -> queue (resque allows a comma-separated list; we take the first)."""
    return worker_id.split(":", 2)[-1].split(",")[0]


def attempts_of(raw: str) -> int:
    """The attempt count of a raw job (tests and tools; the worker reads ``Envelope.attempts``)."""
    return read_envelope(raw).attempts


def loads_safely(text: str | None) -> Any:
    """JSON from Redis that anyone may have written: the value, or None if it cannot be decoded."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except Exception:  # ValueError, RecursionError (deep nesting), ...: never let it kill a caller
        return None


def failure_record(
    envelope: Envelope,
    *,
    exception: str,
    error: str,
    worker_id: str,
    queue: str,
    backtrace: Sequence[str] = (),
) -> str:
    return json.dumps(
        {
            "failed_at": resque_time(),
            "payload": envelope.stored,
            "exception": exception,
            "error": error,
            "backtrace": list(backtrace),
            "worker": worker_id,
            "queue": queue,
        }
    )


# KEYS: worker:<id>, attempt:<job id>, outbox, then one hash per (field, value) pair of ARGV
# ARGV: <ns>:worker:<id> document, attempt TTL, number of hash writes N, N (field, value) pairs, then outbox
#       entries as (text before the attempt number, text after it) pairs
START_LUA = """
redis.call('SET', KEYS[1], ARGV[1])
local attempt = redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[2], ARGV[2])
local n = tonumber(ARGV[3])
for i = 1, n do redis.call('HSET', KEYS[3 + i], ARGV[2 + 2 * i], ARGV[3 + 2 * i]) end
for i = 4 + 2 * n, #ARGV, 2 do redis.call('RPUSH', KEYS[3], ARGV[i] .. attempt .. ARGV[i + 1]) end
return attempt
"""


class Queue:
    """All queue state transitions of one worker. Every multi-key change is one MULTI/EXEC."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        queue: str,
        worker_id: str,
        max_attempts: int = 3,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
    ):
        self.r = client
        self.keys = keys
        self.queue = queue
        self.worker_id = worker_id
        self.max_attempts = max_attempts
        self.max_payload = max_payload
        self._finish_script = client.register_script(FINISH_LUA)
        self._start_script = client.register_script(START_LUA)
        self._working: tuple[str, str] | None = None  # (raw job, <ns>:worker:<id> document) since start()

    # -- producer side -------------------------------------------------------------------------------
    def push(self, raw: str, queue: str | None = None) -> None:
        queue = queue or self.queue
        pipe = self.r.pipeline(transaction=True)
        pipe.sadd(self.keys.queues, queue)
        pipe.rpush(self.keys.queue(queue), raw)
        pipe.execute()

    # -- registration --------------------------------------------------------------------------------
    def register(self) -> None:
        stamp = now_iso(server_time(self.r))
        pipe = self.r.pipeline(transaction=True)
        pipe.sadd(self.keys.ours, self.worker_id)
        pipe.sadd(self.keys.workers, self.worker_id)
        pipe.sadd(self.keys.queues, self.queue)
        pipe.hset(self.keys.heartbeat, self.worker_id, stamp)
        pipe.set(self.keys.worker_started(self.worker_id), time.strftime("%Y-%m-%d %H:%M:%S %z"))
        pipe.execute()

    def unregister(self, vm: str | None = None) -> bool:
        """Remove every trace of this worker unless it still holds jobs or undelivered reports.

        Returns False (and marks the heartbeat expired so the next reaper takes over) if something is left.
        """
        if self.r.llen(self.keys.processing(self.worker_id)) or self.r.llen(self.keys.outbox(self.worker_id)):
            self.r.hset(self.keys.heartbeat, self.worker_id, now_iso(0))
            return False
        pipe = self.r.pipeline(transaction=True)
        self._forget(pipe, self.worker_id, vm)
        pipe.execute()
        return True

    def _forget(self, pipe: Any, worker_id: str, vm: str | None) -> None:
        pipe.srem(self.keys.ours, worker_id)
        pipe.srem(self.keys.workers, worker_id)
        pipe.hdel(self.keys.heartbeat, worker_id)
        pipe.hdel(self.keys.worker_state, worker_id)
        pipe.delete(
            self.keys.worker(worker_id),
            self.keys.worker_started(worker_id),
            self.keys.processing(worker_id),
            self.keys.outbox(worker_id),
            self.keys.stat("processed", worker_id),
            self.keys.stat("failed", worker_id),
        )
        if vm:
            pipe.hdel(self.keys.vm_state, vm_field(host_of(worker_id), vm))

    def drop_legacy_vm_state(self, vm: str) -> bool:
        """Remove this box's entry of the old form (field = the bare VM name, before `<host>:<vm>`) that a
        runner of an earlier version left for `vm`; another box's old entry (its "worker" id names another
        host) stays for that box's runner to remove. True when one was removed."""
        for _ in range(REAP_RETRIES):
            with self.r.pipeline(transaction=True) as pipe:
                try:
                    pipe.watch(self.keys.vm_state)
                    doc = loads_safely(pipe.hget(self.keys.vm_state, vm))
                    owner = doc.get("worker") if isinstance(doc, dict) else None
                    if not isinstance(owner, str) or host_of(owner) != host_of(self.worker_id):
                        return False
                    pipe.multi()
                    pipe.hdel(self.keys.vm_state, vm)
                    pipe.execute()
                    return True
                except redis.WatchError:
                    continue
        return False

    def beat(self) -> None:
        self.r.hset(self.keys.heartbeat, self.worker_id, now_iso(server_time(self.r)))

    def is_registered(self) -> bool:
        return self.r.hexists(self.keys.heartbeat, self.worker_id)

    # -- taking jobs ---------------------------------------------------------------------------------
    def envelope(self, raw: str) -> Envelope:
        """Decode a job read from Redis once; never raises (a bad job carries ``error``)."""
        return read_envelope(raw, self.max_payload)

    def take(self, timeout: float) -> Envelope | None:
        """The next job: first anything already in our processing list (e.g. a BLMOVE whose reply was lost
        when the connection broke), else a blocking atomic move from the queue head."""
        processing = self.keys.processing(self.worker_id)
        raw = self.r.lindex(processing, 0)
        if raw is None:
            raw = self.r.blmove(self.keys.queue(self.queue), processing, timeout, "LEFT", "RIGHT")
        return None if raw is None else self.envelope(raw)

    def give_back(self, envelope: Envelope, *, count_attempt: bool, reason: str) -> str:
        """Put a taken job back at the head of the queue (or into failed once max_attempts is reached).

        Returns "requeued", "failed", or "gone" if the job was no longer ours (a reaper requeued it)."""
        raw = envelope.raw
        attempts = envelope.attempts + (1 if count_attempt else 0)
        processing = self.keys.processing(self.worker_id)
        while True:
            with self.r.pipeline(transaction=True) as pipe:
                try:
                    pipe.watch(processing)
                    if pipe.lpos(processing, raw) is None:
                        pipe.unwatch()
                        return "gone"
                    pipe.multi()
                    pipe.lrem(processing, 1, raw)
                    outcome = self._requeue_or_fail(
                        pipe, envelope, attempts, reason, self.worker_id, self.queue
                    )
                    pipe.delete(self.keys.worker(self.worker_id))
                    pipe.execute()
                    return outcome
                except redis.WatchError:
                    continue

    def _requeue_or_fail(
        self, pipe: Any, envelope: Envelope, attempts: int, reason: str, worker_id: str, queue: str
    ) -> str:
        bumped = None if envelope.error is not None else envelope.with_attempts(attempts)
        if bumped is None or attempts >= self.max_attempts:
            exception, error = "PayloadError", f"{envelope.error} ({reason})"
            if bumped is not None:
                exception = "MaxAttemptsExceeded"
                error = f"{reason}; gave up after {attempts} of max_attempts={self.max_attempts}"
            pipe.rpush(
                self.keys.failed,
                failure_record(envelope, exception=exception, error=error, worker_id=worker_id, queue=queue),
            )
            pipe.incr(self.keys.stat("failed"))
            return "failed"
        pipe.sadd(self.keys.queues, queue)
        pipe.lpush(self.keys.queue(queue), bumped)
        return "requeued"

    def start(
        self,
        envelope: Envelope,
        run_at: str,
        job_id: int,
        *,
        hash_writes: Sequence[tuple[str, str, str]] = (),
        reports: Sequence[tuple[str, str]] = (),
    ) -> int:
        """Mark the job as ours and running (`<ns>:worker:<id>`) and number this run of job `job_id`: 1, 2,
        ... whatever requeued it (kept 30 days). In the same round trip (one Lua script, atomic): the
        `hash_writes` (key, field, value), e.g. the worker state, and `reports` appended to the outbox, each
        given as the text before and after its attempt number (`reporter.state_template`). Returns the
        attempt number."""
        doc = json.dumps({"queue": self.queue, "run_at": run_at, "payload": envelope.stored})
        keys = [self.keys.worker(self.worker_id), self.keys.attempt(job_id), self.keys.outbox(self.worker_id)]
        args: list[str | int] = [doc, ATTEMPT_TTL, len(hash_writes)]
        for key, field, value in hash_writes:
            keys.append(key)
            args += [field, value]
        for before, after in reports:
            args += [before, after]
        attempt = int(self._start_script(keys=keys, args=args))
        self._working = (envelope.raw, doc)
        return attempt

    def restore_registration(self) -> int:
        """Undo a foreign Resque `prune_dead_workers` that unregistered this live worker (it deleted our
        `worker:<id>`, `:started`, heartbeat, stats and, when we were working, wrote a `DirtyExit` failure for
        the job we still run). Restores the keys; removes that failure entry if we still hold the job.
        Returns the number of failure entries removed."""
        pipe = self.r.pipeline(transaction=True)
        pipe.sadd(self.keys.workers, self.worker_id)
        pipe.sadd(self.keys.ours, self.worker_id)
        pipe.set(self.keys.worker_started(self.worker_id), time.strftime("%Y-%m-%d %H:%M:%S %z"))
        pipe.execute()
        working = self._working
        if working is None:
            return 0
        raw, doc = working
        if self.r.lpos(self.keys.processing(self.worker_id), raw) is None:
            return 0  # that job is over: nothing to restore
        self.r.set(self.keys.worker(self.worker_id), doc, nx=True)
        payload = json.loads(doc)["payload"]
        removed = 0
        for entry in self.r.lrange(self.keys.failed, -FAILED_LOOKBACK, -1):
            record = loads_safely(entry)
            if (
                isinstance(record, dict)
                and record.get("worker") == self.worker_id
                and record.get("exception") in RESQUE_PRUNE_EXCEPTIONS
                and record.get("payload") == payload
            ):
                removed += self.r.lrem(self.keys.failed, 1, entry)
        return removed

    def finish(
        self, envelope: Envelope, outbox_entries: Iterable[str] = (), notify: str | None = None
    ) -> int | None:
        """The job is done: its last reports enter the outbox and the job leaves processing, atomically
        (one Lua script, one round trip). `notify`: a list that gets the completion time (no-op jobs).

        Returns the outbox's length after the push (0 without entries): equal to the number of entries when
        they are the whole outbox, which lets the sender deliver them without reading it first. None (and
        queues nothing) if the job was no longer ours: a reaper requeued it because our heartbeat had
        expired, so the job's next run reports instead."""
        keys = [
            self.keys.processing(self.worker_id),
            self.keys.outbox(self.worker_id),
            self.keys.stat("processed"),
            self.keys.stat("processed", self.worker_id),
            self.keys.worker(self.worker_id),
        ]
        if notify is not None:
            keys.append(notify)
        length = self._finish_script(keys=keys, args=[envelope.raw, repr(time.time()), *outbox_entries])
        return None if length is None else int(length)

    def fail(self, envelope: Envelope, *, exception: str, error: str, backtrace: Sequence[str] = ()) -> None:
        """Straight to resque's failed list (bad payload): no retry can fix it."""
        pipe = self.r.pipeline(transaction=True)
        pipe.rpush(
            self.keys.failed,
            failure_record(
                envelope,
                exception=exception,
                error=error,
                worker_id=self.worker_id,
                queue=self.queue,
                backtrace=backtrace,
            ),
        )
        pipe.lrem(self.keys.processing(self.worker_id), 1, envelope.raw)
        pipe.incr(self.keys.stat("failed"))
        pipe.incr(self.keys.stat("failed", self.worker_id))
        pipe.incr(self.keys.stat("processed"))
        pipe.incr(self.keys.stat("processed", self.worker_id))
        pipe.delete(self.keys.worker(self.worker_id))
        pipe.execute()

    # -- reaping -------------------------------------------------------------------------------------
    def dead_workers(self, dead_after: float, now: float | None = None) -> list[str]:
        """Our workers (in `<ns>:travis:workers` or `<ns>:travis:worker_state`) whose last sign of life is
        older than `dead_after` by Redis `TIME`. Entries of `<ns>:workers:heartbeat` that are not ours (a Ruby
        Resque worker) are never judged: Resque prunes its own. No SCAN of the keyspace."""
        now = server_time(self.r) if now is None else now
        pipe = self.r.pipeline(transaction=False)
        pipe.hgetall(self.keys.heartbeat)
        pipe.smembers(self.keys.ours)
        pipe.hgetall(self.keys.worker_state)
        beats, ours, states = pipe.execute()
        dead = []
        for worker_id in sorted((set(ours) | set(states)) - {self.worker_id}):
            alive = last_alive(beats.get(worker_id), states.get(worker_id))
            if alive is False:
                continue  # unreadable stamp: leave it alone
            if alive is None or now - alive > dead_after:
                dead.append(worker_id)
        return dead

    def reap(self, dead_after: float) -> dict[str, list[str]]:
        """Take over every dead worker: jobs back to the queue head (attempt counted) or to failed, their
        undelivered reports appended to our outbox, registration removed. Safe on many workers at once."""
        result: dict[str, list[str]] = {}
        for worker_id in self.dead_workers(dead_after):
            outcomes = self._reap_one(worker_id, dead_after)
            if outcomes is not None:
                result[worker_id] = outcomes
        return result

    def _reap_one(self, worker_id: str, dead_after: float) -> list[str] | None:
        processing = self.keys.processing(worker_id)
        outbox = self.keys.outbox(worker_id)
        queue = queue_of(worker_id)
        for _ in range(REAP_RETRIES):
            with self.r.pipeline(transaction=True) as pipe:
                try:
                    pipe.watch(processing, outbox, self.keys.heartbeat, self.keys.worker_state)
                    state = pipe.hget(self.keys.worker_state, worker_id)
                    alive = last_alive(pipe.hget(self.keys.heartbeat, worker_id), state)
                    if alive is False or (alive is not None and server_time(pipe) - alive <= dead_after):
                        return None  # it came back (or has a stamp we cannot judge)
                    jobs = pipe.lrange(processing, 0, -1)
                    reports = pipe.lrange(outbox, 0, -1)
                    vm = None
                    if state:
                        doc = loads_safely(state)
                        vm = doc.get("vm") if isinstance(doc, dict) else None
                        vm = vm if isinstance(vm, str) else None
                    field = vm_field(host_of(worker_id), vm) if vm else None
                    vm_owner = pipe.hget(self.keys.vm_state, field) if field else None
                    pipe.multi()
                    outcomes = []
                    for raw in reversed(jobs):  # LPUSH in reverse keeps their order at the head
                        reason = f"worker {worker_id} died (heartbeat expired) while running the job"
                        job = self.envelope(raw)
                        outcomes.append(
                            self._requeue_or_fail(pipe, job, job.attempts + 1, reason, worker_id, queue)
                        )
                    if reports:
                        pipe.rpush(self.keys.outbox(self.worker_id), *reports)
                    owned_vm = vm if vm_owner and _owner_of(vm_owner) == worker_id else None
                    self._forget(pipe, worker_id, owned_vm)
                    pipe.execute()
                except redis.WatchError:
                    continue
            if jobs or reports:
                log.warning(
                    "reaped dead worker %s: %d job(s) %s, %d undelivered report(s) taken over",
                    worker_id,
                    len(jobs),
                    ",".join(outcomes) or "-",
                    len(reports),
                )
            else:
                log.info("reaped dead worker %s (nothing in flight)", worker_id)
            return outcomes
        log.warning("could not reap %s: too much contention, will retry at the next round", worker_id)
        return None

    # -- failed list (CLI) ---------------------------------------------------------------------------
    def failed(self) -> list[dict[str, Any]]:
        out = []
        for raw in self.r.lrange(self.keys.failed, 0, -1):
            entry = loads_safely(raw)
            out.append(
                entry if isinstance(entry, dict) else {"error": "unreadable failed entry", "payload": raw}
            )
        return out

    def retry(self, index: int | None) -> int:
        """Requeue failed entry `index` (or all with None) with a fresh attempt count; returns how many.

        An entry that is not a readable failure record stays in the list (with `index`: PayloadError)."""
        count = 0
        while True:
            with self.r.pipeline(transaction=True) as pipe:
                try:
                    pipe.watch(self.keys.failed)
                    entries = pipe.lrange(self.keys.failed, 0, -1)
                    chosen = range(len(entries)) if index is None else [index]
                    if index is not None and not 0 <= index < len(entries):
                        raise IndexError(f"no failed job with index {index} (there are {len(entries)})")
                    pipe.multi()
                    for i in chosen:
                        entry = loads_safely(entries[i])
                        payload = entry.get("payload") if isinstance(entry, dict) else None
                        if payload is None:
                            if index is not None:
                                raise PayloadError(
                                    f"failed entry {i} is unreadable (no JSON record with a payload)"
                                )
                            log.warning("failed entry %d is unreadable; left in the failed list", i)
                            continue
                        try:  # the record is decoded already: drop the attempt count, no second decode
                            if isinstance(payload, str):
                                raw = self.envelope(payload).without_attempts()
                            elif isinstance(payload, dict):
                                raw = json.dumps({k: v for k, v in payload.items() if k != "attempts"})
                            else:
                                raw = json.dumps(payload)
                        except Exception as exc:  # e.g. nested too deep to encode
                            raise PayloadError(
                                f"failed entry {i}: payload cannot be encoded: {exc!r}"
                            ) from None
                        queue = entry.get("queue")
                        queue = queue if isinstance(queue, str) and queue else self.queue
                        pipe.sadd(self.keys.queues, queue)
                        pipe.rpush(self.keys.queue(queue), raw)
                        pipe.lset(self.keys.failed, i, "__travis_worker_retried__")
                        count += 1
                    pipe.lrem(self.keys.failed, 0, "__travis_worker_retried__")
                    pipe.execute()
                    return count
                except redis.WatchError:
                    count = 0
                    continue


def last_alive(stamp: str | None, state_json: str | None) -> float | bool | None:
    """When one of our workers was last alive (Redis time), from its heartbeat field, or when that field is
    missing (removed by a foreign Resque's prune, see docs/runner.md) from the `beat` of its worker_state.
    None: no sign of life at all; False: a stamp we cannot read (left alone)."""
    if stamp is not None:
        ts = parse_iso(stamp)
        return False if ts is None else ts
    if state_json:
        doc = loads_safely(state_json)
        beat = doc.get("beat") if isinstance(doc, dict) else None
        if isinstance(beat, (int, float)) and not isinstance(beat, bool):
            return float(beat)
    return None


def _owner_of(state_json: str) -> str | None:
    doc = loads_safely(state_json)
    owner = doc.get("worker") if isinstance(doc, dict) else None
    return owner if isinstance(owner, str) else None
