"""workers.yml and rebuild.yml, in this order, on one converged lab box (the `lab` fixture, conftest.py)."""

from __future__ import annotations

import re
import time

import pytest
from playbooks_lab import NS, Lab, enqueue, finished, rclient, wait_finished

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


def _build_pids(lab: Lab, container: str) -> str:
    """PIDs (box namespace) of the container's init and of the build's `sleep`, or '' while not running."""
    return lab.sh(
        f"init=$(lxc-info -n {container} -pH 2>/dev/null); "
        f'[ -n "$init" ] && echo "$init $(pgrep -d, -f \'^sleep 45$\' --ns $init)" || true'
    ).strip()


def test_restarting_one_worker_leaves_another_workers_vm_and_build_running(lab: Lab) -> None:
    """Issue #11 section 3: a stop and a restart of travis-worker@worker-1 during a build on worker-2 leave
    worker-2's VM (its container init and the build's own process) running and the build ends `passed`."""
    lab.sh("systemctl stop travis-worker@worker-1.service")  # so that worker-2 takes the job
    try:
        [job] = enqueue(lab, 1, sleep=45)
        container = lab.machine_id("worker-2")
        deadline = time.monotonic() + 300
        pids = ""
        while time.monotonic() < deadline:  # the build script runs: its `sleep 45` is up in worker-2's VM
            container = lab.machine_id("worker-2")
            pids = _build_pids(lab, container) if container else ""
            if len(pids.split()) == 2:
                break
            time.sleep(1)
        assert len(pids.split()) == 2, f"worker-2 never ran the build of job {job} (pids {pids!r})"
        field = f"{lab.sh('uname -n').strip()}:worker-2"  # the box's runners key their VMs <host>:<vm>
        assert str(job) in (rclient(lab).hget(f"{NS}:travis:vm_state", field) or "")
        # the VM and its build run in no worker's unit (cgroup), so no worker's stop can reach them
        cgroups = lab.sh(" ".join(["cat"] + [f"/proc/{p}/cgroup" for p in pids.replace(",", " ").split()]))
        assert cgroups.strip() and "travis-worker@" not in cgroups, cgroups

        lab.sh("systemctl start travis-worker@worker-1.service")
        lab.sh("systemctl stop travis-worker@worker-1.service")
        assert lab.unit_state("worker-1") == "inactive"
        assert _build_pids(lab, container) == pids, "stopping worker-1 touched worker-2's VM"
        lab.sh("systemctl restart travis-worker@worker-1.service")
        assert lab.unit_state("worker-1") == "active"
        assert _build_pids(lab, container) == pids, "restarting worker-1 touched worker-2's VM"
        assert job not in finished(lab), "the build ended before worker-1 was stopped and restarted"
        assert wait_finished(lab, [job], timeout=300)[job] == "passed"
    finally:
        lab.sh("systemctl start travis-worker@worker-1.service")
    assert [lab.unit_state(v) for v in ("worker-1", "worker-2")] == ["active", "active"]
