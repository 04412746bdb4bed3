# -*- coding: utf-8 -*-
# Copyright: travis.worker developers
# MIT License (see LICENSE)
"""``apt_policy_lists``: whether ``apt-cache policy <package>`` lists a version of an upstream release.

The virtualbox and vagrant roles refresh apt's cache before installing their pinned version only when apt's
version table does not list it yet (a new repository, or a pin raised since the last update). The layout is
apt's, Policy() in apt-private/private-show.cc (Debian/apt): after the translatable labels, each version of
the table on a line of its own, `` *** `` (the installed one) or five spaces, the version, a space and its
priority; each of its sources below it, indented further (``"       %4i %s"``). Only that layout is read,
never the labels.
"""

from __future__ import annotations

import re
from typing import Any

_VERSION_LINE = re.compile(r"^(?: \*\*\*|    ) (\S+) (-?\d+)$")


def apt_policy_versions(text: str) -> list[str]:
    """The versions of the version table, in apt's order."""
    found = (_VERSION_LINE.match(line) for line in (text or "").splitlines())
    return [match.group(1) for match in found if match]


def apt_policy_lists(text: str, upstream: str) -> bool:
    """True when a listed version is ``<upstream>-<Debian revision>`` (e.g. 7.1.12-169651~Debian~bookworm
    for 7.1.12)."""
    prefix = f"{upstream}-"
    return any(version.startswith(prefix) for version in apt_policy_versions(text))


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"apt_policy_lists": apt_policy_lists}
