#!/usr/bin/env python3
"""The linked-clone master VMs of a box's versions and the Vagrant machines still made from them.

Usage: box_masters.py VAGRANT_HOME BOX_NAME PROVIDER VERSION...

Prints JSON {version: {"exists": bool, "masters": [uuid, ...], "users": ["name (vagrantfile dir)", ...]}};
"exists" is whether the version still has a PROVIDER directory.
Vagrant's VirtualBox provider imports a box version once as a "master" VM and makes every machine of that
version a linked clone of it; it records the master's UUID in the box's directory,
`boxes/<name>/<version>/[<architecture>/]virtualbox/master_id` (plugins/providers/virtualbox/action/
import_master.rb). `vagrant box remove` deletes that directory but leaves the master VM registered and on
disk. Vagrant's machine index (`data/machine-index/index`, lib/vagrant/machine_index.rb) records the box
(name, provider, version) each machine was made from: a version with a machine still has clones of its master.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def box_dir(vagrant_home: Path, name: str) -> Path:
    return vagrant_home / "boxes" / name.replace("/", "-VAGRANTSLASH-")


def masters(version_dir: Path, provider: str) -> list[str]:
    found = []
    for path in sorted(
        [*version_dir.glob(f"{provider}/master_id"), *version_dir.glob(f"*/{provider}/master_id")]
    ):
        uuid = path.read_text().strip()
        if uuid:
            found.append(uuid)
    return found


def users(vagrant_home: Path, name: str, provider: str, version: str) -> list[str]:
    try:
        index = json.loads((vagrant_home / "data" / "machine-index" / "index").read_text())
    except (OSError, ValueError):
        return []
    found = []
    for entry in (index.get("machines") or {}).values():
        box = (entry.get("extra_data") or {}).get("box") or {}
        if (box.get("name"), box.get("provider"), str(box.get("version"))) == (name, provider, version):
            found.append(f"{entry.get('name')} ({entry.get('vagrantfile_path')})")
    return found


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    home, name, provider, *versions = argv
    vagrant_home = Path(home)
    out = {}
    for version in versions:
        version_dir = box_dir(vagrant_home, name) / version
        out[version] = {
            # `vagrant box remove` deletes the provider directory and may leave the version's empty one behind
            "exists": any(version_dir.glob(provider)) or any(version_dir.glob(f"*/{provider}")),
            "masters": masters(version_dir, provider),
            "users": users(vagrant_home, name, provider, version),
        }
    print(json.dumps(out, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
