"""The lab behind the playbook tests: a real LXC worker box converged by site.yml, nested Vagrant-LXC
worker VMs, real travis-worker services and a real redis-server on the host's bridge address.

`converged_lab()` converges one box container (site.yml, 2 VMs); the `lab` fixture in conftest.py gives one
per test file, so the playbook test files run side by side. The tests of a file run in file order and each
leaves the box serving (all workers active) for the next one.

A first converge from a bare box costs about 350 s of the 2 cores (VMs unpacked, recipes, apt in the box); a
rerun about 75 s. So the files do not each converge a bare box: `converged_template()` converges one per
test run (site.yml from the bare box, the path molecule/default also covers) and stops it, and each file's
lab is a full copy of it on which site.yml runs again, pointed at the file's own Redis (a config change: the
workers are restarted on it, as on a real box whose worker.yml changed). The first converge itself is not
weakened: it still runs, once, and must pass for any of these files to start.
"""

from __future__ import annotations

import fcntl
import json
import re
import secrets
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from travis_lab.boxbuild import BoxArtifact
from travis_lab.container import destroy_container, stop_container
from travis_lab.scratch import ScratchLab, scratch_lab

ROOT = Path(__file__).resolve().parents[2]
PROJECT = "/home/travis/worker-vms"
NS = "resque"


@dataclass
class Lab(ScratchLab):
    """The scratch lab with a converged box, and where the playbook outputs are kept."""

    logs: Path

    def play(
        self, playbook: str, *args: str, check: bool = True, timeout: float = 3600, env: dict | None = None
    ) -> str:
        """Run a playbook against the lab box; return its output (fail the test with it if rc != 0).
        ``env`` adds variables to ansible-playbook's environment (e.g. ANSIBLE_ROLES_PATH)."""
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
            env={**self.env, **(env or {})},
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


SITE_ARGS = ("-e", "worker_build_isolation=true", "-e", "worker_pip_source=index")


def converged_lab(
    lab_box: BoxArtifact, tmp_path_factory: pytest.TempPathFactory, template: str | None = None
) -> Iterator[Lab]:
    """A converged lab: site.yml on a bare box, or (`template`) again on a copy of a converged one."""
    work = tmp_path_factory.mktemp("twt-playbooks")
    with scratch_lab("twt-pb-", lab_box, work, template=template) as scratch:
        logs = work / "logs"
        logs.mkdir()
        lab = Lab(**vars(scratch), logs=logs)
        lab.play("site.yml", *SITE_ARGS)
        yield lab


def converged_template(lab_box: BoxArtifact, tmp_path_factory: pytest.TempPathFactory, run_id: str) -> str:
    """The name of a stopped box container converged by site.yml, built once per test run (`run_id`: xdist's
    testrun_uid, the same in every worker process) by whichever file asks first, under a file lock; the
    others wait for it. It is removed with the run's other leftovers (`python -m travis_lab down
    --stale-tests`, which scripts/test runs after the stage) once the process that built it has ended."""
    lock = Path(tempfile.gettempdir()) / f"twt-template-{run_id}.lock"
    marker = lock.with_suffix(".json")
    with lock.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        if not marker.exists():
            marker.write_text(json.dumps(_build_template(lab_box, tmp_path_factory)))
        doc = json.loads(marker.read_text())
    if doc.get("error"):
        pytest.fail(f"the converged template box could not be built: {doc['error']}", pytrace=False)
    return doc["name"]


def _build_template(lab_box: BoxArtifact, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    work = tmp_path_factory.mktemp("twt-template")
    name = None
    try:
        with scratch_lab("twt-tpl-", lab_box, work, keep=True) as scratch:
            name = scratch.box.name
            logs = work / "logs"
            logs.mkdir()
            t0 = time.monotonic()
            Lab(**vars(scratch), logs=logs).play("site.yml", *SITE_ARGS)
            print(f"template box {name} converged in {time.monotonic() - t0:.0f} s (logs: {logs})")
            stop_container(name)  # while its Redis still runs: its idle workers stop at once
        return {"name": name}
    except (Exception, pytest.fail.Exception) as exc:
        if name is not None:
            destroy_container(name)
        return {"error": str(exc)[-4000:]}


def converged_fleet(
    lab_box: BoxArtifact, tmp_path_factory: pytest.TempPathFactory, boxes: int = 2, vms: int = 2
) -> Iterator[Lab]:
    """`boxes` box containers on one Redis, each converged by site.yml with `vms` worker VMs, named
    `b<i>-worker-N` on box i (see travis_lab.scratch). `lab.box` is the first, `lab.boxes` all."""
    work = tmp_path_factory.mktemp("twt-fleet")
    with scratch_lab("twt-pb-", lab_box, work, boxes=boxes) as scratch:
        logs = work / "logs"
        logs.mkdir()
        lab = Lab(**vars(scratch), logs=logs)
        lab.play(
            "site.yml",
            "-e", "worker_build_isolation=true",
            "-e", "worker_pip_source=index",
            "-e", f"worker_vms_count={vms}",
        )  # fmt: skip
        yield lab


def vm_states(lab: Lab) -> dict[tuple[str, str], dict]:
    """(box host name, VM name) -> the document its worker keeps in Redis (`<ns>:travis:vm_state`, field
    `<host>:<vm>`); fields of the old form (VM name alone, left by an earlier runner) are left out."""
    raw = rclient(lab).hgetall(f"{NS}:travis:vm_state")
    out: dict[tuple[str, str], dict] = {}
    for field, doc in raw.items():
        host, sep, vm = field.partition(":")
        if sep:
            out[(host, vm)] = json.loads(doc)
    return out


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
    return {job_id: body.get("result", "?") for job_id, body in finished_reports(lab).items()}


def finished_reports(lab: Lab) -> dict[int, dict]:
    """Job id -> the body of its `finished` report (result, worker id `<host>:<pid>:<queue>`, ...)."""
    out: dict[int, dict] = {}
    for raw in rclient(lab).lrange(f"{NS}:reporting:jobs", 0, -1):
        entry = json.loads(raw)
        body = entry.get("body", entry)
        if entry.get("type", "state") == "state" and body.get("state") == "finished":
            out[int(body["id"])] = body
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
    """Worker VMs that exist: Vagrant keeps a destroyed machine's directory and removes only its `id` file."""
    out = lab.sh(f"cd {PROJECT}/.vagrant/machines 2>/dev/null && ls -d */*/id 2>/dev/null || true").split()
    return sorted({p.split("/", 1)[0] for p in out if re.fullmatch(r"worker-\d+/\w+/id", p)})


def drift_report(lab: Lab, *extra: str, strategy: str = "base_box") -> str:
    return lab.play("playbooks/reprovision.yml", "-e", f"strategy={strategy}", "--check", *extra)


def check_reprovision(lab: Lab, strategy: str) -> None:
    """reprovision.yml with `strategy` (in_place; base_box has its own tests) keeps every worker serving,
    loses no job and ends without drift."""
    revision = f"-e reprovision_recipe_revision=twt-{strategy}-{secrets.token_hex(2)}"
    rev = revision.split(" ", 1)[1]
    out = drift_report(lab, "-e", rev, strategy=strategy)
    assert re.search(r"worker-1: .*recipes", out) and re.search(r"worker-2: .*recipes", out), out
    digest = re.search(r"recipe digest ([0-9a-f]{64})", out).group(1)

    jobs = enqueue(lab, 6, sleep=2)
    lab.play("playbooks/reprovision.yml", "-e", f"strategy={strategy}", "-e", rev)
    more = enqueue(lab, 2, sleep=1)
    results = wait_finished(lab, jobs + more, timeout=900)
    assert set(results.values()) == {"passed"}, results  # none lost, none failed

    after = drift_report(lab, "-e", rev, strategy=strategy)
    assert "no drift: every worker VM runs the newest box and the current recipes" in after, after
    again = lab.play("playbooks/reprovision.yml", "-e", f"strategy={strategy}", "-e", rev)
    assert f"strategy {strategy}: nothing to do" in again, again  # a rerun continues: nothing left
    for vm in ("worker-1", "worker-2"):
        assert lab.record(vm)["recipe_digest"] == digest
        assert lab.unit_state(vm) == "active"
        # the jobs above ran after the reprovisioning, each from the VM's reset sandbox: the new recipes are
        # in it (base_box: in the box; in_place: in the snapshot retaken after provisioning)
        assert (lab.vm_marker(vm) or {}).get("recipe_digest") == digest, vm
