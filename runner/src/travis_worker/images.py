"""The image store (docs/runner.md, "Images"): which published image a VM should run, and who runs what.

Layout (issue #13 design): ``<store>/<slug>/<version>/image.json`` (written last; a version without it is an
incomplete build and is ignored), ``<store>/<slug>/current -> <version>`` (moving it is publishing), and
``<store>/<slug>/users/<vm>`` (one line: the version that VM runs). ``slug`` is the box name with ``/``
replaced by ``-VAGRANTSLASH-``, Vagrant's own convention.

Minimal, provider-neutral reading and the ``users/`` write; written for the VirtualBox switch (s5-vbox).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

CURRENT = "current"
USERS = "users"
IMAGE_JSON = "image.json"


def slug(box: str) -> str:
    return box.replace("/", "-VAGRANTSLASH-")


@dataclass(frozen=True)
class Image:
    box: str
    version: str
    digest: str
    provider: str
    path: Path  # the version directory

    def report(self) -> dict[str, str]:
        """The ``image`` field of the worker's Redis state."""
        return {"version": self.version, "digest": self.digest}


def box_dir(store: str, box: str) -> Path:
    return Path(store) / slug(box)


def current_version(store: str, box: str) -> Optional[str]:
    """The version ``current`` points to; None when nothing is published (or the link is broken)."""
    link = box_dir(store, box) / CURRENT
    try:
        target = os.readlink(link)
    except OSError:
        return None
    version = os.path.basename(target.rstrip("/"))
    return version if (box_dir(store, box) / version / IMAGE_JSON).is_file() else None


def load(store: str, box: str, version: str) -> Image:
    """The published image ``version``; OSError/ValueError when it is missing or incomplete."""
    path = box_dir(store, box) / version
    data = json.loads((path / IMAGE_JSON).read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not data.get("digest") or not data.get("provider"):
        raise ValueError(f"{path / IMAGE_JSON}: no digest or provider")
    return Image(box, version, str(data["digest"]), str(data["provider"]), path)


def wanted(store: str, box: str) -> Optional[Image]:
    """The image VMs of ``box`` should run: the one ``current`` points to, or None."""
    version = current_version(store, box)
    return load(store, box, version) if version else None


def write_user(store: str, box: str, vm: str, version: Optional[str]) -> None:
    """Record (atomically) that ``vm`` runs ``version``; None removes the record (it runs no image)."""
    users = box_dir(store, box) / USERS
    path = users / vm
    if version is None:
        path.unlink(missing_ok=True)
        return
    users.mkdir(parents=True, exist_ok=True)
    tmp = users / f".{vm}.tmp"
    tmp.write_text(version + "\n", encoding="utf-8")
    os.replace(tmp, path)
