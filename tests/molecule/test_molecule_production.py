"""Molecule scenario `production`: the production inventory (VirtualBox provider) on a Debian 12 box with a
local signed apt repository of stand-in packages; check mode, preflight, converge, idempotence, testinfra."""

from __future__ import annotations

import pytest
from molecule_run import run_scenario


@pytest.mark.molecule
@pytest.mark.timeout(1800)
def test_molecule_production() -> None:
    run_scenario("production")
