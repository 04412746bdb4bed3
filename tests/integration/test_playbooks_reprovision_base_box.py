"""reprovision.yml -e strategy=base_box on its own converged lab box (the `lab` fixture, conftest.py), in file
order: publish + switch at the job boundary with jobs flowing, a failed image build, rollback, an image in use
surviving pruning. The switch itself is the runner's (it reports `image` in `travis-worker status --json`)."""

from __future__ import annotations

import json
import re
import secrets
from pathlib import Path

import pytest
from playbooks_lab import Lab, drift_report, enqueue, wait_finished

# The converged lab (site.yml) is part of this test's time: a budget like the Molecule scenarios'.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(3600)]

VMS = ("worker-1", "worker-2")
STORE = "/var/lib/travis-worker/images"
STATUS = "/opt/travis-worker/bin/travis-worker --config /etc/travis-worker/worker.yml status --json"
# what the test rounds published: revision -> (digest, version)
PUBLISHED: dict[str, tuple[str, str]] = {}


def base_box(lab: Lab, *extra: str, check: bool = True, env: dict | None = None) -> str:
    """The playbook's output with whitespace runs joined (the YAML callback wraps long messages)."""
    out = lab.play("playbooks/reprovision.yml", "-e", "strategy=base_box", *extra, check=check, env=env)
    return " ".join(out.split())


def rev() -> str:
    return f"reprovision_recipe_revision=twt-image-{secrets.token_hex(3)}"


def digest_of(out: str) -> str:
    return re.search(r"recipe digest ([0-9a-f]{64})", out).group(1)


def image_status(lab: Lab) -> dict:
    """What the box's image store holds (one box name): current, {version: image.json}, {vm: version}."""
    current = lab.sh(f"readlink {STORE}/*/current 2>/dev/null || true").strip() or None
    versions = {}
    for path in lab.sh(f"ls -d {STORE}/*/*/image.json 2>/dev/null || true").split():
        if path.split("/")[-2] != "current":  # the glob also follows the `current` link
            versions[path.split("/")[-2]] = json.loads(lab.sh(f"cat {path}"))
    users = {}
    for line in lab.sh(f"grep -H . {STORE}/*/users/* 2>/dev/null || true").splitlines():
        path, _, version = line.partition(":")
        users[path.rsplit("/", 1)[-1]] = version.strip()
    return {"current": current, "versions": versions, "users": users}


def runner_images(lab: Lab) -> dict[str, str | None]:
    """VM -> image digest its live worker reports."""
    rows = json.loads(lab.sh(f"{STATUS}"))
    rows = rows.get("workers", rows) if isinstance(rows, dict) else rows
    out: dict[str, str | None] = {}
    for row in rows:
        if row.get("state") != "dead" and row.get("vm"):
            out[row["vm"]] = (row.get("image") or {}).get("digest")
    return out


def publish_round(lab: Lab, revision: str) -> tuple[str, str, str]:
    """Publish with `revision` while jobs flow; every job passes, every VM ends on the new digest."""
    plan = drift_report(lab, "-e", revision)
    digest = digest_of(plan)
    assert "build the image with recipes " + digest in plan, plan
    jobs = enqueue(lab, 6, sleep=2)
    out = base_box(lab, "-e", revision)
    more = enqueue(lab, 2, sleep=1)
    results = wait_finished(lab, jobs + more, timeout=900)
    assert set(results.values()) == {"passed"}, results  # none lost, none failed
    assert re.search(r"converged on image \S+ \(digest " + digest + r"\) after [\d.]+ s", out), out
    for vm in VMS:
        assert re.search(rf"{vm}: switched after [\d.]+ s", out), out
    store = image_status(lab)
    version = store["current"]
    assert store["versions"][version]["digest"] == digest
    assert runner_images(lab) == {vm: digest for vm in VMS}
    for vm in VMS:
        assert store["users"][vm] == version
        assert lab.record(vm)["recipe_digest"] == digest and lab.record(vm)["box_version"] == version
        assert lab.unit_state(vm) == "active"
        # the jobs above ran after the switch, each from the VM's reset onto the image: the recipes are in it
        assert (lab.vm_marker(vm) or {}).get("recipe_digest") == digest, vm
    PUBLISHED[revision] = (digest, version)
    return digest, version, out


def test_publish_switches_every_vm_at_its_job_boundary(lab: Lab) -> None:
    revision = rev()
    publish_round(lab, revision)
    after = drift_report(lab, "-e", revision)
    assert "no drift: every worker VM runs the image with the current recipes" in after, after
    again = base_box(lab, "-e", revision)
    assert "strategy base_box: nothing to do" in again, again  # a rerun continues: nothing left


def test_failed_image_build_leaves_the_vms_untouched(lab: Lab, tmp_path: Path) -> None:
    before = image_status(lab)
    was = runner_images(lab)
    role = tmp_path / "roles" / "twt_broken" / "tasks"
    role.mkdir(parents=True)
    (role / "main.yml").write_text(
        "---\n- name: Fail like a broken recipe\n  ansible.builtin.fail:\n    msg: twt broken recipe\n"
    )
    recipes = json.dumps({"worker_vms_recipes": ["travis.worker.vm_base", "twt_broken"]})
    env = {"ANSIBLE_ROLES_PATH": str(tmp_path / "roles")}
    jobs = enqueue(lab, 3, sleep=1)
    out = base_box(lab, "-e", recipes, "-e", rev(), check=False, env=env)
    assert "twt broken recipe" in out, out
    assert "nothing was published, every worker VM keeps the image it runs" in out, out
    assert set(wait_finished(lab, jobs, timeout=600).values()) == {"passed"}
    after = image_status(lab)
    assert after["current"] == before["current"]
    assert sorted(after["versions"]) == sorted(before["versions"])
    assert runner_images(lab) == was
    for vm in VMS:
        assert lab.unit_state(vm) == "active"


def test_rollback_to_the_previous_image(lab: Lab) -> None:
    first_digest, first_version = next(iter(PUBLISHED.values()))
    _, second_version, _ = publish_round(lab, rev())
    assert second_version > first_version
    jobs = enqueue(lab, 4, sleep=1)
    out = base_box(lab, "-e", "reprovision_rollback_to=previous")
    assert f"roll back: current {second_version} -> {first_version}" in out, out
    assert set(wait_finished(lab, jobs, timeout=600).values()) == {"passed"}
    assert image_status(lab)["current"] == first_version
    assert runner_images(lab) == {vm: first_digest for vm in VMS}
    for vm in VMS:
        assert (lab.vm_marker(vm) or {}).get("recipe_digest") == first_digest, vm


def test_an_image_in_use_survives_pruning(lab: Lab) -> None:
    # current = the first image (rolled back); worker-2 stops on it, then a third image is published with
    # keep=1: the second goes (neither newest, current nor in use), the first stays: worker-2's VM runs it
    store = image_status(lab)
    in_use = store["current"]
    lab.play("playbooks/workers.yml", "-e", "action=stop", "-e", "worker=worker-2")
    try:
        revision = rev()
        out = base_box(lab, "-e", revision, "-e", "reprovision_keep=1")
        assert re.search(r"worker-2: unit \w+, not started by this playbook", out), out
        digest = digest_of(out)
        after = image_status(lab)
        assert after["users"]["worker-2"] == in_use
        assert in_use in after["versions"], after  # in use: kept
        assert after["versions"][after["current"]]["digest"] == digest
        removed = set(store["versions"]) - {in_use}
        assert removed and not removed & set(after["versions"]), after
        assert re.search(rf"kept .*{re.escape(in_use)}: in use by worker-2", out), out
    finally:
        lab.play("playbooks/workers.yml", "-e", "action=start", "-e", "worker=worker-2")
    out = base_box(lab, "-e", revision)  # worker-2 switches when it starts; the rerun waits for it
    assert runner_images(lab) == {vm: digest for vm in VMS}
    assert "converged on image" in out or "nothing to do" in out, out
