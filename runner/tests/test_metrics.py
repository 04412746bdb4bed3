"""Prometheus metrics: real worker processes, real redis-server, real HTTP scrapes, the textfile."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import redis
import requests
from harness import (
    Spawn,
    finished,
    free_port,
    job_json,
    wait_for,
    worker_env,
    worker_state,
)
from prometheus_client.parser import text_string_to_metric_families
from travis_worker.config import ConfigError, load_config
from travis_worker.metrics import instance_port, instance_textfile

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """Every sample of a Prometheus text exposition: (name, sorted labels) -> value."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def scrape(port: int) -> Samples:
    resp = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    assert resp.status_code == 200
    return parse(resp.text)


def push(client: redis.Redis, raw: str) -> None:
    client.rpush("resque:queue:builds", raw)


def test_scrape_port_of_a_running_worker(client: redis.Redis, spawn: Spawn, repo: tuple[str, str]) -> None:
    port = free_port()
    worker = spawn(metrics__port=port, metrics__address="127.0.0.1")
    before = scrape(port)
    assert value(before, "travis_worker_jobs_taken_total") == 0
    assert value(before, "travis_worker_info", worker=worker.id, queue="builds", vm="") == 1
    push(client, job_json(1, repo, "sleep 0.3"))
    push(client, job_json(2, repo, "false"))
    push(client, '{"class": "Travis::Worker", "args": [{"job": "not a payload"}]}')
    wait_for(lambda: {1, 2} <= finished(client).keys() and client.llen("resque:failed") == 1, 30, "3 jobs")
    wait_for(lambda: worker_state(client, worker).get("state") == "idle", 10, "idle")
    after = scrape(port)
    assert value(after, "travis_worker_jobs_taken_total") == 3
    assert value(after, "travis_worker_jobs_finished_total", result="passed") == 1
    assert value(after, "travis_worker_jobs_finished_total", result="failed") == 1
    assert value(after, "travis_worker_jobs_finished_total", result="errored") == 0
    assert value(after, "travis_worker_jobs_failed_total", exception="PayloadError") == 1
    assert value(after, "travis_worker_jobs_requeued_total", reason="stop") == 0
    # two real builds (clone + script), one of them sleeps 0.3 s: the histogram saw both, with their run time
    assert value(after, "travis_worker_build_duration_seconds_count") == 2
    assert 0.3 <= value(after, "travis_worker_build_duration_seconds_sum") < 20
    # start-up + after each of the two builds (the bad payload ran nothing in the sandbox)
    assert value(after, "travis_worker_sandbox_reset_duration_seconds_count") == 3
    assert value(after, "travis_worker_state", travis_worker_state="idle") == 1
    assert value(after, "travis_worker_state", travis_worker_state="working") == 0
    # heartbeat_interval is 0.2 s in the harness: the age stays well below the 1 s dead limit
    assert 0 <= value(after, "travis_worker_heartbeat_age_seconds") < 1.0


def test_textfile_of_a_running_worker_and_its_stop(
    tmp_path: Path, client: redis.Redis, spawn: Spawn, repo: tuple[str, str]
) -> None:
    path = tmp_path / "textfile" / "travis-worker-{vm}.prom"
    path.parent.mkdir()
    worker = spawn(metrics__textfile=str(path))
    written = tmp_path / "textfile" / "travis-worker-local.prom"
    wait_for(written.exists, 10, "the textfile")
    push(client, job_json(1, repo, "sleep 30"))
    wait_for(lambda: worker_state(client, worker).get("state") == "working", 15, "working")
    wait_for(
        lambda: value(parse(written.read_text()), "travis_worker_state", travis_worker_state="working") == 1,
        5,
        "state working in the textfile",
    )
    worker.signal(signal.SIGQUIT)  # immediate stop: the build is stopped, the job requeued
    assert worker.wait(20) == 0
    samples = parse(written.read_text())
    assert value(samples, "travis_worker_jobs_taken_total") == 1
    assert value(samples, "travis_worker_jobs_requeued_total", reason="stop") == 1
    assert value(samples, "travis_worker_jobs_finished_total", result="passed") == 0
    assert value(samples, "travis_worker_state", travis_worker_state="stopped") == 1
    assert client.llen("resque:queue:builds") == 1
    assert not list(written.parent.glob("*.prom.*"))  # no temp files left behind


def test_sandbox_failure_counts_the_reset_and_errored_state(
    client: redis.Redis, spawn: Spawn, repo: tuple[str, str]
) -> None:
    port = free_port()
    worker = spawn(metrics__port=port, metrics__address="127.0.0.1", env={"PATH": "/nonexistent-twt-path"})
    push(client, job_json(1, repo, "true"))
    wait_for(lambda: worker_state(client, worker).get("state") == "errored", 15, "errored state")
    samples = scrape(port)
    # the start-up reset failed: the worker took no job, so nothing was requeued
    assert value(samples, "travis_worker_jobs_taken_total") == 0
    assert value(samples, "travis_worker_jobs_requeued_total", reason="sandbox") == 0
    assert value(samples, "travis_worker_sandbox_reset_duration_seconds_count") == 1
    assert value(samples, "travis_worker_build_duration_seconds_count") == 0
    assert value(samples, "travis_worker_state", travis_worker_state="errored") == 1


def test_off_by_default_and_port_in_use_is_a_config_error(tmp_path: Path, redis_url: str) -> None:
    cfg = load_config(None, {"TRAVIS_WORKER_CONFIG": ""})
    assert cfg["metrics.port"] is None and cfg["metrics.textfile"] is None
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        conf = tmp_path / "worker.yml"
        conf.write_text(f"redis: {{url: '{redis_url}'}}\nmetrics: {{port: {port}, address: 127.0.0.1}}\n")
        proc = subprocess.run(
            [sys.executable, "-m", "travis_worker", "run", "--config", str(conf)],
            env=worker_env(TRAVIS_WORKER_CONFIG=""),
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert proc.returncode == 78
    assert f"metrics.port: cannot listen on 127.0.0.1:{port}" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_config_checks_and_instance_naming(tmp_path: Path) -> None:
    conf = tmp_path / "worker.yml"
    conf.write_text("metrics: {port: 70000}\n")
    with pytest.raises(ConfigError, match=r"metrics\.port: must be a TCP port"):
        load_config(str(conf), {})
    conf.write_text("vms: {count: 2}\nmetrics: {textfile: /tmp/tw.prom}\n")
    with pytest.raises(ConfigError, match=r"metrics.textfile: put \{vm\} in the path"):
        load_config(str(conf), {})
    # one worker.yml serves every VM of a box: each instance gets its own port and file
    assert [instance_port(9150, vm, "worker-") for vm in (None, "worker-1", "worker-2", "worker-10")] == [
        9150,
        9150,
        9151,
        9159,
    ]
    assert instance_textfile("/x/tw-{vm}.prom", "worker-2") == "/x/tw-worker-2.prom"
    assert instance_textfile("/x/tw-{vm}.prom", None) == "/x/tw-local.prom"
