"""Issue #13 "many boxes": every box of a fleet names its VMs worker-1..N on one Redis, so a VM's state in
`<ns>:travis:vm_state` is keyed `<host>:<vm>` (host = the first part of the worker id). Real redis-server;
in-process Workers whose ids name two hosts (as two boxes' runners would: `<hostname>:<pid>:<queue>`).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import redis
from travis_worker import cli
from travis_worker.config import load_config
from travis_worker.keys import Keys, host_of, vm_field
from travis_worker.queue import Queue, now_iso
from travis_worker.worker import Worker

K = Keys("resque")


def worker(tmp_path: Path, redis_url: str, worker_id: str, vm: str = "worker-1") -> Worker:
    """A Worker of box `host_of(worker_id)` serving `vm`; its executor is never called by these tests."""
    cfg = tmp_path / f"{worker_id.replace(':', '_')}.yml"
    cfg.write_text(f"redis:\n  url: {redis_url}\nheartbeat_interval: 0.2\nvm: {vm}\n")
    return Worker(load_config(str(cfg), environ={}), executor=SimpleNamespace(), worker_id=worker_id)  # type: ignore[arg-type]


def vm_doc(client: redis.Redis, field: str) -> dict[str, Any] | None:
    raw = client.hget(K.vm_state, field)
    return None if raw is None else json.loads(raw)


def test_keys_name_the_host() -> None:
    assert host_of("box-a:4711:builds") == "box-a"
    assert vm_field("box-a", "worker-1") == "box-a:worker-1"


def test_two_boxes_with_the_same_vm_name_keep_two_entries(
    client: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    a = worker(tmp_path, redis_url, "box-a:11:builds")
    b = worker(tmp_path, redis_url, "box-b:22:builds")
    a.current_job = 4711
    a.set_state("working")
    b.set_state("idle")  # box-b's worker-1 writes after box-a's: it must not hide box-a's running job
    doc_a = vm_doc(client, "box-a:worker-1")
    assert doc_a is not None and (doc_a["state"], doc_a["job_id"], doc_a["vm"], doc_a["worker"]) == (
        "working",
        4711,
        "worker-1",
        "box-a:11:builds",
    )
    doc_b = vm_doc(client, "box-b:worker-1")
    assert doc_b is not None and (doc_b["state"], doc_b["job_id"], doc_b["worker"]) == (
        "idle",
        None,
        "box-b:22:builds",
    )
    assert sorted(client.hkeys(K.vm_state)) == ["box-a:worker-1", "box-b:worker-1"]


def test_the_reaper_removes_only_the_dead_boxes_vm_entry(
    client: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    a = worker(tmp_path, redis_url, "box-a:11:builds")
    b = worker(tmp_path, redis_url, "box-b:22:builds")
    for w in (a, b):
        w.queue.register()
    a.current_job = 4711
    a.set_state("working")
    b.set_state("idle")
    client.hset(K.heartbeat, b.id, now_iso(0))  # box-b's runner died long ago
    reaper = Queue(client, K, "builds", "box-c:33:builds", 3)
    assert reaper.reap(dead_after=5) == {b.id: []}
    assert vm_doc(client, "box-b:worker-1") is None
    doc_a = vm_doc(client, "box-a:worker-1")
    assert doc_a is not None and (doc_a["state"], doc_a["job_id"]) == ("working", 4711)


def test_the_reaper_leaves_a_vm_entry_another_worker_of_the_same_box_took_over(
    client: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    old = worker(tmp_path, redis_url, "box-a:11:builds")
    old.queue.register()
    old.set_state("idle")
    new = worker(tmp_path, redis_url, "box-a:12:builds")  # the unit restarted: a new pid on the same VM
    new.queue.register()
    new.set_state("idle")
    client.hset(K.heartbeat, old.id, now_iso(0))
    assert Queue(client, K, "builds", "box-b:33:builds", 3).reap(dead_after=5) == {old.id: []}
    doc = vm_doc(client, "box-a:worker-1")
    assert doc is not None and doc["worker"] == new.id


def test_start_up_removes_this_boxs_old_form_entry_only(
    client: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    """Entries of the old form (field = the VM name) are left by runners before this change; a runner removes
    its own box's (the entry's "worker" names its host) and leaves another box's to that box."""
    client.hset(K.vm_state, "worker-1", json.dumps({"state": "idle", "worker": "box-a:9:builds"}))
    client.hset(K.vm_state, "worker-2", json.dumps({"state": "working", "worker": "box-b:8:builds"}))
    client.hset(K.vm_state, "worker-3", "not json")
    assert Queue(client, K, "builds", "box-a:11:builds", 3).drop_legacy_vm_state("worker-1") is True
    assert Queue(client, K, "builds", "box-a:11:builds", 3).drop_legacy_vm_state("worker-2") is False
    assert Queue(client, K, "builds", "box-a:11:builds", 3).drop_legacy_vm_state("worker-3") is False
    assert sorted(client.hkeys(K.vm_state)) == ["worker-2", "worker-3"]


def test_status_local_lists_only_this_boxs_workers(
    client: redis.Redis, redis_url: str, tmp_path: Path, monkeypatch: Any, capsys: Any
) -> None:
    """`status` is the fleet's view (every box's workers, with their host); `status --local` is this box's,
    which the playbooks read (workers.yml status, the base_box convergence wait)."""
    a = worker(tmp_path, redis_url, "box-a:11:builds")
    b = worker(tmp_path, redis_url, "box-b:22:builds")
    for w in (a, b):
        w.queue.register()
        w.set_state("idle")
    monkeypatch.setattr("socket.gethostname", lambda: "box-b")
    cfg = tmp_path / "cli.yml"
    cfg.write_text(f"redis:\n  url: {redis_url}\n")
    assert cli.main(["status", "--json", "--config", str(cfg)]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["id"], r["host"], r["vm"]) for r in rows] == [
        (a.id, "box-a", "worker-1"),
        (b.id, "box-b", "worker-1"),
    ]
    assert cli.main(["status", "--json", "--local", "--config", str(cfg)]) == 0
    assert [r["id"] for r in json.loads(capsys.readouterr().out)] == [b.id]
