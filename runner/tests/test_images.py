"""The image store reader (travis_worker.images): slug, current, image.json, users/<vm>."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from travis_worker.images import ImageError, ImageStore, read_image, slug

BOX = "travis/worker-base"
DIGEST = "a1fce4363854ff888cff4b8e7875d600c2682390412a8cf79b37d0b11148b0fa"


def version_dir(root: Path, version: str, meta: dict | None = None) -> Path:
    path = root / "travis-VAGRANTSLASH-worker-base" / version
    path.mkdir(parents=True)
    doc = {
        "box": BOX,
        "version": version,
        "digest": DIGEST,
        "provider": "lxc",
        "created": "2026-12-02T04:15:00Z",
    }
    doc.update(meta or {})
    (path / "image.json").write_text(json.dumps(doc))
    return path


def point_current(root: Path, target: str) -> None:
    link = root / "travis-VAGRANTSLASH-worker-base" / "current.tmp"
    link.symlink_to(target)
    link.rename(link.with_name("current"))


def test_slug_is_vagrants_box_directory_name() -> None:
    assert slug("travis/worker-base") == "travis-VAGRANTSLASH-worker-base"
    assert slug("local-box") == "local-box"
    for bad in ("", "/abs", "a/../b"):
        with pytest.raises(ValueError, match="is not a box name"):
            slug(bad)


def test_nothing_published(tmp_path: Path) -> None:
    store = ImageStore(str(tmp_path), BOX)
    assert store.current_version() is None and store.current() is None


def test_current_image_and_its_summary(tmp_path: Path) -> None:
    path = version_dir(tmp_path, "20261202.041500")
    point_current(tmp_path, "20261202.041500")
    store = ImageStore(str(tmp_path), BOX)
    image = store.current()
    assert image is not None and image.path == path
    assert image.summary() == {"version": "20261202.041500", "digest": DIGEST}
    assert image.rootfs == path / "rootfs" and image.private_key == path / "private_key"
    assert store.image_of(str(path / "rootfs")) == image == store.image_of(str(path))
    assert store.image_of(str(tmp_path / "elsewhere" / "rootfs")) is None


def test_incomplete_version_is_ignored(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = version_dir(tmp_path, "20261202.041500")
    (path / "image.json").unlink()  # image.json is written last: without it the build did not finish
    point_current(tmp_path, "20261202.041500")
    assert ImageStore(str(tmp_path), BOX).current() is None
    assert "has no image.json: ignored" in caplog.text


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        ({"digest": "abc"}, "digest 'abc' is not 64 lower-case hex digits"),
        ({"version": "other"}, "does not match its directory"),
        ({"provider": "docker"}, "provider 'docker' is not one of lxc, virtualbox"),
        ({"box": None}, "'box' missing or not a string"),
        ({"box": "someone/else"}, "box 'someone/else', expected 'travis/worker-base'"),
    ],
)
def test_wrong_image_json_names_file_and_field(tmp_path: Path, meta: dict, message: str) -> None:
    version_dir(tmp_path, "20261202.041500", meta)
    point_current(tmp_path, "20261202.041500")
    with pytest.raises(ImageError, match=message):
        ImageStore(str(tmp_path), BOX).current()


def test_unreadable_json_and_current_not_a_symlink(tmp_path: Path) -> None:
    path = version_dir(tmp_path, "20261202.041500")
    (path / "image.json").write_text("{")
    with pytest.raises(ImageError, match="not JSON"):
        read_image(path)
    (tmp_path / "travis-VAGRANTSLASH-worker-base" / "current").mkdir()
    with pytest.raises(ImageError, match="is not a symlink"):
        ImageStore(str(tmp_path), BOX).current_version()


def test_absolute_current_target_names_the_version(tmp_path: Path) -> None:
    path = version_dir(tmp_path, "20261202.041500")
    point_current(tmp_path, str(path) + "/")
    assert ImageStore(str(tmp_path), BOX).current_version() == "20261202.041500"


def test_users_file_written_replaced_and_removed(tmp_path: Path) -> None:
    version_dir(tmp_path, "20261202.040000")
    version_dir(tmp_path, "20261202.041500")
    store = ImageStore(str(tmp_path), BOX)
    users = tmp_path / "travis-VAGRANTSLASH-worker-base" / "users"
    old = read_image(tmp_path / "travis-VAGRANTSLASH-worker-base" / "20261202.040000")
    new = read_image(tmp_path / "travis-VAGRANTSLASH-worker-base" / "20261202.041500")
    store.record_user("worker-1", old)
    assert (users / "worker-1").read_text() == "20261202.040000\n"
    store.record_user("worker-1", new)
    assert (users / "worker-1").read_text() == "20261202.041500\n"
    assert sorted(p.name for p in users.iterdir()) == ["worker-1"]  # no temp file left
    store.record_user("worker-1", None)
    assert not (users / "worker-1").exists()
    store.record_user("worker-1", None)  # nothing to remove is fine
    with pytest.raises(ValueError, match="cannot be a file name"):
        store.record_user("../x", new)
