"""A throw-away lab for the playbook tests and the reprovision benchmark: a real redis-server and a git daemon
(serving the demo repository) on the host's bridge address, and one fresh worker box container.

    with scratch_lab("twt-pb-", ensure_box(), work) as lab:
        ...  # lab.box, lab.inventory, lab.env, lab.redis_url, lab.git_url, lab.commit

Everything is recorded in `work/state.json` as it is started and removed when the block ends, also when it
ends by an exception or SIGTERM turned into SystemExit (`keep=True` keeps the container for a post-mortem).
The demo (`travis_lab.demo`) keeps its own, longer-lived state and a CI-app stand-in; this is the bare lab.

`boxes=2` makes two box containers on the same Redis (a fleet of two worker boxes): both in the inventory, box
i's worker VMs named `b<i>-worker-N`, which tells the boxes apart in logs and reports (not required: the
runners key a VM's state in Redis by `<host>:<vm>`, so both boxes could name theirs worker-N).

`template=NAME` makes the box a full copy of the stopped lab container NAME (a box converged earlier, see
`container.clone_container`) instead of a fresh one: the playbook tests converge one box with site.yml and
give each test file a copy, which site.yml then points at the file's own Redis.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from travis_lab.boxbuild import BoxArtifact, host_arch
from travis_lab.container import BoxContainer, clone_container, create_container
from travis_lab.demo import ansible_env
from travis_lab.demo_repo import ensure_demo_repo
from travis_lab.demo_services import LabState, start_git_daemon, start_redis, stop_recorded
from travis_lab.net import HOST_ADDR, ensure_bridge


@dataclass
class ScratchLab:
    box: BoxContainer  # the first of `boxes`
    inventory: Path  # INI inventory: the box container in group worker_boxes
    env: dict[str, str]  # ansible-playbook's environment (see travis_lab.demo.ansible_env)
    redis_url: str
    git_url: str  # git://HOST_ADDR:PORT; the demo repository is <git_url>/demo.git
    commit: str  # the demo repository's head
    boxes: list[BoxContainer]


@contextmanager
def scratch_lab(
    prefix: str,
    box_art: BoxArtifact,
    work: Path,
    *,
    keep: bool = False,
    boxes: int = 1,
    template: str | None = None,
    **env: str,
) -> Iterator[ScratchLab]:
    """Start the services, create `boxes` containers `<prefix><6 hex>` from `box_art` (or copies of the
    stopped container `template`), yield them; `env` adds variables to ansible-playbook's environment."""
    if template is not None and boxes != 1:
        raise ValueError("a template box has its VMs' names: clone it for one box only (boxes=1)")
    ensure_bridge()
    state = LabState.load(work / "state.json")
    made: list[BoxContainer] = []
    try:
        redis = start_redis(state, HOST_ADDR, work / "redis")
        repo = ensure_demo_repo(work / "repos")
        git = start_git_daemon(state, HOST_ADDR, work / "repos", work)
        lines = ["[worker_boxes]"]
        for i in range(1, boxes + 1):
            name = f"{prefix}{secrets.token_hex(3)}"
            if template is None:
                box = create_container(name, box_art.rootfs, arch=host_arch())
            else:
                box = clone_container(name, template)
            made.append(box)
            box.trust_host_cas()
            line = box.inventory(group="worker_boxes").splitlines()[1]
            lines.append(line if boxes == 1 else f"{line} worker_vms_name_prefix=b{i}-worker-")
        inventory = work / "inventory.ini"
        inventory.write_text("\n".join(lines) + "\n", encoding="utf-8")
        playbook_env = ansible_env(box_art.path, redis.url, **env)
        yield ScratchLab(made[0], inventory, playbook_env, redis.url, git.url, repo.commit, made)
    finally:
        if not keep:
            for box in made:
                box.destroy()
        stop_recorded(state)
