"""The worker process: main loop, signals, heartbeat + reaper, cancel subscription, state in Redis."""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import redis

from travis_worker.config import Config
from travis_worker.executor import Executor, Limits, SandboxError, make_executor
from travis_worker.keys import Keys, host_of, vm_field
from travis_worker.metrics import Metrics
from travis_worker.payload import Envelope, Job, PayloadError, job_of
from travis_worker.queue import Queue, loads_safely, make_worker_id, now_iso, server_time
from travis_worker.reporter import (
    BACKOFF_MAX,
    BACKOFF_START,
    HttpTransport,
    LogFlusher,
    LogStream,
    RedisTransport,
    Sender,
    Transport,
    push_with_retry,
    state_entry,
    state_template,
)
from travis_worker.script import build_script, secure_values

log = logging.getLogger(__name__)

TAKE_TIMEOUT = 1.0  # seconds BLMOVE blocks before the loop looks at stop/pause flags again
DEAD_AFTER_BEATS = 5  # a worker whose heartbeat is older than this many intervals is dead
REAP_EVERY_BEATS = 3
DRAIN_ON_EXIT = 5.0  # seconds to wait for the outbox to empty at exit (what is left stays in Redis)
# seconds the worker waits, after a job, for the sender to deliver the job's last reports (`finished`) before
# it resets the sandbox (docs/runner.md, "Benchmark"); a slow or unreachable app costs at most this per job
TAIL_WAIT = 0.05
SWITCH_CHECK = 2.0  # seconds between an idle worker's looks at the image store's `current` (one readlink)


def connect(url: str) -> redis.Redis:
    return redis.Redis.from_url(
        url,
        decode_responses=True,
        encoding_errors="surrogateescape",  # a non-UTF-8 payload must still be readable (and failed)
        socket_connect_timeout=5,
        socket_timeout=TAKE_TIMEOUT + 10,
        socket_keepalive=True,
        health_check_interval=30,
    )


def make_transport(cfg: Config, keys: Keys) -> Transport:
    if cfg["reporter"] == "http":
        return HttpTransport(cfg["travis.url"], cfg["travis.username"], cfg["travis.token"])
    return RedisTransport(keys)


class Worker:
    def __init__(self, cfg: Config, *, executor: Executor | None = None, worker_id: str | None = None):
        self.cfg = cfg
        self.keys = Keys(cfg.namespace)
        self.r = connect(cfg["redis.url"])
        self.id = worker_id or make_worker_id(cfg["queue"])
        self.vm: str | None = cfg["vm"]
        self.queue = Queue(
            self.r, self.keys, cfg["queue"], self.id, cfg["max_attempts"], cfg["limits.payload_size"]
        )
        self.executor = executor or make_executor(
            cfg["vms.provider"],
            project_dir=cfg["vms.project_dir"],
            vm_name=self.vm,
            build_root=cfg["build_root"],
            image_store=cfg["vms.image_store"],
            box=cfg["vms.box"],
        )
        self.sender = Sender(self.r, self.keys, self.id, make_transport(cfg, self.keys))
        self.log_flusher = LogFlusher()  # one thread for the log parts of every job (started with the first)
        self.interval = float(cfg["heartbeat_interval"])
        self.dead_after = DEAD_AFTER_BEATS * self.interval
        self.noop_class: str | None = cfg["noop_class"]
        self.metrics = Metrics.from_config(cfg, self.id)
        self.metrics.start()  # ValueError (exit 78) when the port cannot be bound
        # lifecycle flags (set from signal handlers and threads)
        self.stop_mode: str | None = None  # None | "graceful" | "immediate"
        self.stop_requested = threading.Event()  # set with stop_mode: ends waits that no job depends on
        self.paused = threading.Event()
        self.threads_stop = threading.Event()
        self.cancel = threading.Event()
        self.abort_reason: str | None = None  # set => the current job is requeued, not finished
        self.current_job: int | None = None
        self.state = "idle"
        self.state_since = now_iso()
        self.last_beat: float | None = None  # Redis time of our last heartbeat (in worker_state as "beat")
        self._check_held = True
        self._shutdown_timer: threading.Timer | None = None
        self._sigint_count = 0
        self._state_lock = threading.Lock()
        self.thread_failure: str | None = None  # set when a background thread died: the worker stops, exit 1
        # the sandbox is reset after each build and at start-up: True while it is clean and nothing ran in it
        self.clean = False
        self._switch_checked = 0.0
        self._state_unwritten = False  # set_state(with_take=True): written with the next BLMOVE

    # -- state in Redis ------------------------------------------------------------------------------
    def set_state(self, state: str, *, with_take: bool = False) -> None:
        """`with_take`: the state document goes to Redis with the next BLMOVE (one round trip for both:
        after a build, `idle` and the take of the next job)."""
        with self._state_lock:  # never interleave with the heartbeat's write of the previous state
            if state != self.state:
                self.state, self.state_since = state, now_iso()
            self.metrics.set_state(state)
            self._state_unwritten = with_take
            if with_take:
                return
            try:
                self._write_state()
            except redis.RedisError as exc:
                log.debug("state not written (%s); the next heartbeat writes it", exc)

    def image(self) -> dict[str, str] | None:
        """The published image the VM runs ({version, digest}); None without one (or without a VM)."""
        image = getattr(self.executor, "image", None)
        return image.summary() if image is not None else None

    def _state_writes(self) -> list[tuple[str, str, str]]:
        """(hash, field, JSON) of this worker's state: `worker_state` and, with a VM, `vm_state`."""
        doc = {
            "state": self.state,
            "job_id": self.current_job,
            "vm": self.vm,
            "since": self.state_since,
            "image": self.image(),
        }
        extra = {"heartbeat_interval": self.interval, "beat": self.last_beat}
        writes = [(self.keys.worker_state, self.id, json.dumps({**doc, **extra}))]
        if self.vm:
            field = vm_field(host_of(self.id), self.vm)
            writes.append((self.keys.vm_state, field, json.dumps({**doc, "worker": self.id})))
        return writes

    def _write_state(self, pipe: Any = None) -> None:
        own = pipe or self.r.pipeline(transaction=True)
        for key, field, value in self._state_writes():
            own.hset(key, field, value)
        if pipe is None:
            own.execute()

    # -- signals -------------------------------------------------------------------------------------
    def install_signals(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self.request_stop("graceful"))
        signal.signal(signal.SIGQUIT, lambda *_: self.request_stop("immediate"))
        signal.signal(signal.SIGINT, self._on_sigint)
        signal.signal(signal.SIGUSR2, lambda *_: self.toggle_pause())

    def _on_sigint(self, *_: Any) -> None:
        self._sigint_count += 1
        self.request_stop("graceful" if self._sigint_count == 1 else "immediate")

    def request_stop(self, mode: str) -> None:
        self.stop_requested.set()
        if mode == "immediate":
            self.stop_mode = "immediate"
            self._abort_current("worker stopped immediately (SIGQUIT / second SIGINT)")
            return
        if self.stop_mode is None:
            self.stop_mode = "graceful"
            log.info("graceful stop: no new jobs; the current one may take %ss", self.cfg["shutdown_timeout"])
            if self.current_job is not None:
                self._start_shutdown_timer()

    def _start_shutdown_timer(self) -> None:
        timer = threading.Timer(
            float(self.cfg["shutdown_timeout"]),
            self._abort_current,
            args=(f"shutdown_timeout of {self.cfg['shutdown_timeout']} s reached during a graceful stop",),
        )
        timer.daemon = True
        timer.start()
        self._shutdown_timer = timer

    def _abort_current(self, reason: str) -> None:
        if self.current_job is not None and self.abort_reason is None:
            self.abort_reason = reason
            self.cancel.set()

    def toggle_pause(self) -> None:
        if self.paused.is_set():
            self.paused.clear()
            log.info("resumed: taking jobs again")
        else:
            self.paused.set()
            log.info("paused: no new jobs until the next SIGUSR2")

    # -- background threads --------------------------------------------------------------------------
    def _heartbeat_loop(self) -> None:
        beats = 0
        connected_since: float | None = None
        while True:
            try:
                with self._state_lock:
                    self.last_beat = server_time(self.r)
                    pipe = self.r.pipeline(transaction=True)
                    pipe.hset(self.keys.heartbeat, self.id, now_iso(self.last_beat))
                    pipe.sadd(self.keys.workers, self.id)
                    pipe.sadd(self.keys.ours, self.id)
                    self._write_state(pipe)
                    created, _in_workers, _in_ours, state_created = pipe.execute()[:4]
                self.metrics.beat()
                if created and beats > 0 and self._was_reaped(bool(state_created)):
                    log.error("this worker had been reaped as dead (heartbeat too old); registered again")
                    self._abort_current("this worker was reaped as dead; the job was requeued by the reaper")
                elif created and beats > 0:
                    # Our heartbeat field was removed but not by our reaper: a foreign Resque's
                    # prune_dead_workers (it does not know our pid). Keep the job, restore what it deleted.
                    dropped = self.queue.restore_registration()
                    log.warning(
                        "registration removed by another Resque worker's prune; restored "
                        "(false failure entries removed: %d)",
                        dropped,
                    )
                if connected_since is None:
                    connected_since = time.monotonic()
                beats += 1
                # after an outage every heartbeat is old: reap only once others had time to beat again
                if beats % REAP_EVERY_BEATS == 0 and time.monotonic() - connected_since > self.dead_after:
                    self.reap()
            except redis.RedisError as exc:
                if connected_since is not None:
                    log.warning("heartbeat failed: %s", exc)
                connected_since = None
            if self.threads_stop.wait(self.interval):
                return

    def _was_reaped(self, state_created: bool) -> bool:
        """Our heartbeat field had vanished: by our reaper (it empties our processing list and removes our
        worker_state in the same transaction) or by a foreign Resque's prune (it touches neither)."""
        if self.current_job is not None:
            return self.r.llen(self.keys.processing(self.id)) == 0
        return state_created

    def reap(self) -> None:
        reaped = self.queue.reap(self.dead_after)
        self.metrics.reaped(reaped)
        if reaped:
            self.sender.notify()

    def _commands_loop(self) -> None:
        backoff = BACKOFF_START
        while not self.threads_stop.is_set():
            pubsub = self.r.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(self.keys.commands)
                backoff = BACKOFF_START
                while not self.threads_stop.is_set():
                    message = pubsub.get_message(timeout=0.5)
                    if message and message.get("type") == "message":
                        self._on_command(message["data"])
            except redis.RedisError as exc:
                log.warning("command subscription lost (%s); resubscribing in %.1fs", exc, backoff)
                self.threads_stop.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
            finally:
                with contextlib.suppress(redis.RedisError):
                    pubsub.close()

    def _on_command(self, data: str) -> None:
        command = loads_safely(data)
        if command is None:
            log.warning("ignoring command that is not readable JSON: %.200r", data)
            return
        if not isinstance(command, dict) or command.get("type") != "cancel_job":
            return
        if self.current_job is not None and str(command.get("job_id")) == str(self.current_job):
            log.info("job %s cancelled on request", self.current_job)
            self.cancel.set()

    # -- main loop -----------------------------------------------------------------------------------
    def run(self) -> int:
        self.install_signals()
        # Redis down at start-up: wait for it, but not past a stop (systemctl stop/restart, e.g. to give the
        # worker a corrected Redis URL): no job is taken yet, so there is nothing to finish.
        if not push_with_retry(self.queue.register, f"registering worker {self.id}", self.stop_requested):
            log.info("worker %s stopped before Redis could be reached: no job was taken", self.id)
            return 0
        self.set_state("idle")
        if self.vm:
            try:
                if self.queue.drop_legacy_vm_state(self.vm):
                    log.info("removed this box's vm_state entry of the old form (field %s)", self.vm)
            except redis.RedisError as exc:
                log.warning("old vm_state entry not checked: %s", exc)
        log.info("worker %s started on queue %s (vm %s)", self.id, self.cfg["queue"], self.vm or "-")
        try:
            self.reap()
        except redis.RedisError as exc:
            log.warning("start-up reap skipped: %s", exc)
        self._remove_stale_builds()
        threads = [
            self._supervised("heartbeat", self._heartbeat_loop),
            self._supervised("commands", self._commands_loop),
        ]
        self.sender.start()
        for thread in threads:
            thread.start()
        try:
            self.reset_sandbox("start-up: the VM's state is unknown")
            self._loop()
        finally:
            self._shutdown(threads)
        return 1 if self.thread_failure else 0

    def _remove_stale_builds(self) -> None:
        remove = getattr(self.executor, "remove_stale_builds", None)
        if remove is None:
            return
        try:
            removed = remove()
        except OSError as exc:
            log.warning("could not look for build directories of dead workers: %s", exc)
            return
        if removed:
            log.info(
                "removed the build directories of %d dead worker(s): %s", len(removed), ", ".join(removed)
            )

    def _supervised(self, name: str, target: Any) -> threading.Thread:
        """A daemon thread that stops the worker if it ever ends unexpectedly: a worker whose heartbeat or
        command thread is gone only looks alive, so it requeues its job and exits 1 for systemd to restart."""

        def run() -> None:
            try:
                target()
            except Exception as exc:
                log.debug("the %s thread raised", name, exc_info=True)
                self._thread_died(name, repr(exc))
                return
            if not self.threads_stop.is_set():
                self._thread_died(name, "it returned")

        return threading.Thread(target=run, name=name, daemon=True)

    def _thread_died(self, name: str, why: str) -> None:
        self.thread_failure = f"the {name} thread died ({why})"
        log.critical(
            "%s; stopping this worker (a job in progress is requeued)", self.thread_failure, exc_info=True
        )
        self.stop_mode = "immediate"
        self._abort_current(f"{self.thread_failure}; the worker stopped")

    def _loop(self) -> None:
        backoff = BACKOFF_START
        while self.stop_mode is None:
            if self.paused.is_set():
                if self.state != "paused":
                    self.set_state("paused")
                time.sleep(0.2)
                continue
            if not self.clean:  # a reset that failed and whose recovery was cut short
                self.reset_sandbox("the last reset did not complete")
                continue
            if self.state != "idle":
                self.set_state("idle")
            try:
                taken = self._take()
                backoff = BACKOFF_START
            except redis.RedisError as exc:
                log.warning(
                    "redis unavailable while waiting for jobs (%s); reconnecting in %.1fs", exc, backoff
                )
                self._check_held = True
                time.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            if taken is None:
                self._switch_if_due()
                continue
            if self.stop_mode is not None or self.paused.is_set():
                push_with_retry(
                    lambda taken=taken: self.queue.give_back(
                        taken, count_attempt=False, reason="worker stopping"
                    ),
                    "giving a job back",
                )
                continue
            self.handle(taken)

    def reset_sandbox(self, why: str, state: str | None = None) -> bool:
        """Reset the VM now (after a build, at start-up, onto a new image); a failure makes the worker
        errored and retries until a reset works (no job is taken meanwhile). `state`: the state of the
        reset's state document (after a build: `idle`, one write instead of `working` then `idle`), written
        with the next BLMOVE."""
        log.debug("resetting the sandbox: %s", why)
        try:
            with self.metrics.sandbox_reset():
                self.executor.prepare()
        except SandboxError as exc:
            log.error(
                "sandbox reset failed (%s): %s; worker is errored, no job taken until a reset works", why, exc
            )
            self.clean = False
            self.set_state("errored")
            self._recover_sandbox()
            return self.clean
        self.clean = True
        if state is not None:  # the state document, with the image the VM runs now
            self.set_state(state, with_take=True)
        else:
            self.set_state(self.state)
        return True

    def _switch_if_due(self) -> None:
        """Idle: when a new image was published for the VM's box, switch to it now (not at the next job)."""
        due = getattr(self.executor, "switch_due", None)
        if due is None or time.monotonic() - self._switch_checked < SWITCH_CHECK:
            return
        self._switch_checked = time.monotonic()
        if due():
            log.info("a new image is published for this VM: switching the idle VM now")
            self.reset_sandbox("image switch while idle")

    def _take(self) -> Envelope | None:
        """The next job, decoded once (a job that cannot be decoded carries its reason in ``error``)."""
        raw = None
        if self._check_held:
            raw = self.r.lindex(self.keys.processing(self.id), 0)
            self._check_held = False
        if raw is None:
            raw = self._blmove()
        return None if raw is None else self.queue.envelope(raw)

    def _blmove(self) -> str | None:
        source, target = self.keys.queue(self.cfg["queue"]), self.keys.processing(self.id)
        if not self._state_unwritten:
            return self.r.blmove(source, target, TAKE_TIMEOUT)
        pipe = self.r.pipeline(transaction=False)  # one round trip: the state, then the wait for a job
        with self._state_lock:
            self._write_state(pipe)
        pipe.blmove(source, target, TAKE_TIMEOUT)
        raw = pipe.execute()[-1]
        self._state_unwritten = False
        return raw

    def handle(self, envelope: Envelope) -> None:
        self.metrics.taken.inc()
        if self.noop_class and envelope.job_class == self.noop_class:
            self._handle_noop(envelope)
            return
        try:
            job = job_of(envelope)
        except Exception as exc:  # PayloadError, or a parser bug: either way this payload cannot run
            exception = "PayloadError" if isinstance(exc, PayloadError) else exc.__class__.__name__
            reason = str(exc) if isinstance(exc, PayloadError) else f"payload parser failed: {exc!r}"
            if not isinstance(exc, PayloadError):
                log.exception("the payload parser crashed")
            log.warning("bad payload sent to failed: %s", reason)
            self.metrics.failed.labels("PayloadError").inc()
            push_with_retry(
                lambda: self.queue.fail(envelope, exception=exception, error=reason),
                "recording a bad payload",
            )
            return
        self._run_job(envelope, job)

    def _handle_noop(self, envelope: Envelope) -> None:
        """`noop_class` jobs (benchmarks, smoke tests): the same take/finish path, no build, no reports."""
        args = envelope.data["args"] if envelope.data is not None else []
        first = args[0] if args and isinstance(args[0], dict) else {}
        notify = first.get("notify") if isinstance(first.get("notify"), str) else None
        push_with_retry(lambda: self.queue.finish(envelope, notify=notify), "finishing a no-op job")

    def _run_job(self, envelope: Envelope, job: Job) -> None:
        taken_at = time.monotonic()
        self.current_job = job.id
        self.cancel.clear()
        self.abort_reason = None
        if self.stop_mode == "graceful":
            self._start_shutdown_timer()
        outbox = self.keys.outbox(self.id)
        woken = False  # the sender was woken by the finish transaction (queue_tail)
        try:
            attempt = 0
            begun = False
            clean = self.clean

            def begin() -> None:
                nonlocal attempt
                if not clean:
                    attempt = self.queue.start(envelope, now_iso(), job.id)
                    return
                # the sandbox is ready: job marked, attempt numbered, state `working`, `received` and
                # `started` queued in one round trip (docs/runner.md, "Benchmark")
                with self._state_lock:  # the heartbeat writes the state under this lock too
                    if self.state != "working":
                        self.state, self.state_since = "working", now_iso()
                    writes = self._state_writes()
                reports = [state_template(job.id, s, self.id) for s in ("received", "started")]
                attempt = self.queue.start(envelope, now_iso(), job.id, hash_writes=writes, reports=reports)

            def begin_once() -> None:
                """Clean sandbox: the job is marked once its build has its script (the executor's
                on_start), off the path from pickup to the build's start; at the latest before the build's
                first output reaches the log stream, which needs the attempt number."""
                nonlocal begun
                if begun:
                    return
                push_with_retry(begin, "marking the job as running")
                stream.attempt = attempt
                self.metrics.set_state("working")
                begun = True

            if not clean:
                # never expected (the loop resets first); the invariant must hold anyway: the old order
                push_with_retry(begin, "marking the job as running")
                begun = True
                self.set_state("working")
                received = state_entry(job.id, "received", self.id, attempt)
                push_with_retry(lambda: self.r.rpush(outbox, received), "queueing the received report")
                self.sender.notify()
                try:
                    with self.metrics.sandbox_reset():
                        self.executor.prepare()
                except SandboxError as exc:
                    self._sandbox_failed(envelope, job, exc)
                    return
                started = state_entry(job.id, "started", self.id, attempt)
                push_with_retry(lambda: self.r.rpush(outbox, started), "queueing the started report")
            self.clean = False  # from here on the build may touch the VM: reset after it
            # the sender delivers `received` and `started` once the build is under way (executor's on_start):
            # woken now, its HTTP requests would compete with the hand-over of the script for the GIL
            stream = LogStream(
                self.r,
                self.keys,
                self.id,
                job.id,
                self.sender.notify,
                attempt=attempt,  # 0 until begin_once() numbered it (clean sandbox)
                secrets=secure_values(job, self.cfg["git.base_url"]),
                flusher=self.log_flusher,
            )

            def on_start() -> None:
                begin_once()
                self.sender.notify()

            result = self._execute(job, stream, taken_at, on_start, begin_once)
            begin_once()  # an executor that failed before its on_start
            last_parts = stream.close()  # the last log parts and the final part, queued by _finish
            if self.abort_reason is not None:
                log.warning("job %s stopped and requeued: %s", job.id, self.abort_reason)
                if len(last_parts) > 1:  # the output of this run up to the stop, without a final part
                    push_with_retry(lambda: self.r.rpush(outbox, *last_parts[:-1]), "queueing the last parts")
                reason = self.abort_reason
                push_with_retry(
                    lambda: self.metrics.job_requeued(
                        "stop", self.queue.give_back(envelope, count_attempt=False, reason=reason)
                    ),
                    "requeueing the job",
                )
                return
            finished = state_entry(
                job.id, "finished", self.id, attempt, result=result.state, reason=result.reason
            )
            self._finish(envelope, [*last_parts, finished])
            woken = True
            self.metrics.job_finished(result.state, result.duration)
            log.info(
                "job %s finished: %s%s", job.id, result.state, f" ({result.reason})" if result.reason else ""
            )
        finally:
            if self._shutdown_timer is not None:
                self._shutdown_timer.cancel()
                self._shutdown_timer = None
            self.current_job = None
            if not woken:  # a second wake-up would cost the sender a look at the outbox after the tail
                self.sender.notify()
        if not self.clean and self.stop_mode is None:  # stopping: the next start-up resets it
            self.sender.wait_idle(TAIL_WAIT)  # the report tail first: the reset would compete with it
            self.reset_sandbox(f"after job {job.id}", state="idle")

    def _execute(
        self,
        job: Job,
        stream: LogStream,
        taken_at: float,
        on_start: Callable[[], None],
        before_output: Callable[[], None],
    ) -> Any:
        """Run the job's build; `on_start` goes to the executor, `before_output` runs before anything reaches
        the log stream."""
        from travis_worker.executor import BuildResult

        limits = Limits(
            hard_limit=float(job.timeouts.hard_limit or self.cfg["timeouts.hard_limit"]),
            log_silence=float(job.timeouts.log_silence or self.cfg["timeouts.log_silence"]),
            log_length=int(self.cfg["limits.log_length"]),
        )
        try:
            script = build_script(
                job, git_base_url=self.cfg["git.base_url"], clone_depth=self.cfg["git.clone_depth"]
            )
            first = True

            def write(data: bytes) -> None:
                nonlocal first
                if first:  # the build's first output: pickup -> start, for the benchmark (docs/runner.md)
                    first = False
                    before_output()
                    log.info(
                        "job %s: first build output %.2f s after it was taken",
                        job.id,
                        time.monotonic() - taken_at,
                    )
                stream.write(data)

            return self.executor.run(script, write, self.cancel, limits, on_start=on_start)
        except Exception as exc:  # the worker must survive whatever a build does
            log.exception("job %s: the executor failed", job.id)
            before_output()
            stream.write(f"\r\nThe worker could not run this job: {exc}\r\n".encode())
            return BuildResult("errored", f"worker error: {exc.__class__.__name__}: {exc}", None)

    def _finish(self, envelope: Envelope, entries: list[str]) -> None:
        """The finish transaction; the sender is woken at once, with the entries in memory when they are the
        whole outbox (no LRANGE before it delivers them)."""
        backoff = BACKOFF_START
        while True:
            try:
                queued = self.sender.queue_tail(entries, lambda: self.queue.finish(envelope, entries))
                if queued is None:
                    log.warning(
                        "job no longer in %s: finished before the connection broke, or reaped while we were "
                        "alive (then its next run reports)",
                        self.keys.processing(self.id),
                    )
                return
            except redis.RedisError as exc:
                log.warning("redis unavailable while finishing the job (%s); retrying in %.1fs", exc, backoff)
                time.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)

    def _sandbox_failed(self, envelope: Envelope, job: Job, exc: SandboxError) -> None:
        reason = f"sandbox reset failed: {exc}"
        log.error("job %s: %s; job goes back to the queue, worker is errored", job.id, reason)
        outcome = ""

        def give_back() -> None:
            nonlocal outcome
            outcome = self.queue.give_back(envelope, count_attempt=True, reason=reason)

        push_with_retry(give_back, "requeueing after a sandbox failure")
        self.metrics.job_requeued("sandbox", outcome)
        log.info("job %s %s", job.id, outcome)
        self.current_job = None
        self.set_state("errored")
        self._recover_sandbox()

    def _recover_sandbox(self) -> None:
        """Errored: take no job until the sandbox can be reset again (retried with backoff)."""
        delay = 5.0
        while self.stop_mode is None:
            self._sleep(delay)
            if self.stop_mode is not None:
                return
            try:
                with self.metrics.sandbox_reset():
                    self.executor.prepare()
            except SandboxError as exc:
                log.error("sandbox still broken: %s; next try in %.0fs", exc, min(delay * 2, 300))
                delay = min(delay * 2, 300)
                continue
            log.info("sandbox reset works again; taking jobs")
            self.clean = True
            self.set_state("idle")
            return

    def _sleep(self, seconds: float) -> None:
        """Sleep, but wake early when a stop was requested."""
        deadline = time.monotonic() + seconds
        while self.stop_mode is None and time.monotonic() < deadline:
            time.sleep(min(0.2, deadline - time.monotonic()))

    def _shutdown(self, threads: list[threading.Thread]) -> None:
        if not self.sender.drain(DRAIN_ON_EXIT):
            log.warning(
                "undelivered reports stay in %s; the next worker takes them over", self.keys.outbox(self.id)
            )
        self.threads_stop.set()
        self.sender.stop()
        close = getattr(self.executor, "close", None)  # e.g. the local build process spawned ahead
        if close is not None:
            close()
        for thread in threads:
            thread.join(timeout=2)
        try:
            clean = self.queue.unregister(self.vm)
            if not clean:
                log.warning("worker %s left reports or jobs behind; marked dead for the reaper", self.id)
        except redis.RedisError as exc:
            log.error("could not unregister (%s); the reaper will clean up %s", exc, self.id)
        self.metrics.stop()
        log.info("worker %s stopped (%s)", self.id, self.stop_mode)
