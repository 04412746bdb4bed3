"""box: the production inventory's kernel patterns and the kernel hold, for Debian and Ubuntu kernels.

Ubuntu cannot be booted here; these run the role's task files through real ansible-playbook on localhost with
the running kernel and the installed package names given (kernel and package names as Debian's and Ubuntu's
archives name them: linux-image-<abi>-<flavour>, linux-modules[-extra]-, linux-headers-<abi>[-flavour],
linux-hwe-<x.y>-headers-<abi>, linux-<cloud>-headers-<abi>, and the meta packages in roles/box/vars/).
"""

from __future__ import annotations

import pytest
from test_preflight import role_tasks, run_tasks

PRODUCTION = "inventories/production/group_vars/travis_worker_boxes/main.yml"
SHOW = {
    "name": "Show",
    "ansible.builtin.debug": {"msg": "HELD {{ box_kernel_hold_packages | join(' ') }} END"},
}


def hold_of(tmp_path, vars_file: str, kernel: str, installed: list[str]) -> list[str]:
    """The packages hold_pick.yml picks for this running kernel and these installed packages."""
    tasks = [*role_tasks("box", "hold_pick.yml", (vars_file,)), SHOW]
    rc, out = run_tasks(tmp_path, tasks, {"box_kernel_running": kernel, "box_hold_installed": installed})
    assert rc == 0, out
    return out.split("HELD ", 1)[1].split(" END", 1)[0].split()


@pytest.mark.parametrize(
    "kernel",
    [
        "6.1.0-28-amd64",
        "6.1.0-28-cloud-amd64",
        "5.15.0-126-generic",
        "6.5.0-45-generic",
        "6.8.0-49-generic",
        "6.8.0-1019-aws",
        "6.8.0-1017-azure",
        "6.8.0-1018-gcp",
        "5.15.0-1072-aws",
    ],
)
def test_production_inventory_accepts_debian_and_ubuntu_kernels(tmp_path, kernel: str) -> None:
    rc, out = run_tasks(
        tmp_path, role_tasks("box", "kernel_check.yml", (PRODUCTION,)), {"box_kernel_running": kernel}
    )
    assert rc == 0, out


@pytest.mark.parametrize("inventory", ["production", "staging", "development"])
@pytest.mark.parametrize("kernel", ["6.11.0-29-generic", "6.14.0-36-generic"])
def test_inventories_accept_ubuntu_2404_hwe_kernels(tmp_path, inventory: str, kernel: str) -> None:
    """Ubuntu 24.04's HWE kernels: 6.11 (24.04.2) and 6.14 (24.04.3), linux-generic-hwe-24.04. These are the
    kernels >= 6.12 that the KVM check of the preflight is about; the inventories refused them before."""
    vars_file = f"inventories/{inventory}/group_vars/travis_worker_boxes/main.yml"
    rc, out = run_tasks(
        tmp_path, role_tasks("box", "kernel_check.yml", (vars_file,)), {"box_kernel_running": kernel}
    )
    assert rc == 0, out


@pytest.mark.parametrize("kernel", ["4.19.0-27-amd64", "6.12.9-amd64", "5.4.0-200-generic"])
def test_production_inventory_refuses_other_kernels(tmp_path, kernel: str) -> None:
    rc, out = run_tasks(
        tmp_path, role_tasks("box", "kernel_check.yml", (PRODUCTION,)), {"box_kernel_running": kernel}
    )
    assert rc == 2
    assert f"localhost runs kernel {kernel}, which is not in box_kernel_allowed" in out


UBUNTU_2204_HWE = [
    "linux-generic-hwe-22.04",
    "linux-image-generic-hwe-22.04",
    "linux-headers-generic-hwe-22.04",
    "linux-image-6.8.0-40-generic",
    "linux-modules-6.8.0-40-generic",
    "linux-modules-extra-6.8.0-40-generic",
    "linux-headers-6.8.0-40-generic",
    "linux-hwe-6.8-headers-6.8.0-40",
    "linux-image-6.8.0-38-generic",
    "linux-modules-6.8.0-38-generic",
    "linux-firmware",
    "linux-base",
    "git",
]


def test_hold_ubuntu_2204_hwe(tmp_path) -> None:
    held = hold_of(tmp_path, "roles/box/vars/Ubuntu-22.yml", "6.8.0-40-generic", UBUNTU_2204_HWE)
    assert held == [
        "linux-generic-hwe-22.04",
        "linux-headers-6.8.0-40-generic",
        "linux-headers-generic-hwe-22.04",
        "linux-hwe-6.8-headers-6.8.0-40",
        "linux-image-6.8.0-40-generic",
        "linux-image-generic-hwe-22.04",
        "linux-modules-6.8.0-40-generic",
        "linux-modules-extra-6.8.0-40-generic",
    ]


def test_hold_ubuntu_2404_aws(tmp_path) -> None:
    installed = [
        "linux-aws",
        "linux-image-aws",
        "linux-headers-aws",
        "linux-image-6.8.0-1019-aws",
        "linux-modules-6.8.0-1019-aws",
        "linux-aws-headers-6.8.0-1019",
        "linux-headers-6.8.0-1019-aws",
        "linux-image-6.8.0-1018-aws",
    ]
    held = hold_of(tmp_path, "roles/box/vars/Ubuntu-24.yml", "6.8.0-1019-aws", installed)
    assert "linux-image-6.8.0-1018-aws" not in held
    assert held == sorted(set(installed) - {"linux-image-6.8.0-1018-aws"})


def test_hold_debian_12(tmp_path) -> None:
    installed = [
        "linux-image-amd64",
        "linux-headers-amd64",
        "linux-image-6.1.0-28-amd64",
        "linux-headers-6.1.0-28-amd64",
        "linux-headers-6.1.0-28-common",
        "linux-kbuild-6.1",
        "linux-image-6.1.0-27-amd64",
    ]
    held = hold_of(tmp_path, "roles/box/vars/Debian-12.yml", "6.1.0-28-amd64", installed)
    assert held == [
        "linux-headers-6.1.0-28-amd64",
        "linux-headers-6.1.0-28-common",
        "linux-headers-amd64",
        "linux-image-6.1.0-28-amd64",
        "linux-image-amd64",
    ]


@pytest.mark.parametrize(
    ("os_file", "hwe"),
    [("Ubuntu-22", "linux-generic-hwe-22.04"), ("Ubuntu-24", "linux-generic-hwe-24.04")],
)
def test_ubuntu_vars_differ_from_debian(os_file: str, hwe: str) -> None:
    import yaml
    from test_preflight import ROOT

    ubuntu = yaml.safe_load((ROOT / f"roles/box/vars/{os_file}.yml").read_text())[
        "__box_kernel_meta_packages"
    ]
    debian = yaml.safe_load((ROOT / "roles/box/vars/Debian-12.yml").read_text())["__box_kernel_meta_packages"]
    assert hwe in ubuntu and "linux-image-aws" in ubuntu and "linux-image-generic" in ubuntu
    assert not set(ubuntu) & set(debian)


@pytest.mark.parametrize(
    ("os_file", "kernel", "metas"),
    [
        (
            "Ubuntu-22",
            "6.8.0-40-generic",
            ["linux-virtual-hwe-22.04", "linux-image-virtual-hwe-22.04", "linux-headers-virtual-hwe-22.04"],
        ),
        (
            "Ubuntu-22",
            "6.8.0-40-lowlatency",
            ["linux-lowlatency-hwe-22.04", "linux-image-lowlatency-hwe-22.04"],
        ),
        (
            "Ubuntu-24",
            "6.14.0-36-generic",
            ["linux-virtual-hwe-24.04", "linux-image-virtual-hwe-24.04", "linux-headers-generic-hwe-24.04"],
        ),
    ],
)
def test_hold_covers_every_installed_kernel_meta_package(
    tmp_path, os_file: str, kernel: str, metas: list
) -> None:
    """A meta package left unheld pulls the next kernel ABI in on apt upgrade, whatever else is held: the
    virtual and lowlatency HWE metas (Ubuntu cloud/VM images, HWE installs) are held like the generic ones."""
    abi = kernel.rsplit("-", 1)[0]
    kernel_packages = [f"linux-image-{kernel}", f"linux-modules-{kernel}", f"linux-headers-{abi}"]
    installed = [
        *metas,
        *kernel_packages,
        "linux-base",
        "linux-firmware",
        "linux-libc-dev",
        "linux-tools-common",
    ]
    held = hold_of(tmp_path, f"roles/box/vars/{os_file}.yml", kernel, installed)
    assert held == sorted(
        [*metas, f"linux-image-{kernel}", f"linux-modules-{kernel}", f"linux-headers-{abi}"]
    )
