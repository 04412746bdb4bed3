"""Fixtures for the collection's unit tests; the helpers themselves are in module_harness.py.

(Test modules import helpers from ``module_harness``, never from ``conftest``: the runner's tests have a
conftest of their own, and both are on sys.path when the suites run in one pytest session.)
"""

from __future__ import annotations

from typing import Callable

import pytest
from module_harness import run_module_fixture


@pytest.fixture
def run_module() -> Callable[..., dict]:
    """Run a module's main() against expected commands; see module_harness's docstring."""
    return run_module_fixture()
