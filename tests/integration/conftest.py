"""Fixtures of the integration tests (the lab's own fixtures come from the travis_lab pytest plugin)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playbooks_lab import Lab, converged_lab, converged_template
from travis_lab.boxbuild import BoxArtifact


@pytest.fixture(scope="session")
def lab_template(lab_box: BoxArtifact, tmp_path_factory: pytest.TempPathFactory, testrun_uid: str) -> str:
    """A stopped box container converged by site.yml from the bare box, once per test run (playbooks_lab)."""
    return converged_template(lab_box, tmp_path_factory, testrun_uid)


@pytest.fixture(scope="module")
def lab(lab_box: BoxArtifact, tmp_path_factory: pytest.TempPathFactory, lab_template: str) -> Iterator[Lab]:
    """A worker box converged by site.yml (2 worker VMs), one per test file; removed after the file: a copy
    of `lab_template` on which site.yml runs again with the file's own Redis."""
    yield from converged_lab(lab_box, tmp_path_factory, template=lab_template)
