"""The rq side of the benchmark: a no-op job that can signal completion (same signal as ours)."""

from __future__ import annotations

import time

from rq import get_current_job


def noop(notify: str | None = None) -> None:
    if notify:
        job = get_current_job()
        assert job is not None
        job.connection.rpush(notify, repr(time.time()))
