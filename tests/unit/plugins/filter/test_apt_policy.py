"""apt_policy_lists: the check the virtualbox and vagrant roles make before installing their pin (whether
apt's cache must be refreshed first). Against the real `apt-cache policy` of this host, and against its
layout as this host's apt 2.6.1 printed it for bash (captured 2026-12-07, Debian 12)."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from ansible_collections.travis.worker.plugins.filter.apt_policy import apt_policy_lists, apt_policy_versions

# `LC_ALL=C apt-cache policy bash` on this host, as printed
CAPTURED = """bash:
  Installed: 5.2.15-2+b8
  Candidate: 5.2.15-2+b13
  Version table:
     5.2.15-2+b13 500
        500 http://deb.debian.org/debian bookworm/main amd64 Packages
 *** 5.2.15-2+b8 100
        100 /var/lib/dpkg/status
"""


def test_the_version_table_is_read_and_not_the_installed_or_candidate_lines() -> None:
    assert apt_policy_versions(CAPTURED) == ["5.2.15-2+b13", "5.2.15-2+b8"]
    assert apt_policy_lists(CAPTURED, "5.2.15")
    assert not apt_policy_lists(CAPTURED, "5.2.1")  # a prefix of the upstream version is another version
    assert not apt_policy_lists(CAPTURED, "5.2")


def test_translated_labels_do_not_matter() -> None:
    german = CAPTURED.replace("Installed", "Installiert").replace("Candidate", "Installationskandidat")
    german = german.replace("Version table", "Versionstabelle")
    assert apt_policy_versions(german) == apt_policy_versions(CAPTURED)


def test_no_candidate_and_no_table() -> None:
    unknown = "virtualbox-7.1:\n  Installed: (none)\n  Candidate: (none)\n  Version table:\n"
    assert apt_policy_versions(unknown) == []
    assert not apt_policy_lists(unknown, "7.1.12")
    assert not apt_policy_lists("", "7.1.12")


@pytest.mark.skipif(shutil.which("apt-cache") is None, reason="apt-cache not installed")
def test_the_real_apt_cache_policy_lists_the_installed_bash() -> None:
    policy = subprocess.run(
        ["apt-cache", "policy", "bash"], capture_output=True, text=True, check=True, env={"LC_ALL": "C"}
    ).stdout
    installed = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Version}", "bash"], capture_output=True, text=True, check=True
    ).stdout
    upstream = installed.rsplit("-", 1)[0]
    assert installed in apt_policy_versions(policy), policy
    assert apt_policy_lists(policy, upstream)
    assert not apt_policy_lists(policy, upstream + ".999")
