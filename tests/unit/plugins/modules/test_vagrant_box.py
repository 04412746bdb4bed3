"""Unit tests of travis.worker.vagrant_box against recorded ``vagrant box ... --machine-readable`` output."""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path
from unittest.mock import ANY

import pytest
from ansible_collections.travis.worker.plugins.modules import vagrant_box
from module_harness import call, recorded

V = "/usr/bin/vagrant"
MR = "--machine-readable"
JAMMY = "travis/worker-jammy"


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "vagrant.d"
    (path / "boxes").mkdir(parents=True)
    return path


@pytest.fixture
def boxfile(tmp_path: Path) -> Path:
    path = tmp_path / "worker-jammy.box"
    path.write_bytes(b"not really a box, but bytes with a digest\n")
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def box_dir(home: Path, name: str, version: str, provider: str) -> Path:
    return home / "boxes" / name.replace("/", "-VAGRANTSLASH-") / version / provider


def unpack(home: Path, name: str, version: str, provider: str):
    """Side effect of a successful `vagrant box add`: the unpacked box directory exists."""

    def effect(_kwargs: dict) -> None:
        box_dir(home, name, version, provider).mkdir(parents=True, exist_ok=True)

    return effect


def box_list(fixture: str):
    return call([V, "box", "list", MR], fixture=f"vagrant/{fixture}")


def names(result: dict) -> list:
    return [(b["name"], b["provider"], b["version"]) for b in result["boxes"]]


def test_add_missing_box_check_mode_then_real(run_module, home, boxfile):
    args = {"name": "twt-rec/tiny", "src": str(boxfile), "provider": "lxc", "vagrant_home": str(home)}
    add_argv = [V, "box", "add", "--name", "twt-rec/tiny", "--provider", "lxc", str(boxfile), MR]
    predicted = run_module(
        vagrant_box.main, args, [box_list("lxc_box_list_empty")], check_mode=True, diff=True
    )
    assert predicted["changed"] is True
    assert predicted["commands"] == [add_argv]
    assert names(predicted) == [("twt-rec/tiny", "lxc", "0")]
    assert predicted["diff"] == {"before": "", "after": "twt-rec/tiny (lxc, 0)\n"}
    assert not box_dir(home, "twt-rec/tiny", "0", "lxc").exists()

    real = run_module(
        vagrant_box.main,
        args,
        [
            box_list("lxc_box_list_empty"),
            call(
                add_argv, fixture="vagrant/lxc_box_add_file", check=unpack(home, "twt-rec/tiny", "0", "lxc")
            ),
            box_list("lxc_box_list_one"),
        ],
        diff=True,
    )
    for key in ("changed", "commands", "boxes", "diff", "added"):
        assert real[key] == predicted[key], key
    record = json.loads((box_dir(home, "twt-rec/tiny", "0", "lxc") / "travis-worker-box.json").read_text())
    assert record["checksums"] == {"sha256": sha256(boxfile)}
    assert record["src"] == str(boxfile)
    assert real["_calls"][0]["environ_update"]["VAGRANT_HOME"] == str(home)


def test_installed_box_is_left_alone(run_module, home):
    args = {"name": JAMMY, "src": "/nonexistent/ok-because-not-needed.box", "provider": "virtualbox"}
    result = run_module(vagrant_box.main, dict(args, vagrant_home=str(home)), [box_list("vbox_box_list")])
    assert result["changed"] is False
    assert result["commands"] == []
    assert (JAMMY, "virtualbox", "0") in names(result)


def _record(home: Path, checksums: dict) -> None:
    directory = box_dir(home, JAMMY, "0", "virtualbox")
    directory.mkdir(parents=True)
    (directory / "travis-worker-box.json").write_text(json.dumps({"checksums": checksums}))


def test_checksum_matching_the_record_is_a_no_op(run_module, home, boxfile):
    _record(home, {"sha256": sha256(boxfile)})
    args = {"name": JAMMY, "src": str(boxfile), "provider": "virtualbox", "checksum": sha256(boxfile)}
    result = run_module(vagrant_box.main, dict(args, vagrant_home=str(home)), [box_list("vbox_box_list")])
    assert result["changed"] is False


def test_checksum_of_a_different_file_fails_without_force(run_module, home, boxfile):
    _record(home, {"sha256": "0" * 64})
    args = {"name": JAMMY, "src": str(boxfile), "provider": "virtualbox", "checksum": sha256(boxfile)}
    result = run_module(vagrant_box.main, dict(args, vagrant_home=str(home)), [box_list("vbox_box_list")])
    assert result["failed"] is True
    assert result["error_kind"] == "checksum_mismatch"
    assert JAMMY in result["msg"] and "force: true" in result["msg"] and "0" * 64 in result["msg"]


def test_checksum_of_a_different_file_replaces_with_force(run_module, home, boxfile):
    _record(home, {"sha256": "0" * 64})
    digest = sha256(boxfile)
    args = {"name": JAMMY, "src": str(boxfile), "provider": "virtualbox", "checksum": digest, "force": True}
    argv = [V, "box", "add", "--name", JAMMY, "--provider", "virtualbox", "--checksum", digest]
    argv += ["--checksum-type", "sha256", "--force", str(boxfile), MR]
    check = run_module(
        vagrant_box.main, dict(args, vagrant_home=str(home)), [box_list("vbox_box_list")], check_mode=True
    )
    assert check["changed"] is True and check["commands"] == [argv]
    result = run_module(
        vagrant_box.main,
        dict(args, vagrant_home=str(home)),
        [box_list("vbox_box_list"), call(argv, stdout=""), box_list("vbox_box_list")],
    )
    assert result["changed"] is True
    assert result["added"] == [{"name": JAMMY, "provider": "virtualbox", "version": "0"}]
    record = json.loads((box_dir(home, JAMMY, "0", "virtualbox") / "travis-worker-box.json").read_text())
    assert record["checksums"]["sha256"] == digest


def test_checksum_without_record_warns_and_keeps_box(run_module, home, boxfile):
    args = {"name": JAMMY, "src": str(boxfile), "provider": "virtualbox", "checksum": sha256(boxfile)}
    result = run_module(vagrant_box.main, dict(args, vagrant_home=str(home)), [box_list("vbox_box_list")])
    assert result["changed"] is False
    assert len(result["_warnings"]) == 1
    assert (
        "no travis-worker-box.json record" in result["_warnings"][0]
        and "force: true" in result["_warnings"][0]
    )


def test_src_not_matching_checksum_fails_before_adding(run_module, home, boxfile):
    args = {"name": "twt/new", "src": str(boxfile), "provider": "lxc", "checksum": "ab" * 32}
    result = run_module(
        vagrant_box.main, dict(args, vagrant_home=str(home)), [box_list("lxc_box_list_empty")]
    )
    assert result["error_kind"] == "checksum_mismatch"
    assert str(boxfile) in result["msg"] and sha256(boxfile) in result["msg"]


def test_missing_box_without_src_fails(run_module, home):
    result = run_module(
        vagrant_box.main, {"name": "twt/none", "vagrant_home": str(home)}, [box_list("lxc_box_list_empty")]
    )
    assert result["error_kind"] == "box_not_found"
    assert "twt/none" in result["msg"] and "'src'" in result["msg"]


def test_missing_src_file_fails(run_module, home, tmp_path):
    args = {"name": "twt/none", "src": str(tmp_path / "nope.box"), "vagrant_home": str(home)}
    result = run_module(vagrant_box.main, args, [box_list("lxc_box_list_empty")])
    assert result["error_kind"] == "src_missing"
    assert "nope.box" in result["msg"]


def test_version_with_a_box_file_goes_through_a_catalog(run_module, home, boxfile):
    seen = {}

    def read_catalog(kwargs: dict) -> None:
        seen["path"] = kwargs["argv"][-2]
        seen.update(json.loads(Path(kwargs["argv"][-2]).read_text()))
        unpack(home, "twt-rec/ver", "1.2.3", "lxc")(kwargs)

    args = {"name": "twt-rec/ver", "src": str(boxfile), "provider": "lxc", "version": "1.2.3"}
    argv = [V, "box", "add", "--name", "twt-rec/ver", "--provider", "lxc", "--box-version", "1.2.3", ANY, MR]
    result = run_module(
        vagrant_box.main,
        dict(args, vagrant_home=str(home)),
        [
            box_list("lxc_box_list_empty"),
            call(argv, fixture="vagrant/lxc_box_add_catalog_version", check=read_catalog),
            box_list("lxc_box_list_version"),
        ],
    )
    assert result["changed"] is True
    path = seen.pop("path")
    assert not Path(path).exists()  # temporary catalog removed
    assert result["commands"][0][-2] == f"<temporary catalog for file://{boxfile}>"
    assert seen == {
        "name": "twt-rec/ver",
        "versions": [{"version": "1.2.3", "providers": [{"name": "lxc", "url": f"file://{boxfile}"}]}],
    }
    assert names(result) == [("twt-rec/ver", "lxc", "1.2.3")]
    check = run_module(
        vagrant_box.main,
        dict(args, vagrant_home=str(home)),
        [box_list("lxc_box_list_empty")],
        check_mode=True,
    )
    assert check["commands"] == result["commands"]
    assert not list(Path(tempfile.gettempdir()).glob("travis-worker-box-*/catalog.json"))
    again = run_module(
        vagrant_box.main, dict(args, vagrant_home=str(home)), [box_list("lxc_box_list_version")]
    )
    assert again["changed"] is False


def test_absent_removes_every_version(run_module, home):
    args = {"name": "travis/worker-focal", "state": "absent", "vagrant_home": str(home)}
    rm = [V, "box", "remove", "travis/worker-focal", "--provider", "virtualbox", "--box-version"]
    check = run_module(vagrant_box.main, args, [box_list("vbox_box_list")], check_mode=True, diff=True)
    assert check["commands"] == [[*rm, "2.1.0", MR], [*rm, "2.2.0", MR]]
    assert check["diff"]["after"] == ""
    assert "travis/worker-focal (virtualbox, 2.1.0)\n" in check["diff"]["before"]
    result = run_module(
        vagrant_box.main,
        args,
        [
            box_list("vbox_box_list"),
            call([*rm, "2.1.0", MR], fixture="vagrant/lxc_box_remove"),
            call([*rm, "2.2.0", MR], fixture="vagrant/lxc_box_remove"),
            box_list("vbox_box_list_without_focal"),
        ],
    )
    assert result["changed"] is True
    assert names(result) == names(check)
    rerun = run_module(vagrant_box.main, args, [box_list("vbox_box_list_without_focal")])
    assert rerun["changed"] is False


def test_absent_with_force_passes_force(run_module, home):
    args = {"name": JAMMY, "state": "absent", "force": True, "vagrant_home": str(home)}
    result = run_module(vagrant_box.main, args, [box_list("vbox_box_list")], check_mode=True)
    assert result["commands"] == [
        [V, "box", "remove", JAMMY, "--provider", "virtualbox", "--box-version", "0", "--force", MR]
    ]


def test_disk_full_names_the_box_and_the_remedy(run_module, home, tmp_path):
    src = tmp_path / "worker-jammy.box"
    src.write_bytes(b"x")
    args = {"name": JAMMY, "src": str(src), "provider": "virtualbox", "vagrant_home": str(home)}
    argv = [V, "box", "add", "--name", JAMMY, "--provider", "virtualbox", str(src), MR]
    result = run_module(
        vagrant_box.main,
        args,
        [box_list("vbox_box_list_without_jammy"), call(argv, fixture="vagrant/vbox_box_add_disk_full")],
    )
    assert result["failed"] is True
    assert result["error_kind"] == "disk_full"
    assert f"box '{JAMMY}'" in result["msg"] and "free space" in result["msg"]
    assert result["rc"] == 1
    assert len(result["boxes"]) == 2


def test_corrupt_box_recorded(run_module, home, tmp_path):
    src = tmp_path / "junk.box"
    src.write_text("junk\n")
    args = {"name": "twt-junk/x", "src": str(src), "provider": "lxc", "vagrant_home": str(home)}
    argv = [V, "box", "add", "--name", "twt-junk/x", "--provider", "lxc", str(src), MR]
    result = run_module(
        vagrant_box.main,
        args,
        [box_list("lxc_box_list_empty"), call(argv, fixture="vagrant/lxc_box_add_bad_file")],
    )
    assert result["error_kind"] == "box_corrupt"
    assert "twt-junk/x" in result["msg"] and "Unrecognized archive format" in result["msg"]


FOCAL = "travis/worker-focal"


def _focal_record(home: Path, version: str, digest: str) -> Path:
    directory = box_dir(home, FOCAL, version, "virtualbox")
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "travis-worker-box.json"
    path.write_text(json.dumps({"src": f"/srv/focal-{version}.box", "checksums": {"sha256": digest}}))
    return path


def test_force_checksum_without_version_is_satisfied_by_the_version_from_this_file(run_module, home, boxfile):
    """Several versions installed, no `version`: the one added from this file (recorded checksum) is enough;
    the other versions are not 'replaced' (and their records not touched)."""
    digest = sha256(boxfile)
    _focal_record(home, "2.1.0", "0" * 64)
    _focal_record(home, "2.2.0", digest)
    args = {"name": FOCAL, "src": str(boxfile), "provider": "virtualbox", "checksum": digest, "force": True}
    result = run_module(
        vagrant_box.main, dict(args, vagrant_home=str(home)), [box_list("vbox234_box_list_focal_2_versions")]
    )
    assert result["changed"] is False and result["commands"] == []
    assert result["record"]["checksums"]["sha256"] == digest


def test_force_checksum_without_version_records_only_the_added_box(run_module, home, boxfile):
    """No installed version comes from this file: `vagrant box add --force` adds it as v0 (Vagrant's
    add_direct); the record goes to v0 only, the others keep theirs, and a rerun changes nothing."""
    digest = sha256(boxfile)
    older = _focal_record(home, "2.1.0", "1" * 64)
    newer = _focal_record(home, "2.2.0", "2" * 64)
    before = {older: older.read_text(), newer: newer.read_text()}
    args = {"name": FOCAL, "src": str(boxfile), "provider": "virtualbox", "checksum": digest, "force": True}
    args["vagrant_home"] = str(home)
    rec = recorded("vagrant/vbox234_box_add_focal_file_force")
    argv = [V, "box", "add", "--name", FOCAL, "--provider", "virtualbox", "--checksum", digest]
    argv += ["--checksum-type", "sha256", "--force", str(boxfile), MR]
    result = run_module(
        vagrant_box.main,
        args,
        [
            box_list("vbox234_box_list_focal_2_versions"),
            call(
                argv,
                stdout=rec["stdout"].replace("BOXFILE", str(boxfile)),
                check=unpack(home, FOCAL, "0", "virtualbox"),
            ),
            box_list("vbox234_box_list_focal_3_versions"),
        ],
    )
    assert result["changed"] is True
    assert result["added"] == [{"name": FOCAL, "provider": "virtualbox", "version": "0"}]
    added = json.loads((box_dir(home, FOCAL, "0", "virtualbox") / "travis-worker-box.json").read_text())
    assert added["checksums"]["sha256"] == digest
    assert {path: path.read_text() for path in before} == before  # other versions' records untouched
    rerun = run_module(vagrant_box.main, args, [box_list("vbox234_box_list_focal_3_versions")])
    assert rerun["changed"] is False and rerun["commands"] == []


def test_absent_passes_all_architectures_for_vagrant_24_duplicates(run_module, home):
    """Vagrant 2.4 lists a version once per architecture: one `box remove` with --all-architectures, not two
    that fail with BoxRemoveMultiArchitecture."""
    args = {"name": JAMMY, "state": "absent", "vagrant_home": str(home)}
    rm = [
        V,
        "box",
        "remove",
        JAMMY,
        "--provider",
        "virtualbox",
        "--box-version",
        "1.0.0",
        "--all-architectures",
        MR,
    ]
    check = run_module(
        vagrant_box.main,
        args,
        [box_list("vbox249_box_list_jammy_two_architectures")],
        check_mode=True,
        diff=True,
    )
    assert check["commands"] == [rm]
    assert check["diff"]["before"] == f"{JAMMY} (virtualbox, 1.0.0)\n"
    result = run_module(
        vagrant_box.main,
        args,
        [box_list("vbox249_box_list_jammy_two_architectures"), call(rm), box_list("lxc_box_list_empty")],
    )
    assert result["changed"] is True and result["boxes"] == []


def test_absent_vagrant_23_list_passes_no_architecture_flag(run_module, home):
    args = {"name": FOCAL, "state": "absent", "vagrant_home": str(home)}
    result = run_module(
        vagrant_box.main, args, [box_list("vbox234_box_list_focal_2_versions")], check_mode=True
    )
    assert not any("--all-architectures" in cmd for cmd in result["commands"])
