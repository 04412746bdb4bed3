"""Issue #13 on the real lab: a worker with jobs flowing moves its Vagrant-LXC VM onto a newly published
image at the job boundary.

Real Vagrant-LXC machine (lab fixture), the lxc role's travis-worker-lxc-sandbox from the checkout (as root,
the image store in a temp dir through TRAVIS_WORKER_IMAGE_STORE), a real redis-server, the real Worker and
VagrantExecutor in this process (the helper path is the checkout's), real builds cloning over git daemon.
The image is published by hand as the playbook does: the helper's `export` of the VM's root filesystem,
private_key, image.json last, then the `current` symlink moved atomically.
"""

from __future__ import annotations

import json
import os
import re
import signal
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from harness import finished, job_json, wait_for
from test_executor_vagrant_integration import HELPER, git_daemon, project  # noqa: F401  (fixtures)
from test_script_support import make_repo
from travis_worker.config import load_config
from travis_worker.executor_vagrant import VagrantExecutor
from travis_worker.images import ImageStore, slug
from travis_worker.keys import Keys, host_of, vm_field
from travis_worker.vagrant import LxcSandbox, lxc_container
from travis_worker.worker import Worker

pytestmark = pytest.mark.integration

BOX = "twlab/debian12"
VERSION = "20261202.041500"
DIGEST = "5f2b7a0c1e9d4a8b6c3e0f1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e"
JOBS = 8
# every build: the VM is clean (no dirt of the previous build), the recipe of the VM's own snapshot is there,
# and it says which image it runs (the published one carries /etc/twt-image)
SCRIPT = [
    "test ! -e ~/dirt",
    "touch ~/dirt",
    "test -f /etc/twt-recipe",
    'echo "on: $(cat /etc/twt-image 2>/dev/null || echo own)"',
]


def helper(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(HELPER), *args], capture_output=True, text=True, check=True, timeout=600)


@pytest.fixture()
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    root = tmp_path / "images"
    root.mkdir()
    monkeypatch.setenv("TRAVIS_WORKER_IMAGE_STORE", str(root))  # the helper, run as root, reads it
    yield root
    subprocess.run(["rm", "-rf", str(root)], check=False)


def publish_by_hand(store: Path, project_root: Path, container: str) -> Path:
    version = store / slug(BOX) / VERSION
    version.mkdir(parents=True)
    helper("export", container, str(version))
    (version / "rootfs" / "etc" / "twt-image").write_text(VERSION + "\n")
    key = project_root / ".vagrant" / "machines" / "worker-1" / "lxc" / "private_key"
    (version / "private_key").write_bytes(key.read_bytes())
    os.chmod(version / "private_key", 0o600)
    meta = {
        "box": BOX,
        "version": VERSION,
        "digest": DIGEST,
        "provider": "lxc",
        "created": "2026-12-02T04:15:00Z",
        "built_on": os.uname().nodename,
    }
    (version / "image.json").write_text(json.dumps(meta))  # last: the version is complete
    return version


def move_current(store: Path, version: str) -> None:
    link = store / slug(BOX) / "current.tmp"
    link.symlink_to(version)
    link.rename(store / slug(BOX) / "current")


def test_worker_switches_to_the_published_image_at_the_job_boundary_with_jobs_flowing(
    project: object,  # noqa: F811
    git_daemon: tuple[str, Path],  # noqa: F811
    store: Path,
    tmp_path: Path,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    url, base = git_daemon
    _, commit = make_repo(base, files={".travis.yml": "script: true\n"})
    root = Path(project.root)  # type: ignore[attr-defined]
    container = lxc_container(str(root), "worker-1")
    assert container
    project.ssh("worker-1", "sudo touch /etc/twt-recipe")  # type: ignore[attr-defined]  # "a recipe applied"
    helper("save", container)  # the VM's own clean lower layer, as the playbook's save after the recipes
    image_dir = publish_by_hand(store, root, container)  # published, not current yet

    cfg = tmp_path / "worker.yml"
    cfg.write_text(
        f"redis:\n  url: {redis_url}\nheartbeat_interval: 0.5\nvm: worker-1\ngit:\n  base_url: {url}\n"
        f"vms:\n  provider: lxc\n  project_dir: {root}\n  box: {BOX}\n  image_store: {store}\n"
    )
    executor = VagrantExecutor(
        "lxc",
        project_dir=str(root),
        vm_name="worker-1",
        lxc_sandbox=LxcSandbox(helper=str(HELPER)),
        images=ImageStore(str(store), BOX),
        state_dir=str(tmp_path),
        ready_timeout=120,
    )
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(signal, "signal", lambda *a: None)  # run() off the main thread: no handlers
    caplog.set_level("INFO", logger="travis_worker")
    worker = Worker(load_config(str(cfg), environ={}), executor=executor)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    keys = Keys("resque")
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    started = time.monotonic()
    try:
        for job in range(1, JOBS + 1):
            client.rpush("resque:queue:builds", job_json(job, (url + "/owner/name.git", commit), SCRIPT))
        wait_for(lambda: len(finished(client)) >= 2, 240, "two builds on the VM's own snapshot")
        move_current(store, VERSION)  # publishing: the worker switches at its next reset
        published = time.monotonic()
        wait_for(lambda: len(finished(client)) == JOBS, 300, f"all {JOBS} builds")
        wait_for(lambda: worker.clean, 60, "the reset after the last build")
        doc = json.loads(client.hget(keys.vm_state, vm_field(host_of(worker.id), "worker-1")))
    finally:
        worker.request_stop("immediate")
        thread.join(60)
    results = {job: entries[-1]["result"] for job, entries in finished(client).items()}
    assert results == dict.fromkeys(range(1, JOBS + 1), "passed"), results
    reports = [json.loads(x) for x in client.lrange("resque:reporting:jobs", 0, -1)]
    ran_on = []
    for job in range(1, JOBS + 1):
        text = "".join(
            r.get("log", "") for r in reports if r.get("job_id") == job and r.get("event") == "job:log"
        )
        match = re.search(r"\non: (\S+)", text)
        assert match, text[-500:]
        ran_on.append(match.group(1))
    # the first two ran on the VM's own snapshot; once `current` moved, every later build ran on the image:
    # the switch happened at one job boundary, and no build ran on a mix
    assert ran_on[:2] == ["own", "own"], ran_on
    first_new = ran_on.index(VERSION)
    assert set(ran_on[first_new:]) == {VERSION} and set(ran_on[:first_new]) == {"own"}, ran_on
    assert doc["image"] == {"version": VERSION, "digest": DIGEST}, doc
    assert (store / slug(BOX) / "users" / "worker-1").read_text() == VERSION + "\n"
    status = json.loads(helper("status", container).stdout)
    assert status["lower"] == str(image_dir / "rootfs") and status["image"] == str(image_dir)
    assert not Path(status["upper"]).parent.joinpath("sandbox.rootfs").exists()  # own copy dropped
    # the numbers the benchmark reads (one log line per reset / per build)
    resets = [
        float(m.group(1))
        for r in caplog.records
        if (m := re.search(r"VM worker-1 reset \(lxc\) in ([\d.]+) s", r.getMessage()))
    ]
    pickups = [
        float(m.group(1))
        for r in caplog.records
        if (m := re.search(r"first build output ([\d.]+) s after it was taken", r.getMessage()))
    ]
    switched = [r.getMessage() for r in caplog.records if "(switched)" in r.getMessage()]
    assert len(switched) == 1, switched
    assert len(pickups) == JOBS and len(resets) >= JOBS + 1
    print(
        f"\nresets: n={len(resets)} p50={statistics.median(resets):.2f} s max={max(resets):.2f} s; "
        f"pickup -> first build output: p50={statistics.median(pickups):.2f} s max={max(pickups):.2f} s; "
        f"ran on: {ran_on}; switch: {switched[0]}; published after {published - started:.1f} s, "
        f"total {time.monotonic() - started:.1f} s"
    )
    # The goals (pickup p50 <= 2 s, reset p50 <= 5 s) are the benchmark's (bench/reprovision,
    # docs/playbooks.md): under the CI's own load (load average 20+) a reset took 40 s. What holds at any
    # load: the reset is off the pickup path. Were it still before the build, every pickup would be a reset
    # plus the upload.
    assert statistics.median(pickups) < statistics.median(resets), (pickups, resets)
