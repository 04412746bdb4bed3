# -*- coding: utf-8 -*-
# Copyright: travis.worker developers
# MIT License (see LICENSE)
"""``vbox_extpacks``: the installed extension packs from ``VBoxManage list extpacks``.

The virtualbox role decides with it whether the Oracle extension pack matches the pinned VirtualBox (its
version, and whether VirtualBox can use it); the parser is module_utils/vboxmanage.py's, tested against the
recordings in tests/unit/fixtures/vboxmanage/ (docs/recordings.md).
"""

from __future__ import annotations

from typing import Any

from ansible_collections.travis.worker.plugins.module_utils.vboxmanage import parse_extpacks


def vbox_extpacks(text: str) -> list[dict[str, Any]]:
    return parse_extpacks(text or "")


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"vbox_extpacks": vbox_extpacks}
