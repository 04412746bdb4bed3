"""Repository-wide pytest hooks.

`scripts/test` runs the integration and Molecule tests side by side with pytest-xdist's `--dist loadgroup`.
A group runs on one worker in file order: by default a test's group is its file, so a module-scoped fixture
(one converged lab box per file) is built once; a test may name its own group with
`@pytest.mark.xdist_group("...")` (each Molecule scenario has one, so the scenarios run side by side).
"""

from __future__ import annotations

import pytest


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::", 1)[0]))
