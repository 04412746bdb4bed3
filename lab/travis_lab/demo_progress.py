"""Visible progress for the lab demo: numbered steps with elapsed time and a heartbeat during long waits."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, TextIO


class StepFailed(RuntimeError):
    """A demo step failed; the message names the step and the remedy."""


class Progress:
    """`==> [n/total] step` lines, a heartbeat every `heartbeat` seconds while a step runs, and timings."""

    def __init__(self, total: int, out: TextIO | None = None, heartbeat: float = 15.0) -> None:
        self.total = total
        self.out = out or sys.stdout
        self.heartbeat = heartbeat
        self.started = time.monotonic()
        self.timings: list[tuple[str, float]] = []
        self._n = 0
        self._lock = threading.Lock()
        self._current = ""

    def say(self, line: str) -> None:
        with self._lock:
            self.out.write(line + "\n")
            self.out.flush()

    def detail(self, line: str) -> None:
        self.say(f"    {line}")

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        self._n += 1
        self._current = name
        t0 = time.monotonic()
        self.say(f"==> [{self._n}/{self.total}] {name}")
        stop = threading.Event()
        beat = threading.Thread(target=self._beat, args=(name, t0, stop), daemon=True)
        beat.start()
        try:
            yield
        except BaseException:
            stop.set()
            beat.join()
            self.say(f"==> [{self._n}/{self.total}] {name}: FAILED after {time.monotonic() - t0:.1f} s")
            raise
        stop.set()
        beat.join()
        took = time.monotonic() - t0
        self.timings.append((name, took))
        self.say(f"    done in {took:.1f} s (total {time.monotonic() - self.started:.0f} s)")

    def _beat(self, name: str, t0: float, stop: threading.Event) -> None:
        while not stop.wait(self.heartbeat):
            self.say(f"    ... still: {name} ({time.monotonic() - t0:.0f} s)")

    def summary(self) -> None:
        self.say("==> timings:")
        for name, took in self.timings:
            self.say(f"    {took:7.1f} s  {name}")
        self.say(f"    {time.monotonic() - self.started:7.1f} s  total")


def run_logged(
    argv: Sequence[str],
    log_path: Path,
    progress: Progress,
    *,
    show: Callable[[str], bool] | None = None,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    what: str,
    remedy: str,
) -> None:
    """Run argv, write all output to log_path, echo the lines `show` selects; raise StepFailed on rc != 0."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    tail: deque[str] = deque(maxlen=40)
    progress.detail(f"$ {' '.join(argv)}   (full log: {log_path})")
    with log_path.open("w", encoding="utf-8") as log:
        proc = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            log.flush()
            line = line.rstrip("\n")
            tail.append(line)
            if show is not None and show(line):
                progress.detail(line)
        rc = proc.wait()
    if rc != 0:
        for line in tail:
            progress.detail(f"| {line}")
        raise StepFailed(f"{what} failed (exit {rc}); full log: {log_path}. {remedy}")
