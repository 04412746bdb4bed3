"""The host's lxcbr0 bridge and its DHCP server: start (or restart) lxc-net when either is missing.

There is no systemd as PID 1 on the lab machines, so `lxc-net` is started by hand and its dnsmasq is an
ordinary process: when the session or job that started it ends, dnsmasq dies while the bridge (a kernel
object) stays. Containers then boot but never get an address. "Bridge present" is therefore not enough:
the bridge is ready only when the dnsmasq named in lxc-net's pid file is alive.
"""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

from travis_lab import cache
from travis_lab.errors import LabError

log = logging.getLogger(__name__)

BRIDGE = "lxcbr0"
HOST_ADDR = "10.0.3.1"  # the host on lxcbr0, as seen from the box containers and (through NAT) their VMs
LXC_NET = Path("/usr/libexec/lxc/lxc-net")
RUN_DIR = Path("/run/lxc")  # lxc-net's varrun: dnsmasq.pid, network_up
LOCK = Path("/run/travis-lab-lxc-net.lock")


def bridge_up(bridge: str = BRIDGE) -> bool:
    return Path("/sys/class/net", bridge).exists()


def dnsmasq_pid(run_dir: Path = RUN_DIR) -> int | None:
    """The pid of lxc-net's dnsmasq if that process is alive and is a dnsmasq, else None."""
    try:
        pid = int((run_dir / "dnsmasq.pid").read_text().strip())
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except (OSError, ValueError):
        return None
    return pid if comm == "dnsmasq" else None


def _run(lxc_net: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(lxc_net), *args], capture_output=True, text=True, check=False)


def ensure_bridge(
    bridge: str = BRIDGE, lxc_net: Path = LXC_NET, run_dir: Path = RUN_DIR, lock: Path = LOCK
) -> None:
    """Make sure `bridge` exists and its dnsmasq runs, (re)starting `lxc-net` if needed.

    Safe to call from several processes at once (a file lock; the state is checked again under it).
    Raises `LabError` (step 'lxc-net') naming what is wrong and what to run.
    """
    if bridge_up(bridge) and dnsmasq_pid(run_dir):
        return
    with cache.locked(lock, "lxc-net lock"):
        if bridge_up(bridge) and dnsmasq_pid(run_dir):
            return  # another process fixed it while we waited
        if not lxc_net.is_file():
            raise LabError(
                "lxc-net",
                f"bridge {bridge} is {'up without its DHCP server' if bridge_up(bridge) else 'missing'} "
                f"and {lxc_net} does not exist",
                "apt-get install --no-install-recommends lxc dnsmasq-base iptables (or run scripts/setup)",
            )
        if bridge_up(bridge):
            # lxc-net's own stop keeps a bridge that has containers attached; it only re-addresses it.
            log.warning(
                "bridge %s is up but its DHCP server is not running (no live dnsmasq in %s/dnsmasq.pid; "
                "the process that started lxc-net has ended): restarting %s",
                bridge,
                run_dir,
                lxc_net,
            )
            stop = _run(lxc_net, "stop", "force")
            if stop.returncode != 0:
                log.info(
                    "`%s stop force` exited %d: %s",
                    lxc_net,
                    stop.returncode,
                    (stop.stdout + stop.stderr).strip()[-500:],
                )
        else:
            log.info("bridge %s missing: starting %s", bridge, lxc_net)
        proc = _run(lxc_net, "start")
        ok = bridge_up(bridge) and dnsmasq_pid(run_dir) is not None
        if proc.returncode != 0 or not ok:
            out = (proc.stdout + proc.stderr).strip()[-1500:]
            state = (
                "still missing"
                if not bridge_up(bridge)
                else ("up" if dnsmasq_pid(run_dir) else "up but without a running dnsmasq")
            )
            raise LabError(
                "lxc-net",
                f"`{lxc_net} start` exited {proc.returncode} and bridge {bridge} is {state}: {out}",
                "check /etc/default/lxc-net (USE_LXC_BRIDGE=true), that dnsmasq-base and iptables are "
                f"installed, and that nothing else holds {bridge}'s subnet or port 67; then run "
                f"`{lxc_net} stop force; {lxc_net} start`",
            )
    log.info("bridge %s is up, dnsmasq pid %s", bridge, dnsmasq_pid(run_dir))
