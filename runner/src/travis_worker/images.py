"""The image store of a worker box: published VM images per box name, and which VM runs which.

Layout (docs/runner.md, "Images"): ``<root>/<slug>/<version>/image.json`` (written last: a version directory
without it is an incomplete build and is ignored), ``<root>/<slug>/current -> <version>`` (moving it is
publishing, or a rollback), ``<root>/<slug>/users/<vm>`` (one line: the version that VM runs; written by the
worker, read by pruning). ``slug`` is the box name with ``/`` replaced by ``-VAGRANTSLASH-``, as Vagrant does.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

log = logging.getLogger(__name__)

IMAGE_JSON = "image.json"
CURRENT = "current"
USERS = "users"
PROVIDERS = ("lxc", "virtualbox")
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_DIGEST = re.compile(r"^[0-9a-f]{64}$")


class ImageError(ValueError):
    """An image directory whose image.json is unreadable or wrong; names the file and the field."""


def slug(box: str) -> str:
    """The store directory name of ``box`` (Vagrant's box directory convention)."""
    if not box or box.startswith("/") or ".." in box.split("/"):
        raise ValueError(f"vms.box: {box!r} is not a box name (e.g. travis/worker-base)")
    return box.replace("/", "-VAGRANTSLASH-")


@dataclass(frozen=True)
class Image:
    box: str
    version: str
    digest: str
    provider: str
    path: Path  # <root>/<slug>/<version>
    created: str = ""

    @property
    def private_key(self) -> Path:
        return self.path / "private_key"

    @property
    def rootfs(self) -> Path:
        return self.path / "rootfs"

    def summary(self) -> dict[str, str]:
        """What the worker reports in its Redis state as ``image``."""
        return {"version": self.version, "digest": self.digest}


def read_image(path: Path) -> Optional[Image]:
    """The image in directory ``path``; None when it has no image.json (not published, or incomplete)."""
    meta = path / IMAGE_JSON
    try:
        text = meta.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        doc: Any = json.loads(text)
    except ValueError as exc:
        raise ImageError(f"{meta}: not JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise ImageError(f"{meta}: not a JSON object")
    fields = {}
    for key in ("box", "version", "digest", "provider"):
        value = doc.get(key)
        if not isinstance(value, str) or not value:
            raise ImageError(f"{meta}: {key!r} missing or not a string")
        fields[key] = value
    if fields["version"] != path.name or not _VERSION.match(fields["version"]):
        raise ImageError(f"{meta}: version {fields['version']!r} does not match its directory {path.name!r}")
    if not _DIGEST.match(fields["digest"]):
        raise ImageError(f"{meta}: digest {fields['digest']!r} is not 64 lower-case hex digits")
    if fields["provider"] not in PROVIDERS:
        raise ImageError(f"{meta}: provider {fields['provider']!r} is not one of {', '.join(PROVIDERS)}")
    created = doc.get("created") if isinstance(doc.get("created"), str) else ""
    return Image(path=path, created=created, **fields)


class ImageStore:
    """The images of one box name under the store root (``vms.image_store``)."""

    def __init__(self, root: str, box: str) -> None:
        self.root = Path(root)
        self.box = box
        self.dir = self.root / slug(box)

    def __repr__(self) -> str:
        return f"ImageStore({self.dir})"

    def current_version(self) -> Optional[str]:
        """Where ``current`` points (one readlink: cheap enough to poll); None when nothing is published."""
        try:
            target = os.readlink(self.dir / CURRENT)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            if exc.errno == 22:  # EINVAL: `current` is not a symlink
                raise ImageError(f"{self.dir / CURRENT} is not a symlink to a version directory") from None
            raise
        name = os.path.basename(os.path.normpath(target))
        if not _VERSION.match(name):
            raise ImageError(f"{self.dir / CURRENT} points to {target!r}, not a version directory")
        return name

    def current(self) -> Optional[Image]:
        """The published image (``current``); None when there is none or it is incomplete (no image.json)."""
        version = self.current_version()
        if version is None:
            return None
        image = read_image(self.dir / version)
        if image is None:
            log.warning("%s points to %s, which has no %s: ignored", self.dir / CURRENT, version, IMAGE_JSON)
        elif image.box != self.box:
            raise ImageError(f"{image.path / IMAGE_JSON}: box {image.box!r}, expected {self.box!r}")
        return image

    def image_of(self, rootfs_or_dir: str) -> Optional[Image]:
        """The image of a path (an image dir or its ``rootfs``); None when it is not one of this store."""
        path = Path(rootfs_or_dir)
        if path.name == "rootfs":
            path = path.parent
        if path.parent != self.dir:
            return None
        return read_image(path)

    def record_user(self, vm: str, image: Optional[Image]) -> None:
        """Write ``users/<vm>`` (the version it runs), or remove it when the VM runs no published image."""
        if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", vm):
            raise ValueError(f"VM name {vm!r} cannot be a file name")
        users = self.dir / USERS
        path = users / vm
        if image is None:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            return
        users.mkdir(parents=True, exist_ok=True)
        tmp = users / f".{vm}.tmp"
        tmp.write_text(image.version + "\n", encoding="utf-8")
        os.replace(tmp, path)
