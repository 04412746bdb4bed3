#!/usr/bin/env python3
"""Print, as JSON, what a worker box's Vagrant project and the playbooks' records say about its worker VMs.

Usage: vm_facts.py PROJECT_DIR PROVIDER BOX_NAME STATE_DIR VM...

Read-only. For each VM: whether Vagrant created it, the box name/version it was created from
(Vagrant's `.vagrant/machines/<vm>/<provider>/box_meta`) and the playbooks' record
`<STATE_DIR>/<vm>.json` (recipe digest).
Also the installed versions of BOX_NAME for PROVIDER (from the Vagrant home, no `vagrant` call) and the
playbooks' box record `<STATE_DIR>/boxes.json`.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _version_key(version: str) -> tuple:
    return tuple(int(p) if p.isdigit() else 0 for p in version.split("."))


def box_versions(vagrant_home: Path, name: str, provider: str) -> list[str]:
    base = vagrant_home / "boxes" / name.replace("/", "-VAGRANTSLASH-")
    if not base.is_dir():
        return []
    found = [v.name for v in base.iterdir() if (v / provider).is_dir()]
    return sorted(found, key=_version_key)


def vm_facts(project: Path, provider: str, state_dir: Path, vm: str) -> dict:
    machine = project / ".vagrant" / "machines" / vm / provider
    created = (machine / "id").is_file() and bool((machine / "id").read_text().strip())
    meta = _read_json(machine / "box_meta") or {}
    return {
        "created": created,
        "box_name": meta.get("name"),
        "box_version": meta.get("version"),
        "record": _read_json(state_dir / f"{vm}.json"),
    }


def main(argv: list[str]) -> int:
    if len(argv) < 4:
        print(__doc__, file=sys.stderr)
        return 2
    project, provider, box_name, state_dir, *vms = argv
    vagrant_home = Path(os.environ.get("VAGRANT_HOME") or Path.home() / ".vagrant.d")
    out = {
        "box_versions": box_versions(vagrant_home, box_name, provider),
        "boxes_record": _read_json(Path(state_dir) / "boxes.json") or {"versions": []},
        "vms": {vm: vm_facts(Path(project), provider, Path(state_dir), vm) for vm in vms},
    }
    print(json.dumps(out, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
