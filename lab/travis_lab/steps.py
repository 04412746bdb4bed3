"""Timed steps and subprocess calls that turn failures into `LabError`s."""

from __future__ import annotations

import contextlib
import logging
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from travis_lab.errors import LabError

log = logging.getLogger(__name__)


@contextlib.contextmanager
def timed(step: str, timings: dict[str, float] | None = None) -> Iterator[None]:
    """Log how long `step` took (also on failure) and record it in `timings`."""
    t0 = time.monotonic()
    log.info("step %s: started", step)
    ok = False
    try:
        yield
        ok = True
    finally:
        took = time.monotonic() - t0
        if timings is not None:
            timings[step] = round(took, 1)
        log.info("step %s: %s after %.1f s", step, "done" if ok else "FAILED", took)


def tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def run(
    argv: Sequence[str],
    step: str,
    remedy: str,
    *,
    logfile: Path | None = None,
    timeout: float | None = None,
    input_text: str | None = None,
    env: dict[str, str] | None = None,
) -> str:
    """Run `argv`; return stdout. Non-zero exit or a missing program raises `LabError` for `step`.

    With `logfile`, stdout+stderr go there (appended) and the error quotes its tail.
    """
    log.debug("run: %s", " ".join(argv))
    try:
        if logfile is not None:
            with logfile.open("a") as fh:
                fh.write(f"$ {' '.join(argv)}\n")
                fh.flush()
                proc = subprocess.run(
                    argv,
                    stdout=fh,
                    stderr=subprocess.STDOUT,
                    text=True,
                    timeout=timeout,
                    input=input_text,
                    env=env,
                    check=False,
                )
            output = logfile.read_text(errors="replace")
            out = ""
        else:
            proc = subprocess.run(
                argv, capture_output=True, text=True, timeout=timeout, input=input_text, env=env, check=False
            )
            output = (proc.stdout or "") + (proc.stderr or "")
            out = proc.stdout or ""
    except FileNotFoundError as exc:
        raise LabError(step, f"program not found: {argv[0]}", remedy) from exc
    except subprocess.TimeoutExpired as exc:
        raise LabError(step, f"`{' '.join(argv)}` timed out after {timeout} s", remedy) from exc
    if proc.returncode != 0:
        where = f" (full log: {logfile})" if logfile else ""
        raise LabError(
            step,
            f"`{' '.join(argv)}` exited {proc.returncode}{where}:\n{tail(output)}",
            remedy,
        )
    return out
