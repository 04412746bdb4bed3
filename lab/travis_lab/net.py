"""The host's lxcbr0 bridge: start lxc-net when it is missing (no systemd as PID 1 here)."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

from travis_lab.errors import LabError

log = logging.getLogger(__name__)

BRIDGE = "lxcbr0"
LXC_NET = Path("/usr/libexec/lxc/lxc-net")


def bridge_up(bridge: str = BRIDGE) -> bool:
    return Path("/sys/class/net", bridge).exists()


def ensure_bridge(bridge: str = BRIDGE, lxc_net: Path = LXC_NET) -> None:
    """Make sure `bridge` exists, starting `lxc-net` if needed; `LabError` (step 'lxc-net') if that fails."""
    if bridge_up(bridge):
        return
    if not lxc_net.is_file():
        raise LabError(
            "lxc-net",
            f"bridge {bridge} is missing and {lxc_net} does not exist",
            "apt-get install --no-install-recommends lxc dnsmasq-base iptables (or run scripts/setup)",
        )
    log.info("bridge %s missing: starting %s", bridge, lxc_net)
    proc = subprocess.run([str(lxc_net), "start"], capture_output=True, text=True, check=False)
    if proc.returncode != 0 or not bridge_up(bridge):
        out = (proc.stdout + proc.stderr).strip()[-1500:]
        raise LabError(
            "lxc-net",
            f"`{lxc_net} start` exited {proc.returncode} and bridge {bridge} is "
            f"{'up' if bridge_up(bridge) else 'still missing'}: {out}",
            "check /etc/default/lxc-net (USE_LXC_BRIDGE=true), that dnsmasq-base and iptables are "
            "installed, "
            f"and that nothing else holds {bridge}'s subnet; then run `{lxc_net} stop; {lxc_net} start`",
        )
    log.info("bridge %s is up", bridge)
