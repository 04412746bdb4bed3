#!/usr/bin/env python3
"""Which worker VMs of this box run the image with a given recipe digest (reprovision.yml, strategy=base_box).

    image_converge.py TRAVIS_WORKER CONFIG DIGEST STATE_FILE WAIT_S VM...

Polls `travis-worker status --json` (the runners' Redis state: `image.digest` per worker) and the units'
ActiveState every second for up to WAIT_S seconds (0: once), until every VM whose unit is active reports
DIGEST.
STATE_FILE (`-`: none, a one-off look) keeps, across calls, when the wait started (created by the first
call) and when each VM was first seen on DIGEST. Prints one JSON object: converged, elapsed_s, vms {vm: unit,
state, version, digest, switched_s}, pending, stopped. Only rows of this host's workers (id
`<hostname>:<pid>:<queue>`) count; of several, a live one wins over a dead one.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from typing import Any


def unit_states(vms: list[str]) -> dict[str, str]:
    argv = ["systemctl", "show", "--property=Id,ActiveState"] + [f"travis-worker@{vm}.service" for vm in vms]
    out = subprocess.run(argv, capture_output=True, text=True, check=False).stdout
    states: dict[str, str] = {}
    for block in out.split("\n\n"):
        fields = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        unit = fields.get("Id", "")
        if unit.startswith("travis-worker@") and unit.endswith(".service"):
            states[unit[len("travis-worker@") : -len(".service")]] = fields.get("ActiveState", "unknown")
    return states


def runner_rows(binary: str, config: str) -> list[dict[str, Any]]:
    argv = [binary, "--config", config, "status", "--json"]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    except OSError:  # no runner installed (yet): no worker reports anything
        return []
    if proc.returncode != 0:
        return []
    try:
        rows = json.loads(proc.stdout)
    except ValueError:
        return []
    rows = rows.get("workers", []) if isinstance(rows, dict) else rows
    host = socket.gethostname()
    return [r for r in rows if isinstance(r, dict) and str(r.get("id", "")).split(":", 1)[0] == host]


def per_vm(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for row in rows:
        vm = row.get("vm")
        if not isinstance(vm, str):
            continue
        if vm not in out or (out[vm].get("state") == "dead" and row.get("state") != "dead"):
            out[vm] = row
    return out


def main(argv: list[str]) -> int:
    if len(argv) < 6:
        print(__doc__, file=sys.stderr)
        return 2
    binary, config, digest, state_file = argv[:4]
    wait_s, vms = float(argv[4]), argv[5:]
    try:
        with open(state_file if state_file != "-" else "/nonexistent", encoding="utf-8") as handle:
            state = json.load(handle)
    except (OSError, ValueError):
        state = {"start": time.time(), "digest": digest, "switched": {}}
    if state.get("digest") != digest:
        state = {"start": time.time(), "digest": digest, "switched": {}}
    deadline = time.monotonic() + wait_s
    while True:
        units = unit_states(vms)
        rows = per_vm(runner_rows(binary, config))
        now = time.time()
        report: dict[str, Any] = {}
        pending, stopped = [], []
        for vm in vms:
            row = rows.get(vm, {})
            image = row.get("image") if isinstance(row.get("image"), dict) else {}
            on = image.get("digest") == digest and row.get("state") != "dead"
            if on and vm not in state["switched"]:
                state["switched"][vm] = round(now - state["start"], 1)
            unit = units.get(vm, "unknown")
            report[vm] = {
                "unit": unit,
                "state": row.get("state", "absent"),
                "version": image.get("version"),
                "digest": image.get("digest"),
                "switched_s": state["switched"].get(vm) if on else None,
            }
            if unit not in ("active", "activating", "reloading"):
                stopped.append(vm)
            elif not on:
                pending.append(vm)
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(1)
    if state_file != "-":
        tmp = f"{state_file}.tmp"
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(state, handle)
        os.replace(tmp, state_file)
    print(
        json.dumps(
            {
                "converged": not pending,
                "elapsed_s": round(time.time() - state["start"], 1),
                "vms": report,
                "pending": pending,
                "stopped": stopped,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
