"""The runner's own work per real job, independent of the host's load: CPU time and Redis commands.

    .venv/bin/python bench/runner/cpu.py [--jobs 100] [--src runner/src]

One `travis-worker run` process (the benchmark's real-job setup: `local` executor, `http` reports to
lab/travis_lab/ciapp.py in this process, `script: true` from a local git repository). After 3 warm-up jobs,
`--jobs` jobs are pre-filled and drained; printed per job: the worker process's own CPU time (utime + stime
from /proc/<pid>/stat; its build subprocesses not included) and Redis commands (`INFO commandstats`, commands
inside Lua scripts included; this harness's KEYS/INFO left out). `--src` runs another checkout's runner
(e.g. `git archive` of an older commit) against the same harness.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[2] / "lab"), str(Path(__file__).parent)]

from bench import ROOT, RealTravisSide, StampingApp, _ping, free_port, make_repo, wait_for  # noqa: E402


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime (fields 14, 15)


def commands(side: RealTravisSide) -> int:
    stats = side.r.info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items() if k not in ("cmdstat_keys", "cmdstat_info"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--src", default=str(ROOT / "runner" / "src"))
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="twt-cpu-"))
    port = free_port()
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        cwd=tmp,
    )
    app = StampingApp()
    src = str(Path(args.src).resolve())

    class Side(RealTravisSide):
        def env(self) -> dict[str, str]:
            return {**super().env(), "PYTHONPATH": src}

    try:
        url = f"redis://127.0.0.1:{port}/0"
        wait_for(lambda: _ping(url), 10, "redis-server")
        side = Side(url, tmp, make_repo(tmp / "git"), app)
        side.start()
        assert side.proc is not None
        for _ in range(3):
            job_id, raw = side.payload()
            side.r.rpush("twreal:queue:bench", raw)
            app.wait(job_id, 120)
        side.r.config_resetstat()
        cpu0, load0 = cpu_seconds(side.proc.pid), os.getloadavg()[0]
        ids = []
        pipe = side.r.pipeline(transaction=False)
        for _ in range(args.jobs):
            job_id, raw = side.payload()
            ids.append(job_id)
            pipe.rpush("twreal:queue:bench", raw)
        pipe.execute()
        for job_id in ids:
            app.wait(job_id, 600)
        wait_for(lambda: not side.r.keys("twreal:travis:outbox:*"), 30, "the sender's last pops")
        cpu = (cpu_seconds(side.proc.pid) - cpu0) / args.jobs * 1000
        calls = (commands(side) - len(ids)) / args.jobs  # the RPUSHes of the jobs left out
        print(
            f"{args.jobs} jobs, src {src}: worker CPU {cpu:.2f} ms/job, Redis commands {calls:.1f}/job, "
            f"loadavg {load0:.2f} -> {os.getloadavg()[0]:.2f}"
        )
        side.stop()
    finally:
        app.app.stop()
        server.terminate()
        server.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
