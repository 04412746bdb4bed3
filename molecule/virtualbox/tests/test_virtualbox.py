"""After the VirtualBox scenario: the early stop installed nothing VirtualBox, and --check changed nothing."""

from __future__ import annotations

import os
from pathlib import Path


def test_virtualbox_not_installed(host):
    assert not host.package("virtualbox-7.1").is_installed
    assert not host.package("dkms").is_installed
    assert not host.group("vboxusers").exists


def test_check_mode_changed_nothing(host):
    assert not host.file("/etc/systemd/system/travis-worker@.service").exists
    assert not host.file("/home/travis/worker-vms/Vagrantfile").exists
    assert not host.file("/etc/travis-worker/worker.yml").exists
    assert not host.package("vagrant").is_installed


def test_plan_was_rendered():
    plan = (Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "check-plan.txt").read_text()
    assert 'config.vm.provider "virtualbox" do |vb|' in plan
    assert "TimeoutStopSec=660" in plan
    assert "ok=" in plan and "failed=0" in plan
