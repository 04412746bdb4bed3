"""workers.yml, rebuild.yml and scale.yml on one converged lab box (the `lab` fixture, conftest.py)."""

from __future__ import annotations

import re
import time

import pytest
from playbooks_lab import NS, Lab, enqueue, rclient, vms_of, wait_finished

pytestmark = pytest.mark.integration


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
