"""`python -m travis_lab demo`: the main job on the built-in lab, from a fresh machine to a `passed` build.

Steps: base box (built or reused) -> lxcbr0 bridge -> Redis, CI-app stand-in and a git daemon on the host's
bridge address -> the lab box container -> `ansible-playbook site.yml -i inventories/lab` (2 worker VMs, LXC
provider) -> one build of a real local git repository enqueued -> its log streamed from the CI app
-> `passed`.

`python -m travis_lab demo --down` (or `down()`) removes exactly what the demo created: its processes (by the
pids it recorded, only while they still run what it started) and its container (through the lab state).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from travis_lab import cache, net
from travis_lab.demo_progress import Progress, StepFailed, run_logged
from travis_lab.demo_repo import DemoRepo, ensure_demo_repo
from travis_lab.demo_services import (
    LabState,
    Service,
    start_ciapp,
    start_git_daemon,
    start_redis,
    stop_recorded,
)
from travis_lab.errors import LabError

log = logging.getLogger(__name__)

ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
REPO_ROOT = Path(__file__).resolve().parents[2]
STEPS = 7


@dataclass
class DemoPaths:
    root: Path

    @property
    def state(self) -> Path:
        return self.root / "state.json"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def services(self) -> Path:
        return self.root / "services"

    @property
    def repos(self) -> Path:
        return self.root / "repos"

    @property
    def inventory(self) -> Path:
        return self.root / "inventory.ini"


def demo_paths(cache_dir: Path | None = None) -> DemoPaths:
    return DemoPaths(cache.cache_root(cache_dir) / "demo")


# ------------------------------------------------------------------------------------------------- steps
def _box(progress: Progress) -> tuple[Path, Path]:
    from travis_lab.boxbuild import ensure_box

    art = ensure_box()
    progress.detail(f"{'reused' if art.reused else 'built'} {art.path} (sha256 {art.sha256[:16]})")
    return art.path, art.rootfs


def _container(progress: Progress, state: LabState, rootfs: Path, paths: DemoPaths) -> tuple[str, str]:
    from travis_lab.boxbuild import host_arch
    from travis_lab.container import (
        BoxContainer,
        container_ips,
        container_state,
        create_container,
        unique_name,
    )
    from travis_lab.sshkey import lab_keypair

    name = state.extra.get("container", "")
    if name and container_state(name) == "RUNNING" and container_ips(name):
        ip = container_ips(name)[0]
        progress.detail(f"reusing the lab box container {name} at {ip}")
        box = BoxContainer(name=name, ip=ip, ssh_key=lab_keypair())
    else:
        name = unique_name("twlab-")
        state.extra["container"] = name
        state.containers = [name]
        state.save()
        box = create_container(name, rootfs, arch=host_arch())
        progress.detail(f"created {box.name} at {box.ip}")
    cas = box.trust_host_cas()
    if cas:
        progress.detail(f"trusting the host's extra CA certificates in the box: {', '.join(cas)}")
    paths.inventory.write_text(box.inventory(group="worker_boxes"), encoding="utf-8")
    progress.detail(f"inventory: {paths.inventory}")
    return box.name, box.ip


def ansible_env(box_file: Path, redis_url: str, **extra: str) -> dict[str, str]:
    """The environment of ansible-playbook against a lab box (the demo, the playbook tests, the bench): the
    checkout's ansible.cfg, this venv's binaries first, no colours, and what inventories/lab reads -- the box
    file to copy in and the port of the lab's Redis. `extra` adds or overrides variables."""
    return {
        **os.environ,
        "ANSIBLE_CONFIG": str(REPO_ROOT / "ansible.cfg"),
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_NOCOLOR": "1",
        "TRAVIS_LAB_BOX": str(box_file),
        "TRAVIS_LAB_REDIS_PORT": redis_url.rsplit(":", 1)[1].split("/")[0],
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
        **extra,
    }


def _site(
    progress: Progress, paths: DemoPaths, box_file: Path, redis: Service, ciapp: Service, token: str
) -> None:
    env = ansible_env(box_file, redis.url)
    extra = {
        "worker_travis_url": ciapp.url,
        "worker_travis_username": "lab",
        "worker_travis_token": token,
        # The runner wheel is built on this controller; the venv's setuptools 65 has no bdist_wheel, so
        # pip fetches its build backend from PyPI (reachable here) instead of using the venv's.
        "worker_build_isolation": True,
        # The box reaches PyPI itself (it trusts the host's CA certificates, see BoxContainer.trust_host_cas).
        "worker_pip_source": "index",
    }
    extra_file = paths.root / "site-extra-vars.json"  # the app token stays out of argv and the console
    extra_file.touch(mode=0o600)
    extra_file.write_text(json.dumps(extra), encoding="utf-8")
    argv = [
        str(Path(sys.executable).parent / "ansible-playbook"),
        "-i", str(REPO_ROOT / "inventories" / "lab"),
        "-i", str(paths.inventory),
        "-e", f"@{extra_file}",
        str(REPO_ROOT / "site.yml"),
    ]  # fmt: skip

    def show(line: str) -> bool:
        return line.startswith(("PLAY [", "TASK [", "fatal:", "failed:", "ERROR")) or " : ok=" in line

    run_logged(
        argv,
        paths.logs / "site.log",
        progress,
        show=show,
        cwd=REPO_ROOT,
        env=env,
        what="ansible-playbook site.yml -i inventories/lab",
        remedy="Fix the failing task above and run `make lab` again (everything done so far is reused).",
    )


def _enqueue(progress: Progress, paths: DemoPaths, redis: Service, repo: DemoRepo, git: Service) -> int:
    job_id = int(time.time()) % 1_000_000_000
    payload = {
        "uuid": f"twlab-{secrets.token_hex(6)}",
        "repository": {"slug": "twlab/demo", "source_url": f"{git.url}/demo.git"},
        "job": {"id": job_id, "number": "1.1", "commit": repo.commit, "branch": repo.branch},
        "config": {
            "language": "python",
            "before_install": ["python3 --version"],
            "script": ["python3 -m unittest -v test_calc"],
        },
        "timeouts": {"hard_limit": 600, "log_silence": 300},
    }
    cfg = paths.root / "enqueue-worker.yml"
    cfg.write_text(json.dumps({"redis": {"url": redis.url}, "queue": "builds", "reporter": "redis"}) + "\n")
    job_file = paths.root / f"job-{job_id}.json"
    job_file.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    cli = Path(sys.executable).parent / "travis-worker"
    proc = subprocess.run(
        [str(cli), "--config", str(cfg), "enqueue", str(job_file)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise StepFailed(
            f"travis-worker enqueue {job_file} exited {proc.returncode}: {proc.stderr.strip()}. "
            f"Check Redis at {redis.url} (redis-cli -u {redis.url} ping)."
        )
    progress.detail(
        f"job {job_id}: twlab/demo@{repo.commit[:10]} from {git.url}/demo.git -> {proc.stdout.strip()}"
    )
    return job_id


def _follow(progress: Progress, ciapp_log: Path, job_id: int, timeout: float) -> str:
    """Print the job's log parts and states from the CI app's output as they arrive; return the result."""
    prefix_state = f"PUT /jobs/{job_id} "
    prefix_log = f"PUT /jobs/{job_id}/log "
    deadline = time.monotonic() + timeout
    offset = 0
    buf = ""
    while time.monotonic() < deadline:
        with ciapp_log.open(encoding="utf-8", errors="replace") as fh:
            fh.seek(offset)
            chunk = fh.read()
            offset = fh.tell()
        buf += chunk
        *lines, buf = buf.split("\n")
        for line in lines:
            if line.startswith(prefix_log):
                body = json.loads(line[len(prefix_log) :])
                for text in str(body.get("log", "")).splitlines():
                    text = ANSI_ESCAPE.sub("", text.rsplit("\r", 1)[-1])  # terminal progress: last state only
                    progress.say(f"    | {text}")
            elif line.startswith(prefix_state):
                body = json.loads(line[len(prefix_state) :])
                state = body.get("state")
                progress.detail(f"[app] job {job_id} {state} (worker {body.get('worker', '?')})")
                if state == "finished":
                    return str(body.get("result", "unknown"))
        time.sleep(0.5)
    raise StepFailed(
        f"job {job_id} did not finish within {timeout:.0f} s; see the CI app log {ciapp_log} and "
        "`make lab-workers` / travis-worker status in the box"
    )


def _closing(progress: Progress, paths: DemoPaths, box_name: str, box_file: Path, redis: Service) -> None:
    inv = f"-i inventories/lab -i {paths.inventory}"
    port = redis.url.rsplit(":", 1)[1].split("/")[0]
    progress.say("==> next steps (from the repository root):")
    for line in (
        f"export TRAVIS_LAB_BOX={box_file} TRAVIS_LAB_REDIS_PORT={port}",
        f".venv/bin/ansible-playbook {inv} playbooks/workers.yml -e action=status",
        f".venv/bin/ansible-playbook {inv} playbooks/reprovision.yml -e strategy=base_box --check  # drift",
        f".venv/bin/ansible-playbook {inv} playbooks/reprovision.yml -e strategy=base_box",
        f".venv/bin/ansible-playbook {inv} playbooks/scale.yml -e worker_vms_count=3",
        f".venv/bin/ansible-playbook {inv} playbooks/workers.yml -e action=stop",
        f"ssh into the box: .venv/bin/python -m travis_lab ssh {box_name}",
        "make lab-down    # removes only what the lab created",
    ):
        progress.detail(line)


# --------------------------------------------------------------------------------------------- commands
def up(cache_dir: Path | None = None, follow_timeout: float = 900) -> int:
    paths = demo_paths(cache_dir)
    paths.root.mkdir(parents=True, exist_ok=True)
    state = LabState.load(paths.state)
    token = state.extra.get("ciapp_token") or secrets.token_hex(12)
    state.extra["ciapp_token"] = token
    state.save()
    progress = Progress(total=STEPS)
    progress.say(f"travis.worker lab demo (state: {paths.state}, logs: {paths.logs})")
    with progress.step("Vagrant-LXC base box (Debian 12): build or reuse"):
        box_file, rootfs = _box(progress)
    services = "Redis, CI-app stand-in, git daemon + demo repository"
    with progress.step(f"host services on {net.HOST_ADDR}: {services}"):
        net.ensure_bridge()
        redis = start_redis(state, net.HOST_ADDR, paths.services)
        progress.detail(f"redis   {redis.url} (pid {redis.pid})")
        ciapp = start_ciapp(state, net.HOST_ADDR, paths.services, token)
        progress.detail(f"ci app  {ciapp.url} (pid {ciapp.pid}, reports in {paths.services / 'ciapp.log'})")
        repo = ensure_demo_repo(paths.repos)
        git = start_git_daemon(state, net.HOST_ADDR, paths.repos, paths.services)
        progress.detail(f"git     {git.url}/demo.git at {repo.commit[:10]} (pid {git.pid})")
    with progress.step("lab box container (LXC, systemd, nesting)"):
        box_name, _ip = _container(progress, state, rootfs, paths)
    with progress.step("ansible-playbook site.yml -i inventories/lab (2 worker VMs, LXC provider)"):
        _site(progress, paths, box_file, redis, ciapp, token)
    with progress.step("enqueue the demo build"):
        job_id = _enqueue(progress, paths, redis, repo, git)
    with progress.step(f"build log of job {job_id} (streamed from the CI app)"):
        result = _follow(progress, paths.services / "ciapp.log", job_id, follow_timeout)
    with progress.step("result"):
        progress.say(f"    job {job_id}: {result}")
    progress.summary()
    _closing(progress, paths, box_name, box_file, redis)
    progress.say(f"==> {result}")
    return 0 if result == "passed" else 1


def down(cache_dir: Path | None = None) -> int:
    """Remove what the demo created: its services and its box container (nothing else)."""
    from travis_lab.container import destroy_container
    from travis_lab.state import State

    paths = demo_paths(cache_dir)
    state = LabState.load(paths.state)
    for what in stop_recorded(state):
        print(f"stopped {what}")
    for name in state.containers:
        if State(cache_dir).owns(name):
            destroy_container(name, cache_dir=cache_dir)
            print(f"removed container {name}")
        else:
            print(f"container {name}: not in the lab state any more, nothing to remove")
    state.containers = []
    state.extra.pop("container", None)
    state.save()
    print("lab demo is down")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m travis_lab demo", description=__doc__.split("\n")[0])
    parser.add_argument("--down", action="store_true", help="remove what the demo created, and only that")
    parser.add_argument("--timeout", type=float, default=900, help="seconds to wait for the demo build")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    try:
        return down() if args.down else up(follow_timeout=args.timeout)
    except (StepFailed, LabError) as exc:
        print(f"lab demo: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lab demo: interrupted; `make lab` resumes, `make lab-down` cleans up", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
