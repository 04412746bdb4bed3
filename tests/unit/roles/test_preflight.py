"""site.yml's preflight: each check's judging task file, fed the facts of each case through real
ansible-playbook (local connection), asserting on the one message it prints or stops with.

The inputs are what the gathering tasks (roles/*/tasks/preflight.yml, roles/box/tasks/probe.yml) read on a
box:
- probe output: the lines roles/box/tasks/probe.yml prints (os=, lsb=, kernel=, python=). The Lucid case is
  what that probe prints on Ubuntu 10.04: /etc/lsb-release there has DISTRIB_ID=Ubuntu, DISTRIB_RELEASE=10.04
  and no /etc/os-release, its python is 2.6.5 (lucid's python2.6 2.6.5-1ubuntu6), kernel 2.6.32-*-generic-pae;
  written from those facts, not captured (no Lucid box here). The Debian 12 case runs the probe for real.
- mokutil --sb-state: "SecureBoot enabled" / "SecureBoot disabled", the strings mokutil prints (its source,
  mokutil.c: printf ("SecureBoot enabled\n") / printf ("SecureBoot disabled\n")).
- the kernel and the loaded kvm modules (/proc/modules), apt's candidate and the archive's linux-headers
  names.
Ubuntu cannot be booted here: its cases are these facts and the roles' Ubuntu vars files.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
BIN = Path(sys.executable).parent


def run_tasks(tmp_path: Path, tasks: list[dict], extra: dict | None = None) -> tuple[int, str]:
    """One play on localhost with these tasks; returns (rc, stdout + stderr)."""
    play = [{"name": "Preflight case", "hosts": "localhost", "gather_facts": False, "tasks": tasks}]
    (tmp_path / "play.yml").write_text(json.dumps(play))
    (tmp_path / "extra.json").write_text(
        json.dumps({"ansible_python_interpreter": sys.executable, **(extra or {})})
    )
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "HOME": str(tmp_path)}
    proc = subprocess.run(
        [
            str(BIN / "ansible-playbook"),
            "-i",
            "localhost,",
            "-c",
            "local",
            str(tmp_path / "play.yml"),
            "-e",
            f"@{tmp_path / 'extra.json'}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return proc.returncode, " ".join((proc.stdout + proc.stderr).split())


def role_tasks(role: str, tasks_from: str, vars_files: tuple[str, ...] = ()) -> list[dict]:
    loads = [{"name": f"Load {f}", "ansible.builtin.include_vars": str(ROOT / f)} for f in vars_files]
    include = {
        "name": "Run",
        "ansible.builtin.include_role": {"name": f"travis.worker.{role}", "tasks_from": tasks_from},
    }
    return [*loads, include]


# ---- Lucid / unsupported OS: the raw probe's output --------------------------------------------------------

LUCID = "lsb=Ubuntu 10.04\nkernel=2.6.32-38-generic-pae i686\npython=2.6.5\n"


def test_lucid_probe_stops_with_one_line(tmp_path: Path) -> None:
    rc, out = run_tasks(tmp_path, role_tasks("box", "probe_check.yml"), {"box_probe_output": LUCID})
    assert rc == 2
    assert (
        "box: localhost runs Ubuntu 10.04 (kernel 2.6.32-38-generic-pae i686, Python 2.6.5); supported are "
        "debian 12, ubuntu 22.04, ubuntu 24.04 on x86_64 with Python >= 3.8 (ansible-core 2.19's minimum on "
        "targets): "
        "rebuild the box on a supported release - nothing was changed on it." in out
    )


@pytest.mark.parametrize(
    ("probe", "found"),
    [
        (
            "os=debian 11\nkernel=5.10.0-30-amd64 x86_64\npython=3.9.2\n",
            "debian 11 (kernel 5.10.0-30-amd64 x86_64, Python 3.9.2)",
        ),
        (
            "os=ubuntu 24.04\nkernel=6.8.0-1015-aws aarch64\npython=3.12.3\n",
            "ubuntu 24.04 (kernel 6.8.0-1015-aws aarch64, Python 3.12.3)",
        ),
        (
            "os=ubuntu 24.04\nkernel=6.8.0-41-generic x86_64\n",
            "ubuntu 24.04 (kernel 6.8.0-41-generic x86_64, Python none)",
        ),
    ],
)
def test_other_unsupported_boxes(tmp_path: Path, probe: str, found: str) -> None:
    rc, out = run_tasks(tmp_path, role_tasks("box", "probe_check.yml"), {"box_probe_output": probe})
    assert rc == 2 and f"box: localhost runs {found}; supported are" in out


def test_supported_os_with_an_old_python_stops(tmp_path: Path) -> None:
    """A supported release whose only interpreter is Python 2 (no python3, `python` from python-is-python2):
    the OS passes, the Python check alone must stop it."""
    probe = "os=ubuntu 22.04\nkernel=5.15.0-126-generic x86_64\npython=2.7.18\n"
    rc, out = run_tasks(tmp_path, role_tasks("box", "probe_check.yml"), {"box_probe_output": probe})
    assert rc == 2
    assert (
        "box: localhost runs ubuntu 22.04 (kernel 5.15.0-126-generic x86_64, Python 2.7.18); supported are"
        in out
    )


def test_ubuntu_2204_probe_passes(tmp_path: Path) -> None:
    probe = "os=ubuntu 22.04\nlsb=Ubuntu 22.04\nkernel=6.8.0-40-generic x86_64\npython=3.10.12\n"
    rc, out = run_tasks(tmp_path, role_tasks("box", "probe_check.yml"), {"box_probe_output": probe})
    assert rc == 0, out
    assert (
        "box: localhost runs ubuntu 22.04, kernel 6.8.0-40-generic x86_64, Python 3.10.12 - supported." in out
    )


def test_probe_runs_for_real_on_this_debian_12(tmp_path: Path) -> None:
    rc, out = run_tasks(tmp_path, role_tasks("box", "probe.yml"))
    assert rc == 0, out
    assert "box: localhost runs debian 12, kernel " in out and " - supported." in out


# ---- Kernel headers not in the archive ---------------------------------------------------------------


def test_missing_headers_name_the_kernel_and_the_archive_abis(tmp_path: Path) -> None:
    archive = [
        "linux-headers-6.1.0-27-amd64",
        "linux-headers-6.1.0-28-amd64",
        "linux-headers-6.1.0-28-cloud-amd64",
        "linux-headers-6.1.0-28-common",
        "linux-headers-amd64",
        "linux-headers-6.1.0-28-rt-amd64",
    ]
    rc, out = run_tasks(
        tmp_path,
        role_tasks("box", "headers_check.yml"),
        {
            "box_kernel_running": "6.1.0-21-amd64",
            "box_headers_candidate": "(none)",
            "box_headers_archive": archive,
        },
    )
    assert rc == 2
    assert (
        "box: localhost runs kernel 6.1.0-21-amd64, but linux-headers-6.1.0-21-amd64 is not in its apt "
        "archive" in out
    )
    assert "The archive has headers for: 6.1.0-27-amd64, 6.1.0-28-amd64. Upgrade the kernel" in out


def test_missing_headers_ubuntu_aws(tmp_path: Path) -> None:
    archive = [
        "linux-headers-6.8.0-1012-aws",
        "linux-headers-6.8.0-1015-aws",
        "linux-headers-6.8.0-45-generic",
    ]
    rc, out = run_tasks(
        tmp_path,
        role_tasks("box", "headers_check.yml"),
        {
            "box_kernel_running": "6.8.0-1008-aws",
            "box_headers_candidate": "(none)",
            "box_headers_archive": archive,
        },
    )
    assert rc == 2 and "The archive has headers for: 6.8.0-1012-aws, 6.8.0-1015-aws." in out


def test_headers_present_pass(tmp_path: Path) -> None:
    rc, out = run_tasks(
        tmp_path,
        role_tasks("box", "headers_check.yml"),
        {
            "box_kernel_running": "6.1.0-28-amd64",
            "box_headers_candidate": "6.1.119-1",
            "box_headers_archive": [],
        },
    )
    assert rc == 0 and "box: linux-headers-6.1.0-28-amd64 6.1.119-1 is in the archive." in out


# ---- Secure Boot and KVM -----------------------------------------------------------------------------

VBOX = {
    "virtualbox_pf_kernel": "6.1.0-28-amd64",
    "virtualbox_pf_kvm_modules": [],
    "virtualbox_pf_sb_state": "",
}


def test_secure_boot_on_stops_with_the_remedy(tmp_path: Path) -> None:
    rc, out = run_tasks(
        tmp_path,
        role_tasks("virtualbox", "preflight_checks.yml"),
        {**VBOX, "virtualbox_pf_sb_state": "SecureBoot enabled\n"},
    )
    assert rc == 2
    assert "virtualbox: UEFI Secure Boot is on on localhost (SecureBoot enabled)" in out
    assert (
        "mokutil --import MOK.der" in out
        and "virtualbox_secure_boot_key / virtualbox_secure_boot_cert" in out
    )


def test_secure_boot_on_with_a_mok_key_signs(tmp_path: Path) -> None:
    rc, out = run_tasks(
        tmp_path,
        role_tasks("virtualbox", "preflight_checks.yml"),
        {
            **VBOX,
            "virtualbox_pf_sb_state": "SecureBoot enabled\n",
            "virtualbox_secure_boot_key": "/root/MOK.priv",
            "virtualbox_secure_boot_cert": "/root/MOK.der",
        },
    )
    assert rc == 0, out
    assert "virtualbox: Secure Boot is on; the VirtualBox modules will be signed with /root/MOK.der." in out


def test_secure_boot_off_passes(tmp_path: Path) -> None:
    rc, out = run_tasks(
        tmp_path,
        role_tasks("virtualbox", "preflight_checks.yml"),
        {**VBOX, "virtualbox_pf_sb_state": "SecureBoot disabled\n"},
    )
    assert rc == 0 and "UEFI Secure Boot is on" not in out


# The SecureBoot EFI variable (8be4df61-93ca-11d2-aa0d-e0a9803b5cd9 is EFI_GLOBAL_VARIABLE): efivarfs shows
# 4 bytes of attributes (little-endian u32; 0x06 = BOOTSERVICE_ACCESS | RUNTIME_ACCESS), then the value, one
# byte, 1 = Secure Boot on (UEFI spec, "Globally Defined Variables"; mokutil --sb-state reads the same one).
EFIVAR_SB_ON = bytes([0x06, 0, 0, 0, 1])
EFIVAR_SB_OFF = bytes([0x06, 0, 0, 0, 0])


@pytest.mark.skipif(bool(shutil.which("mokutil")), reason="the case is a box without mokutil")
@pytest.mark.parametrize(("efivar", "stops"), [(EFIVAR_SB_ON, True), (EFIVAR_SB_OFF, False), (None, False)])
def test_secure_boot_is_read_without_mokutil(tmp_path: Path, efivar: bytes | None, stops: bool) -> None:
    """Debian 12 does not install mokutil: the gathering tasks (preflight.yml, run for real here, where
    mokutil is missing too) must read the EFI variable instead of taking Secure Boot as off."""
    var = tmp_path / "SecureBoot-8be4df61-93ca-11d2-aa0d-e0a9803b5cd9"
    if efivar is not None:
        var.write_bytes(efivar)
    rc, out = run_tasks(
        tmp_path,
        role_tasks("virtualbox", "preflight.yml"),
        {"__virtualbox_secureboot_efivar": str(var), "ansible_facts": {"kernel": "6.1.0-28-amd64"}},
    )
    if stops:
        assert rc == 2, out
        assert "virtualbox: UEFI Secure Boot is on on localhost (SecureBoot enabled: EFI variable" in out
    else:
        assert rc == 0, out
        assert "UEFI Secure Boot is on" not in out


def test_kvm_on_612_stops_with_the_remedy(tmp_path: Path) -> None:
    facts = {
        **VBOX,
        "virtualbox_pf_kernel": "6.12.48+deb13-amd64",
        "virtualbox_pf_kvm_modules": ["kvm_intel", "kvm"],
    }
    rc, out = run_tasks(tmp_path, role_tasks("virtualbox", "preflight_checks.yml"), facts)
    assert rc == 2
    assert "virtualbox: localhost runs kernel 6.12.48+deb13-amd64 (>= 6.12) with kvm_intel, kvm loaded" in out
    assert "VERR_VMX_IN_VMX_ROOT_MODE / VERR_SVM_IN_USE" in out and "kvm.enable_virt_at_load=0" in out
    assert "virtualbox_kvm_fix: true" in out


@pytest.mark.parametrize(
    ("kernel", "modules"),
    [
        ("6.8.0-45-generic", ["kvm_amd", "kvm"]),
        ("6.12.48+deb13-amd64", []),
        ("6.11.0-19-generic", ["kvm_intel", "kvm"]),
    ],
)
def test_kvm_before_612_or_unloaded_passes(tmp_path: Path, kernel: str, modules: list[str]) -> None:
    facts = {**VBOX, "virtualbox_pf_kernel": kernel, "virtualbox_pf_kvm_modules": modules}
    rc, out = run_tasks(tmp_path, role_tasks("virtualbox", "preflight_checks.yml"), facts)
    assert rc == 0, out


# ---- Vagrant/VirtualBox pair -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("vagrant", "vbox", "message"),
    [
        (
            "2.3.4",
            "7.1.12",
            "Vagrant 2.3.4 from vagrant_source hashicorp cannot drive VirtualBox 7.1.12 (its driver map "
            "stops at VirtualBox 7.0); nothing was installed. VirtualBox 7.1 needs 2.4.2 or newer",
        ),
        ("2.2.19", "7.1.12", "(its driver map stops at VirtualBox 6.1)"),
        ("2.4.1", "7.1.12", "(its driver map stops at VirtualBox 7.0)"),
        (
            "2.4.8",
            "7.2.4",
            "(its driver map stops at VirtualBox 7.1); nothing was installed. "
            "VirtualBox 7.2 needs 2.4.9 or newer",
        ),
        ("2.5.0", "7.1.12", "(it is not in the table of checked Vagrant versions 2.2.19 .. 2.4.9)"),
        ("", "7.1.12", "Vagrant (unknown version) from vagrant_source hashicorp"),
    ],
)
def test_unsupported_pair_is_refused(tmp_path: Path, vagrant: str, vbox: str, message: str) -> None:
    rc, out = run_tasks(
        tmp_path,
        role_tasks("vagrant", "preflight_pair.yml", ("roles/vagrant/vars/main.yml",)),
        {
            "vagrant_pair_vagrant_version": vagrant,
            "vagrant_virtualbox_version": vbox,
            "vagrant_source": "hashicorp",
        },
    )
    assert rc == 2
    assert message in out


@pytest.mark.parametrize(
    ("vagrant", "vbox"),
    [("2.4.2", "7.1.12"), ("2.4.3", "7.1.4"), ("2.4.9", "7.2.0"), ("2.3.4", "7.0.20"), ("2.2.19", "6.1.50")],
)
def test_supported_pair_passes(tmp_path: Path, vagrant: str, vbox: str) -> None:
    rc, out = run_tasks(
        tmp_path,
        role_tasks("vagrant", "preflight_pair.yml", ("roles/vagrant/vars/main.yml",)),
        {
            "vagrant_pair_vagrant_version": vagrant,
            "vagrant_virtualbox_version": vbox,
            "vagrant_source": "hashicorp",
        },
    )
    assert rc == 0, out
    assert f"vagrant: Vagrant {vagrant} (hashicorp) drives VirtualBox up to" in out


@pytest.mark.parametrize(
    ("os_file", "distro_vagrant", "stops_at"),
    [("Debian-12", "2.3.4", "7.0"), ("Ubuntu-22", "2.2.19", "6.1"), ("Ubuntu-24", "2.3.7", "7.0")],
)
def test_distro_vagrant_with_virtualbox_71_is_refused(
    tmp_path: Path, os_file: str, distro_vagrant: str, stops_at: str
) -> None:
    tasks = role_tasks(
        "vagrant", "preflight_pair.yml", ("roles/vagrant/vars/main.yml", f"roles/vagrant/vars/{os_file}.yml")
    )
    tasks[-1]["vars"] = {"vagrant_pair_vagrant_version": "{{ __vagrant_distro_version }}"}
    rc, out = run_tasks(tmp_path, tasks, {"vagrant_virtualbox_version": "7.1.12", "vagrant_source": "distro"})
    assert rc == 2
    assert f"Vagrant {distro_vagrant} from vagrant_source distro cannot drive VirtualBox 7.1.12" in out
    assert f"(its driver map stops at VirtualBox {stops_at})" in out


# ---- Secure Boot: the operator's MOK where VirtualBox signs with it ---------------------------------------


def _mok_case(tmp_path: Path) -> tuple[dict, Path]:
    (tmp_path / "MOK.key").write_text(
        "-----BEGIN PRIVATE KEY-----\ntwt-operator-key\n-----END PRIVATE KEY-----\n"
    )
    (tmp_path / "MOK.crt.der").write_bytes(b"\x30\x82twt-operator-cert")
    mok_dir = tmp_path / "shim-signed" / "mok"
    extra = {
        "virtualbox_secure_boot_key": str(tmp_path / "MOK.key"),
        "virtualbox_secure_boot_cert": str(tmp_path / "MOK.crt.der"),
        "__virtualbox_mok_dir": str(mok_dir),
    }
    return extra, mok_dir


@pytest.mark.skipif(os.geteuid() != 0, reason="the files are owned by root, as on a box")
def test_mok_key_is_put_where_vboxconfig_signs_with_it(tmp_path: Path) -> None:
    """VirtualBox's vboxconfig (vboxdrv.sh setup) signs with /var/lib/shim-signed/mok/MOK.priv and MOK.der and
    fails without them; a sign-file handler after it never ran. The key must be there before the install."""
    extra, mok_dir = _mok_case(tmp_path)
    rc, out = run_tasks(tmp_path, role_tasks("virtualbox", "secure_boot_key.yml"), extra)
    assert rc == 0, out
    assert (mok_dir / "MOK.priv").read_bytes() == (tmp_path / "MOK.key").read_bytes()
    assert (mok_dir / "MOK.der").read_bytes() == (tmp_path / "MOK.crt.der").read_bytes()
    assert oct((mok_dir / "MOK.priv").stat().st_mode & 0o777) == "0o600"
    assert oct(mok_dir.stat().st_mode & 0o777) == "0o700"
    assert "twt-operator-key" not in out
    rc, out = run_tasks(tmp_path, role_tasks("virtualbox", "secure_boot_key.yml"), extra)
    assert rc == 0 and "changed=0" in out, out


@pytest.mark.skipif(os.geteuid() != 0, reason="the files are owned by root, as on a box")
def test_another_mok_at_vboxconfigs_path_stops(tmp_path: Path) -> None:
    extra, mok_dir = _mok_case(tmp_path)
    mok_dir.mkdir(parents=True)
    (mok_dir / "MOK.priv").write_text("another key\n")
    rc, out = run_tasks(tmp_path, role_tasks("virtualbox", "secure_boot_key.yml"), extra)
    assert rc == 2
    assert f"virtualbox: {mok_dir}/MOK.priv or MOK.der on localhost is another key than" in out
    assert (mok_dir / "MOK.priv").read_text() == "another key\n"
