"""worker_service on a real systemd LXC box container with the real runner and a real redis-server:
a stop during a running job waits for it; timeout + force_after requeues the job (visible in Redis)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
BRIDGE_IP = "10.0.3.1"  # lxcbr0 on the host: the container reaches a redis-server bound there
NS = "twt"  # the runner's Redis namespace in this test
log = logging.getLogger(__name__)

UNIT = """[Unit]
Description=travis-worker build runner for VM %i (twt test unit, same stop semantics as roles/worker)
PartOf=travis-worker.target

[Service]
Type=exec
Environment=VM=%i
Environment=PYTHONPATH=/opt/twt-runner/src
Environment=PYTHONUNBUFFERED=1
ExecStart=/usr/bin/python3 -m travis_worker run --config /etc/travis-worker/worker.yml
KillSignal=SIGTERM
KillMode=mixed
TimeoutStopSec=3700
Restart=on-failure
RestartSec=5

[Install]
WantedBy=travis-worker.target
"""
ROLE_TEMPLATES = ROOT / "roles" / "worker" / "templates"
VENV = "/opt/twt-venv"
TARGET = "[Unit]\nDescription=all travis-worker runners (twt)\n\n[Install]\nWantedBy=multi-user.target\n"


def production_units() -> tuple[str, str] | None:
    """The worker role's travis-worker@.service and target rendered for this box (root, a venv), or None."""
    unit, target = ROLE_TEMPLATES / "travis-worker@.service.j2", ROLE_TEMPLATES / "travis-worker.target.j2"
    if not (unit.is_file() and target.is_file()):
        return None
    import jinja2

    env = jinja2.Environment(trim_blocks=True, keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
    values = {
        "ansible_managed": "Ansible managed (rendered by tests/integration/test_worker_service.py)",
        "worker_config_dir": "/etc/travis-worker",
        "worker_unit_after": [],
        "worker_user": "root",
        "worker_group": "root",
        "worker_vm_provider": "local",
        "worker_user_home": "/root",
        "worker_venv": VENV,
        "worker_shutdown_timeout": 3600,
        "worker_stop_margin": 60,
        "worker_unit_service_extra": [],
    }
    return env.from_string(unit.read_text()).render(values), env.from_string(target.read_text()).render(
        values
    )


def wait_for(predicate, timeout: float, what: str, step: float = 0.3) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(step)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((BRIDGE_IP, 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def bridge_redis() -> Iterator[tuple[str, Any]]:
    """A redis-server bound to the lxcbr0 address, so the runner in the box container reaches it (the lab's
    session `redis_server` listens on 127.0.0.1 only)."""
    redis = pytest.importorskip("redis")
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    lab_net = pytest.importorskip("travis_lab.net")
    lab_net.ensure_bridge(lab_net.BRIDGE)
    port = free_port()
    proc = subprocess.Popen(
        [
            "redis-server",
            "--bind",
            BRIDGE_IP,
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(host=BRIDGE_IP, port=port, decode_responses=True)
    try:
        wait_for(lambda: _ping(client), 20, "redis-server to answer")
        yield f"redis://{BRIDGE_IP}:{port}/0", client
    finally:
        proc.terminate()
        proc.wait(20)


def _ping(client: Any) -> bool:
    try:
        return bool(client.ping())
    except Exception:
        return False


@pytest.fixture(scope="module")
def worker_box(bridge_redis: tuple[str, Any]) -> Iterator[Any]:
    """A systemd box container: runner source, its Python deps from Debian, a git repo, the unit."""
    container = pytest.importorskip("travis_lab.container")
    boxbuild = pytest.importorskip("travis_lab.boxbuild")
    url, _ = bridge_redis
    box = container.create_container(f"twt-ws-{uuid.uuid4().hex[:6]}", boxbuild.ensure_box().rootfs)
    try:
        t0 = time.monotonic()
        box.run(
            "apt-get update -q && apt-get install -y -q --no-install-recommends git python3-redis "
            "python3-yaml python3-requests python3-prometheus-client python3-venv python3-setuptools "
            "python3-wheel",
            timeout=900,
        )
        log.info("apt-get install in %s: %.1f s", box.name, time.monotonic() - t0)
        rootfs = box.lxc_path / box.name / "rootfs"
        shutil.copytree(
            ROOT / "runner",
            rootfs / "opt/twt-runner",
            ignore=shutil.ignore_patterns("*.egg-info", "__pycache__", "tests", "build"),
        )
        (rootfs / "etc/travis-worker").mkdir(parents=True)
        (rootfs / "etc/travis-worker/worker.yml").write_text(
            json.dumps(
                {
                    "redis": {"url": url, "namespace": NS},
                    "queue": "builds",
                    "heartbeat_interval": 1,
                    "shutdown_timeout": 3600,
                }
            )
        )
        units = production_units()
        if (
            units
        ):  # the role's unit runs `<venv>/bin/travis-worker run`: install the runner like the role does
            box.run(
                f"python3 -m venv --system-site-packages {VENV} && "
                f"{VENV}/bin/pip install -q --no-deps --no-build-isolation --no-index /opt/twt-runner",
                timeout=600,
            )
        unit, target = units or (UNIT, TARGET)
        log.info(
            "unit: %s", "roles/worker/templates/travis-worker@.service.j2" if units else "the test's own"
        )
        (rootfs / "etc/systemd/system/travis-worker@.service").write_text(unit)
        (rootfs / "etc/systemd/system/travis-worker.target").write_text(target)
        box.run("systemctl daemon-reload")
        commit = box.run(
            "git init -q -b master /srv/repo && cd /srv/repo && "
            "git -c user.name=twt -c user.email=twt@example.invalid commit -q --allow-empty -m initial && "
            "git rev-parse HEAD"
        ).stdout.strip()
        box.commit = commit
        yield box
    finally:
        container.destroy_container(box.name)


def run_task(box: Any, module: str, args: dict[str, Any], check: bool = False, diff: bool = False) -> dict:
    """Run travis.worker.<module> on the box container over SSH with the `ansible` CLI; return its result."""
    work = Path(tempfile.mkdtemp(prefix="twt-ws-ansible-"))
    try:
        inventory = work / "hosts"
        inventory.write_text(box.inventory())
        argv = [
            str(BIN / "ansible"),
            box.name,
            "-i",
            str(inventory),
            "-m",
            f"travis.worker.{module}",
            "-a",
            json.dumps(args),
            "--tree",
            str(work / "tree"),
        ]
        if check:
            argv.append("--check")
        if diff:
            argv.append("--diff")
        env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg")}
        proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        try:
            result = json.loads((work / "tree" / box.name).read_text())
        except (OSError, ValueError):
            pytest.fail(f"ansible wrote no result (rc {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if proc.returncode != 0:  # the tree callback leaves `failed` out of the saved result
        result.setdefault("failed", True)
    return result


def job(box: Any, job_id: int, script: str) -> str:
    payload = {
        "repository": {"slug": "twt/repo", "source_url": "/srv/repo"},
        "job": {"id": job_id, "number": f"1.{job_id}", "commit": box.commit, "branch": "master"},
        "config": {"script": script},
    }
    return json.dumps({"class": "Travis::Worker", "args": [payload]})


def is_active(box: Any) -> str:
    return box.run("systemctl is-active travis-worker@worker-1.service", check=False).stdout.strip()


def vm_state(client: Any, host: str, vm: str) -> dict[str, Any]:
    """The runner's document for VM `vm` of box `host` (field `<host>:<vm>`, host = the box's `uname -n`)."""
    raw = client.hget(f"{NS}:travis:vm_state", f"{host}:{vm}")
    return json.loads(raw) if raw else {}


def start_worker_with_job(box: Any, client: Any, job_id: int, script: str) -> None:
    client.delete(f"{NS}:queue:builds")
    box.run("systemctl start travis-worker@worker-1.service")
    host = box.run("uname -n").stdout.strip()
    wait_for(lambda: vm_state(client, host, "worker-1").get("state") == "idle", 60, "worker-1 idle in Redis")
    client.sadd(f"{NS}:queues", "builds")
    client.rpush(f"{NS}:queue:builds", job(box, job_id, script))
    wait_for(
        lambda: vm_state(client, host, "worker-1").get("job_id") == job_id,
        60,
        f"worker-1 working on job {job_id}",
    )


def test_stop_waits_for_the_running_job(worker_box: Any, bridge_redis: tuple[str, Any]) -> None:
    url, client = bridge_redis
    box = worker_box
    start_worker_with_job(box, client, 101, "sleep 45 && touch /root/twt-job-101-done")
    args = {
        "name": "worker-1",
        "state": "stopped",
        "timeout": 300,
        "poll_interval": 0.5,
        "redis_url": url,
        "namespace": NS,
    }

    predicted = run_task(box, "worker_service", args, check=True, diff=True)
    assert predicted["changed"] is True and predicted.get("failed") is not True, predicted
    assert predicted["state_source"] == "redis"
    assert predicted["workers"][0]["busy"] is True and predicted["workers"][0]["job_id"] == "101"
    assert is_active(box) == "active"

    t0 = time.monotonic()
    result = run_task(box, "worker_service", args, diff=True)
    took = time.monotonic() - t0
    assert result.get("failed") is not True, result
    (worker,) = result["workers"]
    log.info("graceful stop during job 101: waited %.1f s (task %.1f s)", worker["waited"], took)
    assert worker["previous_state"] == "active" and worker["state"] == "inactive"
    assert worker["busy"] is True and worker["job_id"] == "101"
    assert worker["waited"] >= 3, "the stop did not wait for the running job"
    assert worker["forced"] is False and worker["requeued"] is False
    assert box.run("test -e /root/twt-job-101-done", check=False).returncode == 0, "job 101 did not finish"
    assert client.llen(f"{NS}:queue:builds") == 0
    assert is_active(box) == "inactive"

    again = run_task(box, "worker_service", args)
    assert again["changed"] is False and again["workers"][0]["waited"] == 0


def test_timeout_force_after_requeues_the_job(worker_box: Any, bridge_redis: tuple[str, Any]) -> None:
    url, client = bridge_redis
    box = worker_box
    started = run_task(box, "worker_service", {"name": "worker-1", "state": "started"})
    assert started["changed"] is True and started["workers"][0]["state"] == "active"
    box.run("systemctl stop travis-worker@worker-1.service")
    start_worker_with_job(box, client, 202, "sleep 600")
    args = {
        "name": ["all"],
        "state": "stopped",
        "timeout": 120,
        "force_after": 4,
        "poll_interval": 0.5,
        "redis_url": url,
        "namespace": NS,
    }
    result = run_task(box, "worker_service", args)
    assert result.get("failed") is not True, result
    (worker,) = result["workers"]
    log.info("forced stop of job 202 after force_after=4: waited %.1f s", worker["waited"])
    assert worker["name"] == "worker-1" and worker["state"] == "inactive"
    assert worker["busy"] is True and worker["forced"] is True and worker["requeued"] is True
    assert worker["requeued_to"] == "builds"
    assert 4 <= worker["waited"] < 120
    queued = [json.loads(raw) for raw in client.lrange(f"{NS}:queue:builds", 0, -1)]
    assert [q["args"][0]["job"]["id"] for q in queued] == [202], f"job 202 not requeued: {queued}"


def test_drain_timeout_fails_and_names_the_job(worker_box: Any, bridge_redis: tuple[str, Any]) -> None:
    url, client = bridge_redis
    box = worker_box
    start_worker_with_job(box, client, 303, "sleep 600")
    args = {
        "name": "worker-1",
        "state": "drained",
        "timeout": 3,
        "poll_interval": 0.5,
        "redis_url": url,
        "namespace": NS,
    }
    result = run_task(box, "worker_service", args)
    assert result["failed"] is True
    assert "worker-1 (job 303)" in result["msg"] and "force_after" in result["msg"]
    assert "Traceback" not in json.dumps(result)
    # the graceful stop stays queued in systemd; requeue the job so the container can be torn down quickly
    box.run("systemctl kill --signal=SIGQUIT --kill-who=main travis-worker@worker-1.service")
    wait_for(lambda: is_active(box) in ("inactive", "failed"), 60, "worker-1 to stop after SIGQUIT")
