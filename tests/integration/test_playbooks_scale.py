"""scale.yml 2 -> 5 -> 3 -> 4 on its own converged lab box (the `lab` fixture, conftest.py)."""

from __future__ import annotations

import pytest
from playbooks_lab import Lab, vms_of

# The converged lab (site.yml) is part of this test's time: a budget like the Molecule scenarios'.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(3600)]


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
