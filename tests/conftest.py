"""Shared test configuration. The lab fixtures (redis_server, redis_url, lab_box, vagrant_box_name,
vagrant_project, box_container) come from the `travis_lab` pytest plugin (lab/travis_lab/pytest_plugin.py),
registered through the lab package's pytest11 entry point, so `runner/tests` gets them too.
"""

from __future__ import annotations

import logging

import pytest


@pytest.fixture(autouse=True)
def _lab_logging(caplog: pytest.LogCaptureFixture) -> None:
    """Lab log lines (step timings, cache reuse) at INFO in failure reports."""
    caplog.set_level(logging.INFO, logger="travis_lab")
