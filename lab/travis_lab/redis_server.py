"""A real `redis-server` on a free localhost port, stoppable and restartable on the same port."""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import time
from pathlib import Path

from travis_lab.errors import LabError

log = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def resp_command(port: int, *args: str, timeout: float = 2.0) -> bytes:
    """Send one RESP command to 127.0.0.1:`port`, return the raw first reply line."""
    payload = f"*{len(args)}\r\n".encode()
    for a in args:
        b = a.encode()
        payload += b"$%d\r\n%s\r\n" % (len(b), b)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(payload)
        data = b""
        while not data.endswith(b"\r\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    return data.strip()


class RedisServer:
    """`redis-server --port N --save '' --appendonly no` in `workdir`; stop()/start() keep the port."""

    def __init__(self, workdir: Path, port: int | None = None, binary: str = "redis-server") -> None:
        self.workdir = Path(workdir)
        self.port = port or free_port()
        self.binary = binary
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def ping(self) -> bool:
        try:
            return resp_command(self.port, "PING", timeout=0.5) == b"+PONG"
        except OSError:
            return False

    def start(self, timeout: float = 10.0) -> None:
        if self.running:
            return
        exe = shutil.which(self.binary)
        if exe is None:
            raise LabError(
                "redis", f"{self.binary} not found", "apt-get install redis-server (scripts/setup)"
            )
        self.workdir.mkdir(parents=True, exist_ok=True)
        logfile = self.workdir / "redis.log"
        argv = [
            exe,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.workdir),
            "--logfile",
            str(logfile),
            "--daemonize",
            "no",
        ]
        deadline = time.monotonic() + timeout
        while True:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            while time.monotonic() < deadline and self.proc.poll() is None:
                if self.ping():
                    log.info("redis-server up on port %d (pid %d)", self.port, self.proc.pid)
                    return
                time.sleep(0.05)
            if self.proc.poll() is None or time.monotonic() >= deadline:
                break
            time.sleep(0.2)  # exited early: the port may still be held by the previous instance; retry
        tail = logfile.read_text(errors="replace")[-1500:] if logfile.exists() else ""
        self.stop()
        raise LabError(
            "redis",
            f"redis-server on port {self.port} did not answer PING within {timeout} s: {tail}",
            f"see {logfile}",
        )

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def flushall(self) -> None:
        reply = resp_command(self.port, "FLUSHALL")
        if reply != b"+OK":
            raise LabError("redis", f"FLUSHALL on port {self.port} answered {reply!r}", "see the redis log")
