"""reprovision.yml -e strategy=in_place on its own converged lab box (the `lab` fixture, conftest.py)."""

from __future__ import annotations

import pytest
from playbooks_lab import Lab, check_reprovision

# The converged lab (site.yml) is part of this test's time: a budget like the Molecule scenarios'.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(3600)]


def test_reprovision_in_place_keeps_serving_and_ends_without_drift(lab: Lab) -> None:
    check_reprovision(lab, "in_place")
