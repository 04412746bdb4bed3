"""Prometheus metrics of one worker process (``prometheus_client``), served on a port and/or written to a
textfile for node_exporter's textfile collector. Off unless ``metrics.port`` or ``metrics.textfile`` is set.

Every worker process has its own registry (no global state). Names and meanings are listed in docs/runner.md.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any, Optional

from prometheus_client import CollectorRegistry, Counter, Enum, Gauge, Histogram, Info, write_to_textfile
from prometheus_client.exposition import start_http_server

log = logging.getLogger(__name__)

STATES = ("starting", "idle", "working", "paused", "errored", "stopped")
RESULTS = ("passed", "failed", "errored", "cancelled")
BUILD_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, float("inf"))
RESET_BUCKETS = (0.01, 0.1, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, float("inf"))


def instance_port(base: int, vm: Optional[str], prefix: str) -> int:
    """The port of this worker: ``base`` for VM ``<prefix>1`` (or no VM), ``base + N - 1`` for ``<prefix>N``,
    so the instances of one box (travis-worker@<vm>, same worker.yml) do not collide."""
    if vm and vm.startswith(prefix) and vm[len(prefix) :].isdigit():
        return base + max(int(vm[len(prefix) :]) - 1, 0)
    return base


def instance_textfile(path: str, vm: Optional[str]) -> str:
    """``{vm}`` in ``metrics.textfile`` becomes the VM's name (``local`` without a VM)."""
    return path.replace("{vm}", vm or "local")


class Metrics:
    """The worker's counters, histograms and gauges; ``export()`` writes the textfile (when set)."""

    def __init__(
        self,
        worker_id: str,
        queue: str,
        vm: Optional[str] = None,
        *,
        port: Optional[int] = None,
        address: str = "0.0.0.0",
        textfile: Optional[str] = None,
    ) -> None:
        self.port = port
        self.address = address
        self.textfile = textfile
        self.registry = CollectorRegistry()
        reg = self.registry
        self.taken = Counter("travis_worker_jobs_taken", "Jobs this worker took from the queue", registry=reg)
        self.finished = Counter(
            "travis_worker_jobs_finished", "Jobs this worker finished, by result", ["result"], registry=reg
        )
        for result in RESULTS:
            self.finished.labels(result)
        self.requeued = Counter(
            "travis_worker_jobs_requeued",
            "Jobs this worker put back at the head of a queue (reason: stop, sandbox, reaped)",
            ["reason"],
            registry=reg,
        )
        for reason in ("stop", "sandbox", "reaped"):
            self.requeued.labels(reason)
        self.failed = Counter(
            "travis_worker_jobs_failed",
            "Jobs this worker moved to the failed list (exception: PayloadError, MaxAttemptsExceeded)",
            ["exception"],
            registry=reg,
        )
        for exception in ("PayloadError", "MaxAttemptsExceeded"):
            self.failed.labels(exception)
        self.build_duration = Histogram(
            "travis_worker_build_duration_seconds",
            "Run time of the build script (hand-over to exit: clone, checkout, the job's phases)",
            buckets=BUILD_BUCKETS,
            registry=reg,
        )
        self.reset_duration = Histogram(
            "travis_worker_sandbox_reset_duration_seconds",
            "Time of the sandbox reset before a job (executor prepare)",
            buckets=RESET_BUCKETS,
            registry=reg,
        )
        self._last_beat = time.monotonic()
        heartbeat = Gauge(
            "travis_worker_heartbeat_age_seconds",
            "Seconds since this worker last wrote its heartbeat to Redis",
            registry=reg,
        )
        heartbeat.set_function(lambda: time.monotonic() - self._last_beat)
        self.state = Enum("travis_worker_state", "Worker state", states=list(STATES), registry=reg)
        Info("travis_worker", "This worker process", registry=reg).info(
            {"worker": worker_id, "queue": queue, "vm": vm or ""}
        )
        self._write_lock = threading.Lock()
        self._server: Any = None

    @classmethod
    def from_config(cls, cfg: Any, worker_id: str) -> Metrics:
        port = cfg["metrics.port"]
        textfile = cfg["metrics.textfile"]
        return cls(
            worker_id,
            cfg["queue"],
            cfg["vm"],
            port=instance_port(port, cfg["vm"], cfg["vms.name_prefix"]) if port else None,
            address=cfg["metrics.address"],
            textfile=instance_textfile(textfile, cfg["vm"]) if textfile else None,
        )

    # -- exposure ------------------------------------------------------------------------------------
    def start(self) -> None:
        """Serve /metrics on the port (a daemon thread) and write the textfile, when configured."""
        if self.port:
            try:
                self._server, _thread = start_http_server(
                    self.port, addr=self.address, registry=self.registry
                )
            except OSError as exc:
                raise ValueError(
                    f"metrics.port: cannot listen on {self.address}:{self.port}: {exc.strerror or exc}"
                ) from exc
            log.info("metrics on http://%s:%d/metrics", self.address, self.port)
        if self.textfile:
            log.info("metrics written to %s", self.textfile)
        self.export()

    def stop(self) -> None:
        self.set_state("stopped")
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def export(self) -> None:
        """Rewrite the textfile atomically (temp file + rename); never raises."""
        if not self.textfile:
            return
        try:
            with self._write_lock:
                write_to_textfile(self.textfile, self.registry)
        except OSError as exc:
            log.warning("metrics textfile %s not written: %s", self.textfile, exc)

    # -- events (one call per hook in the worker) -----------------------------------------------------
    def beat(self) -> None:
        self._last_beat = time.monotonic()
        self.export()

    def set_state(self, state: str) -> None:
        self.state.state(state if state in STATES else "errored")
        self.export()

    def job_finished(self, result: str, build_seconds: Optional[float]) -> None:
        self.finished.labels(result).inc()
        if build_seconds is not None:
            self.build_duration.observe(build_seconds)
        self.export()

    def job_requeued(self, reason: str, outcome: str = "requeued") -> None:
        """A job given back: ``outcome`` as returned by the queue (requeued / failed / gone)."""
        if outcome == "requeued":
            self.requeued.labels(reason).inc()
        elif outcome == "failed":
            self.failed.labels("MaxAttemptsExceeded").inc()

    def reaped(self, outcomes: dict[str, list[str]]) -> None:
        for results in outcomes.values():
            for outcome in results:
                self.job_requeued("reaped", outcome)

    @contextlib.contextmanager
    def sandbox_reset(self) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            self.reset_duration.observe(time.monotonic() - started)
