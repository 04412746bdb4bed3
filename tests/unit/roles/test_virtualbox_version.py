"""virtualbox: virtualbox_version is a full version (issue #11 section 5: boxes built on different days get
the same VirtualBox); a major.minor value is refused before any package is installed. source.yml runs through
real ansible-playbook on localhost with a local .deb source (nothing is downloaded or installed)."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_preflight import role_tasks, run_tasks

DEB = {"virtualbox_source": "deb", "virtualbox_deb": "/var/cache/twt-none/virtualbox-7.1.deb"}


@pytest.mark.parametrize("version", ["7.1", "7", "7.1.x", "7.1.12-169651"])
def test_major_minor_version_is_refused(tmp_path: Path, version: str) -> None:
    rc, out = run_tasks(
        tmp_path, role_tasks("virtualbox", "source.yml"), {**DEB, "virtualbox_version": version}
    )
    assert rc == 2
    assert f"virtualbox: virtualbox_version is '{version}'; give the full version (for example 7.1.12)" in out


def test_full_version_passes(tmp_path: Path) -> None:
    deb = tmp_path / "virtualbox-7.1_7.1.12-169651~Debian~bookworm_amd64.deb"
    deb.write_bytes(b"!<arch>\n")
    extra = {**DEB, "virtualbox_deb": str(deb), "virtualbox_version": "7.1.12"}
    rc, out = run_tasks(tmp_path, role_tasks("virtualbox", "source.yml"), extra)
    assert rc == 0, out
