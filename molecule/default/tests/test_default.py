"""The worker box after site.yml (LXC provider, two worker VMs), checked against the real box."""

from __future__ import annotations

import json
import shlex
import time

import pytest

VMS = ("worker-1", "worker-2")
PROJECT = "/home/travis/worker-vms"
NS = "resque"
TOKEN = "twt-molecule-secret-token"


def test_travis_user(host):
    user = host.user("travis")
    assert user.exists
    assert user.group == "travis"
    assert user.home == "/home/travis"


# python3-vagrant is not installed: nothing in the collection uses it (vagrant_python: false).
PACKAGES = ("git", "lxc", "dnsmasq-base", "vagrant", "vagrant-lxc", "python3-debian", "sudo")


@pytest.mark.parametrize("pkg", PACKAGES)
def test_packages(host, pkg):
    assert host.package(pkg).is_installed


def test_runner_installed(host):
    out = host.check_output("/opt/travis-worker/bin/travis-worker --version")
    assert out.startswith("travis-worker ")


@pytest.mark.parametrize("name", ["worker.yml", "worker.lab.yml"])
def test_config_files_private(host, name):
    f = host.file(f"/etc/travis-worker/{name}")
    assert f.is_file
    assert f.user == "travis"
    assert f.group == "travis"
    assert f.mode == 0o600


def test_config_content(host):
    local = host.file("/etc/travis-worker/worker.yml").content_string
    env = host.file("/etc/travis-worker/worker.lab.yml").content_string
    assert "env: lab" in local
    assert TOKEN in local
    assert TOKEN not in env
    assert "provider: lxc" in env
    assert "count: 2" in env
    assert "project_dir: /home/travis/worker-vms" in env
    assert "url: redis://10.0.3.1:" in env


def test_token_not_world_readable(host):
    # another unprivileged user cannot read the file holding the token
    res = host.run("runuser -u nobody -- cat /etc/travis-worker/worker.yml")
    assert res.rc != 0
    assert TOKEN not in res.stdout


def test_merged_config_masks_token(host):
    # the runner wants a VM name with a VM provider, as the units give it (Environment=VM=%i)
    runner = "/opt/travis-worker/bin/travis-worker"
    out = host.check_output(f"runuser -u travis -- env VM=worker-1 {runner} config")
    assert TOKEN not in out
    assert "lxc" in out


def test_units(host):
    unit = host.file("/etc/systemd/system/travis-worker@.service").content_string
    assert "User=travis" in unit
    assert "Environment=VM=%i" in unit
    assert "KillMode=mixed" in unit
    assert "KillSignal=SIGTERM" in unit
    assert "TimeoutStopSec=660" in unit  # shutdown_timeout 600 (lab) + 60 margin
    lines = [line for line in unit.splitlines() if "=" in line and not line.startswith("#")]
    settings = [line.split("=", 1)[0] for line in lines]
    assert not {"PrivateDevices", "NoNewPrivileges", "ProtectSystem", "PrivateTmp"} & set(settings)
    target = host.service("travis-worker.target")
    assert target.is_enabled
    assert target.is_running


@pytest.mark.parametrize("vm", VMS)
def test_worker_unit_enabled_and_active(host, vm):
    svc = host.service(f"travis-worker@{vm}")
    assert svc.is_enabled
    assert svc.is_running


def test_vms_running(host):
    out = host.check_output(
        f"cd {PROJECT} && runuser -u travis -- env HOME=/home/travis vagrant status --machine-readable"
    )
    states = {}
    for line in out.splitlines():
        parts = line.split(",")
        if len(parts) >= 4 and parts[2] == "state":
            states[parts[1]] = parts[3]
    assert states == {vm: "running" for vm in VMS}


def test_workers_registered_and_heartbeating(host, redis_client):
    hostname = host.check_output("hostname")
    deadline = time.time() + 60
    while True:
        workers = sorted(w for w in redis_client.smembers(f"{NS}:workers") if w.startswith(f"{hostname}:"))
        beats = redis_client.hgetall(f"{NS}:workers:heartbeat")
        fresh = [w for w in workers if w in beats]
        if len(fresh) == len(VMS) or time.time() > deadline:
            break
        time.sleep(2)
    assert len(workers) == len(VMS), workers
    assert len(fresh) == len(VMS), (workers, beats)
    first = {w: beats[w] for w in fresh}
    time.sleep(25)  # > 2 heartbeat intervals (10 s)
    later = redis_client.hgetall(f"{NS}:workers:heartbeat")
    assert all(later.get(w) and later[w] != first[w] for w in fresh), (first, later)


def _serve_git_repo(host) -> str:
    """A real git repository on the box, served by git daemon on the box's inner bridge (10.0.4.1)."""
    script = """
set -e
rm -rf /srv/twt-git /tmp/twt-demo
mkdir -p /srv/twt-git /tmp/twt-demo
cd /tmp/twt-demo
git init -q -b main
printf 'hello from the molecule job\\n' > README.md
git add README.md
git -c user.name=twt -c user.email=twt@example.invalid commit -q -m demo
git clone -q --bare /tmp/twt-demo /srv/twt-git/demo.git
[ -f /run/twt-git-daemon.pid ] && kill "$(cat /run/twt-git-daemon.pid)" 2>/dev/null || true
git daemon --detach --reuseaddr --export-all --base-path=/srv/twt-git --listen=10.0.4.1 --port=9418 \
  --pid-file=/run/twt-git-daemon.pid
git -C /tmp/twt-demo rev-parse HEAD
"""
    return host.check_output("bash -c %s", script).strip().splitlines()[-1]


def test_real_job_passes_in_a_worker_vm(host, redis_client):
    commit = _serve_git_repo(host)
    job_id = 4242 + int(time.time()) % 100000
    payload = {
        "uuid": f"twt-molecule-{job_id}",
        "repository": {"slug": "twt/demo", "source_url": "git://10.0.4.1/demo.git"},
        "job": {"id": job_id, "number": "1.1", "commit": commit, "branch": "main"},
        "config": {"script": ["test -f README.md", "cat README.md", "hostname"]},
    }
    quoted = shlex.quote(json.dumps(payload))
    host.check_output(f"printf %s {quoted} > /tmp/twt-job.json")
    host.check_output("env VM=worker-1 /opt/travis-worker/bin/travis-worker enqueue /tmp/twt-job.json")
    deadline = time.time() + 900
    finished = None
    while time.time() < deadline and finished is None:
        for raw in redis_client.lrange(f"{NS}:reporting:jobs", 0, -1):
            msg = json.loads(raw)
            if msg.get("job_id") == job_id and msg.get("state") == "finished":
                finished = msg
        time.sleep(3)
    logs = [
        json.loads(r)
        for r in redis_client.lrange(f"{NS}:reporting:jobs", 0, -1)
        if json.loads(r).get("job_id") == job_id and json.loads(r).get("event") == "job:log"
    ]
    text = "".join(str(m.get("log", m.get("content", ""))) for m in logs)
    assert finished is not None, f"job {job_id} not finished within 900 s; log so far: {text[-2000:]}"
    assert finished.get("result") == "passed", (finished, text[-3000:])
    assert "hello from the molecule job" in text
    assert any(vm in text for vm in VMS), "the build did not run inside a worker VM"
