"""Benchmark: wall time of `playbooks/reprovision.yml`, strategy in_place vs base_box, on the lab.

    .venv/bin/python bench/reprovision/run.py [--sizes 1,3,5] [--packages "PKG ..."]

For each N: the lab box is scaled to N worker VMs and rebuilt from the original base box (not measured), then
`reprovision.yml -e strategy=in_place` and `-e strategy=base_box` run with the same recipe list: the usual
recipes plus `twbench_toolchain`, a real recipe that installs a language runtime and build tools from the
distro (at least 60 s per VM). While each runs, a feeder keeps short jobs in the queue; the jobs finished
during the run show the capacity kept. Prints a Markdown table (paste it into docs/playbooks.md).
Not a timed test.

Everything it creates carries the `twt-bench-` prefix and is removed at the end (`--keep` keeps the box).
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import redis
from travis_lab.boxbuild import ensure_box
from travis_lab.scratch import ScratchLab, scratch_lab

ROOT = Path(__file__).resolve().parents[2]
NS = "resque"
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
        self.box, self.work, self.env, self.inventory = lab.box, work, lab.env, lab.inventory
        self.redis = redis.Redis.from_url(lab.redis_url, decode_responses=True)
        self.git_url, self.commit = lab.git_url, lab.commit

    def play(self, playbook: str, *args: str) -> float:
        """Run one playbook; its log gets each line prefixed with the seconds since start, and the time
        spent in each play is printed (where a strategy spends its time)."""
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
        for (name, start), end in zip(plays, ends):
            if end - start >= 5:
                print(f"      {end - start:6.0f} s  {name}", flush=True)
        if rc != 0:
            raise SystemExit(f"bench: {playbook} failed, see {log}")
        return took

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
            if job_id in self.finished_ids():
                took = time.monotonic() - t0
                print(f"  probe job {job_id}: finished in {took:.0f} s (sandbox reset + build)", flush=True)
                return took
            time.sleep(2)
        raise SystemExit(f"bench: probe job {job_id} not finished after {timeout:.0f} s; {self.diagnose()}")

    def diagnose(self) -> str:
        workers = self.redis.smembers(f"{NS}:workers")
        return (
            f"queue {self.redis.llen(f'{NS}:queue:builds')}, failed {self.redis.llen(f'{NS}:failed')}, "
            f"workers {sorted(workers)}; on the box: journalctl -u 'travis-worker@*'"
        )

    def finished_ids(self) -> set[int]:
        out = set()
        for raw in self.redis.lrange(f"{NS}:reporting:jobs", 0, -1):
            entry = json.loads(raw)
            body = entry.get("body", entry)  # the redis reporter writes flat {"event": "job:state", ...}
            if body.get("state") == "finished":
                out.add(int(body.get("id", -1)))
        return out

    def finished_count(self) -> int:
        return len(self.finished_ids())

    def feed(self, stop: threading.Event) -> None:
        """Keep at least 2 short jobs queued until `stop`."""
        while not stop.is_set():
            if self.redis.llen(f"{NS}:queue:builds") < 2:
                self.enqueue("load")
            stop.wait(1)

    def reset_boxes(self) -> None:
        """Back to the original base box only (versions made by earlier base_box runs removed)."""
        vagrant = "sudo -u travis HOME=/home/travis vagrant"
        script = (
            f"cd /home/travis && for v in $({vagrant} box list --machine-readable "
            "| awk -F, '$3==\"box-version\" {print $4}' | grep -vx 0); do "
            f"{vagrant} box remove twlab/debian12 --box-version $v --force; done; "
            "rm -f /etc/travis-worker/vms/boxes.json"
        )
        self.box.ssh(script, timeout=600)

    def measure(self, strategy: str, recipes: list[str], n: int) -> tuple[float, int]:
        stop = threading.Event()
        feeder = threading.Thread(target=self.feed, args=(stop,), daemon=True)
        before = self.finished_count()
        t0 = int(time.time())
        feeder.start()
        took = self.play(
            "playbooks/reprovision.yml",
            "-e", f"strategy={strategy}",
            "-e", f"worker_vms_count={n}",
            "-e", json.dumps({"worker_vms_recipes": recipes, "reprovision_recipe_revision": f"{n}-{t0}"}),
        )  # fmt: skip
        stop.set()
        feeder.join()
        done = self.finished_count() - before
        left = self.redis.delete(f"{NS}:queue:builds")  # leftover load must not delay the next probe
        if left:
            print("    (cleared the jobs the feeder left queued)", flush=True)
        print(f"    jobs finished during the run: {done}; {self.diagnose()}", flush=True)
        return took, done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1,3,5")
    parser.add_argument("--packages", default="build-essential ruby-full default-jdk-headless")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]

    # SIGTERM (kill, a CI timeout) ends the run through the `finally` below: box and services removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = Path(tempfile.mkdtemp(prefix="twt-bench-"))
    roles = work / "roles"
    (roles / "twbench_toolchain/tasks").mkdir(parents=True)
    (roles / "twbench_toolchain/tasks/main.yml").write_text(
        RECIPE_TASKS.format(packages=json.dumps(args.packages.split()))
    )
    rows = []
    roles_path = f"{roles}:{ROOT / 'roles'}"
    with scratch_lab(
        "twt-bench-", ensure_box(), work, keep=args.keep, PYTHONUNBUFFERED="1", ANSIBLE_ROLES_PATH=roles_path
    ) as lab:
        bench = Bench(lab, work)
        print(f"bench: box {lab.box.name}, work {work}", flush=True)
        bench.play("site.yml", "-e", f"worker_vms_count={sizes[0]}", "-e", "worker_build_isolation=true")
        base = ["travis.worker.vm_base", "travis.worker.vm_python"]
        for n in sizes:
            print(f"N={n}", flush=True)
            if n != sizes[0]:  # the first size's VMs come fresh from the original box (site.yml above)
                bench.play("playbooks/scale.yml", "-e", f"worker_vms_count={n}")
                bench.reset_boxes()
                bench.play("playbooks/rebuild.yml", "-e", f"worker_vms_count={n}")
            bench.round_trip()
            t_in, jobs_in = bench.measure("in_place", [*base, "twbench_toolchain"], n)
            t_bb, jobs_bb = bench.measure("base_box", [*base, "twbench_toolchain"], n)
            rows.append((n, t_in, t_bb, jobs_in, jobs_bb))
            print(f"ROW N={n} in_place={t_in:.0f}s base_box={t_bb:.0f}s jobs={jobs_in}/{jobs_bb}", flush=True)

    print("\n| N VMs | in_place | base_box | in_place / base_box | jobs done in in_place | in base_box |")
    print("|---:|---:|---:|---:|---:|---:|")
    for n, t_in, t_bb, j_in, j_bb in rows:
        print(f"| {n} | {t_in:.0f} s | {t_bb:.0f} s | {t_in / t_bb:.2f}x | {j_in} | {j_bb} |")
    if len(rows) >= 2:
        (n0, i0, b0, *_), (n1, i1, b1, *_) = rows[0], rows[-1]
        print(
            f"\nper extra VM: in_place {(i1 - i0) / (n1 - n0):.0f} s, base_box {(b1 - b0) / (n1 - n0):.0f} s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
