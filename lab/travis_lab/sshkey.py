"""The lab's SSH keypair (generated once into the cache) and the ssh options for lab containers."""

from __future__ import annotations

import subprocess
from pathlib import Path

from travis_lab import cache
from travis_lab.errors import LabError

SSH_OPTS = (
    "-o",
    "StrictHostKeyChecking=no",
    "-o",
    "UserKnownHostsFile=/dev/null",
    "-o",
    "LogLevel=ERROR",
    "-o",
    "BatchMode=yes",
    "-o",
    "ConnectTimeout=5",
)


def lab_keypair(cache_dir: Path | None = None) -> Path:
    """Path of the lab's private key (`.pub` next to it), created on first use."""
    d = cache.cache_root(cache_dir) / "ssh"
    key = d / "id_ed25519"
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    with cache.locked(d / "keygen.lock", "lab ssh key lock"):
        if key.is_file() and key.with_suffix(".pub").is_file():
            return key
        key.unlink(missing_ok=True)
        proc = subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "travis-lab", "-f", str(key)],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise LabError(
                "ssh-key",
                f"ssh-keygen failed for {key}: {proc.stderr.strip()}",
                "install openssh-client and check the cache dir is writable",
            )
    return key


def ssh_argv(key: Path, user: str, host: str) -> list[str]:
    return ["ssh", "-i", str(key), *SSH_OPTS, f"{user}@{host}"]
