"""The lab end to end, on the real thing: box build/reuse, 2 Vagrant-LXC VMs on this host, 1 VM nested
inside an LXC worker box container, Redis restart on the same port. Durations are logged and appended
to <lab cache>/logs/test-lab-durations.jsonl.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from travis_lab import cache
from travis_lab.boxbuild import BoxArtifact, build_box
from travis_lab.container import container_state
from travis_lab.redis_server import resp_command
from travis_lab.vagrant import render_vagrantfile

pytestmark = pytest.mark.integration
log = logging.getLogger("travis_lab.test_lab")
NESTED_APT = "lxc vagrant vagrant-lxc dnsmasq-base iptables rsync"


@pytest.fixture(scope="module")
def durations() -> Iterator[dict[str, float]]:
    d: dict[str, float] = {}
    t0 = time.monotonic()
    yield d
    d["module_total"] = round(time.monotonic() - t0, 1)
    log.info("test_lab durations: %s", d)
    logs = cache.cache_root() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with (logs / "test-lab-durations.jsonl").open("a") as fh:
        fh.write(
            json.dumps({"at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), **d}) + "\n"
        )


def test_box_is_built_or_reused(lab_box: BoxArtifact, durations: dict[str, float]) -> None:
    durations["box_reused"] = float(lab_box.reused)
    durations.update({f"box_{k}": v for k, v in lab_box.timings.items()} if not lab_box.reused else {})
    assert lab_box.path.is_file() and lab_box.rootfs.is_file()
    with tarfile.open(lab_box.path) as tar:
        names = set(tar.getnames())
        meta = json.load(tar.extractfile("metadata.json"))  # type: ignore[arg-type]
    assert {"metadata.json", "rootfs.tar.gz", "lxc-config"} <= names
    assert meta == {"provider": "lxc", "version": "1.0.0"}
    t0 = time.monotonic()
    again = build_box()
    durations["box_second_call"] = round(time.monotonic() - t0, 1)
    assert again.reused is True
    assert again.sha256 == lab_box.sha256 == cache.file_sha256(lab_box.path)


def test_redis_restarts_on_the_same_port(redis_server, redis_url: str) -> None:  # type: ignore[no-untyped-def]
    port = redis_server.port
    assert redis_url == f"redis://127.0.0.1:{port}/0"
    assert resp_command(port, "SET", "k", "v") == b"+OK"
    redis_server.stop()
    assert not redis_server.ping()
    redis_server.start()
    assert redis_server.port == port and redis_server.ping()
    assert resp_command(port, "GET", "k") == b"$-1"  # --save '': nothing survives a restart


def test_two_vagrant_lxc_vms_on_this_host(vagrant_project, durations: dict[str, float]) -> None:  # type: ignore[no-untyped-def]
    project = vagrant_project(2)
    project.up()
    durations["host_vms_up"] = project.timings["up"]
    for machine in ("worker-1", "worker-2"):
        out = project.ssh(machine, "hostname; sudo -n true && echo sudo-ok; python3 -c 'print(6*7)'").stdout
        assert out.split() == [machine, "sudo-ok", "42"], out
    assert "ansible_host=10.0.3." in project.inventory()
    project.destroy()
    durations["host_vms_destroy"] = project.timings["destroy"]
    for container in project.machines.values():
        assert container_state(container) == "ABSENT"


def test_vm_nested_in_a_box_container(  # type: ignore[no-untyped-def]
    box_container, lab_box: BoxArtifact, tmp_path: Path, durations: dict[str, float]
) -> None:
    t0 = time.monotonic()
    box = box_container()
    durations["box_container_up"] = round(time.monotonic() - t0, 1)
    assert box.name.startswith("twt-")
    assert box.ssh("systemctl is-active ssh twlab-cgroup-fix").stdout.split() == ["active", "active"]

    inv = tmp_path / "inventory.ini"
    inv.write_text(box.inventory())
    ansible = Path(sys.executable).parent / "ansible"
    ping = subprocess.run([str(ansible), "-i", str(inv), "all", "-m", "ping"], capture_output=True, text=True)
    assert ping.returncode == 0 and "SUCCESS" in ping.stdout and "pong" in ping.stdout, (
        ping.stdout + ping.stderr
    )

    t0 = time.monotonic()
    box.run(f"apt-get update -q && apt-get install -y -q --no-install-recommends {NESTED_APT}", timeout=1200)
    durations["nested_apt"] = round(time.monotonic() - t0, 1)
    assert box.run("ip -4 -o addr show lxcbr0").stdout.split()[3] == "10.0.4.1/24"

    rootfs = box.lxc_path / box.name / "rootfs"
    shutil.copy(lab_box.path, rootfs / "root/twlab.box")
    (rootfs / "root/nested").mkdir()
    (rootfs / "root/nested/Vagrantfile").write_text(
        render_vagrantfile("twlab/debian12", {"nested-1": "twt-nested-1"})
    )
    t0 = time.monotonic()
    box.run("vagrant box add --name twlab/debian12 /root/twlab.box")
    box.run("cd /root/nested && vagrant up --provider=lxc")
    durations["nested_vm_up"] = round(time.monotonic() - t0, 1)
    out = box.run("cd /root/nested && vagrant ssh nested-1 -c 'hostname; ip -4 -o addr show eth0'").stdout
    assert out.split()[0] == "nested-1"
    assert " 10.0.4." in out, out
    box.run("cd /root/nested && vagrant destroy -f")
    assert "twt-nested-1" not in box.run("lxc-ls -1").stdout

    t0 = time.monotonic()
    box.destroy()
    durations["box_container_destroy"] = round(time.monotonic() - t0, 1)
    assert container_state(box.name) == "ABSENT"


def test_debootstrap_failure_leaves_no_cache_entry(tmp_path: Path) -> None:
    """A real debootstrap that fails (unknown package): step named, nonzero, nothing half-built left."""
    from travis_lab.boxbuild import BOX_PACKAGES, list_entries
    from travis_lab.errors import LabError

    with pytest.raises(LabError) as exc:
        build_box(cache_dir=tmp_path, packages=(*BOX_PACKAGES, "twt-no-such-package"))
    assert exc.value.step == "debootstrap"
    assert "twt-no-such-package" in exc.value.problem
    assert list_entries(tmp_path) == []
    assert list((tmp_path / "tmp").iterdir()) == []
    assert (tmp_path / "logs" / "last-failed-build.log").stat().st_size > 0
