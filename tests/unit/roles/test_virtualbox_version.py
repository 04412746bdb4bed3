"""virtualbox: virtualbox_version is a full version (issue #11 section 5: boxes built on different days get
the same VirtualBox); a major.minor value is refused before any package is installed. source.yml runs through
real ansible-playbook on localhost with a local .deb source (nothing is downloaded or installed)."""

from __future__ import annotations

import subprocess
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


def build_deb(tmp_path: Path, package: str, version: str) -> Path:
    """A real (empty) .deb with these control fields, built by dpkg-deb as Oracle's are read by it."""
    root = tmp_path / f"pkg-{package}-{version}"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        f"Package: {package}\nVersion: {version}\nArchitecture: amd64\n"
        "Maintainer: twt <twt@example.invalid>\nDescription: stand-in\n"
    )
    deb = tmp_path / f"{package}_{version}_amd64.deb"
    subprocess.run(["dpkg-deb", "--build", str(root), str(deb)], check=True, capture_output=True)
    return deb


def test_full_version_passes(tmp_path: Path) -> None:
    deb = build_deb(tmp_path, "virtualbox-7.1", "7.1.12-169651~Debian~bookworm")
    extra = {**DEB, "virtualbox_deb": str(deb), "virtualbox_version": "7.1.12"}
    rc, out = run_tasks(tmp_path, role_tasks("virtualbox", "source.yml"), extra)
    assert rc == 0, out


@pytest.mark.parametrize(
    ("package", "version"),
    [
        # another patch release of the same branch: the pin would silently not hold
        ("virtualbox-7.1", "7.1.10-169112~Debian~bookworm"),
        # another branch: the hold would name virtualbox-7.1, which is not installed
        ("virtualbox-7.0", "7.0.20-163906~Debian~bookworm"),
        # a prefix is not the version (7.1.1 is not 7.1.12)
        ("virtualbox-7.1", "7.1.1-166000~Debian~bookworm"),
    ],
)
def test_deb_of_another_version_is_refused(tmp_path: Path, package: str, version: str) -> None:
    deb = build_deb(tmp_path, package, version)
    extra = {**DEB, "virtualbox_deb": str(deb), "virtualbox_version": "7.1.12"}
    rc, out = run_tasks(tmp_path, role_tasks("virtualbox", "source.yml"), extra)
    assert rc == 2, out
    found = f"package {package} version {version}"
    want = "virtualbox_version 7.1.12 needs package virtualbox-7.1 at version 7.1.12-<build>"
    assert f"virtualbox: virtualbox_deb {deb} on localhost is {found}, but {want}" in out
    assert "Nothing was installed." in out


def test_file_that_is_no_deb_is_refused(tmp_path: Path) -> None:
    deb = tmp_path / "virtualbox-7.1_7.1.12-169651~Debian~bookworm_amd64.deb"
    deb.write_text("<html>404 Not Found</html>\n")  # what a wrong download URL leaves behind
    extra = {**DEB, "virtualbox_deb": str(deb), "virtualbox_version": "7.1.12"}
    rc, out = run_tasks(tmp_path, role_tasks("virtualbox", "source.yml"), extra)
    assert rc == 2, out
    assert f"virtualbox: virtualbox_deb {deb} on localhost is not a readable .deb (dpkg-deb: " in out
