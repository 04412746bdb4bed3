"""pytest fixtures of the travis.worker lab (registered as the `travis_lab` pytest11 plugin).

Session: `redis_server`, `lab_box`, `vagrant_box_name`. Function: `redis_url`, `vagrant_project`
(factory), `box_container` (factory). Everything a fixture creates carries the `twt-` prefix and is
removed at teardown. Lab failures (no root, no LXC, mirror down) fail the test loudly, never skip.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
from collections.abc import Callable, Iterator

import pytest

from travis_lab.boxbuild import BoxArtifact, ensure_box, host_arch
from travis_lab.errors import LabError
from travis_lab.redis_server import RedisServer
from travis_lab.state import State

log = logging.getLogger(__name__)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real redis-server on a free port for the whole session; `.stop()`/`.start()` keep the port."""
    server = RedisServer(tmp_path_factory.mktemp("twt-redis"))
    try:
        server.start()
    except LabError as exc:
        pytest.fail(str(exc), pytrace=False)
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """URL of the session redis-server, running and empty (restarted if a test stopped it)."""
    if not redis_server.running:
        redis_server.start()
    redis_server.flushall()
    return redis_server.url


@pytest.fixture(scope="session")
def lab_box() -> BoxArtifact:
    """The lab's Vagrant-LXC box (built once, then reused from the cache)."""
    try:
        return ensure_box()
    except LabError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def vagrant_box_name(lab_box: BoxArtifact) -> str:
    """`twlab/debian12` (env TRAVIS_LAB_VAGRANT_BOX overrides), added to Vagrant once per box sha256."""
    from travis_lab.vagrant import BOX_NAME, ensure_vagrant_box

    try:
        return ensure_vagrant_box(lab_box, name=os.environ.get("TRAVIS_LAB_VAGRANT_BOX", BOX_NAME))
    except LabError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture
def vagrant_project(vagrant_box_name: str) -> Iterator[Callable[..., object]]:
    """Factory `make(n, name_prefix="worker-", provision_script=None)` -> VagrantProject (destroyed after)."""
    from travis_lab.vagrant import VagrantProject, make_project

    made: list[VagrantProject] = []

    def make(n: int, name_prefix: str = "worker-", provision_script: str | None = None) -> VagrantProject:
        project = make_project(
            n, box=vagrant_box_name, name_prefix=name_prefix, provision_script=provision_script
        )
        made.append(project)
        return project

    yield make
    errors = []
    for project in made:
        try:
            project.destroy()
        except LabError as exc:
            errors.append(str(exc))
        shutil.rmtree(project.root, ignore_errors=True)
    if errors:
        pytest.fail("\n".join(errors), pytrace=False)


@pytest.fixture
def box_container(lab_box: BoxArtifact) -> Iterator[Callable[..., object]]:
    """Factory `make(name=None)` -> BoxContainer (`twt-box-…`, running, SSH as root); destroyed after."""
    from travis_lab.container import BoxContainer, create_container

    made: list[BoxContainer] = []

    def make(name: str | None = None) -> BoxContainer:
        name = name or f"twt-box-{secrets.token_hex(3)}"
        try:
            c = create_container(name, lab_box.rootfs, arch=host_arch())
        except LabError as exc:
            pytest.fail(str(exc), pytrace=False)
        made.append(c)
        return c

    yield make
    errors = []
    for c in made:
        if not State(c.cache_dir).owns(c.name):
            continue  # the test already destroyed it
        try:
            c.destroy()
        except LabError as exc:
            errors.append(str(exc))
    if errors:
        pytest.fail("\n".join(errors), pytrace=False)
