"""Host-side services of the lab demo: Redis, git daemon and the CI-app stand-in, recorded for `down`.

Every process started here is written to the lab state file with its pid and the command line it was
started with; `stop_recorded` only signals a pid whose /proc cmdline still matches, so a recycled pid
of someone else's process is never touched.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass
class Service:
    name: str
    pid: int
    argv: list[str]
    url: str


@dataclass
class LabState:
    """What the lab created, so that `down` removes exactly that."""

    path: Path
    services: dict[str, Service] = field(default_factory=dict)
    containers: list[str] = field(default_factory=list)
    extra: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> LabState:
        if not path.is_file():
            return cls(path=path)
        data = json.loads(path.read_text(encoding="utf-8"))
        return cls(
            path=path,
            services={k: Service(**v) for k, v in data.get("services", {}).items()},
            containers=list(data.get("containers", [])),
            extra=dict(data.get("extra", {})),
        )

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {
            "services": {k: asdict(v) for k, v in self.services.items()},
            "containers": self.containers,
            "extra": self.extra,
        }
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        tmp.replace(self.path)


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_port(host: str, port: int, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{what} did not listen on {host}:{port} within {timeout:.0f} s")


def _cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def alive(svc: Service) -> bool:
    """True when pid runs the program the lab started (first argv word matches)."""
    cmd = _cmdline(svc.pid)
    if not cmd:
        return False
    want = os.path.basename(svc.argv[0])
    return any(os.path.basename(part).startswith(want) for part in cmd[:2])


def _pid_from_file(path: Path, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_file() and path.read_text().strip():
            return int(path.read_text().strip())
        time.sleep(0.1)
    raise RuntimeError(f"no pid file {path} after {timeout:.0f} s")


def start_redis(state: LabState, host: str, workdir: Path) -> Service:
    """A lab redis-server on `host` and 127.0.0.1 (free port), reused when the recorded one still runs."""
    svc = state.services.get("redis")
    if svc and alive(svc):
        return svc
    port = free_port(host)
    workdir.mkdir(parents=True, exist_ok=True)
    pidfile = workdir / "redis.pid"
    pidfile.unlink(missing_ok=True)
    argv = [
        "redis-server",
        "--bind", host, "127.0.0.1",
        "--port", str(port),
        "--protected-mode", "no",
        "--save", "",
        "--appendonly", "no",
        "--dir", str(workdir),
        "--pidfile", str(pidfile),
        "--logfile", str(workdir / "redis.log"),
        "--daemonize", "yes",
    ]  # fmt: skip
    subprocess.run(argv, check=True)
    pid = _pid_from_file(pidfile)
    wait_port(host, port, 10, "redis-server")
    svc = Service(name="redis", pid=pid, argv=argv, url=f"redis://{host}:{port}/0")
    state.services["redis"] = svc
    state.save()
    return svc


def start_git_daemon(state: LabState, host: str, base: Path, workdir: Path) -> Service:
    """`git daemon` exporting the repositories under `base` read-only on host (free port)."""
    svc = state.services.get("git")
    if svc and alive(svc):
        return svc
    port = free_port(host)
    pidfile = workdir / "git-daemon.pid"
    pidfile.unlink(missing_ok=True)
    argv = [
        "git", "daemon",
        "--reuseaddr", "--export-all", "--detach",
        f"--base-path={base}",
        f"--listen={host}",
        f"--port={port}",
        f"--pid-file={pidfile}",
        str(base),
    ]  # fmt: skip
    subprocess.run(argv, check=True)
    pid = _pid_from_file(pidfile)
    wait_port(host, port, 10, "git daemon")
    svc = Service(name="git", pid=pid, argv=argv, url=f"git://{host}:{port}")
    state.services["git"] = svc
    state.save()
    return svc


def start_ciapp(state: LabState, host: str, workdir: Path, token: str) -> Service:
    """The CI-app stand-in (`python -m travis_lab.ciapp`) in the background; it prints every report it accepts
    (`PUT /jobs/<id>[/log] <json>`) to <workdir>/ciapp.log, which the demo follows."""
    svc = state.services.get("ciapp")
    if svc and alive(svc):
        return svc
    port = free_port(host)
    workdir.mkdir(parents=True, exist_ok=True)
    argv = [
        sys.executable, "-m", "travis_lab.ciapp",
        "--host", host,
        "--port", str(port),
        "--username", "lab",
        "--token", token,
    ]  # fmt: skip
    with (workdir / "ciapp.log").open("a", encoding="utf-8") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    wait_port(host, port, 15, "CI-app stand-in (travis_lab.ciapp)")
    svc = Service(name="ciapp", pid=proc.pid, argv=argv, url=f"http://{host}:{port}")
    state.services["ciapp"] = svc
    state.save()
    return svc


def stop_recorded(state: LabState, timeout: float = 10.0) -> list[str]:
    """SIGTERM (then SIGKILL) each recorded service still running what the lab started; say which."""
    stopped: list[str] = []
    for name, svc in list(state.services.items()):
        if alive(svc):
            os.kill(svc.pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while alive(svc) and time.monotonic() < deadline:
                time.sleep(0.1)
            if alive(svc):
                os.kill(svc.pid, signal.SIGKILL)
            stopped.append(f"{name} (pid {svc.pid})")
        del state.services[name]
        state.save()
    return stopped
