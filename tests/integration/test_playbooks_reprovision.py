"""reprovision.yml, both strategies, on one converged lab box (the `lab` fixture, conftest.py)."""

from __future__ import annotations

import re
import secrets

import pytest
from playbooks_lab import Lab, enqueue, wait_finished

pytestmark = pytest.mark.integration


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
