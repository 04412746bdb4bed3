"""The demo build's source: a real local git repository with a `.travis.yml` and Python tests."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

TRAVIS_YML = """\
language: python
before_install:
  - python3 --version
script:
  - python3 -m unittest -v test_calc
"""

CALC_PY = '''\
"""A tiny module for the travis.worker lab demo build."""


def add(a: int, b: int) -> int:
    return a + b


def mean(values: list[float]) -> float:
    if not values:
        raise ValueError("mean of nothing")
    return sum(values) / len(values)
'''

TEST_CALC_PY = """\
import unittest

from calc import add, mean


class CalcTest(unittest.TestCase):
    def test_add(self) -> None:
        self.assertEqual(add(2, 3), 5)

    def test_mean(self) -> None:
        self.assertAlmostEqual(mean([1.0, 2.0, 4.5]), 2.5)

    def test_mean_of_nothing(self) -> None:
        with self.assertRaises(ValueError):
            mean([])


if __name__ == "__main__":
    unittest.main()
"""

FILES = {".travis.yml": TRAVIS_YML, "calc.py": CALC_PY, "test_calc.py": TEST_CALC_PY}
BRANCH = "main"


@dataclass(frozen=True)
class DemoRepo:
    bare: Path  # <base>/demo.git, served by git daemon from <base>
    commit: str
    branch: str = BRANCH

    @property
    def base(self) -> Path:
        return self.bare.parent


def _git(args: list[str], cwd: Path) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "travis lab",
        "GIT_AUTHOR_EMAIL": "lab@travis.invalid",
        "GIT_COMMITTER_NAME": "travis lab",
        "GIT_COMMITTER_EMAIL": "lab@travis.invalid",
        "GIT_AUTHOR_DATE": "2011-05-01T12:00:00+0000",
        "GIT_COMMITTER_DATE": "2011-05-01T12:00:00+0000",
        "GIT_CONFIG_NOSYSTEM": "1",
        "HOME": str(cwd),
    }
    out = subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True)
    return out.stdout.strip()


def ensure_demo_repo(base: Path) -> DemoRepo:
    """Create (or reuse) the bare repository <base>/demo.git with one commit on `main`; return it.

    The author/committer dates are fixed, so the commit id is the same on every machine.
    """
    bare = base / "demo.git"
    if (bare / "HEAD").is_file():
        try:
            commit = _git(["rev-parse", f"refs/heads/{BRANCH}"], bare)
            return DemoRepo(bare=bare, commit=commit)
        except subprocess.CalledProcessError:
            shutil.rmtree(bare)  # partial repository from an interrupted run: rebuild it
    work = base / "demo-src"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    _git(["init", "-q", "-b", BRANCH], work)
    for name, text in FILES.items():
        (work / name).write_text(text, encoding="utf-8")
    _git(["add", "."], work)
    _git(["commit", "-q", "-m", "demo: calc with tests"], work)
    _git(["clone", "-q", "--bare", str(work), str(bare)], base)
    (bare / "git-daemon-export-ok").touch()
    shutil.rmtree(work)
    commit = _git(["rev-parse", f"refs/heads/{BRANCH}"], bare)
    return DemoRepo(bare=bare, commit=commit)
