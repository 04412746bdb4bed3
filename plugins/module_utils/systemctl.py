# -*- coding: utf-8 -*-
# Copyright: travis.worker developers
# MIT License (see LICENSE)
"""The one runner for systemctl: argv lists, LANG=C, ``show``/``list-units`` parsed in one place."""

from __future__ import annotations

from typing import Any, Optional

from ansible_collections.travis.worker.plugins.module_utils.cli import (
    C_LOCALE as _BASE_LOCALE,
)
from ansible_collections.travis.worker.plugins.module_utils.cli import (
    CommandError,
    CommandRunner,
    headline,
)

C_LOCALE = dict(_BASE_LOCALE, SYSTEMD_PAGER="", SYSTEMD_COLORS="0")
DEFAULT_PROPERTIES = ("Id", "LoadState", "ActiveState", "SubState", "MainPID", "UnitFileState")


class SystemctlError(CommandError):
    """A failed systemctl call, with the command, rc and stderr for the operator."""


def parse_show(text: str) -> list[dict[str, str]]:
    """Parse ``systemctl show``: ``Key=value`` lines, one block per unit, blocks separated by a blank line."""
    blocks: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if current:
                blocks.append(current)
                current = {}
            continue
        key, sep, value = line.partition("=")
        if sep:
            current[key] = value
    if current:
        blocks.append(current)
    return blocks


def parse_list_units(text: str) -> list[dict[str, str]]:
    """Parse ``systemctl list-units --plain --no-legend``: UNIT LOAD ACTIVE SUB DESCRIPTION."""
    units = []
    for line in text.splitlines():
        parts = line.split(None, 4)
        if len(parts) < 4:
            continue
        if parts[0] in ("●", "*"):  # a failed unit is prefixed with a bullet on some versions
            parts = line.split(None, 5)[1:]
        units.append(
            {
                "unit": parts[0],
                "load": parts[1],
                "active": parts[2],
                "sub": parts[3],
                "description": parts[4] if len(parts) > 4 else "",
            }
        )
    return units


def parse_list_unit_files(text: str) -> list[dict[str, str]]:
    """Parse ``systemctl list-unit-files --plain --no-legend``: UNIT STATE [PRESET]."""
    files = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2:
            files.append({"unit": parts[0], "state": parts[1]})
    return files


class Systemctl(CommandRunner):
    """Run systemctl through ``module.run_command`` with argv lists and the C locale.

    With ``dry_run=True`` (check mode) start/stop/restart/reload/kill are not run; their argv is kept in
    ``planned``. Reading commands always run."""

    program = "systemctl"
    error_type = SystemctlError
    missing_remedy = (
        "this host does not run systemd; travis-worker@.service needs a systemd host "
        "(or a systemd LXC container)"
    )

    def __init__(
        self, module: Any, binary: Optional[str] = None, user: bool = False, dry_run: bool = False
    ) -> None:
        super().__init__(module, binary, dry_run=dry_run)
        self.user = user

    def environment(self) -> dict:
        return dict(C_LOCALE)

    def argv(self, args: list) -> list:
        return super().argv(["--user", *args] if self.user else list(args))

    def run(
        self, args: list[str], what: str, check: bool = True, changes: bool = False
    ) -> tuple[int, str, str]:
        """Run ``systemctl <args>``; a command that ``changes`` something is skipped in a dry run."""
        cmd = self.argv(args)
        if changes and self.skip(cmd):
            return 0, "", ""
        rc, out, err = self.call(cmd)
        if check and rc != 0:
            raise SystemctlError(
                f"systemctl failed to {what}: {headline(err)} — check `systemctl status` and "
                "`journalctl -u <unit>` for the unit named here",
                cmd=cmd,
                rc=rc,
                stdout=out,
                stderr=err,
            )
        return rc, out, err

    def show(
        self, units: list[str], properties: tuple[str, ...] = DEFAULT_PROPERTIES
    ) -> dict[str, dict[str, str]]:
        """Properties of each unit, keyed by the unit name as given."""
        if not units:
            return {}
        props = list(properties)
        if "Id" not in props:
            props.insert(0, "Id")
        _rc, out, _err = self.run(
            ["show", "--property=" + ",".join(props), "--", *units], f"show {', '.join(units)}"
        )
        blocks = parse_show(out)
        if len(blocks) != len(units):
            raise SystemctlError(
                f"systemctl show returned {len(blocks)} blocks for {len(units)} units ({', '.join(units)})",
                stdout=out,
            )
        return dict(zip(units, blocks))

    def start(self, units: list[str], no_block: bool = False) -> None:
        self._verb("start", units, no_block)

    def reset_failed(self, units: list[str]) -> None:
        """Clear the units' failed state and start rate-limit counter. systemd counts every start towards
        ``StartLimitBurst``, an operator's too: without this, the sixth deliberate start or restart within
        ``StartLimitIntervalSec`` is refused ("start of the service was attempted too often").
        A unit systemd has not loaded (an instance not started since it was collected) has no counter:
        systemctl says "Unit ... not loaded." and exits 1 after resetting the others; that is no failure."""
        if not units:
            return
        args = ["reset-failed", "--", *units]
        rc, out, err = self.run(args, f"reset-failed {', '.join(units)}", check=False, changes=True)
        if rc != 0 and any(
            line.strip() and not line.rstrip().endswith("not loaded.") for line in err.splitlines()
        ):
            raise SystemctlError(
                f"systemctl failed to reset-failed {', '.join(units)}: {headline(err)} — check "
                "`systemctl status` for the unit named here",
                cmd=self.argv(args),
                rc=rc,
                stdout=out,
                stderr=err,
            )

    def stop(self, units: list[str], no_block: bool = False) -> None:
        self._verb("stop", units, no_block)

    def restart(self, units: list[str], no_block: bool = False) -> None:
        self._verb("restart", units, no_block)

    def reload(self, units: list[str], no_block: bool = False) -> None:
        self._verb("reload", units, no_block)

    def _verb(self, verb: str, units: list[str], no_block: bool) -> None:
        if not units:
            return
        args = [verb]
        if no_block:
            args.append("--no-block")
        args.append("--")
        args.extend(units)
        self.run(args, f"{verb} {', '.join(units)}", changes=True)

    def kill(self, units: list[str], signal: str, whom: str = "main") -> None:
        """Send ``signal`` (e.g. ``SIGQUIT``) to the ``main`` process (or ``all``) of each unit."""
        if not units:
            return
        self.run(
            ["kill", f"--signal={signal}", f"--kill-who={whom}", "--", *units],
            f"send {signal} to {', '.join(units)}",
            changes=True,
        )

    def list_units(self, pattern: str, all_units: bool = True) -> list[dict[str, str]]:
        args = ["list-units", "--plain", "--no-legend", "--no-pager"]
        if all_units:
            args.append("--all")
        args.extend(["--", pattern])
        _rc, out, _err = self.run(args, f"list units matching {pattern}")
        return parse_list_units(out)

    def list_unit_files(self, pattern: str) -> list[dict[str, str]]:
        _rc, out, _err = self.run(
            ["list-unit-files", "--plain", "--no-legend", "--no-pager", "--", pattern],
            f"list unit files matching {pattern}",
        )
        return parse_list_unit_files(out)

    def wants(self, unit: str) -> list[str]:
        """Units a target wants (its enabled members, e.g. instances enabled into travis-worker.target)."""
        return self.show([unit], ("Id", "Wants")).get(unit, {}).get("Wants", "").split()

    def is_active(self, unit: str) -> bool:
        rc, _out, _err = self.run(["is-active", "--quiet", "--", unit], f"query {unit}", check=False)
        return rc == 0
