"""Molecule scenario `virtualbox`: early stop without a VirtualBox source, and the --check plan."""

from __future__ import annotations

import pytest
from molecule_run import run_scenario


@pytest.mark.molecule
@pytest.mark.timeout(3600)
def test_molecule_virtualbox() -> None:
    run_scenario("virtualbox")
