"""Cache logic of the lab box builder: input hashing, manifest verification, reuse, failure paths."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from travis_lab import boxbuild, cache
from travis_lab.errors import LabError
from travis_lab.mirror import check_mirror, choose_mirror, host_mirror, parse_sources

UNREACHABLE = "http://127.0.0.1:9/debian"


@pytest.fixture
def pubkey(tmp_path: Path) -> Path:
    p = tmp_path / "vagrant.pub"
    p.write_text("ssh-rsa AAAAB3Nza test\n")
    return p


def fake_entry(root: Path, inputs: boxbuild.BoxInputs) -> Path:
    """A complete cache entry as a successful build leaves it (small fake artifacts)."""
    entry = boxbuild.entry_dir(root, inputs.key)
    entry.mkdir(parents=True)
    (entry / boxbuild.ROOTFS).write_bytes(b"rootfs-bytes")
    (entry / inputs.box_name).write_bytes(b"box-bytes")
    arts = {n: cache.file_sha256(entry / n) for n in (boxbuild.ROOTFS, inputs.box_name)}
    cache.write_manifest(
        entry, cache.Manifest(inputs.key, inputs.as_dict(), "2026-01-01 00:00:00 UTC", arts, {})
    )
    return entry


def test_inputs_key_ignores_dict_order_and_changes_with_content() -> None:
    a = cache.inputs_key({"suite": "bookworm", "mirror": "http://m/debian"})
    b = cache.inputs_key({"mirror": "http://m/debian", "suite": "bookworm"})
    c = cache.inputs_key({"mirror": "http://other/debian", "suite": "bookworm"})
    assert a == b
    assert a != c
    assert len(a) == 64


@pytest.mark.parametrize(
    "change",
    [
        {"suite": "trixie"},
        {"mirror": "http://mirror.example/debian"},
        {"arch": "arm64"},
        {"packages": (*boxbuild.BOX_PACKAGES, "vim")},
        {"builder_version": "999"},
        {"script_sha256": "0" * 64},
        {"pubkey_sha256": "1" * 64},
    ],
)
def test_every_input_changes_the_key(change: dict[str, object]) -> None:
    base = boxbuild.BoxInputs(mirror="http://deb.debian.org/debian")
    changed = boxbuild.BoxInputs(**{**base.__dict__, **change})
    assert changed.key != base.key


def test_package_order_does_not_change_the_key() -> None:
    a = boxbuild.BoxInputs(mirror="http://m/debian", packages=("sudo", "python3"))
    b = boxbuild.BoxInputs(mirror="http://m/debian", packages=("python3", "sudo"))
    assert a.key == b.key


def test_make_inputs_hashes_script_and_key(pubkey: Path) -> None:
    inputs = boxbuild.make_inputs(mirror="http://m/debian", pubkey=pubkey)
    assert inputs.pubkey_sha256 == cache.file_sha256(pubkey)
    assert inputs.script_sha256 == cache.inputs_key({"script": boxbuild.customize_script()})
    assert "vagrant.pub" in boxbuild.customize_script()


def test_make_inputs_names_a_missing_pubkey(tmp_path: Path) -> None:
    with pytest.raises(LabError) as exc:
        boxbuild.make_inputs(mirror="http://m/debian", pubkey=tmp_path / "nope.pub")
    assert exc.value.step == "inputs"
    assert "nope.pub" in str(exc.value)


def test_verify_entry_accepts_complete_entry(tmp_path: Path, pubkey: Path) -> None:
    inputs = boxbuild.make_inputs(mirror="http://m/debian", pubkey=pubkey)
    entry = fake_entry(tmp_path, inputs)
    manifest, reason = cache.verify_entry(entry, inputs.key)
    assert manifest is not None, reason
    assert set(manifest.artifacts) == {boxbuild.ROOTFS, inputs.box_name}


def test_verify_entry_detects_corrupt_artifact(tmp_path: Path, pubkey: Path) -> None:
    inputs = boxbuild.make_inputs(mirror="http://m/debian", pubkey=pubkey)
    entry = fake_entry(tmp_path, inputs)
    (entry / boxbuild.ROOTFS).write_bytes(b"rootfs-bytes truncated?")
    manifest, reason = cache.verify_entry(entry, inputs.key)
    assert manifest is None
    assert "corrupt" in reason and boxbuild.ROOTFS in reason


@pytest.mark.parametrize("damage", ["no-manifest", "bad-json", "no-artifact", "other-key", "empty-artifacts"])
def test_verify_entry_detects_partial_or_foreign_entries(tmp_path: Path, pubkey: Path, damage: str) -> None:
    inputs = boxbuild.make_inputs(mirror="http://m/debian", pubkey=pubkey)
    entry = fake_entry(tmp_path, inputs)
    mpath = entry / cache.MANIFEST
    data = json.loads(mpath.read_text())
    if damage == "no-manifest":
        mpath.unlink()
    elif damage == "bad-json":
        mpath.write_text('{"key": "trunc')
    elif damage == "no-artifact":
        (entry / inputs.box_name).unlink()
    elif damage == "other-key":
        mpath.write_text(json.dumps({**data, "key": "f" * 64}))
    elif damage == "empty-artifacts":
        mpath.write_text(json.dumps({**data, "artifacts": {}}))
    manifest, reason = cache.verify_entry(entry, inputs.key)
    assert manifest is None
    assert reason


def test_build_box_reuses_valid_cache_and_says_so(
    tmp_path: Path, pubkey: Path, caplog: pytest.LogCaptureFixture
) -> None:
    inputs = boxbuild.make_inputs(mirror=UNREACHABLE, pubkey=pubkey)
    entry = fake_entry(tmp_path, inputs)
    with caplog.at_level(logging.INFO, logger="travis_lab"):
        art = boxbuild.build_box(mirror=UNREACHABLE, cache_dir=tmp_path, pubkey=pubkey)
    assert art.reused is True
    assert art.path == entry / inputs.box_name
    assert art.rootfs == entry / boxbuild.ROOTFS
    assert art.sha256 == cache.file_sha256(entry / inputs.box_name)
    assert "reusing cached box" in caplog.text and "built 2026-01-01" in caplog.text


def test_corrupt_cache_is_not_reused(tmp_path: Path, pubkey: Path) -> None:
    """A corrupt entry triggers a rebuild; here the rebuild stops at the unreachable mirror."""
    inputs = boxbuild.make_inputs(mirror=UNREACHABLE, pubkey=pubkey)
    entry = fake_entry(tmp_path, inputs)
    (entry / inputs.box_name).write_bytes(b"half a box")
    if os.geteuid() != 0:
        pytest.skip("the rebuild's preflight stops earlier (needs root) when not root")
    with pytest.raises(LabError) as exc:
        boxbuild.build_box(mirror=UNREACHABLE, cache_dir=tmp_path, pubkey=pubkey)
    assert exc.value.step == "mirror"
    assert boxbuild.lookup(inputs, tmp_path) is None
    assert list((tmp_path / "tmp").iterdir()) == []


def test_low_disk_fails_before_building(
    tmp_path: Path, pubkey: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if os.geteuid() != 0:
        pytest.skip("preflight checks root first")
    monkeypatch.setattr(boxbuild, "MIN_FREE_BYTES", 1 << 62)
    with pytest.raises(LabError) as exc:
        boxbuild.build_box(mirror=UNREACHABLE, cache_dir=tmp_path, pubkey=pubkey)
    assert exc.value.step == "disk"
    assert "TRAVIS_LAB_CACHE" in exc.value.remedy
    assert boxbuild.list_entries(tmp_path) == []


def test_missing_debootstrap_names_the_package(
    tmp_path: Path, pubkey: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if os.geteuid() != 0:
        pytest.skip("preflight checks root first")
    empty = tmp_path / "emptybin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(LabError) as exc:
        boxbuild.build_box(mirror=UNREACHABLE, cache_dir=tmp_path / "c", pubkey=pubkey)
    assert exc.value.step == "preflight"
    assert "debootstrap" in exc.value.remedy


def test_cli_unreachable_mirror_exits_nonzero_with_remedy(tmp_path: Path) -> None:
    env = {**os.environ, "TRAVIS_LAB_CACHE": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "travis_lab", "box", "build", "--mirror", UNREACHABLE],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert proc.returncode != 0
    if os.geteuid() == 0:
        assert "step 'mirror'" in proc.stderr
        assert "TRAVIS_LAB_MIRROR" in proc.stderr
    assert proc.stdout == ""
    assert boxbuild.list_entries(tmp_path) == []


def test_check_mirror_unreachable() -> None:
    with pytest.raises(LabError) as exc:
        check_mirror(UNREACHABLE, "bookworm", timeout=3)
    assert exc.value.step == "mirror"
    assert UNREACHABLE in exc.value.problem


def test_parse_sources_both_formats() -> None:
    one_line = "deb [arch=amd64 signed-by=/k.gpg] http://a/debian bookworm main\n# deb http://x/ y main\n"
    assert parse_sources(one_line, deb822=False) == [("http://a/debian", ["bookworm"])]
    deb822 = (
        "Types: deb\nURIs: http://b/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\n"
        "Types: deb-src\nURIs: http://c/debian\nSuites: bookworm\n"
    )
    assert parse_sources(deb822, deb822=True) == [("http://b/debian", ["bookworm", "bookworm-updates"])]


def test_host_mirror_skips_security_and_other_suites(tmp_path: Path) -> None:
    d = tmp_path / "sources.list.d"
    d.mkdir()
    (tmp_path / "sources.list").write_text("deb http://security.debian.org/debian-security bookworm main\n")
    (d / "debian.sources").write_text("Types: deb\nURIs: http://mirror.local/debian/\nSuites: bookworm\n")
    (d / "other.list").write_text("deb https://packages.example/apt nodistro main\n")
    assert host_mirror("bookworm", tmp_path) == "http://mirror.local/debian"
    assert host_mirror("trixie", tmp_path) is None


def test_choose_mirror_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAVIS_LAB_MIRROR", "http://env/debian/")
    assert choose_mirror("bookworm", "http://arg/debian") == "http://arg/debian"
    assert choose_mirror("bookworm") == "http://env/debian"


def test_safe_rmtree_refuses_nothing_and_removes_plain_trees(tmp_path: Path) -> None:
    t = tmp_path / "work" / "rootfs" / "etc"
    t.mkdir(parents=True)
    (t / "f").write_text("x")
    assert cache.mounts_under(tmp_path / "work") == []
    cache.safe_rmtree(tmp_path / "work")
    assert not (tmp_path / "work").exists()


def test_prune_keeps_only_the_current_box(tmp_path: Path, pubkey: Path) -> None:
    current = boxbuild.make_inputs(mirror="http://m/debian", pubkey=pubkey)
    old = boxbuild.make_inputs(mirror="http://old/debian", pubkey=pubkey)
    keep, gone = fake_entry(tmp_path, current), fake_entry(tmp_path, old)
    assert boxbuild.prune(tmp_path, keep=current) == [gone]
    assert boxbuild.list_entries(tmp_path) == [keep]


def test_unknown_suite_is_named(tmp_path: Path) -> None:
    """A local HTTP server that 404s stands in for a mirror without the suite."""
    import http.server
    import threading

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        with pytest.raises(LabError) as exc:
            check_mirror(f"http://127.0.0.1:{srv.server_address[1]}/debian", "no-such-suite", timeout=5)
    finally:
        srv.shutdown()
        srv.server_close()
    assert "no-such-suite" in exc.value.problem and "404" in exc.value.problem
