"""Vagrant-LXC base box builder: debootstrap Debian -> customised rootfs -> box file, cached by content.

Cache layout (root: `cache_root()`):
    boxes/<key16>/manifest.json      key, inputs, built_at, sha256 of each artifact, step timings
    boxes/<key16>/rootfs.tar.gz      the rootfs (entries under ./rootfs/, as vagrant-lxc's template wants)
    boxes/<key16>/<name>.box         tar.gz of metadata.json + rootfs.tar.gz + lxc-config + twlab-box.json
    tmp/                             build dirs (renamed into boxes/ atomically when complete)
    locks/                           fcntl locks, one per cache key
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import platform
import shutil
import tempfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from travis_lab import cache
from travis_lab.errors import LabError
from travis_lab.mirror import check_mirror, choose_mirror
from travis_lab.steps import run, timed

log = logging.getLogger(__name__)

BUILDER_VERSION = "1"
DEFAULT_SUITE = "bookworm"
BOX_PACKAGES = (
    "systemd",
    "systemd-sysv",
    "systemd-resolved",
    "dbus",
    "openssh-server",
    "sudo",
    "python3",
    "python3-apt",
    "ca-certificates",
    "iproute2",
    "procps",
    "less",
)
VAGRANT_PUBKEY = Path("/usr/share/rubygems-integration/all/gems/vagrant-2.3.4/keys/vagrant.pub")
MIN_FREE_BYTES = 3 * 1024**3
# common.conf ships with lxc itself (liblxc-common); debian.common.conf would need lxc-templates.
LXC_CONFIG = (
    "lxc.include = /usr/share/lxc/config/common.conf\n"
    "lxc.tty.dir =\n"
    "lxc.cgroup.devices.allow = c 10:200 rwm\n"
    "lxc.arch = {arch}\n"
)
ROOTFS = "rootfs.tar.gz"


@dataclass(frozen=True)
class BoxInputs:
    """Everything that determines the box content; its hash is the cache key."""

    suite: str = DEFAULT_SUITE
    mirror: str = ""
    arch: str = "amd64"
    packages: tuple[str, ...] = BOX_PACKAGES
    builder_version: str = BUILDER_VERSION
    script_sha256: str = ""
    pubkey_sha256: str = ""

    def as_dict(self) -> dict[str, object]:
        return {
            "suite": self.suite,
            "mirror": self.mirror,
            "arch": self.arch,
            "packages": sorted(self.packages),
            "builder_version": self.builder_version,
            "script_sha256": self.script_sha256,
            "pubkey_sha256": self.pubkey_sha256,
            "lxc_config": LXC_CONFIG.format(arch=self.arch),
        }

    @property
    def key(self) -> str:
        return cache.inputs_key(self.as_dict())

    @property
    def box_name(self) -> str:
        return f"twlab-debian-{self.suite}-{self.key[:12]}.box"


@dataclass(frozen=True)
class BoxArtifact:
    path: Path  # the .box file
    rootfs: Path  # rootfs.tar.gz (entries under ./rootfs/)
    sha256: str  # sha256 of the .box file
    reused: bool
    key: str = ""
    built_at: str = ""
    timings: dict[str, float] = field(default_factory=dict)


def customize_script() -> str:
    return resources.files("travis_lab").joinpath("data/customize.sh").read_text()


def host_arch() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def make_inputs(
    suite: str = DEFAULT_SUITE,
    mirror: str | None = None,
    pubkey: Path = VAGRANT_PUBKEY,
    packages: tuple[str, ...] = BOX_PACKAGES,
) -> BoxInputs:
    if not pubkey.is_file():
        raise LabError(
            "inputs",
            f"Vagrant insecure public key not found at {pubkey}",
            "install Debian's `vagrant` package (scripts/setup does)",
        )
    return BoxInputs(
        suite=suite,
        mirror=choose_mirror(suite, mirror),
        arch=host_arch(),
        packages=tuple(packages),
        script_sha256=cache.inputs_key({"script": customize_script()}),
        pubkey_sha256=cache.file_sha256(pubkey),
    )


def entry_dir(root: Path, key: str) -> Path:
    return root / "boxes" / key[:16]


def _artifact(entry: Path, manifest: cache.Manifest, reused: bool) -> BoxArtifact:
    box = next(n for n in manifest.artifacts if n.endswith(".box"))
    return BoxArtifact(
        path=entry / box,
        rootfs=entry / ROOTFS,
        sha256=manifest.artifacts[box],
        reused=reused,
        key=manifest.key,
        built_at=manifest.built_at,
        timings=manifest.timings,
    )


def lookup(inputs: BoxInputs, cache_dir: Path | None = None) -> BoxArtifact | None:
    """The valid cached box for `inputs`, or None (no lock taken; for status displays)."""
    entry = entry_dir(cache.cache_root(cache_dir), inputs.key)
    manifest, _ = cache.verify_entry(entry, inputs.key)
    return _artifact(entry, manifest, reused=True) if manifest else None


def build_box(
    suite: str = DEFAULT_SUITE,
    mirror: str | None = None,
    cache_dir: Path | None = None,
    force: bool = False,
    pubkey: Path = VAGRANT_PUBKEY,
    packages: tuple[str, ...] = BOX_PACKAGES,
) -> BoxArtifact:
    """Build the box for these inputs, or reuse the valid cached one (unless `force`)."""
    inputs = make_inputs(suite, mirror, pubkey, packages)
    root = cache.cache_root(cache_dir)
    key = inputs.key
    entry = entry_dir(root, key)
    try:
        (root / "tmp").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LabError(
            "cache", f"cannot create cache dir {root}: {exc}", "run as root or set TRAVIS_LAB_CACHE"
        ) from exc
    with cache.locked(root / "locks" / f"box-{key[:16]}.lock", f"box cache lock {key[:12]}"):
        if not force:
            manifest, reason = cache.verify_entry(entry, key)
            if manifest:
                log.info(
                    "reusing cached box %s (built %s)", entry / manifest_box(manifest), manifest.built_at
                )
                return _artifact(entry, manifest, reused=True)
            log.info("no usable cached box for key %s: %s -> building", key[:12], reason)
        else:
            log.info("--force: rebuilding box for key %s", key[:12])
        return _build_locked(inputs, root, entry, pubkey)


def manifest_box(manifest: cache.Manifest) -> str:
    return next(n for n in manifest.artifacts if n.endswith(".box"))


def ensure_box(cache_dir: Path | None = None) -> BoxArtifact:
    """The default box (host mirror, bookworm), built once and then reused."""
    return build_box(cache_dir=cache_dir)


def preflight(inputs: BoxInputs, root: Path) -> None:
    if os.geteuid() != 0:
        raise LabError("preflight", "the box build needs root (debootstrap, chroot)", "run it as root")
    if shutil.which("debootstrap") is None:
        raise LabError(
            "preflight",
            "debootstrap is not installed",
            "apt-get install --no-install-recommends debootstrap (or run scripts/setup)",
        )
    free = shutil.disk_usage(root).free
    if free < MIN_FREE_BYTES:
        raise LabError(
            "disk",
            f"only {free / 1024**3:.1f} GiB free under {root}, the box build needs "
            f"{MIN_FREE_BYTES / 1024**3:.0f} GiB",
            "free disk space there or point TRAVIS_LAB_CACHE at a bigger filesystem",
        )
    check_mirror(inputs.mirror, inputs.suite)


def _build_locked(inputs: BoxInputs, root: Path, entry: Path, pubkey: Path) -> BoxArtifact:
    timings: dict[str, float] = {}
    preflight(inputs, root)
    for stale in (root / "tmp").glob(f"twlab-build-{inputs.key[:12]}-*"):
        log.warning("removing %s left by an interrupted build", stale)  # we hold this key's lock
        cache.safe_rmtree(stale)
    work = Path(tempfile.mkdtemp(prefix=f"twlab-build-{inputs.key[:12]}-", dir=root / "tmp"))
    (root / "logs").mkdir(exist_ok=True)
    logfile = root / "logs" / f"build-{inputs.key[:12]}.log"
    logfile.write_text("")
    log.info("building box for %s from %s in %s (log: %s)", inputs.suite, inputs.mirror, work, logfile)
    try:
        out = work / "out"
        out.mkdir()
        _debootstrap(inputs, root, work, logfile, timings)
        _customize(work, logfile, timings, pubkey)
        _pack(inputs, work, out, logfile, timings)
        with timed("checksum", timings):
            artifacts = {p.name: cache.file_sha256(p) for p in sorted(out.iterdir())}
        built_at = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        manifest = cache.Manifest(inputs.key, inputs.as_dict(), built_at, artifacts, timings)
        cache.write_manifest(out, manifest)
        _install_entry(out, entry)
    except LabError:
        _keep_failed_log(root, logfile)
        raise
    except OSError as exc:
        _keep_failed_log(root, logfile)
        raise LabError(
            "disk" if exc.errno == 28 else "build",
            f"{exc} while building in {work}",
            "free disk space under the cache dir"
            if exc.errno == 28
            else f"see {root}/logs/last-failed-build.log",
        ) from exc
    finally:
        cache.safe_rmtree(work)
    log.info("box built: %s (steps: %s)", entry / manifest_box(manifest), timings)
    return _artifact(entry, manifest, reused=False)


def _keep_failed_log(root: Path, logfile: Path) -> None:
    if logfile.exists() and logfile.stat().st_size:
        shutil.copy(logfile, root / "logs" / "last-failed-build.log")
        log.error("build log: %s (copy: %s)", logfile, root / "logs" / "last-failed-build.log")


def _install_entry(out: Path, entry: Path) -> None:
    """Atomically put the finished build at `entry`, replacing an invalid/old one."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    old = None
    if entry.exists():
        old = entry.with_name(entry.name + f".old-{os.getpid()}")
        os.rename(entry, old)
    os.rename(out, entry)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _debootstrap(inputs: BoxInputs, root: Path, work: Path, logfile: Path, timings: dict[str, float]) -> None:
    debs = root / "debs" / f"{inputs.suite}-{inputs.arch}"
    debs.mkdir(parents=True, exist_ok=True)
    with timed("debootstrap", timings):
        run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--arch={inputs.arch}",
                f"--include={','.join(sorted(inputs.packages))}",
                f"--cache-dir={debs}",
                inputs.suite,
                str(work / "rootfs"),
                inputs.mirror,
            ],
            "debootstrap",
            f"check the log and the mirror {inputs.mirror} (override with --mirror / TRAVIS_LAB_MIRROR); "
            "a full disk also ends here",
            logfile=logfile,
            timeout=1800,
        )


def _customize(work: Path, logfile: Path, timings: dict[str, float], pubkey: Path) -> None:
    rootfs = work / "rootfs"
    with timed("customize", timings):
        shutil.copy(pubkey, rootfs / "tmp" / "vagrant.pub")
        run(
            ["chroot", str(rootfs), "/bin/sh", "-s"],
            "customize",
            "the chroot script travis_lab/data/customize.sh failed; see the log",
            logfile=logfile,
            input_text=customize_script(),
            timeout=600,
        )


def _pack(inputs: BoxInputs, work: Path, out: Path, logfile: Path, timings: dict[str, float]) -> None:
    gz = "pigz" if shutil.which("pigz") else "gzip"
    with timed("pack-rootfs", timings):
        run(
            [
                "tar",
                "--numeric-owner",
                "--xattrs",
                "--xattrs-include=*",
                "-I",
                gz,
                "-cf",
                str(out / ROOTFS),
                "-C",
                str(work),
                "./rootfs",
            ],
            "pack-rootfs",
            "tar failed; see the log (full disk?)",
            logfile=logfile,
        )
    box = work / "box"
    box.mkdir()
    with timed("pack-box", timings):
        (box / "metadata.json").write_text(json.dumps({"provider": "lxc", "version": "1.0.0"}) + "\n")
        (box / "lxc-config").write_text(LXC_CONFIG.format(arch=inputs.arch))
        (box / "twlab-box.json").write_text(
            json.dumps({"key": inputs.key, "inputs": inputs.as_dict()}) + "\n"
        )
        os.link(out / ROOTFS, box / ROOTFS)
        run(
            [
                "tar",
                "-I",
                "gzip -1",
                "-cf",
                str(out / inputs.box_name),
                "-C",
                str(box),
                "metadata.json",
                "lxc-config",
                "twlab-box.json",
                ROOTFS,
            ],
            "pack-box",
            "tar failed; see the log (full disk?)",
            logfile=logfile,
        )


def list_entries(cache_dir: Path | None = None) -> list[Path]:
    boxes = cache.cache_root(cache_dir) / "boxes"
    return sorted(p for p in boxes.iterdir() if p.is_dir()) if boxes.is_dir() else []


def prune(cache_dir: Path | None = None, keep: BoxInputs | None = None) -> list[Path]:
    """Remove cached boxes other than the one for `keep` (default: the current default inputs)."""
    root = cache.cache_root(cache_dir)
    keep_dir = entry_dir(root, (keep or make_inputs()).key)
    removed = []
    for entry in list_entries(cache_dir):
        if entry == keep_dir:
            continue
        with cache.locked(root / "locks" / f"box-{entry.name}.lock", f"box cache lock {entry.name[:12]}"):
            shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
        log.info("pruned cached box %s", entry)
    return removed
