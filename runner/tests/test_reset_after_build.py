"""Issue #13: the worker resets its sandbox AFTER each build and at start-up (not between pickup and build),
switches an idle VM when a new image is published, and reports the image it runs.

In-process Worker on a real redis-server, with the real local executor wrapped to record the order of
prepare() and run() (and to inject a failing reset); the Vagrant side is in test_executor_vagrant.py.
"""

from __future__ import annotations

import json
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest
import redis
from harness import finished, job_json, reports, wait_for
from travis_worker import cli
from travis_worker import worker as worker_module
from travis_worker.config import load_config
from travis_worker.executor import SandboxError
from travis_worker.executor_local import LocalExecutor
from travis_worker.images import Image
from travis_worker.keys import Keys, host_of, vm_field
from travis_worker.worker import Worker

DIGEST = "a1fce4363854ff888cff4b8e7875d600c2682390412a8cf79b37d0b11148b0fa"
IMAGE = Image("travis/worker-base", "20261202.041500", DIGEST, "lxc", Path("/nonexistent"))


class Recording:
    """The local executor, with every prepare()/run() recorded; prepare number N in ``fail`` raises."""

    def __init__(self, root: Path, fail: tuple[int, ...] = ()) -> None:
        root.mkdir(exist_ok=True)
        self.inner = LocalExecutor(work_root=str(root))
        self.events: list[tuple[str, float]] = []
        self.fail = fail
        self.prepares = 0
        self.image: Image | None = None
        self.due = False
        self.lock = threading.Lock()

    def prepare(self) -> None:
        self.prepares += 1
        self.events.append(("prepare", time.monotonic()))
        if self.prepares in self.fail:
            raise SandboxError(f"injected reset failure #{self.prepares}")
        self.inner.prepare()
        if self.due:  # the switch the idle worker asked for
            self.due, self.image = False, IMAGE

    def run(self, *args: Any, **kwargs: Any) -> Any:
        self.events.append(("run", time.monotonic()))
        return self.inner.run(*args, **kwargs)

    def switch_due(self) -> bool:
        return self.due

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.events]


@pytest.fixture()
def run_worker(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., tuple[Worker, threading.Thread]]]:
    """start(executor) -> (worker, thread running worker.run()); stopped (immediate) after the test."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(signal, "signal", lambda *a: None)  # run() off the main thread: no handlers
    started: list[tuple[Worker, threading.Thread]] = []

    def start(executor: Recording) -> tuple[Worker, threading.Thread]:
        cfg_path = tmp_path / "worker.yml"
        cfg_path.write_text(f"redis:\n  url: {redis_url}\nheartbeat_interval: 0.2\nvm: worker-1\n")
        worker = Worker(load_config(str(cfg_path), environ={}), executor=executor)  # type: ignore[arg-type]
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        started.append((worker, thread))
        return worker, thread

    yield start
    for worker, thread in started:
        worker.request_stop("immediate")
        thread.join(20)


def push(client: redis.Redis, raw: str) -> None:
    client.rpush("resque:queue:builds", raw)


def state_doc(client: redis.Redis, worker: Worker) -> dict:
    return json.loads(client.hget(Keys("resque").worker_state, worker.id) or "{}")


def results(client: redis.Redis) -> dict[int, str]:
    return {job: entries[-1]["result"] for job, entries in finished(client).items()}


def test_reset_runs_at_start_up_and_after_each_build_never_between_pickup_and_build(
    client: redis.Redis, run_worker: Callable, tmp_path: Path, repo: tuple[str, str]
) -> None:
    executor = Recording(tmp_path / "builds")
    worker, _ = run_worker(executor)
    wait_for(lambda: executor.kinds() == ["prepare"], 10, "the start-up reset")
    push(client, job_json(1, repo, "true"))
    push(client, job_json(2, repo, "false"))
    wait_for(lambda: {1, 2} <= finished(client).keys(), 30, "two builds")
    wait_for(lambda: executor.kinds().count("prepare") == 3, 10, "the reset after the second build")
    assert executor.kinds() == ["prepare", "run", "prepare", "run", "prepare"]
    assert results(client) == {1: "passed", 2: "failed"}
    wait_for(lambda: worker.state == "idle", 5, "idle")


def test_pickup_to_build_start_has_no_reset_on_it(
    client: redis.Redis,
    run_worker: Callable,
    tmp_path: Path,
    repo: tuple[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    executor = Recording(tmp_path / "builds")
    slow = executor.inner.prepare

    def slow_prepare() -> None:  # a 2 s reset: on the pickup path it would show in pickup -> start
        slow()
        time.sleep(2)

    executor.inner.prepare = slow_prepare  # type: ignore[method-assign]
    caplog.set_level("INFO", logger="travis_worker.worker")
    run_worker(executor)
    wait_for(lambda: executor.prepares == 1 and len(executor.events) == 1, 10, "start-up reset")
    time.sleep(2.2)  # the start-up reset is done: the worker is idle with a clean sandbox
    push(client, job_json(1, repo, "true"))
    wait_for(lambda: 1 in finished(client), 30, "the build")
    line = next(r.getMessage() for r in caplog.records if "first build output" in r.getMessage())
    seconds = float(line.split("first build output ")[1].split(" s")[0])
    print("pickup -> first build output:", seconds, "s")
    assert seconds < 2.0, line


def test_a_failed_reset_after_a_build_makes_the_worker_errored_and_takes_no_job_until_one_works(
    client: redis.Redis, run_worker: Callable, tmp_path: Path, repo: tuple[str, str]
) -> None:
    executor = Recording(tmp_path / "builds", fail=(2,))
    worker, _ = run_worker(executor)
    push(client, job_json(1, repo, "true"))
    wait_for(lambda: worker.state == "errored", 20, "errored after the failed reset")
    # written right after the in-memory state: a read at once may see the write before it
    wait_for(lambda: state_doc(client, worker).get("state") == "errored", 5, "errored in redis")
    push(client, job_json(2, repo, "true"))
    time.sleep(1)
    assert client.llen("resque:queue:builds") == 1  # not taken while errored
    wait_for(lambda: 2 in finished(client), 30, "job 2 after the reset works again (recovery after 5 s)")
    assert executor.kinds()[:5] == ["prepare", "run", "prepare", "prepare", "run"]
    assert results(client) == {1: "passed", 2: "passed"}


def test_start_up_reset_failure_takes_no_job(
    client: redis.Redis, run_worker: Callable, tmp_path: Path, repo: tuple[str, str]
) -> None:
    executor = Recording(tmp_path / "builds", fail=(1, 2, 3))
    worker, _ = run_worker(executor)
    push(client, job_json(1, repo, "true"))
    wait_for(lambda: worker.state == "errored", 10, "errored at start-up")
    time.sleep(1)
    assert client.llen("resque:queue:builds") == 1 and "run" not in executor.kinds()
    head = json.loads(client.lindex("resque:queue:builds", 0))
    assert head.get("attempts", 0) == 0  # the job was never taken: no attempt counted


def test_idle_worker_switches_when_a_new_image_is_published_and_reports_it(
    client: redis.Redis,
    run_worker: Callable,
    tmp_path: Path,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(worker_module, "SWITCH_CHECK", 0.2)
    executor = Recording(tmp_path / "builds")
    worker, _ = run_worker(executor)
    wait_for(lambda: worker.state == "idle" and executor.prepares == 1, 10, "idle")
    wait_for(lambda: state_doc(client, worker).get("state") == "idle", 5, "idle in redis")
    assert state_doc(client, worker)["image"] is None
    executor.due = True  # `current` moved: no job arrives, the idle worker switches by itself
    wait_for(lambda: executor.prepares == 2, 5, "the idle switch")
    expected = {"version": "20261202.041500", "digest": DIGEST}
    wait_for(lambda: state_doc(client, worker).get("image") == expected, 5, "image in worker_state")
    vm_doc = json.loads(client.hget(Keys("resque").vm_state, vm_field(host_of(worker.id), "worker-1")))
    assert vm_doc["image"] == expected and vm_doc["worker"] == worker.id
    cfg = tmp_path / "cli.yml"
    cfg.write_text(f"redis:\n  url: {redis_url}\n")
    assert cli.main(["status", "--json", "--config", str(cfg)]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["id"], r["image"]) for r in rows] == [(worker.id, expected)]
    assert cli.main(["status", "--config", str(cfg)]) == 0
    assert f"20261202.041500 ({DIGEST[:12]})" in capsys.readouterr().out
    time.sleep(0.6)
    assert executor.prepares == 2  # not due any more: no further resets while idle


def record_redis_sends(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, bytes]]:
    """Every command a redis-py connection sends from now on, as (thread id, the bytes on the wire)."""
    sends: list[tuple[int, bytes]] = []
    original = redis.connection.Connection.send_packed_command

    def recording(self: Any, command: Any, *args: Any, **kwargs: Any) -> Any:
        data = command if isinstance(command, bytes) else b"".join(bytes(c) for c in command)
        sends.append((threading.get_ident(), data))
        return original(self, command, *args, **kwargs)

    monkeypatch.setattr(redis.connection.Connection, "send_packed_command", recording)
    return sends


def commands_of(sends: list[tuple[int, bytes]], ident: int | None) -> list[bytes]:
    """The sends of thread `ident`, without the handshake of a connection the pool opened on the way (once per
    connection, not per job: HELLO, CLIENT SETINFO, ...)."""
    handshake = (b"HELLO", b"PING", b"CLIENT", b"AUTH", b"SELECT")
    return [
        data
        for thread, data in list(sends)
        if thread == ident and not data.split(b"\r\n")[2].upper().startswith(handshake)
    ]


def test_a_clean_sandbox_job_costs_no_redis_round_trip_between_pickup_and_build(
    client: redis.Redis,
    run_worker: Callable,
    tmp_path: Path,
    repo: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue #10 round 2: with the sandbox reset before pickup, marking the job, numbering the attempt, the
    state `working` and the `received`/`started` reports are one Lua script: one round trip of the worker's
    thread between the BLMOVE that took the job and the build's start (it was 4: MULTI, state, 2 RPUSH).
    Round 5: none; that script runs once the build has its script (the executor's on_start), before any of
    its output reaches the log."""
    sends = record_redis_sends(monkeypatch)
    executor = Recording(tmp_path / "builds")
    sent_at_run: list[int] = []
    run = executor.run

    def counting_run(*args: Any, **kwargs: Any) -> Any:
        sent_at_run.append(len(sends))
        return run(*args, **kwargs)

    executor.run = counting_run  # type: ignore[method-assign]
    worker, thread = run_worker(executor)
    wait_for(lambda: worker.state == "idle" and executor.prepares == 1, 10, "the start-up reset")
    push(client, job_json(1, repo, "echo hello"))
    wait_for(lambda: 1 in finished(client), 30, "the build")
    mine = commands_of(sends[: sent_at_run[0]], thread.ident)
    taken = max(i for i, data in enumerate(mine) if b"BLMOVE" in data)
    assert mine[taken + 1 :] == []
    after = commands_of(sends[sent_at_run[0] :], thread.ident)
    assert b"EVAL" in after[0] and b'"state": "received"' in after[0], after[:2]
    wait_for(lambda: any(r.get("state") == "finished" for r in reports(client)), 10, "finished delivered")
    states = [(r["state"], r["attempt"], r["worker"]) for r in reports(client) if "state" in r]
    assert states == [(s, 1, worker.id) for s in ("received", "started", "finished")]
    parts = [r for r in reports(client) if "log" in r]
    assert parts and all(r["attempt"] == 1 for r in parts), parts
    assert "hello" in "".join(r["log"] for r in parts)


@pytest.mark.parametrize("fails_before_on_start", [True, False], ids=["raises", "writes-then-starts"])
def test_the_job_is_marked_before_its_first_output_whatever_the_executor_does(
    client: redis.Redis,
    run_worker: Callable,
    tmp_path: Path,
    repo: tuple[str, str],
    fails_before_on_start: bool,
) -> None:
    """The start script runs in the executor's on_start; an executor that raises before it, or writes output
    before it, still gets `received`, `started` and its log parts with the attempt number, in that order."""
    executor = Recording(tmp_path / "builds")
    run = executor.inner.run

    def early(script: str, on_output: Any, cancel: Any, limits: Any, on_start: Any = None) -> Any:
        if fails_before_on_start:
            raise OSError("injected: the executor failed before the build started")
        on_output(b"a note before the build\r\n")
        return run(script, on_output, cancel, limits, on_start=on_start)

    executor.inner.run = early  # type: ignore[method-assign]
    worker, _ = run_worker(executor)
    wait_for(lambda: worker.state == "idle" and executor.prepares == 1, 10, "the start-up reset")
    push(client, job_json(1, repo, "true"))
    wait_for(lambda: 1 in finished(client), 30, "the build")
    wait_for(lambda: any(r.get("final") for r in reports(client)), 10, "the final part delivered")
    entries = reports(client)
    kinds = [r.get("state") or "log" for r in entries]
    assert kinds[:2] == ["received", "started"] and kinds[-1] == "finished", kinds
    assert all(r["attempt"] == 1 for r in entries), entries
    text = "".join(r.get("log", "") for r in entries)
    assert ("injected" in text) if fails_before_on_start else ("a note before the build" in text), text
    assert results(client) == {1: "errored" if fails_before_on_start else "passed"}


def test_log_parts_of_every_job_go_through_one_long_lived_thread(
    client: redis.Redis,
    run_worker: Callable,
    tmp_path: Path,
    repo: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue #10 round 2: no log-stream thread started per job; parts are still cut while a build runs."""
    started: list[str] = []
    original = threading.Thread.start

    def recording(self: threading.Thread) -> None:
        started.append(self.name)
        original(self)

    executor = Recording(tmp_path / "builds")
    worker, _ = run_worker(executor)
    wait_for(lambda: worker.state == "idle" and executor.prepares == 1, 10, "the start-up reset")
    monkeypatch.setattr(threading.Thread, "start", recording)
    for job_id in (1, 2):
        push(client, job_json(job_id, repo, "echo first; sleep 0.8; echo second"))
        wait_for(lambda n=job_id: n in finished(client), 30, f"build {job_id}")
    assert [name for name in started if name.startswith("log-")] == ["log-flusher"]  # started by job 1
    for job_id in (1, 2):
        parts = [r for r in reports(client) if r.get("job_id") == job_id and "number" in r]
        numbers = [p["number"] for p in parts if not p["final"]]
        assert len(numbers) >= 2, parts  # "first" flushed during the sleep, "second" after it
        assert numbers == list(range(1, len(numbers) + 1))


def test_the_report_tail_is_delivered_before_the_reset_after_the_build(
    client: redis.Redis, run_worker: Callable, tmp_path: Path, repo: tuple[str, str]
) -> None:
    """Issue #10 round 3: the reset after a build (for `local`: spawning the next build's process) waits for
    the sender to deliver the job's `finished` report (up to TAIL_WAIT), so the two do not compete."""
    seen: list[list[int]] = []

    class Watching(Recording):
        def prepare(self) -> None:
            seen.append(sorted(finished(client)))
            super().prepare()

    executor = Watching(tmp_path / "builds")
    run_worker(executor)
    wait_for(lambda: len(seen) == 1, 10, "the start-up reset")
    for job in (1, 2, 3):
        push(client, job_json(job, repo, "true"))
        wait_for(lambda job=job: len(seen) == job + 1, 30, f"the reset after build {job}")
    assert seen == [[], [1], [1, 2], [1, 2, 3]]


def test_the_sender_is_woken_only_once_the_build_has_its_script(
    client: redis.Redis, run_worker: Callable, tmp_path: Path, repo: tuple[str, str]
) -> None:
    """Issue #10 round 3: between taking a job and handing its script to the build's process the worker
    does not wake the report sender (its HTTP requests would compete for the GIL); on_start does."""
    executor = Recording(tmp_path / "builds")
    worker, _ = run_worker(executor)
    wait_for(lambda: executor.kinds() == ["prepare"], 10, "the start-up reset")
    notify = worker.sender.notify

    def recorded() -> None:
        executor.events.append(("notify", time.monotonic()))
        notify()

    worker.sender.notify = recorded  # type: ignore[method-assign]
    push(client, job_json(1, repo, "true"))
    wait_for(lambda: 1 in finished(client), 30, "the build")
    kinds = executor.kinds()
    assert kinds[:2] == ["prepare", "run"], kinds
    assert "notify" in kinds[2:], kinds


def test_the_report_tail_is_handed_to_the_sender_without_an_outbox_read(
    client: redis.Redis,
    run_worker: Callable,
    tmp_path: Path,
    repo: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue #10 item 5: the finish transaction finds the outbox holding only the job's tail and hands it to
    the sender in memory: between that transaction and the delivery of `finished` the sender's thread sends no
    LRANGE (it did one, a round trip, after being woken)."""
    sends = record_redis_sends(monkeypatch)
    executor = Recording(tmp_path / "builds")
    worker, thread = run_worker(executor)
    wait_for(lambda: worker.state == "idle" and executor.prepares == 1, 10, "the start-up reset")
    for job_id in (1, 2):
        push(client, job_json(job_id, repo, "true"))
        wait_for(lambda n=job_id: n in finished(client), 30, f"build {job_id}")
        wait_for(lambda: worker.state == "idle", 10, "the worker idle again")
    for job_id in (1, 2):
        mark = b'"state": "finished", "worker"'
        job = f'"job_id": {job_id}, "type": "state"'.encode()
        finish = next(
            i
            for i, (ident, data) in enumerate(sends)
            if ident == thread.ident and mark in data and job in data
        )
        sender = [data for ident, data in sends[finish + 1 :] if ident == worker.sender.ident]
        delivered = next(i for i, data in enumerate(sender) if mark in data and job in data)
        assert not [data for data in sender[:delivered] if b"LRANGE" in data], sender[: delivered + 1]


def test_after_a_build_the_worker_writes_idle_with_the_next_blmove_in_one_round_trip(
    client: redis.Redis,
    run_worker: Callable,
    tmp_path: Path,
    repo: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue #10 item 5: the reset after a build wrote the state document (`working`, with the image), then
    the main loop wrote `idle`: two round trips between a job's finish and the next BLMOVE. Round 4: one
    (the reset wrote `idle`). Round 5: none; `idle` goes out in the BLMOVE's own send (a pipeline)."""
    sends = record_redis_sends(monkeypatch)
    executor = Recording(tmp_path / "builds")
    worker, thread = run_worker(executor)
    wait_for(lambda: worker.state == "idle" and executor.prepares == 1, 10, "the start-up reset")
    push(client, job_json(1, repo, "true"))
    wait_for(lambda: 1 in finished(client), 30, "the build")
    wait_for(lambda: executor.prepares == 2, 10, "the reset after the build")
    mine = [data for ident, data in list(sends) if ident == thread.ident]
    wait_for(
        lambda: (
            sum(b"BLMOVE" in d for ident, d in list(sends) if ident == thread.ident)
            > sum(b"BLMOVE" in d for d in mine)
        ),
        10,
        "the next BLMOVE",
    )
    mine = commands_of(sends, thread.ident)
    finish = max(i for i, data in enumerate(mine) if b'"state": "finished"' in data)
    take = next(i for i in range(finish, len(mine)) if b"BLMOVE" in mine[i])
    assert mine[finish + 1 : take] == [], "a round trip between the finish transaction and the next take"
    assert b"worker_state" in mine[take] and b'"state": "idle"' in mine[take], mine[take]
    assert mine[take].index(b"worker_state") < mine[take].index(b"BLMOVE")
    wait_for(lambda: state_doc(client, worker).get("state") == "idle", 5, "idle in redis")
