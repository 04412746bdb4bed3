"""reprovision.yml -e strategy=base_box on its own converged lab box (the `lab` fixture, conftest.py)."""

from __future__ import annotations

import pytest
from playbooks_lab import Lab, check_reprovision

pytestmark = pytest.mark.integration


def test_reprovision_base_box_keeps_serving_and_ends_without_drift(lab: Lab) -> None:
    check_reprovision(lab, "base_box")
