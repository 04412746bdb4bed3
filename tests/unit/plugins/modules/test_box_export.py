"""box_export: LXC export by our own code (real tar on a fake rootfs), VirtualBox via
`vagrant package NAME` (or `--base` with the machine's key shipped), digest idempotence, check mode and diff,
operator errors."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import tarfile
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import pytest
from ansible_collections.travis.worker.plugins.modules import box_export
from module_harness import call, recorded

LXC_NAME = "twt-proj_base_1700000000123_45678"
VAGRANT_UID = 1000 if os.geteuid() == 0 else os.getuid()  # chown to another uid needs root
VAGRANT_GID = 1000 if os.geteuid() == 0 else os.getgid()
UUID = "3f0c7d1e-5b8a-4e55-9d0f-6a1f2c9b7e11"
INSECURE = "ssh-rsa AAAAB3NzaC1yc2EAAAABIwAAAQEA6NF8iallvQVp22WDkTkyrtvp9eWW6A8YVr+kz4TjGYe7gHzIw+niNltGEFHzD8+v1I2YJ6oXevct1YeS0o9HZyN1Q9qgCgzUFtdOKLv6IedplqoPkcmF0aYet2PkEDo3MlTBckFXPITAMzF8dJSIFo9D8HfdOV0IAdx4O7PtixWKn5y2hMNG0zQPyUecp4pzC6kivAIhyfHilFR61RGL+GPXQ2MWZWFYbAGjyiYJnAmCP3NOTd0jMZEnDkbUvxhMmBYSdETk1rRgm+R4LOzFUGaHqHDLKLX+FIPKcF96hrucXzcWyLbIbEgE98OHlnVYCzRdK8jlqm8tehUc9c9WhQ== vagrant insecure public key\n"  # noqa: E501
SESSION_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJustForThisMachineOnlyDoNotShipInTheBox vagrant\n"


def lxc_info(state: str) -> Any:
    return call(
        ["/usr/bin/lxc-info", "-P", LXC_PATH_HOLDER[0], "-n", LXC_NAME, "-s"],
        stdout=f"State:          {state}\n",
    )


LXC_PATH_HOLDER: list[str] = [""]


def real(argv: list[str]) -> Any:
    """An expected call that really runs (tar/gzip on the test's files): argv checked, tar does the work."""

    def run(_kwargs: dict) -> None:
        subprocess.run(argv, check=True, capture_output=True)

    return call(argv, check=run)


@pytest.fixture
def lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A vagrant-lxc project whose machine `base` is container LXC_NAME with a small provisioned rootfs."""
    project = tmp_path / "proj"
    machine = project / ".vagrant" / "machines" / "base" / "lxc"
    machine.mkdir(parents=True)
    (machine / "id").write_text(LXC_NAME)
    vagrant_home = tmp_path / "vagrant.d"
    box_dir = vagrant_home / "boxes" / "twt-VAGRANTSLASH-debian12" / "0" / "lxc"
    box_dir.mkdir(parents=True)
    (box_dir / "lxc-config").write_text(
        "lxc.include = /usr/share/lxc/config/debian.common.conf\nlxc.arch = amd64\n"
    )
    (machine / "box_meta").write_text(json.dumps({"name": "twt/debian12", "version": "0", "provider": "lxc"}))
    lxc_path = tmp_path / "lxc"
    container = lxc_path / LXC_NAME
    rootfs = container / "rootfs"
    for d in ("etc/ssh", "dev", "proc", "tmp", "home/vagrant/.ssh", "var/lib/dbus", "opt/travis", "bin"):
        (rootfs / d).mkdir(parents=True)
    (rootfs / "bin" / "true").write_text("#!/bin/sh\n")
    (rootfs / "etc" / "machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    (rootfs / "var/lib/dbus/machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    (rootfs / "etc/ssh/ssh_host_ed25519_key").write_text("PRIVATE\n")
    (rootfs / "etc/ssh/sshd_config").write_text("PermitRootLogin no\n")
    (rootfs / "dev" / "null-ish").write_text("")
    (rootfs / "tmp" / "junk").write_text("junk")
    (rootfs / "opt/travis/provisioned").write_text("yes\n")
    (rootfs / "home/vagrant/.ssh/authorized_keys").write_text(SESSION_KEY)
    os.chown(rootfs / "home/vagrant/.ssh", VAGRANT_UID, VAGRANT_GID)
    (container / "config").write_text(
        "lxc.include = /usr/share/lxc/config/debian.common.conf\n"
        f"lxc.rootfs.path = dir:{rootfs}\nlxc.uts.name = {LXC_NAME}\nlxc.net.0.type = veth\n"
    )
    key = tmp_path / "vagrant.pub"
    key.write_text(INSECURE)
    out = tmp_path / "out"
    out.mkdir()
    work = tmp_path / "work"
    monkeypatch.setattr(box_export.tempfile, "mkdtemp", lambda **_kw: (work.mkdir(), str(work))[1])
    LXC_PATH_HOLDER[0] = str(lxc_path)
    args = {
        "project_dir": str(project),
        "name": "base",
        "path": str(out / "base.box"),
        "digest": "recipe-1",
        "lxc_path": str(lxc_path),
        "insecure_key": str(key),
        "vagrant_home": str(vagrant_home),
    }
    return {"args": args, "work": work, "rootfs": rootfs, "box": out / "base.box", "out": out}


BOX_MEMBERS = ["metadata.json", "lxc-config", "rootfs.tar.gz"]


def lxc_export_calls(lab: dict[str, Any], state: str = "RUNNING") -> list[Any]:
    work = str(lab["work"])
    tmp_box = str(lab["out"] / f".base.box.{os.getpid()}.tmp")
    excludes = [f"--exclude={p}" for p in box_export.ROOTFS_EXCLUDES]
    members = [
        "./rootfs/etc/machine-id",
        "./rootfs/etc/systemd/system/travis-box-ssh-hostkeys.service",
        "./rootfs/etc/systemd/system/ssh.service.wants/travis-box-ssh-hostkeys.service",
        "./rootfs/home/vagrant/.ssh/authorized_keys",
    ]
    calls = [lxc_info(state)]
    if state == "RUNNING":
        calls.append(call(["/usr/bin/lxc-stop", "-P", LXC_PATH_HOLDER[0], "-n", LXC_NAME]))
    calls += [
        real(
            [
                "/usr/bin/tar",
                "--numeric-owner",
                "--xattrs",
                "--xattrs-include=*",
                "-cf",
                f"{work}/rootfs.tar",
                *excludes,
                "-C",
                str(lab["rootfs"].parent),
                "./rootfs",
            ]
        ),
        real(
            [
                "/usr/bin/tar",
                "--numeric-owner",
                "-rf",
                f"{work}/rootfs.tar",
                "-C",
                f"{work}/overlay",
                *members,
            ]
        ),
    ]
    if state == "RUNNING":
        calls.append(call(["/usr/bin/lxc-start", "-P", LXC_PATH_HOLDER[0], "-n", LXC_NAME, "-d"]))
    calls += [
        real(["/usr/bin/gzip", "-f", f"{work}/rootfs.tar"]),
        real(["/usr/bin/tar", "-I", "gzip -1", "-cf", tmp_box, "-C", work, *BOX_MEMBERS]),
    ]
    return calls


def test_lxc_export_builds_a_vagrant_lxc_box(run_module, lab) -> None:
    result = run_module(
        box_export.main, lab["args"], lxc_export_calls(lab), missing_bins=("pigz",), diff=True
    )
    assert result["changed"] is True, result
    assert result["halted"] is True and result["restarted"] is True
    box = lab["box"]
    assert result["sha256"] == hashlib.sha256(box.read_bytes()).hexdigest()
    assert result["size"] == box.stat().st_size
    assert not list(lab["out"].glob(".*tmp")), "temp file left behind"
    with tarfile.open(box) as outer:
        assert sorted(outer.getnames()) == ["lxc-config", "metadata.json", "rootfs.tar.gz"]
        assert json.load(outer.extractfile("metadata.json")) == {"provider": "lxc", "version": "1.0.0"}
        assert (
            outer.extractfile("lxc-config")
            .read()
            .decode()
            .startswith("lxc.include = /usr/share/lxc/config/debian")
        )
        rootfs_bytes = outer.extractfile("rootfs.tar.gz").read()
    rootfs = tarfile.open(fileobj=io.BytesIO(rootfs_bytes))  # noqa: SIM115 (in-memory)
    names = rootfs.getnames()
    assert all(n == "./rootfs" or n.startswith("./rootfs/") for n in names)  # vagrant-lxc strips 2 components
    assert "./rootfs/opt/travis/provisioned" in names and "./rootfs/bin/true" in names
    assert "./rootfs/etc/ssh/sshd_config" in names
    assert not [n for n in names if "ssh_host_" in n or n.startswith(("./rootfs/dev/", "./rootfs/tmp/"))]
    assert "./rootfs/var/lib/dbus/machine-id" not in names
    assert rootfs.extractfile("./rootfs/etc/machine-id").read() == b""
    keys = rootfs.getmember("./rootfs/home/vagrant/.ssh/authorized_keys")
    assert (keys.uid, keys.gid, keys.mode) == (VAGRANT_UID, VAGRANT_GID, 0o600)
    assert rootfs.extractfile(keys).read().decode() == INSECURE
    assert names.count("./rootfs/home/vagrant/.ssh/authorized_keys") == 1  # the machine's session key is gone
    unit = rootfs.extractfile("./rootfs/etc/systemd/system/travis-box-ssh-hostkeys.service").read().decode()
    assert "ssh-keygen -A" in unit
    link = rootfs.getmember("./rootfs/etc/systemd/system/ssh.service.wants/travis-box-ssh-hostkeys.service")
    assert link.issym() and link.linkname == "/etc/systemd/system/travis-box-ssh-hostkeys.service"
    meta = json.loads(Path(str(box) + ".json").read_text())
    assert meta["digest"] == "recipe-1" and meta["sha256"] == result["sha256"]
    assert meta["source"] == {
        "project_dir": lab["args"]["project_dir"],
        "machine": "base",
        "provider": "lxc",
        "id": LXC_NAME,
    }
    assert result["diff"]["before"] == "" and '"digest": "recipe-1"' in result["diff"]["after"]
    assert not lab["work"].exists()


def test_stopped_container_is_not_started(run_module, lab) -> None:
    result = run_module(
        box_export.main, lab["args"], lxc_export_calls(lab, "STOPPED"), missing_bins=("pigz",)
    )
    assert result["changed"] is True and result["halted"] is False and result["restarted"] is False


def test_same_digest_is_a_no_op(run_module, lab) -> None:
    first = run_module(box_export.main, lab["args"], lxc_export_calls(lab, "STOPPED"), missing_bins=("pigz",))
    again = run_module(box_export.main, lab["args"], [])  # no command at all
    assert again["changed"] is False
    assert again["sha256"] == first["sha256"] and again["size"] == first["size"]
    checked = run_module(box_export.main, lab["args"], [], check_mode=True)
    assert checked["changed"] is False


def test_new_digest_in_check_mode_predicts_export(run_module, lab) -> None:
    run_module(box_export.main, lab["args"], lxc_export_calls(lab, "STOPPED"), missing_bins=("pigz",))
    before = lab["box"].read_bytes()
    args = dict(lab["args"], digest="recipe-2")
    result = run_module(box_export.main, args, [lxc_info("RUNNING")], check_mode=True, diff=True)
    assert result["changed"] is True and result["halted"] is True
    assert "would export machine 'base'" in result["msg"]
    assert (
        '"digest": "recipe-1"' in result["diff"]["before"]
        and '"digest": "recipe-2"' in result["diff"]["after"]
    )
    assert lab["box"].read_bytes() == before


def test_damaged_box_is_exported_again(run_module, lab) -> None:
    run_module(box_export.main, lab["args"], lxc_export_calls(lab, "STOPPED"), missing_bins=("pigz",))
    with open(lab["box"], "ab") as handle:
        handle.write(b"x")
    result = run_module(box_export.main, lab["args"], [lxc_info("STOPPED")], check_mode=True)
    assert result["changed"] is True


def test_failed_tar_restarts_the_container_and_names_the_machine(run_module, lab) -> None:
    work = str(lab["work"])
    calls = lxc_export_calls(lab)[:3]
    calls[2] = call(calls[2].argv, rc=2, stderr="tar: ./rootfs/opt: Cannot write: No space left on device\n")
    calls.append(call(["/usr/bin/lxc-start", "-P", LXC_PATH_HOLDER[0], "-n", LXC_NAME, "-d"]))
    result = run_module(box_export.main, lab["args"], calls, missing_bins=("pigz",))
    assert result["failed"] is True and result["rc"] == 2
    assert "machine 'base'" in result["msg"] and "disk space" in result["msg"]
    assert "No space left" in result["stderr"]
    assert not lab["box"].exists() and not Path(work).exists()


def test_machine_not_created(run_module, lab, tmp_path) -> None:
    args = dict(lab["args"], name="worker-7")
    result = run_module(box_export.main, args, [])
    assert result["failed"] is True
    assert "machine 'worker-7'" in result["msg"] and "vagrant_vm" in result["msg"]


# Recordings of `vagrant status base` / `vagrant package base` (VirtualBox provider), reconstructed from
# Vagrant 2.3.4's source by tests/unit/fixtures/vagrant/make_vbox_fixtures.py (provenance in each JSON file).
STATUS = ["/usr/bin/vagrant", "status", "base", "--machine-readable"]


def status(state: str = "running") -> Any:
    return call(STATUS, fixture=f"vagrant/vbox_status_base_{state}")


def package(tmp: str, fixture: str, **kwargs: Any) -> Any:
    """`vagrant package base --output TMP`, the recorded output path replaced by this test's temp file."""
    rec = recorded(f"vagrant/{fixture}")
    recorded_out = rec["argv"][rec["argv"].index("--output") + 1]
    argv = ["/usr/bin/vagrant", "package", "base", "--output", tmp, "--machine-readable"]
    return call(argv, fixture=f"vagrant/{fixture}", stdout=rec["stdout"].replace(recorded_out, tmp), **kwargs)


@pytest.fixture
def vbox(tmp_path: Path) -> dict[str, Any]:
    project = tmp_path / "proj"
    (project / ".vagrant/machines/base/virtualbox").mkdir(parents=True)
    (project / ".vagrant/machines/base/virtualbox/id").write_text(UUID)
    out = tmp_path / "out"
    out.mkdir()
    args = {"project_dir": str(project), "name": "base", "path": str(out / "travis.box"), "digest": "d1"}
    return {"args": args, "tmp": str(out / f".travis.box.{os.getpid()}.tmp"), "out": out}


def test_virtualbox_packages_the_project_machine_halts_and_restarts(run_module, vbox) -> None:
    """`vagrant package base`, not `--base UUID`: only a machine of the project has the data dir from which
    Vagrant ships the key it generated (lib/vagrant/action/general/package.rb#setup_private_key)."""

    def make_box(kwargs: dict) -> None:
        assert kwargs["environ_update"]["VAGRANT_CWD"] == vbox["args"]["project_dir"]
        Path(vbox["tmp"]).write_bytes(b"box-bytes")

    calls = [
        status("running"),
        call(["/usr/bin/vagrant", "halt", "base", "--machine-readable"]),
        package(vbox["tmp"], "vbox_package_base", check=make_box),
        call(["/usr/bin/vagrant", "up", "base", "--no-provision", "--machine-readable"]),
    ]
    result = run_module(box_export.main, vbox["args"], calls)
    assert result["changed"] is True and result["halted"] and result["restarted"]
    assert result["sha256"] == hashlib.sha256(b"box-bytes").hexdigest() and result["size"] == 9
    assert (vbox["out"] / "travis.box").read_bytes() == b"box-bytes"


def test_virtualbox_check_mode(run_module, vbox) -> None:
    calls = [status("running")]
    result = run_module(box_export.main, vbox["args"], calls, check_mode=True)
    assert result["changed"] is True and result["halted"] is True
    assert UUID in result["msg"] and not (vbox["out"] / "travis.box").exists()


def test_virtualbox_locked_fails_but_starts_machine_again(run_module, vbox) -> None:
    calls = [
        status("running"),
        call(["/usr/bin/vagrant", "halt", "base", "--machine-readable"]),
        package(vbox["tmp"], "vbox_package_base_locked"),
        call(["/usr/bin/vagrant", "up", "base", "--no-provision", "--machine-readable"]),
    ]
    result = run_module(box_export.main, vbox["args"], calls)
    assert result["failed"] is True and result["error_kind"] == "machine_locked"
    assert "locked" in result["msg"] and result["rc"] == 1
    assert not (vbox["out"] / "travis.box").exists() and not Path(vbox["tmp"]).exists()


def test_virtualbox_base_ships_the_generated_key(run_module, vbox, tmp_path: Path) -> None:
    """With `base`, Vagrant packages a VM without the project's data dir and ships no key; the module ships
    the machine's generated private_key as --include plus a Vagrantfile pointing at it."""
    machine = Path(vbox["args"]["project_dir"]) / ".vagrant/machines/base/virtualbox"
    (machine / "private_key").write_text(
        "-----BEGIN OPENSSH PRIVATE KEY-----\nx\n-----END OPENSSH PRIVATE KEY-----\n"
    )
    seen: dict[str, str] = {}

    def package_check(kwargs: dict) -> None:
        argv = kwargs["argv"]
        key, vagrantfile = argv[argv.index("--include") + 1], argv[argv.index("--vagrantfile") + 1]
        seen["key"] = Path(key).read_text()
        seen["vagrantfile"] = Path(vagrantfile).read_text()
        assert os.path.basename(key) == "vagrant_private_key" and Path(key).stat().st_mode & 0o077 == 0
        Path(vbox["tmp"]).write_bytes(b"box")

    calls = [
        status("poweroff"),
        call(
            [
                "/usr/bin/vagrant",
                "package",
                "--base",
                "base-vm",
                "--output",
                vbox["tmp"],
                "--include",
                ANY,
                "--vagrantfile",
                ANY,
                "--machine-readable",
            ],
            check=package_check,
        ),
    ]
    result = run_module(box_export.main, dict(vbox["args"], base="base-vm"), calls)
    assert result["changed"] is True, result
    assert seen["key"].startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    assert (
        'config.ssh.private_key_path = File.expand_path("../vagrant_private_key", __FILE__)'
        in seen["vagrantfile"]
    )
    assert not list((vbox["out"]).glob(".box_export-*"))  # the staging directory is removed


def test_same_size_but_different_box_is_exported_again(run_module, vbox) -> None:
    """The intact-box check compares the sha256 too, not only the size."""
    box = vbox["out"] / "travis.box"
    box.write_bytes(b"box-bytes")
    meta = {"digest": "d1", "size": 9, "sha256": hashlib.sha256(b"box-bytes").hexdigest()}
    Path(str(box) + ".json").write_text(json.dumps(meta))
    assert run_module(box_export.main, vbox["args"], [], check_mode=True)["changed"] is False
    box.write_bytes(b"box-bytez")  # same size, other content
    assert run_module(box_export.main, vbox["args"], [status("running")], check_mode=True)["changed"] is True


@pytest.mark.parametrize(
    ("extra", "needle"),
    [({"timeout": -1}, "timeout must be >= 0"), ({"base": "vm", "insecure_key": "/k"}, "mutually exclusive")],
)
def test_bad_arguments_fail_before_anything_runs(run_module, vbox, extra, needle) -> None:
    result = run_module(box_export.main, dict(vbox["args"], **extra), [])
    assert result["failed"] is True and needle in result["msg"]


def test_vagrant_missing(run_module, vbox) -> None:
    result = run_module(box_export.main, vbox["args"], [], missing_bins=("vagrant",))
    assert result["failed"] is True and "vagrant is not installed" in result["msg"]


def test_libvirt_uses_vagrant_package_of_the_halted_machine(run_module, tmp_path: Path) -> None:
    project = tmp_path / "proj"
    (project / ".vagrant/machines/base/libvirt").mkdir(parents=True)
    (project / ".vagrant/machines/base/libvirt/id").write_text("a1b2c3d4-libvirt-domain")
    out = tmp_path / "out"
    out.mkdir()
    tmp = str(out / f".lv.box.{os.getpid()}.tmp")
    calls = [
        call(STATUS, fixture="vagrant/libvirt_status_base_shutoff"),
        call(
            ["/usr/bin/vagrant", "package", "base", "--output", tmp, "--machine-readable"],
            check=lambda _kw: Path(tmp).write_bytes(b"libvirt-box"),
        ),
    ]
    args = {"project_dir": str(project), "name": "base", "path": str(out / "lv.box")}
    result = run_module(box_export.main, args, calls)
    assert result["changed"] is True and result["provider"] == "libvirt"
    assert result["halted"] is False and result["restarted"] is False
    assert (out / "lv.box").read_bytes() == b"libvirt-box"
    assert json.loads((out / "lv.box.json").read_text())["digest"] is None
