"""BoxContainer.trust_host_cas: the host's extra CA certificates reach the box container's rootfs;
clone_container refuses a source it must not copy."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from travis_lab.container import BoxContainer, clone_container
from travis_lab.errors import LabError


class RecordingBox(BoxContainer):
    """A container whose rootfs is a directory here; commands it would run inside are recorded."""

    def __init__(self, lxc_path: Path) -> None:
        super().__init__(name="twt-box-abc", ip="10.0.3.9", ssh_key=lxc_path / "id", lxc_path=lxc_path)
        self.commands: list[str] = []

    def run(
        self, cmd: str, check: bool = True, timeout: float | None = 600
    ) -> subprocess.CompletedProcess[str]:
        self.commands.append(cmd)
        return subprocess.CompletedProcess([cmd], 0, "", "")


def test_host_cas_are_copied_and_trusted_once(tmp_path: Path) -> None:
    cas = tmp_path / "host-cas"
    cas.mkdir()
    (cas / "proxy.crt").write_text("-----BEGIN CERTIFICATE-----\nproxy\n")
    (cas / "corp.crt").write_text("-----BEGIN CERTIFICATE-----\ncorp\n")
    (cas / "README").write_text("not a certificate")
    box = RecordingBox(tmp_path / "lxc")
    rootfs = tmp_path / "lxc/twt-box-abc/rootfs"
    (rootfs / "etc").mkdir(parents=True)

    assert box.trust_host_cas(cas) == ["corp.crt", "proxy.crt"]
    assert box.trust_host_cas(cas) == [
        "corp.crt",
        "proxy.crt",
    ]  # a second call: same files, pip.conf not grown

    target = rootfs / "usr/local/share/ca-certificates"
    assert sorted(p.name for p in target.iterdir()) == ["corp.crt", "proxy.crt"]
    assert (target / "proxy.crt").read_text() == "-----BEGIN CERTIFICATE-----\nproxy\n"
    assert (rootfs / "etc/pip.conf").read_text() == "[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n"
    assert box.commands == ["update-ca-certificates >/dev/null"] * 2


def test_no_host_cas_changes_nothing(tmp_path: Path) -> None:
    box = RecordingBox(tmp_path / "lxc")
    (tmp_path / "empty").mkdir()
    assert box.trust_host_cas(tmp_path / "empty") == []
    assert box.trust_host_cas(tmp_path / "missing") == []
    assert box.commands == []
    assert not (tmp_path / "lxc").exists()


def test_clone_refuses_a_source_that_is_not_a_stopped_lab_container(tmp_path: Path) -> None:
    """clone_container copies only a stopped container (a running one's files change under the copy); it
    names the source and says what to do, and creates nothing."""
    with pytest.raises(LabError) as err:
        clone_container("twt-pb-abc123", "twt-tpl-000000", lxc_path=tmp_path, cache_dir=tmp_path / "cache")
    assert "twt-tpl-000000" in str(err.value) and "lxc-stop" in str(err.value), err.value
    assert not (tmp_path / "twt-pb-abc123").exists()
