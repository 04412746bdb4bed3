"""worker_image: publish (LXC: real rsync on a small rootfs; VirtualBox: recorded VBoxManage output
through module_utils/virtualbox_image), activate / rollback, prune (never current or in use), status,
catalog export + fetch (real tar, sha256 checked), check mode and diff, on real files in tmp_path."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from ansible_collections.travis.worker.plugins.module_utils import image_store
from ansible_collections.travis.worker.plugins.modules import worker_image
from module_harness import call, recorded

BOX = "twlab/debian12"
SLUG = "twlab-VAGRANTSLASH-debian12"
DIGEST = "0123456789abcdef" * 4


def real(argv: list[str]) -> Any:
    """An expected call that really runs (rsync/tar on the test's files)."""

    def run(_kwargs: dict) -> None:
        subprocess.run(argv, check=True, capture_output=True)

    return call(argv, check=run)


@pytest.fixture
def lab(tmp_path: Path) -> dict[str, Any]:
    """A stopped LXC base container `base1` (dir rootfs with a machine-id) and an empty store."""
    lxc = tmp_path / "lxc"
    rootfs = lxc / "base1" / "rootfs"
    (rootfs / "etc").mkdir(parents=True)
    (rootfs / "etc" / "machine-id").write_text("b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0\n")
    (rootfs / "etc" / "travis-worker-recipes.json").write_text(json.dumps({"recipe_digest": DIGEST}))
    (rootfs / "bin").mkdir()
    os.symlink("usr/bin", rootfs / "lib64")
    (lxc / "base1" / "config").write_text(f"lxc.uts.name = base1\nlxc.rootfs.path = dir:{rootfs}\n")
    key = tmp_path / "private_key"
    key.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nxx\n-----END OPENSSH PRIVATE KEY-----\n")
    store = tmp_path / "store"
    return {"lxc": lxc, "rootfs": rootfs, "key": key, "store": store, "bdir": store / SLUG}


def publish_args(lab: dict[str, Any], version: str, digest: str = DIGEST, **extra: Any) -> dict[str, Any]:
    return dict(
        box=BOX, store=str(lab["store"]), state="published", provider="lxc", digest=digest, version=version,
        lxc_container="base1", lxc_path=str(lab["lxc"]), private_key=str(lab["key"]), hostname="box1",
        **extra,
    )  # fmt: skip


def rsync(lab: dict[str, Any], version: str, link: str | None = None) -> Any:
    """The publish copy; `link`: the version whose rootfs unchanged files are hard-linked from (--link-dest);
    by default the current one, as the module picks it when `current` exists."""
    cur = lab["bdir"] / "current"
    link = link or (os.readlink(cur) if cur.is_symlink() else None)
    return real(
        ["/usr/bin/rsync", "-aHAX", "--numeric-ids",
         *([f"--link-dest={lab['bdir']}/{link}/rootfs"] if link else []),
         f"{lab['rootfs']}/", f"{lab['bdir']}/{version}/rootfs/"]
    )  # fmt: skip


def publish(run_module, lab: dict[str, Any], version: str, digest: str = DIGEST) -> dict[str, Any]:
    result = run_module(
        worker_image.main, publish_args(lab, version, digest), [rsync(lab, version)], diff=True
    )
    assert not result.get("failed"), result
    return result


def test_publish_lxc_copies_rootfs_once_then_image_json_then_current(run_module, lab) -> None:
    result = publish(run_module, lab, "20261202.040000")
    vdir = lab["bdir"] / "20261202.040000"
    assert result["changed"] and result["built"]
    assert (vdir / "rootfs/etc/travis-worker-recipes.json").read_text() == json.dumps(
        {"recipe_digest": DIGEST}
    )
    assert os.readlink(vdir / "rootfs/lib64") == "usr/bin"
    assert (vdir / "rootfs/etc/machine-id").read_text() == ""  # each VM gets its own id at boot
    assert (lab["rootfs"] / "etc/machine-id").read_text().startswith("b0b0")  # the base VM is untouched
    assert oct((vdir / "private_key").stat().st_mode & 0o777) == "0o600"
    image = json.loads((vdir / "image.json").read_text())
    assert {k: image[k] for k in ("box", "version", "digest", "provider", "built_on")} == {
        "box": BOX, "version": "20261202.040000", "digest": DIGEST, "provider": "lxc", "built_on": "box1",
    }  # fmt: skip
    assert os.readlink(lab["bdir"] / "current") == "20261202.040000"  # relative
    assert (lab["bdir"] / "users").is_dir()
    assert result["diff"] == {
        "before": {"current": None, "versions": []},
        "after": {"current": "20261202.040000", "versions": ["20261202.040000"]},
    }


def test_publish_hard_links_what_did_not_change_since_the_current_image(run_module, lab) -> None:
    """A second version copies only what the recipes changed: the rest are hard links to the current
    image (rsync --link-dest), and neither emptying the copy's machine-id nor a changed file touches the
    older image."""
    (lab["rootfs"] / "bin" / "tool").write_text("v1\n")
    os.utime(lab["rootfs"] / "bin" / "tool", (1_700_000_000, 1_700_000_000))
    publish(run_module, lab, "20261202.040000")
    (lab["rootfs"] / "bin" / "tool").write_text("v2, longer\n")  # a recipe changed it
    (lab["rootfs"] / "etc" / "new.conf").write_text("added\n")
    publish(run_module, lab, "20261202.050000", digest="fedcba9876543210" * 4)
    old, new = lab["bdir"] / "20261202.040000/rootfs", lab["bdir"] / "20261202.050000/rootfs"
    same = "etc/travis-worker-recipes.json"
    assert (old / same).stat().st_ino == (new / same).stat().st_ino  # linked, not copied
    assert (old / "bin/tool").read_text() == "v1\n" and (new / "bin/tool").read_text() == "v2, longer\n"
    assert (old / "bin/tool").stat().st_ino != (new / "bin/tool").stat().st_ino
    assert (new / "etc/new.conf").read_text() == "added\n" and not (old / "etc/new.conf").exists()
    assert (new / "etc/machine-id").read_text() == "" == (old / "etc/machine-id").read_text()
    assert (old / "etc/machine-id").stat().st_ino != (new / "etc/machine-id").stat().st_ino


def test_publish_links_from_the_newest_image_when_none_is_current(run_module, lab) -> None:
    publish(run_module, lab, "20261202.040000")
    publish(run_module, lab, "20261202.050000", digest="fedcba9876543210" * 4)
    (lab["bdir"] / "current").unlink()  # withdrawn (strategy=in_place)
    result = run_module(
        worker_image.main,
        publish_args(lab, "20261202.060000", digest="ab" * 32),
        [rsync(lab, "20261202.060000", link="20261202.050000")],
    )
    assert result["built"] and os.readlink(lab["bdir"] / "current") == "20261202.060000"


def test_publish_same_digest_again_builds_nothing_but_reactivates(run_module, lab) -> None:
    publish(run_module, lab, "20261202.040000")
    publish(run_module, lab, "20261202.050000", digest="fedcba9876543210" * 4)
    assert os.readlink(lab["bdir"] / "current") == "20261202.050000"
    result = run_module(worker_image.main, publish_args(lab, "20261202.060000"), [])  # no rsync expected
    assert result["built"] is False and result["version"] == "20261202.040000" and result["changed"]
    assert os.readlink(lab["bdir"] / "current") == "20261202.040000"
    again = run_module(worker_image.main, publish_args(lab, "20261202.060000"), [])
    assert again["changed"] is False


def test_failed_copy_leaves_no_version_and_current_unmoved(run_module, lab) -> None:
    publish(run_module, lab, "20261202.040000")
    args = publish_args(lab, "20261202.050000", digest="fedcba9876543210" * 4)
    argv = [
        "/usr/bin/rsync",
        "-aHAX",
        "--numeric-ids",
        f"--link-dest={lab['bdir']}/20261202.040000/rootfs",
        f"{lab['rootfs']}/",
        f"{lab['bdir']}/20261202.050000/rootfs/",
    ]
    result = run_module(
        worker_image.main,
        args,
        [call(argv, rc=11, stderr="rsync: write failed: No space left on device (28)\n")],
    )
    assert result["failed"] and "No space left on device" in result["msg"] and "free space" in result["msg"]
    assert not (lab["bdir"] / "20261202.050000").exists()
    assert os.readlink(lab["bdir"] / "current") == "20261202.040000"


def test_publish_check_mode_changes_nothing(run_module, lab) -> None:
    result = run_module(
        worker_image.main, publish_args(lab, "20261202.040000"), [], check_mode=True, diff=True
    )
    assert result["changed"] and result["built"]
    assert not lab["store"].exists()
    assert result["diff"]["after"] == {"current": "20261202.040000", "versions": ["20261202.040000"]}


BASE = "3f2b9c7a-1d4e-4a8b-8c6f-2e5d7a9b0c13"  # the base VM of the vboxmanage_image recordings


def vbox(name: str) -> Any:
    """An expected VBoxManage call: argv and output of tests/unit/fixtures/vboxmanage_image/<name>.json."""
    rec = recorded(f"vboxmanage_image/{name}")
    return call(["/usr/bin/VBoxManage", *rec["argv"][1:]], fixture=f"vboxmanage_image/{name}")


def vbox_args(lab: dict[str, Any], **extra: Any) -> dict[str, Any]:
    args = dict(box=BOX, store=str(lab["store"]), state="published", provider="virtualbox", digest=DIGEST,
                version="20261202.040000", vm=BASE, private_key=str(lab["key"]), hostname="box1")  # fmt: skip
    return {**args, **extra}


def test_publish_virtualbox_takes_a_cold_snapshot_and_writes_vm_json(run_module, lab) -> None:
    """virtualbox_image.publish() does it: showvminfo (powered off?), snapshot take `image`, files."""
    take = ["/usr/bin/VBoxManage", "snapshot", BASE, "take", "image-20261202.040000"]
    # the recorded output of `snapshot take` does not name the snapshot: the recording fits this name as well
    calls = [vbox("showvminfo_base_poweroff"), call(take, fixture="vboxmanage_image/snapshot_take_image")]
    checked = run_module(worker_image.main, vbox_args(lab), calls[:1], check_mode=True, diff=True)
    assert checked["changed"] and checked["built"], checked
    assert checked["diff"]["after"] == {"current": "20261202.040000", "versions": ["20261202.040000"]}
    # check mode: only the read (showvminfo) runs, the snapshot is planned
    assert not (lab["bdir"] / "20261202.040000").exists()
    result = run_module(worker_image.main, vbox_args(lab), calls, diff=True)
    assert result["built"] and result["changed"], result
    assert result["_calls"][1]["argv"] == take
    vdir = lab["bdir"] / "20261202.040000"
    assert json.loads((vdir / "vm.json").read_text()) == {"uuid": BASE, "snapshot": "image-20261202.040000"}
    assert json.loads((vdir / "image.json").read_text())["provider"] == "virtualbox"
    assert result["image"]["built_on"] == "box1"
    assert (vdir / "private_key").read_bytes() == lab["key"].read_bytes()
    assert os.readlink(lab["bdir"] / "current") == "20261202.040000"
    assert result["diff"]["before"] == {"current": None, "versions": []}
    again = run_module(worker_image.main, vbox_args(lab, version=None), [])  # same digest: nothing built
    assert not again["changed"] and again["version"] == "20261202.040000"


def test_publish_virtualbox_refuses_a_running_base_vm(run_module, lab) -> None:
    result = run_module(worker_image.main, vbox_args(lab), [vbox("showvminfo_base_running")])
    assert result["failed"] and "halt it first" in result["msg"], result
    assert not (lab["bdir"] / "20261202.040000" / "image.json").exists()


def two_virtualbox_versions(run_module, lab) -> None:
    """The old version (base VM BASE, one base VM per build as image_publish.yml makes) and a current one."""
    run_module(worker_image.main, vbox_args(lab, version="20261201.090000", snapshot="image"),
               [vbox("showvminfo_base_poweroff"), vbox("snapshot_take_image")])  # fmt: skip
    new = lab["bdir"] / "20261202.041500"
    new.mkdir()
    (new / "vm.json").write_text(
        json.dumps({"uuid": "11111111-2222-4333-8444-555555555555", "snapshot": "image"})
    )
    (new / "image.json").write_text(json.dumps({"digest": "ef" * 32, "provider": "virtualbox"}))
    image_store.set_current(str(lab["bdir"]), "20261202.041500")


def test_prune_virtualbox_unregisters_the_old_base_vm(run_module, lab) -> None:
    two_virtualbox_versions(run_module, lab)
    args = dict(box=BOX, store=str(lab["store"]), state="pruned", keep=1)
    reads = [vbox("showvminfo_base_snapshotted"), vbox("showmediuminfo_base_diff"),
             vbox("showmediuminfo_base_disk_alone")]  # fmt: skip
    checked = run_module(worker_image.main, args, reads, check_mode=True, diff=True)
    assert checked["removed"] == ["20261201.090000"] and checked["changed"]
    assert checked["diff"]["after"]["versions"] == ["20261202.041500"]
    assert (lab["bdir"] / "20261201.090000" / "image.json").is_file()
    result = run_module(worker_image.main, args, [*reads, vbox("unregistervm_base")])
    assert result["_calls"][-1]["argv"] == ["/usr/bin/VBoxManage", "unregistervm", BASE, "--delete"]
    assert result["removed"] == ["20261201.090000"]
    assert not (lab["bdir"] / "20261201.090000").exists()


def test_prune_virtualbox_keeps_a_version_a_linked_clone_still_uses(run_module, lab) -> None:
    two_virtualbox_versions(run_module, lab)
    args = dict(box=BOX, store=str(lab["store"]), state="pruned", keep=1)
    calls = [vbox("showvminfo_base_snapshotted"), vbox("showmediuminfo_base_diff"),
             vbox("showmediuminfo_base_disk_linked"), vbox("showmediuminfo_clone_disk")]  # fmt: skip
    result = run_module(worker_image.main, args, calls)
    assert result["removed"] == [] and not result["changed"]
    assert "travis-worker-1" in result["kept"]["20261201.090000"][0]
    assert any("kept 20261201.090000" in w for w in result["_warnings"])
    assert (lab["bdir"] / "20261201.090000" / "image.json").is_file()


def test_rollback_to_previous_and_to_a_named_version(run_module, lab) -> None:
    for n, version in enumerate(("20261202.010000", "20261202.020000", "20261202.030000")):
        publish(run_module, lab, version, digest=f"{n:064x}")
    base = dict(box=BOX, store=str(lab["store"]), state="current")
    result = run_module(worker_image.main, dict(base, version="previous"), [], diff=True)
    assert result["version"] == "20261202.020000" and result["changed"]
    assert result["diff"]["before"]["current"] == "20261202.030000"
    assert os.readlink(lab["bdir"] / "current") == "20261202.020000"
    run_module(worker_image.main, dict(base, version="20261202.030000"), [])
    assert os.readlink(lab["bdir"] / "current") == "20261202.030000"
    bad = run_module(worker_image.main, dict(base, version="20991231.000000"), [])
    assert bad["failed"] and "20261202.010000" in bad["msg"]


def test_version_none_withdraws_current_and_keeps_the_versions(run_module, lab) -> None:
    """in_place on a box with a published image withdraws it, or the runner would undo the recipes."""
    publish(run_module, lab, "20261202.010000")
    base = dict(box=BOX, store=str(lab["store"]), state="current", version="none")
    checked = run_module(worker_image.main, base, [], check_mode=True, diff=True)
    assert checked["changed"] and checked["diff"]["after"]["current"] is None
    assert os.readlink(lab["bdir"] / "current") == "20261202.010000"  # --check changed nothing
    result = run_module(worker_image.main, base, [])
    assert result["changed"] and result["previous"] == "20261202.010000" and result["current"] is None
    assert not os.path.lexists(lab["bdir"] / "current")
    assert [i["version"] for i in result["versions"]] == ["20261202.010000"]
    assert not run_module(worker_image.main, base, [])["changed"]  # a rerun changes nothing


def test_rollback_without_an_older_version_fails_clearly(run_module, lab) -> None:
    publish(run_module, lab, "20261202.010000")
    result = run_module(
        worker_image.main, dict(box=BOX, store=str(lab["store"]), state="current", version="previous"), []
    )
    assert result["failed"] and "nothing to roll back to" in result["msg"]


def test_prune_keeps_newest_current_and_in_use(run_module, lab) -> None:
    versions = [f"20261202.0{i}0000" for i in range(1, 6)]
    for n, version in enumerate(versions):
        publish(run_module, lab, version, digest=f"{n:064x}")
    image_store.set_current(str(lab["bdir"]), versions[3])  # rolled back one
    (lab["bdir"] / "users" / "worker-1").write_text(versions[0] + "\n")  # a VM still on the oldest
    (lab["bdir"] / "20261202.090000").mkdir()  # a failed build: no image.json
    args = dict(box=BOX, store=str(lab["store"]), state="pruned", keep=1)
    check = run_module(worker_image.main, args, [], check_mode=True, diff=True)
    assert sorted(check["removed"]) == [versions[1], versions[2], "20261202.090000"]
    assert (lab["bdir"] / versions[1]).exists()
    result = run_module(worker_image.main, args, [])
    assert sorted(result["removed"]) == [versions[1], versions[2], "20261202.090000"]
    assert [v["version"] for v in result["versions"]] == [versions[0], versions[3], versions[4]]
    assert result["kept"][versions[0]] == ["in use by worker-1"]
    assert result["kept"][versions[3]] == ["current"]
    assert result["users"] == {"worker-1": versions[0]}
    assert run_module(worker_image.main, args, [])["changed"] is False


def test_status_reports_without_changing(run_module, lab) -> None:
    publish(run_module, lab, "20261202.010000")
    (lab["bdir"] / "users" / "worker-2").write_text("20261202.010000\n")
    result = run_module(worker_image.main, dict(box=BOX, store=str(lab["store"])), [])
    assert result["changed"] is False
    assert result["current"] == "20261202.010000" and result["users"] == {"worker-2": "20261202.010000"}
    assert result["versions"][0]["digest"] == DIGEST


def test_export_then_fetch_on_another_store(run_module, lab, tmp_path: Path) -> None:
    ping = lab["rootfs"] / "bin" / "ping"  # Debian's ping needs its file capability (security.capability)
    ping.write_bytes(b"\x7fELF")
    caps = shutil.which("setcap") if os.geteuid() == 0 else None
    if caps:
        subprocess.run([caps, "cap_net_raw+ep", str(ping)], check=True)
    publish(run_module, lab, "20261202.010000")
    catalog = tmp_path / "catalog"
    vdir = lab["bdir"] / "20261202.010000"
    name = f"{SLUG}-20261202.010000-lxc.box"

    def tar_create(kwargs: dict) -> None:
        subprocess.run(kwargs["argv"], check=True, capture_output=True)

    from unittest.mock import ANY

    create = call(
        [
            "/usr/bin/tar",
            "--numeric-owner",
            "--xattrs",
            "--xattrs-include=*",
            "--use-compress-program=gzip -1",
            "-cf",
            ANY,
            "-C",
            ANY,
            "metadata.json",
            "-C",
            str(vdir),
            "rootfs",
            "private_key",
        ],
        check=tar_create,
    )
    args = dict(box=BOX, store=str(lab["store"]), state="exported", catalog=str(catalog))
    result = run_module(worker_image.main, args, [create])
    assert result["changed"] and result["box_file"] == str(catalog / name)
    # readable by the connection user, who fetches it without become (the playbook's fetch)
    assert oct((catalog / name).stat().st_mode & 0o777) == "0o644"
    meta = json.loads((catalog / "metadata.json").read_text())
    assert meta["name"] == BOX
    [entry] = meta["versions"]
    assert entry["version"] == "20261202.010000" and entry["travis_worker"]["digest"] == DIGEST
    assert entry["providers"] == [
        {
            "name": "lxc",
            "url": f"file://{catalog}/{name}",
            "checksum_type": "sha256",
            "checksum": result["sha256"],
        }
    ]
    assert run_module(worker_image.main, args, [])["changed"] is False  # exported once

    other = tmp_path / "store2"
    bdir2 = other / SLUG
    fetch = dict(box=BOX, store=str(other), state="fetched", catalog=str(catalog), digest=DIGEST)
    extract = call(["/usr/bin/tar", "--numeric-owner", "--xattrs", "--xattrs-include=*",
                    "-xzf", str(catalog / name),
                    "-C", str(bdir2 / "20261202.010000"),
                    "--exclude=./image.json", "--exclude=image.json",
                    "--exclude=metadata.json", "--exclude=./metadata.json"], check=tar_create)  # fmt: skip
    got = run_module(worker_image.main, fetch, [extract], diff=True)
    assert got["built"] and got["changed"], got
    v2 = bdir2 / "20261202.010000"
    assert (v2 / "rootfs/etc/travis-worker-recipes.json").read_text() == json.dumps({"recipe_digest": DIGEST})
    assert not (v2 / "metadata.json").exists()
    assert json.loads((v2 / "image.json").read_text())["digest"] == DIGEST
    assert oct((v2 / "private_key").stat().st_mode & 0o777) == "0o600"
    assert os.readlink(bdir2 / "current") == "20261202.010000"
    if caps:  # the capability survived rsync (publish), tar c (export) and tar x (fetch)
        assert os.getxattr(v2 / "rootfs/bin/ping", "security.capability") == os.getxattr(
            ping, "security.capability"
        )
    assert run_module(worker_image.main, fetch, [])["changed"] is False  # fetched once


def test_fetch_refuses_a_box_with_a_wrong_checksum(run_module, lab, tmp_path: Path) -> None:
    catalog = tmp_path / "catalog"
    catalog.mkdir()
    (catalog / "x.box").write_bytes(b"not the box the catalog describes")
    provider = {"name": "lxc", "url": "x.box", "checksum_type": "sha256", "checksum": "0" * 64}
    meta = {
        "name": BOX,
        "versions": [
            {"version": "20261202.010000", "travis_worker": {"digest": DIGEST}, "providers": [provider]}
        ],
    }
    (catalog / "metadata.json").write_text(json.dumps(meta))
    result = run_module(
        worker_image.main,
        dict(box=BOX, store=str(lab["store"]), state="fetched", catalog=f"file://{catalog}/metadata.json"),
        [],
    )
    assert result["failed"] and "does not match" in result["msg"]
    assert not (lab["bdir"] / "20261202.010000").exists()
    assert image_store.current(str(lab["bdir"])) is None


def test_export_refuses_virtualbox_images(run_module, lab, tmp_path: Path) -> None:
    vdir = lab["bdir"] / "20261202.010000"
    vdir.mkdir(parents=True)
    (vdir / "image.json").write_text(json.dumps({"box": BOX, "digest": DIGEST, "provider": "virtualbox"}))
    image_store.set_current(str(lab["bdir"]), "20261202.010000")
    result = run_module(
        worker_image.main,
        dict(box=BOX, store=str(lab["store"]), state="exported", catalog=str(tmp_path / "c")),
        [],
    )
    assert result["failed"] and "LXC images only" in result["msg"]


def test_set_current_replaces_the_link_atomically(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    image_store.set_current(str(tmp_path), "a")
    image_store.set_current(str(tmp_path), "b")
    assert os.readlink(tmp_path / "current") == "b"
    assert sorted(os.listdir(tmp_path)) == ["a", "b", "current"]


def test_publish_refuses_a_digest_the_runner_would_refuse(run_module, lab) -> None:
    result = run_module(
        worker_image.main, publish_args(lab, "20261202.040000", digest="e96c7381f70b302b"), []
    )
    assert result["failed"] and "64 lower-case hex" in result["msg"]
    assert not lab["store"].exists()


def test_prune_virtualbox_deletes_only_the_old_snapshot_of_the_shared_base_vm(run_module, lab) -> None:
    """image_publish.yml snapshots the same base VM at every build (image-<version>): the old version's
    snapshot goes, the VM stays (the current version is its other snapshot)."""
    for version in ("20261201.090000", "20261202.041500"):
        path = lab["bdir"] / version
        path.mkdir(parents=True)
        (path / "vm.json").write_text(json.dumps({"uuid": BASE, "snapshot": f"image-{version}"}))
        (path / "image.json").write_text(json.dumps({"digest": DIGEST, "provider": "virtualbox"}))
    image_store.set_current(str(lab["bdir"]), "20261202.041500")
    args = dict(box=BOX, store=str(lab["store"]), state="pruned", keep=1)
    calls = [vbox("showvminfo_shared_base"), vbox("showmediuminfo_shared_current"),
             vbox("showmediuminfo_shared_snap2"), vbox("showmediuminfo_shared_snap1_alone"),
             vbox("snapshot_delete_old")]  # fmt: skip
    result = run_module(worker_image.main, args, calls)
    assert result["_calls"][-1]["argv"] == [
        "/usr/bin/VBoxManage",
        "snapshot",
        BASE,
        "delete",
        "image-20261201.090000",
    ]
    assert result["removed"] == ["20261201.090000"] and not (lab["bdir"] / "20261201.090000").exists()
