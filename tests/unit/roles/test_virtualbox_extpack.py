"""virtualbox: the Oracle extension pack follows the pinned VirtualBox (extpack.yml through real
ansible-playbook on localhost, with a stand-in VBoxManage that prints a recording of ``list extpacks`` and
logs every argv).

The recordings are reconstructed from VirtualBox's VBoxManageList.cpp (tests/unit/fixtures/vboxmanage/, each
with its provenance; docs/recordings.md)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from test_preflight import role_tasks, run_tasks

ROOT = Path(__file__).resolve().parents[3]
FIXTURES = ROOT / "tests" / "unit" / "fixtures" / "vboxmanage"
NAME_71 = "Oracle VirtualBox Extension Pack"
NAME_70 = "Oracle VM VirtualBox Extension Pack"
PACK = "/var/cache/twt/Oracle_VirtualBox_Extension_Pack-7.1.12.vbox-extpack"
LICENSE = "eb31505e56e9b4d0fbca139104da41ac6f6b98f8e78968bdf01b1f3da3c4f9ae"

# provenance of the stub's install/uninstall output: VBoxManage's showProgress() prints the progress line on
# stderr (tests/unit/fixtures/vboxmanage/make_fixtures.py); the role reads neither stream of these two.
STUB = """#!{python}
import json, os, sys
with open(os.environ["TW_VBOX_LOG"], "a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\\n")
if sys.argv[1:] == ["list", "extpacks"]:
    sys.stdout.write(json.load(open(os.environ["TW_VBOX_RECORDING"]))["stdout"])
    sys.exit(0)
if sys.argv[1:3] in (["extpack", "install"], ["extpack", "uninstall"]):
    sys.stderr.write("0%...10%...20%...30%...40%...50%...60%...70%...80%...90%...100%\\n")
    sys.exit(0)
sys.exit(97)
"""


def run_extpack(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, recording: str, extra: dict
) -> tuple[int, str, list[list[str]]]:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "VBoxManage").write_text(STUB.format(python=sys.executable))
    (bindir / "VBoxManage").chmod(0o755)
    calls = tmp_path / "calls.jsonl"
    monkeypatch.setenv("PATH", f"{bindir}:{Path(sys.executable).parent}:/usr/bin:/bin")
    monkeypatch.setenv("TW_VBOX_LOG", str(calls))
    monkeypatch.setenv("TW_VBOX_RECORDING", str(FIXTURES / f"{recording}.json"))
    settings = {
        "virtualbox_extpack": True,
        "virtualbox_extpack_src": PACK,
        "virtualbox_extpack_license_sha256": LICENSE,
        **extra,
    }
    rc, out = run_tasks(tmp_path, role_tasks("virtualbox", "extpack.yml"), settings)
    argvs = [json.loads(line) for line in calls.read_text().splitlines()] if calls.exists() else []
    return rc, out, argvs


INSTALL = ["extpack", "install", "--replace", f"--accept-license={LICENSE}", PACK]


def test_no_pack_installs_the_pinned_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rc, out, argvs = run_extpack(
        tmp_path, monkeypatch, "list_extpacks_none", {"virtualbox_version": "7.1.12"}
    )
    assert rc == 0, out
    assert argvs == [["list", "extpacks"], INSTALL]


def test_the_pinned_usable_pack_is_left_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rc, out, argvs = run_extpack(tmp_path, monkeypatch, "list_extpacks_71", {"virtualbox_version": "7.1.12"})
    assert rc == 0, out
    assert argvs == [["list", "extpacks"]]
    assert "changed=0" in out


def test_a_70_pack_on_70_is_left_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # 7.0 lists the pack under its older name; it is installed, so nothing runs
    # (before: reinstalled on every run)
    rc, out, argvs = run_extpack(tmp_path, monkeypatch, "list_extpacks_70", {"virtualbox_version": "7.0.20"})
    assert rc == 0, out
    assert argvs == [["list", "extpacks"]]


@pytest.mark.parametrize(
    ("recording", "old_name"),
    [
        # listed usable (same branch), but not the pin's version (before: left in place, its name matched)
        ("list_extpacks_71_with_7110_pack", NAME_71),
        # after 7.0 -> 7.1 the old pack keeps its 7.0 name: install --replace would leave it listed, unusable
        ("list_extpacks_71_with_70_pack", NAME_70),
    ],
)
def test_a_pack_of_another_version_is_removed_and_the_pin_installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, recording: str, old_name: str
) -> None:
    rc, out, argvs = run_extpack(tmp_path, monkeypatch, recording, {"virtualbox_version": "7.1.12"})
    assert rc == 0, out
    assert argvs == [["list", "extpacks"], ["extpack", "uninstall", old_name], INSTALL]
    if old_name == NAME_70:
        assert "Oracle VM VirtualBox Extension Pack 7.0.20 (unusable: VBoxExtPackRegister returned" in out


def test_missing_source_stops_with_the_download_address(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rc, out, argvs = run_extpack(
        tmp_path,
        monkeypatch,
        "list_extpacks_none",
        {"virtualbox_version": "7.1.12", "virtualbox_extpack_src": ""},
    )
    assert rc == 2, out
    assert (
        "virtualbox: virtualbox_extpack is on but virtualbox_extpack_src is empty: set it to the path on the "
        "box or URL of the Oracle extension pack 7.1.12 (https://download.virtualbox.org/virtualbox/7.1.12/"
        "Oracle_VirtualBox_Extension_Pack-7.1.12.vbox-extpack)."
    ) in out
    assert argvs == [["list", "extpacks"]]
