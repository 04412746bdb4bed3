"""Every recorded output of an external program in the tests says where it comes from (issue #12, section 1).

- ``tests/unit/fixtures/**/*.json``: a ``provenance`` object with ``program``, ``version``, ``method``
  (``captured``: a real run, ``reconstructed``: rebuilt from the program's source for a named version) and
  ``source`` (where it was run, or the source file and function that prints it); a ``generator`` named there
  must exist.
- ``runner/tests/fixtures/<dir>/``: every file has an entry of the same shape in the directory's
  ``PROVENANCE.json`` (and every entry names a file that exists).
- Inline recordings in test code (machine-readable vagrant lines, ``systemctl show`` properties, any
  ``VBoxManage: error:`` line, a ``VMState=`` value, VBoxManage progress) need the word "provenance" within
  the lines above them.
docs/recordings.md describes the recordings and how to re-make them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "unit" / "fixtures"
RUNNER_FIXTURES = ROOT / "runner" / "tests" / "fixtures"
METHODS = {"captured", "reconstructed"}
REQUIRED = ("program", "version", "method", "source")

# Inline recordings that predate the rule, in test files another area owns; each must still be there (so the
# entry goes when they are replaced by fixtures with provenance).
KNOWN_INLINE_WITHOUT_PROVENANCE: dict[str, str] = {}
INLINE_MARKERS = re.compile(
    r"\b\d{10},[^,\n\"]*,(?:ui|metadata|action|state|state-human-short|error-exit|box-name|box-provider|"
    r"box-version|provider-name),"
    r"|\b(?:MainPID|ActiveState|LoadState|SubState|UnitFileState)="
    r"|VBoxManage: error: "
    r"|\bVMState=\\?\""
    r"|0%\.\.\.10%"
)
LOOKBACK = 12


def provenance_problems(prov: object) -> list[str]:
    """What is missing from one provenance object (empty list: fine)."""
    if not isinstance(prov, dict):
        return ["no provenance object"]
    problems = [f"no {key}" for key in REQUIRED if not str(prov.get(key, "")).strip()]
    if prov.get("method") and prov["method"] not in METHODS:
        problems.append(f"method {prov['method']!r} is not one of {sorted(METHODS)}")
    generator = prov.get("generator")
    if generator and not (ROOT / generator).is_file():
        problems.append(f"generator {generator} does not exist")
    return problems


def fixture_files() -> list[Path]:
    return sorted(FIXTURES.rglob("*.json"))


def test_there_are_recordings() -> None:
    assert len(fixture_files()) > 50
    assert any(RUNNER_FIXTURES.rglob("*.txt"))


@pytest.mark.parametrize("path", fixture_files(), ids=lambda p: str(p.relative_to(FIXTURES)))
def test_unit_fixture_has_provenance(path: Path) -> None:
    record = json.loads(path.read_text(encoding="utf-8"))
    assert {"argv", "rc", "stdout", "stderr"} <= set(record), f"{path.name}: not a recording"
    assert "recorded" not in record, f"{path.name}: the free-text 'recorded' note is replaced by 'provenance'"
    assert provenance_problems(record.get("provenance")) == [], path.name


def runner_fixture_dirs() -> list[Path]:
    return sorted({p.parent for p in RUNNER_FIXTURES.rglob("*") if p.is_file()})


@pytest.mark.parametrize("directory", runner_fixture_dirs(), ids=lambda p: str(p.relative_to(ROOT)))
def test_runner_fixtures_have_provenance(directory: Path) -> None:
    manifest_path = directory / "PROVENANCE.json"
    assert manifest_path.is_file(), f"{directory}: no PROVENANCE.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    files = {
        p.name for p in directory.iterdir() if p.is_file() and p.name not in ("README.md", "PROVENANCE.json")
    }
    assert files - set(manifest) == set(), "recordings without a PROVENANCE.json entry"
    assert set(manifest) - files == set(), "PROVENANCE.json entries for files that do not exist"
    for name, prov in manifest.items():
        assert provenance_problems(prov) == [], name


def inline_hits(path: Path) -> list[int]:
    """Line numbers (1-based) of inline recordings without 'provenance' in the LOOKBACK lines above."""
    lines = path.read_text(encoding="utf-8").splitlines()
    hits = []
    for index, line in enumerate(lines):
        if INLINE_MARKERS.search(line):
            window = lines[max(0, index - LOOKBACK) : index + 1]
            if not any("provenance" in w.lower() for w in window):
                hits.append(index + 1)
    return hits


def scanned_test_files() -> list[Path]:
    files = list((ROOT / "tests" / "unit").rglob("*.py")) + list((ROOT / "runner" / "tests").rglob("*.py"))
    return sorted(p for p in files if "fixtures" not in p.parts and p.name != "test_recordings.py")


def test_inline_recordings_have_provenance() -> None:
    unexplained = {}
    for path in scanned_test_files():
        rel = str(path.relative_to(ROOT))
        hits = inline_hits(path)
        if rel in KNOWN_INLINE_WITHOUT_PROVENANCE:
            assert hits, f"{rel} has no inline recordings left: drop it from KNOWN_INLINE_WITHOUT_PROVENANCE"
            continue
        if hits:
            unexplained[rel] = hits
    assert unexplained == {}, "inline recordings without a provenance note (file: lines)"


def test_inline_detector_finds_an_unmarked_recording(tmp_path: Path) -> None:
    sample = tmp_path / "test_x.py"
    sample.write_text('OUT = "1700000000,worker-1,state,running\\n"\n', encoding="utf-8")
    assert inline_hits(sample) == [1]
    sample.write_text('# provenance: captured, vagrant 2.3.4\nOUT = "1700000000,worker-1,state,running\\n"\n')
    assert inline_hits(sample) == []
    # a VBoxManage error line of any kind, and a machine state, are recordings too
    sample.write_text("ERR = \"VBoxManage: error: Machine 'x' is not currently running.\"\n")
    assert inline_hits(sample) == [1]
    sample.write_text("OUT = stdout.replace('VMState=\"poweroff\"', 'VMState=\"running\"')\n")
    assert inline_hits(sample) == [1]


def test_provenance_check_rejects_incomplete_objects() -> None:
    assert provenance_problems(None) == ["no provenance object"]
    assert "no source" in provenance_problems({"program": "x", "version": "1", "method": "captured"})
    assert provenance_problems({"program": "x", "version": "1", "method": "hand-written", "source": "me"})
