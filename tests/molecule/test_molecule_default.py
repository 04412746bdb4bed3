"""Molecule scenario `default`: site.yml on a fresh Debian 12 box (2 worker VMs), idempotence, testinfra."""

from __future__ import annotations

import pytest
from molecule_run import run_scenario


@pytest.mark.molecule
@pytest.mark.timeout(3600)
def test_molecule_default() -> None:
    run_scenario("default")
