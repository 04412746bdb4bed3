"""The maintenance playbooks on the lab: a real LXC worker box converged by site.yml, nested Vagrant-LXC
worker VMs, real travis-worker services and a real redis-server on the host's bridge address.

One box container is converged once for the module (site.yml, 2 VMs); the tests then run in file order and
each leaves the box serving (all workers active) for the next one.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from travis_lab.boxbuild import BoxArtifact, host_arch
from travis_lab.container import BoxContainer, create_container
from travis_lab.demo import trust_host_cas
from travis_lab.demo_repo import ensure_demo_repo
from travis_lab.demo_services import LabState, start_git_daemon, start_redis, stop_recorded
from travis_lab.net import ensure_bridge

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
HOST = "10.0.3.1"
PROJECT = "/home/travis/worker-vms"
NS = "resque"


@dataclass
class Lab:
    box: BoxContainer
    inventory: Path
    env: dict[str, str]
    redis_url: str
    git_url: str
    commit: str
    logs: Path

    def play(self, playbook: str, *args: str, check: bool = True, timeout: float = 3600) -> str:
        """Run a playbook against the lab box; return its output (fail the test with it if rc != 0)."""
        argv = [
            str(ROOT / ".venv/bin/ansible-playbook"),
            "-i", str(ROOT / "inventories/lab"),
            "-i", str(self.inventory),
            str(ROOT / playbook),
            *args,
        ]  # fmt: skip
        t0 = time.monotonic()
        proc = subprocess.run(
            argv,
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        out = proc.stdout + proc.stderr
        name = re.sub(r"[^A-Za-z0-9]+", "-", f"{playbook} {' '.join(args)}")[:120]
        (self.logs / f"{time.strftime('%H%M%S')}-{name}.log").write_text(out)
        print(f"{playbook} {' '.join(args)}: rc={proc.returncode} in {time.monotonic() - t0:.0f} s")
        if check and proc.returncode != 0:
            pytest.fail(
                f"{playbook} {' '.join(args)} exited {proc.returncode}:\n{out[-6000:]}", pytrace=False
            )
        return out

    def sh(self, cmd: str, timeout: float = 600) -> str:
        return self.box.ssh(cmd, timeout=timeout).stdout

    def unit_state(self, vm: str) -> str:
        return self.sh(f"systemctl show -p ActiveState --value travis-worker@{vm}.service").strip()

    def unit_started(self, vm: str) -> str:
        return self.sh(
            f"systemctl show -p ActiveEnterTimestampMonotonic --value travis-worker@{vm}.service"
        ).strip()

    def machine_id(self, vm: str) -> str:
        return self.sh(f"cat {PROJECT}/.vagrant/machines/{vm}/lxc/id 2>/dev/null || true").strip()

    def vm_marker(self, vm: str) -> dict | None:
        out = self.box.ssh(
            f"cd {PROJECT} && sudo -u travis HOME=/home/travis vagrant ssh {vm} -c "
            "'cat /etc/travis-worker-recipes.json' 2>/dev/null",
            check=False,
            timeout=120,
        )
        try:
            return json.loads(out.stdout[out.stdout.index("{") :])
        except ValueError:
            return None

    def record(self, vm: str) -> dict | None:
        out = self.box.ssh(f"cat /etc/travis-worker/vms/{vm}.json", check=False)
        return json.loads(out.stdout) if out.returncode == 0 else None


@pytest.fixture(scope="module")
def lab(lab_box: BoxArtifact, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    ensure_bridge()
    work = tmp_path_factory.mktemp("twt-playbooks")
    state = LabState.load(work / "state.json")
    box: BoxContainer | None = None
    try:
        server = start_redis(state, HOST, work / "redis")
        repo = ensure_demo_repo(work / "repos")
        git = start_git_daemon(state, HOST, work / "repos", work)
        box = create_container(f"twt-pb-{secrets.token_hex(3)}", lab_box.rootfs, arch=host_arch())
        trust_host_cas(box)
        inventory = work / "inventory.ini"
        inventory.write_text(box.inventory(group="worker_boxes"))
        env = {
            **os.environ,
            "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
            "ANSIBLE_NOCOLOR": "1",
            "PATH": f"{ROOT / '.venv/bin'}:{os.environ['PATH']}",
            "TRAVIS_LAB_BOX": str(lab_box.path),
            "TRAVIS_LAB_REDIS_PORT": server.url.rsplit(":", 1)[1].split("/")[0],
        }
        logs = work / "logs"
        logs.mkdir()
        lab = Lab(box, inventory, env, server.url, git.url, repo.commit, logs)
        lab.play("site.yml", "-e", "worker_build_isolation=true", "-e", "worker_pip_source=index")
        yield lab
    finally:
        if box is not None:
            box.destroy()
        stop_recorded(state)


def rclient(lab: Lab) -> redis.Redis:
    return redis.Redis.from_url(lab.redis_url, decode_responses=True)


def enqueue(lab: Lab, n: int, sleep: float = 1.0) -> list[int]:
    """Push n short jobs of the demo repository; return their ids."""
    client = rclient(lab)
    base = int(time.time() * 1000) % 1_000_000_000
    ids = []
    for i in range(n):
        job_id = base + i
        payload = {
            "uuid": f"twt-{job_id}",
            "repository": {"slug": "twt/demo", "source_url": f"{lab.git_url}/demo.git"},
            "job": {"id": job_id, "number": f"1.{i}", "commit": lab.commit, "branch": "main"},
            "config": {"script": [f"sleep {sleep}", "python3 -m unittest test_calc"]},
            "timeouts": {"hard_limit": 600, "log_silence": 300},
        }
        client.sadd(f"{NS}:queues", "builds")
        client.rpush(f"{NS}:queue:builds", json.dumps({"class": "Travis::Worker", "args": [payload]}))
        ids.append(job_id)
    return ids


def finished(lab: Lab) -> dict[int, str]:
    """Job id -> result of every `finished` report in the Redis reporting list."""
    out: dict[int, str] = {}
    for raw in rclient(lab).lrange(f"{NS}:reporting:jobs", 0, -1):
        entry = json.loads(raw)
        body = entry.get("body", entry)
        if entry.get("type", "state") == "state" and body.get("state") == "finished":
            out[int(body["id"])] = body.get("result", "?")
    return out


def wait_finished(lab: Lab, ids: list[int], timeout: float = 900) -> dict[int, str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = finished(lab)
        if all(i in done for i in ids):
            return {i: done[i] for i in ids}
        time.sleep(3)
    done = finished(lab)
    pytest.fail(
        f"jobs not finished after {timeout:.0f} s: {[i for i in ids if i not in done]}", pytrace=False
    )


def vms_of(lab: Lab) -> list[str]:
    out = lab.sh(f"ls {PROJECT}/.vagrant/machines 2>/dev/null || true").split()
    return sorted(v for v in out if re.fullmatch(r"worker-\d+", v))


def test_workers_status_stop_start_one_and_all(lab: Lab) -> None:
    out = lab.play("playbooks/workers.yml", "-e", "action=status")
    assert re.search(r"worker-1\s+unit=active/running\s+runner=\w+", out), out
    assert re.search(r"worker-2\s+unit=active/running", out), out

    lab.play("playbooks/workers.yml", "-e", "action=stop", "-e", "worker=worker-2")
    assert lab.unit_state("worker-2") == "inactive"
    assert lab.unit_state("worker-1") == "active"
    out = lab.play("playbooks/workers.yml", "-e", "action=status")
    assert re.search(r"worker-2\s+unit=inactive/dead", out), out

    lab.play("playbooks/workers.yml", "-e", "action=start", "-e", "worker=worker-2")
    assert lab.unit_state("worker-2") == "active"

    out = lab.play("playbooks/workers.yml", "-e", "action=stop")
    assert [lab.unit_state(v) for v in ("worker-1", "worker-2")] == ["inactive", "inactive"]
    assert "was idle" in out or "was busy" in out
    lab.play("playbooks/workers.yml", "-e", "action=start")
    assert [lab.unit_state(v) for v in ("worker-1", "worker-2")] == ["active", "active"]

    out = lab.play("playbooks/workers.yml", "-e", "action=stop", "-e", "worker=worker-9", check=False)
    assert "Unknown worker(s) worker-9" in out and "worker-1, worker-2" in out


def test_workers_stop_waits_for_a_running_job(lab: Lab) -> None:
    [job] = enqueue(lab, 1, sleep=25)
    deadline = time.monotonic() + 300
    client = rclient(lab)
    while time.monotonic() < deadline and not any(
        str(job) in (v or "") for v in client.hgetall(f"{NS}:travis:vm_state").values()
    ):
        time.sleep(1)
    out = lab.play("playbooks/workers.yml", "-e", "action=stop")
    assert re.search(r"was busy with job " + str(job) + r", waited \d+\.\d s", out), out
    assert wait_finished(lab, [job], timeout=60)[job] == "passed"
    lab.play("playbooks/workers.yml", "-e", "action=start")


def test_rebuild_without_confirmation_resets_nothing(lab: Lab) -> None:
    before = {vm: lab.machine_id(vm) for vm in ("worker-1", "worker-2")}
    out = lab.play("playbooks/rebuild.yml", "-e", "rebuild_reset_virtualbox=true")
    assert "VirtualBox environment NOT reset: rebuild_reset_virtualbox=true was not confirmed" in out, out
    assert re.search(r"TASK \[Reset the VirtualBox environment\][^\n]*\nskipping:", out), out
    after = {vm: lab.machine_id(vm) for vm in ("worker-1", "worker-2")}
    assert all(after[vm] and after[vm] != before[vm] for vm in after), (before, after)  # re-created
    assert [lab.unit_state(v) for v in ("worker-1", "worker-2")] == ["active", "active"]
    assert (
        lab.sh("test -e /etc/travis-worker/vms/rebuild.json && echo open || echo closed").strip() == "closed"
    )


def _drift(lab: Lab, *extra: str) -> str:
    return lab.play("playbooks/reprovision.yml", "-e", "strategy=base_box", "--check", *extra)


@pytest.mark.parametrize("strategy", ["base_box", "in_place"])
def test_reprovision_keeps_serving_and_ends_without_drift(lab: Lab, strategy: str) -> None:
    revision = f"-e reprovision_recipe_revision=twt-{strategy}-{secrets.token_hex(2)}"
    rev = revision.split(" ", 1)[1]
    out = _drift(lab, "-e", rev)
    assert re.search(r"worker-1: .*recipes", out) and re.search(r"worker-2: .*recipes", out), out
    digest = re.search(r"recipe digest ([0-9a-f]{16})", out).group(1)

    jobs = enqueue(lab, 6, sleep=2)
    lab.play("playbooks/reprovision.yml", "-e", f"strategy={strategy}", "-e", rev)
    more = enqueue(lab, 2, sleep=1)
    results = wait_finished(lab, jobs + more, timeout=900)
    assert set(results.values()) == {"passed"}, results  # none lost, none failed

    after = _drift(lab, "-e", rev)
    if strategy == "base_box":
        assert "no drift: every worker VM runs the newest box and the current recipes" in after, after
    else:  # the truth on LXC: the runner re-creates each VM from its box before every build
        for vm in ("worker-1", "worker-2"):
            assert re.search(vm + r": recipes applied in place only: the runner re-creates LXC VMs", after), (
                after
            )
        again = lab.play("playbooks/reprovision.yml", "-e", "strategy=in_place", "-e", rev)
        assert "strategy in_place: nothing to do" in again, again  # a rerun continues: nothing left
    for vm in ("worker-1", "worker-2"):
        assert lab.record(vm)["recipe_digest"] == digest
        assert lab.unit_state(vm) == "active"
        if strategy == "base_box":  # the marker is in the box itself: every (re-)created VM carries it
            assert (lab.vm_marker(vm) or {}).get("recipe_digest") == digest, vm


def test_scale_5_3_4_touches_only_what_it_must(lab: Lab) -> None:
    def snapshot() -> dict[str, tuple[str, str]]:
        return {vm: (lab.machine_id(vm), lab.unit_started(vm)) for vm in vms_of(lab)}

    out = lab.play("playbooks/scale.yml", "-e", "worker_vms_count=5", "--check")
    assert "create and start: worker-3, worker-4, worker-5" in out, out
    s0 = snapshot()
    lab.play("playbooks/scale.yml", "-e", "worker_vms_count=5")
    s1 = snapshot()
    assert sorted(s1) == [f"worker-{i}" for i in range(1, 6)]
    assert {vm: s1[vm] for vm in s0} == s0  # worker-1/2: same machine, same unit start
    assert all(lab.unit_state(f"worker-{i}") == "active" for i in range(1, 6))

    lab.play("playbooks/scale.yml", "-e", "worker_vms_count=3")
    s2 = snapshot()
    assert sorted(s2) == ["worker-1", "worker-2", "worker-3"]
    assert {vm: s2[vm] for vm in s2} == {vm: s1[vm] for vm in s2}
    assert lab.unit_state("worker-4") in ("inactive", "")
    assert lab.record("worker-5") is None

    lab.play("playbooks/scale.yml", "-e", "worker_vms_count=4")
    s3 = snapshot()
    assert sorted(s3) == ["worker-1", "worker-2", "worker-3", "worker-4"]
    assert {vm: s3[vm] for vm in s2} == s2
    assert lab.unit_state("worker-4") == "active"
