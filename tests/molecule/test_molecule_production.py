"""Molecule scenario `production`: the production inventory (VirtualBox provider) on a Debian 12 box with a
local signed apt repository of stand-in packages; check mode, preflight, converge, idempotence, testinfra.

Issue #11 section 4: every playbook run of the scenario runs with --diff (molecule.yml), and its whole output
(.cache/logs/molecule-production.log) is grepped for the vault values of 50-molecule.yml; the verifier checks
the check-mode run's output and that the box's files hold both values."""

from __future__ import annotations

import pytest
from molecule_run import LOGS, run_scenario

SECRETS = ("twt-molecule-secret-token", "twt-molecule-redis-secret")


@pytest.mark.molecule
@pytest.mark.timeout(1800)
def test_molecule_production() -> None:
    run_scenario("production")
    log = (LOGS / "molecule-production.log").read_text(encoding="utf-8")
    # the real runs were --diff runs that wrote the worker's configuration (else the grep proves nothing)
    assert "--- before" in log and "Write the environment file (worker.<env>.yml" in log
    for secret in SECRETS:
        assert secret not in log, f"a run of the production scenario printed {secret}"
