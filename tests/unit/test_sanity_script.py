"""scripts/sanity refuses to run without shellcheck (ansible-test would skip its shellcheck test and pass)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_sanity_without_shellcheck_fails_at_once_and_says_how_to_fix(tmp_path: Path) -> None:
    bindir = tmp_path / "bin"  # a PATH with what the script's first lines use, and no shellcheck
    bindir.mkdir()
    for tool in ("dirname",):
        os.symlink(shutil.which(tool), bindir / tool)
    # a copy of the checkout's script in a tree without .venv, so nothing else it would call is on PATH
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "sanity", tmp_path / "scripts" / "sanity")
    done = subprocess.run(
        ["/bin/bash", str(tmp_path / "scripts" / "sanity")],
        env={"PATH": str(bindir), "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert "shellcheck is not installed" in done.stderr
    assert "apt-get install shellcheck" in done.stderr
    assert not (tmp_path / ".ansible").exists()  # stopped before anything was written
