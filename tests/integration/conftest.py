"""Fixtures of the integration tests (the lab's own fixtures come from the travis_lab pytest plugin)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playbooks_lab import Lab, converged_lab
from travis_lab.boxbuild import BoxArtifact


@pytest.fixture(scope="module")
def lab(lab_box: BoxArtifact, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """A worker box converged by site.yml (2 worker VMs), one per test file; removed after the file."""
    yield from converged_lab(lab_box, tmp_path_factory)
