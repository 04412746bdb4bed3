"""Benchmark: `playbooks/reprovision.yml`, strategy in_place vs base_box, on the lab; one run, one JSON.

    .venv/bin/python bench/reprovision/run.py [--sizes 1,5] [--fleet 2x3] [--pickup-builds 20]
        [--packages "PKG ..."] [--out bench/results/reprovision.json]

Every configuration gets a fresh lab (box containers, Redis, git daemon; see travis_lab.scratch), converged by
site.yml (not measured), and one probe job must pass before measuring:

- for each N in `--sizes`: one box with N worker VMs; `reprovision.yml -e strategy=in_place`, then
  `-e strategy=base_box`, same recipe list (the usual recipes plus `twbench_toolchain`, a real recipe that
  installs a language runtime and build tools from the distro, about 60 s): the same change (+ toolchain)
  rolled out each way. Before the measured base_box, the fleet's first image is built from the recipes it
  runs already (`base_box` without the toolchain; reported too, `change` "first image (from the box)"): a
  fleet that reprovisions by base_box has an image from its last round, and its base VM carries it;
  `--no-warm` measures the change from the box instead. On the first size's lab, before
  the reprovisions, `--pickup-builds` builds one after another on idle workers (pickup.py): job taken -> the
  build's first command, and the sandbox reset time.
- `--fleet BxV` (empty: skipped): `base_box` on one box with V VMs (the reference), then on B boxes with V VMs
  each, where one box builds the image and publishes it in a catalog (`-e reprovision_catalog=DIR`, a
  directory on this controller) and the others fetch it.

While each reprovision runs, a feeder keeps two short jobs queued. Per run:
- wall_s: the playbook's wall time;
- per_vm_switch_s: per VM, seconds from the playbook's start until its worker reported the new image digest
  in Redis (`<ns>:travis:vm_state`, field `<host>:<vm>`, "image"; per_vm_switch_s is keyed the same way);
  the new digest is the one `current` points to on the box at the end. converged_s: the last of them
  (base_box). in_place has no image: converged_s = wall_s (the playbook ends when every VM is provisioned
  and serving) and per_vm_switch_s is null;
- jobs_done: jobs finished while the playbook ran; after it, the feeder stops and the jobs it enqueued get up
  to 10 minutes to finish: jobs_failed = finished but not `passed`, jobs_lost = enqueued and never finished;
- plays: seconds spent in each play (where the time went); change: what the run rolled out.

Writes the JSON (`--out`) and prints a Markdown table for docs/playbooks.md. Not a timed test. Everything it
creates carries the `twt-bench-` prefix and is removed at the end of each lab (`--keep` keeps the boxes).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pickup
import redis
from travis_lab.boxbuild import BoxArtifact, ensure_box
from travis_lab.scratch import ScratchLab, scratch_lab

ROOT = Path(__file__).resolve().parents[2]
NS = "resque"
IMAGE_STORE = "/var/lib/travis-worker/images"
RECIPE_PLAY = re.compile(
    r"recipe|provision the base", re.I
)  # the play that applies the recipes to the base VM
RECIPE_TASKS = """---
- name: Install a language runtime and build tools from the distro (the benchmark's heavy recipe)
  ansible.builtin.apt:
    name: {packages}
    state: present
    update_cache: true
    cache_valid_time: 3600
    install_recommends: false
"""


class Bench:
    def __init__(self, lab: ScratchLab, work: Path):
        self.lab, self.work, self.env, self.inventory = lab, work, lab.env, lab.inventory
        self.redis = redis.Redis.from_url(lab.redis_url, decode_responses=True)
        self.git_url, self.commit = lab.git_url, lab.commit

    def play(self, playbook: str, *args: str) -> tuple[float, list[tuple[str, float]]]:
        """Run one playbook; its log gets each line prefixed with the seconds since start. Returns the wall
        time and the seconds spent in each play (where a strategy spends its time)."""
        argv = [str(ROOT / ".venv/bin/ansible-playbook"), "-i", str(ROOT / "inventories/lab"),
                "-i", str(self.inventory), str(ROOT / playbook), *args]  # fmt: skip
        t0 = time.monotonic()
        log = self.work / f"{int(time.time())}-{Path(playbook).stem}.log"
        plays: list[tuple[str, float]] = []
        with log.open("w", buffering=1) as fh:  # line-buffered: `tail -f` shows where it is
            proc = subprocess.Popen(
                argv, cwd=ROOT, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
            assert proc.stdout is not None
            for line in proc.stdout:
                now = time.monotonic() - t0
                fh.write(f"[{now:7.1f}] {line}")
                if line.startswith("PLAY [") and not line.startswith("PLAY RECAP"):
                    plays.append((line[6:].split("]")[0], now))
            rc = proc.wait()
        took = time.monotonic() - t0
        print(f"  {playbook} {' '.join(args)}: rc={rc} {took:.0f} s (log {log})", flush=True)
        ends = [t for _, t in plays[1:]] + [took]
        spent = [(name, round(end - start, 1)) for (name, start), end in zip(plays, ends)]
        for name, secs in spent:
            if secs >= 5:
                print(f"      {secs:6.0f} s  {name}", flush=True)
        if rc != 0:
            raise SystemExit(f"bench: {playbook} failed, see {log}")
        return took, spent

    def enqueue(self, tag: str) -> int:
        job_id = int(time.time() * 1000) % 1_000_000_000
        payload = {
            "uuid": f"twt-bench-{tag}-{job_id}",
            "repository": {"slug": "twt/bench", "source_url": f"{self.git_url}/demo.git"},
            "job": {"id": job_id, "number": "1.1", "commit": self.commit, "branch": "main"},
            "config": {"script": ["python3 -m unittest test_calc"]},
        }
        self.redis.sadd(f"{NS}:queues", "builds")
        self.redis.rpush(f"{NS}:queue:builds", json.dumps({"class": "Travis::Worker", "args": [payload]}))
        return job_id

    def round_trip(self, timeout: float = 900) -> float:
        """One job through the workers before measuring: the bench counts jobs, so they must work."""
        t0 = time.monotonic()
        job_id = self.enqueue("probe")
        while time.monotonic() - t0 < timeout:
            if job_id in self.finished():
                took = time.monotonic() - t0
                print(f"  probe job {job_id}: finished in {took:.0f} s", flush=True)
                return took
            time.sleep(2)
        raise SystemExit(f"bench: probe job {job_id} not finished after {timeout:.0f} s; {self.diagnose()}")

    def diagnose(self) -> str:
        workers = self.redis.smembers(f"{NS}:workers")
        return (
            f"queue {self.redis.llen(f'{NS}:queue:builds')}, failed {self.redis.llen(f'{NS}:failed')}, "
            f"workers {sorted(workers)}; on the box: journalctl -u 'travis-worker@*'"
        )

    def finished(self) -> dict[int, str]:
        """Job id -> result of every `finished` report."""
        out = {}
        for raw in self.redis.lrange(f"{NS}:reporting:jobs", 0, -1):
            entry = json.loads(raw)
            body = entry.get("body", entry)  # the redis reporter writes flat {"event": "job:state", ...}
            if entry.get("type", "state") == "state" and body.get("state") == "finished":
                out[int(body.get("id", -1))] = body.get("result", "?")
        return out

    def feed(self, stop: threading.Event, ids: list[int]) -> None:
        """Keep at least 2 short jobs queued until `stop`; their ids go to `ids`."""
        while not stop.is_set():
            if self.redis.llen(f"{NS}:queue:builds") < 2:
                ids.append(self.enqueue("load"))
            stop.wait(1)

    def watch_images(self, stop: threading.Event, t0: float, seen: dict[str, dict[str, float]]) -> None:
        """Until `stop`: seen["<host>:<vm>"][digest] = seconds since t0 when the VM's worker first reported
        the image (the field of `vm_state`: every box names its VMs worker-N)."""
        while not stop.is_set():
            for vm, raw in self.redis.hgetall(f"{NS}:travis:vm_state").items():
                try:
                    image = json.loads(raw).get("image") or {}
                except ValueError:
                    continue
                digest = image.get("digest") if isinstance(image, dict) else None
                if digest:
                    seen.setdefault(vm, {}).setdefault(digest, round(time.monotonic() - t0, 1))
            stop.wait(0.5)

    def current_digest(self) -> str | None:
        """The digest of the image `current` points to on the first box (null: none published)."""
        out = self.lab.box.ssh(f"cat {IMAGE_STORE}/*/current/image.json 2>/dev/null", check=False).stdout
        try:
            return json.loads(out)["digest"] if out.strip() else None
        except (ValueError, KeyError):
            return None

    def vms(self) -> list[str]:
        """Every box's VMs as `<host>:<vm>` (fields of `vm_state`; an old-form field, the VM name alone,
        is left out)."""
        return sorted(f for f in self.redis.hkeys(f"{NS}:travis:vm_state") if ":" in f)

    def measure(self, strategy: str, recipes: list[str], n: int, boxes: int, *extra: str) -> dict[str, Any]:
        stop, ids, seen = threading.Event(), [], {}
        t0 = time.monotonic()
        threads = [
            threading.Thread(target=self.feed, args=(stop, ids), daemon=True),
            threading.Thread(target=self.watch_images, args=(stop, t0, seen), daemon=True),
        ]
        for t in threads:
            t.start()
        revision = {"worker_vms_recipes": recipes, "reprovision_recipe_revision": f"{n}-{int(time.time())}"}
        try:
            took, plays = self.play(
                "playbooks/reprovision.yml",
                "-e", f"strategy={strategy}",
                "-e", f"worker_vms_count={n}",
                "-e", json.dumps(revision),
                *extra,
            )  # fmt: skip
            done_in_play = sum(i in self.finished() for i in ids)
        finally:  # also when the playbook failed: the threads end before the lab's Redis goes away
            stop.set()
            for t in threads:
                t.join()
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and not all(i in self.finished() for i in ids):
            time.sleep(3)
        results = self.finished()
        digest = self.current_digest() if strategy == "base_box" else None
        switch = {vm: seen.get(vm, {}).get(digest) for vm in self.vms()} if digest else None
        converged = (
            took
            if strategy == "in_place"
            else (max(switch.values()) if switch and None not in switch.values() else None)
        )
        run = {
            "strategy": strategy,
            "boxes": boxes,
            "vms": n * boxes,
            "wall_s": round(took, 1),
            "converged_s": None if converged is None else round(converged, 1),
            "per_vm_switch_s": switch,
            "jobs_done": done_in_play,
            "jobs_failed": sum(1 for i in ids if i in results and results[i] != "passed"),
            "jobs_lost": sum(1 for i in ids if i not in results),
            "digest": digest,
            "plays": plays,
        }
        print(
            f"    {json.dumps({k: v for k, v in run.items() if k != 'plays'})}; {self.diagnose()}", flush=True
        )
        return run


def recipe_seconds(run: dict[str, Any]) -> float | None:
    spent = [secs for name, secs in run["plays"] if RECIPE_PLAY.search(name)]
    return max(spent) if spent else None


class Runner:
    """One lab per configuration, the runs collected."""

    def __init__(self, args: argparse.Namespace, box_art: BoxArtifact, roles: Path, work: Path):
        self.args, self.box_art, self.work = args, box_art, work
        self.roles_path = f"{roles}:{ROOT / 'roles'}"
        self.fleet_recipes = ["travis.worker.vm_base", "travis.worker.vm_python"]  # what site.yml applies
        self.recipes = [*self.fleet_recipes, "twbench_toolchain"]  # the change every run rolls out
        self.runs: list[dict[str, Any]] = []
        self.pickup: dict[str, Any] | None = None

    def lab(
        self, boxes: int, vms: int, strategies: list[str], with_pickup: bool = False, warm: bool = False
    ) -> None:
        work = Path(tempfile.mkdtemp(prefix=f"twt-bench-{boxes}x{vms}-", dir=self.work))
        env = {"PYTHONUNBUFFERED": "1", "ANSIBLE_ROLES_PATH": self.roles_path}
        with scratch_lab("twt-bench-", self.box_art, work, keep=self.args.keep, boxes=boxes, **env) as lab:
            bench = Bench(lab, work)
            print(f"lab {boxes} box(es) x {vms} VMs: {[b.name for b in lab.boxes]}, work {work}", flush=True)
            bench.play("site.yml", "-e", f"worker_vms_count={vms}", "-e", "worker_build_isolation=true")
            bench.round_trip()
            if with_pickup:
                self.pickup = pickup.measure(
                    bench.redis, lab.box, lab.git_url, lab.commit, self.args.pickup_builds
                )
                print(f"  pickup/reset: {json.dumps(self.pickup)}", flush=True)
            extra = []
            if boxes > 1:
                catalog = work / "catalog"
                catalog.mkdir(exist_ok=True)
                extra = ["-e", f"reprovision_catalog={catalog}"]
            for strategy in strategies:
                if strategy == "base_box" and warm:
                    # the fleet's first image, of the recipes it already runs (without the toolchain): a box
                    # that reprovisions by base_box has one from its last round, and its base VM carries it
                    first = bench.measure(strategy, self.fleet_recipes, vms, boxes, *extra)
                    self.runs.append(dict(first, change="first image (from the box)"))
                run = bench.measure(strategy, self.recipes, vms, boxes, *extra)
                self.runs.append(
                    dict(
                        run,
                        change="+ toolchain"
                        + ("" if warm or strategy == "in_place" else " (first image, from the box)"),
                    )
                )


def table(result: dict[str, Any]) -> str:
    lines = [
        "| strategy | change | boxes x VMs | wall | converged | per-VM switch (s from start) | jobs done "
        "| failed | lost |",
        "|---|---|---:|---:|---:|---|---:|---:|---:|",
    ]
    for r in result["runs"]:
        switch = ", ".join(f"{v}" for _, v in sorted((r["per_vm_switch_s"] or {}).items())) or "-"
        conv = "-" if r["converged_s"] is None else f"{r['converged_s']:.0f} s"
        lines.append(
            f"| {r['strategy']} | {r.get('change', '')} | {r['boxes']} x {r['vms'] // r['boxes']} "
            f"| {r['wall_s']:.0f} s | {conv} | "
            f"{switch} | {r['jobs_done']} | {r['jobs_failed']} | {r['jobs_lost']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1,5")
    parser.add_argument("--fleet", default="2x3", help="BOXESxVMS for the many-boxes run; empty: skip it")
    parser.add_argument("--pickup-builds", type=int, default=20)
    parser.add_argument("--packages", default="build-essential ruby-full default-jdk-headless")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/reprovision.json")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument(
        "--no-fleet-reference", dest="fleet_reference", action="store_false",
        help="--fleet: skip the one-box reference lab (compare with an earlier run's, and say so)",
    )  # fmt: skip
    parser.add_argument(
        "--no-warm", dest="warm", action="store_false",
        help="size labs: measure base_box from the box (the first image) instead of from a first image",
    )  # fmt: skip
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]

    # SIGTERM (kill, a CI timeout) ends the run through the `finally` of the lab: boxes and services removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = Path(tempfile.mkdtemp(prefix="twt-bench-"))
    roles = work / "roles"
    (roles / "twbench_toolchain/tasks").mkdir(parents=True)
    (roles / "twbench_toolchain/tasks/main.yml").write_text(
        RECIPE_TASKS.format(packages=json.dumps(args.packages.split()))
    )
    head = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commit": pickup.commit_of_tree(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }
    runner = Runner(args, ensure_box(), roles, work)

    def write(complete: bool) -> dict[str, Any]:
        """The JSON so far, written after every lab: a run cut short (time, a failure) keeps its figures."""
        first_bb = next(
            (r for r in runner.runs if r["strategy"] == "base_box" and r["change"].startswith("+")), None
        )
        pick = runner.pickup or {}
        result = {
            **head,
            "loadavg_end": [round(x, 2) for x in os.getloadavg()],
            "complete": complete,
            "recipe_s": recipe_seconds(first_bb) if first_bb else None,
            "reset_p50_s": (pick.get("reset_s") or {}).get("p50"),
            "pickup_to_start_p50_s": (pick.get("pickup_to_first_cmd_s") or {}).get("p50"),
            "pickup": runner.pickup,
            "runs": runner.runs,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"written {args.out} ({'complete' if complete else 'so far'})", flush=True)
        return result

    for i, n in enumerate(sizes):
        runner.lab(
            1, n, ["in_place", "base_box"], with_pickup=i == 0 and args.pickup_builds > 0, warm=args.warm
        )
        write(False)
    if args.fleet:
        boxes, vms = (int(x) for x in args.fleet.split("x"))
        if args.fleet_reference:
            runner.lab(1, vms, ["base_box"])  # the one-box reference for the same VMs per box
            write(False)
        runner.lab(boxes, vms, ["base_box"])
    print()
    print(table(write(True)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
