"""Shared helpers for unit tests of the collection's modules.

Usage in a test::

    from module_harness import call, recorded   # or use the run_module fixture (tests/unit/conftest.py)

    def test_halt(run_module):
        result = run_module(vagrant_vm.main, {"project_dir": "/p", "state": "halted"}, [
            call(["/usr/bin/vagrant", "status", "--machine-readable"], fixture="vagrant/vbox_status_mixed"),
            call(["/usr/bin/vagrant", "halt", "worker-1", "--machine-readable"], fixture="vagrant/vbox_halt"),
            ...
        ], check_mode=False, diff=True)
        assert result["changed"] is True

``run_module(main, args, calls, check_mode=False, diff=False, missing_bins=(), bin_dir="/usr/bin")`` runs the
module's ``main()`` with ``args``, replaces ``AnsibleModule.run_command`` by a fake that asserts each argv
(a list, never a string) in order against ``calls`` (elements may be ``unittest.mock.ANY``) and returns
their recorded rc/stdout/stderr, makes
``get_bin_path(name)`` return ``f"{bin_dir}/{name}"`` (or None for names in ``missing_bins``), and returns the
dict given to ``exit_json`` or ``fail_json`` (the latter with ``failed: True``). Any other exception (a
traceback in the module) fails the test. Unused expected calls fail the test too. The fake's record of every
call (argv, cwd, environ_update) is in ``result["_calls"]``, ``module.warn()`` messages in
``result["_warnings"]``.

Fixtures (recorded command outputs) live in ``tests/unit/fixtures/<tool>/<name>.json`` as
``{"argv": [...], "rc": 0, "stdout": "...", "stderr": "...", "provenance": {...}}``; the provenance object
(program, version, method ``captured``/``reconstructed``, source) is required by tests/unit/test_recordings.py
and described in docs/recordings.md.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional
from unittest import mock

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
COLLECTIONS = ROOT / ".cache" / "collections"

# Make `ansible_collections.travis.worker` importable (scripts/setup links this checkout there).
if str(COLLECTIONS) not in sys.path:
    sys.path.insert(0, str(COLLECTIONS))

from ansible.module_utils import basic  # noqa: E402
from ansible.module_utils.testing import patch_module_args  # noqa: E402


def recorded(name: str) -> dict:
    """Load a recorded command output, ``name`` relative to tests/unit/fixtures without ``.json``."""
    return json.loads((FIXTURES / f"{name}.json").read_text(encoding="utf-8"))


@dataclass
class Call:
    """One expected command: the exact argv and what the fake returns for it."""

    argv: list
    rc: int = 0
    stdout: str = ""
    stderr: str = ""
    # extra assertions/side effects, called with {"argv": argv, **run_command kwargs}
    check: Optional[Callable[[dict], None]] = None


def call(
    argv: list,
    fixture: Optional[str] = None,
    rc: Optional[int] = None,
    stdout: Optional[str] = None,
    stderr: Optional[str] = None,
    check: Optional[Callable[[dict], None]] = None,
) -> Call:
    """An expected call; ``fixture`` supplies rc/stdout/stderr (explicit values override it)."""
    data = recorded(fixture) if fixture else {}
    return Call(
        argv=list(argv),
        rc=data.get("rc", 0) if rc is None else rc,
        stdout=data.get("stdout", "") if stdout is None else stdout,
        stderr=data.get("stderr", "") if stderr is None else stderr,
        check=check,
    )


class ModuleExit(Exception):
    def __init__(self, result: dict):
        super().__init__(result.get("msg", ""))
        self.result = result


@dataclass
class FakeRunCommand:
    expected: list
    seen: list = field(default_factory=list)

    def __call__(self, module: Any, args: Any, **kwargs: Any) -> tuple:
        assert isinstance(args, list), f"run_command must get an argv list, got {args!r}"
        self.seen.append({"argv": list(args), **kwargs})
        assert self.expected, f"unexpected command {args!r} (no more calls expected)"
        exp = self.expected.pop(0)
        assert args == exp.argv, f"argv mismatch:\n  got:      {args!r}\n  expected: {exp.argv!r}"
        if exp.check:
            exp.check({"argv": list(args), **kwargs})
        return exp.rc, exp.stdout, exp.stderr


def _run_module(
    main: Callable[[], None],
    args: dict,
    calls: list,
    check_mode: bool = False,
    diff: bool = False,
    missing_bins=(),
    bin_dir: str = "/usr/bin",
) -> dict:
    fake = FakeRunCommand(list(calls))

    def exit_json(self, **kwargs):
        kwargs.setdefault("changed", False)
        raise ModuleExit(kwargs)

    def fail_json(self, msg, **kwargs):
        kwargs.update(failed=True, msg=msg)
        raise ModuleExit(kwargs)

    warnings: list = []

    def warn(self, warning):
        warnings.append(warning)

    def get_bin_path(self, arg, required=False, opt_dirs=None):
        return None if arg in missing_bins else f"{bin_dir}/{arg}"

    module_args = dict(args, _ansible_check_mode=check_mode, _ansible_diff=diff)
    with (
        patch_module_args(module_args),
        mock.patch.object(basic.AnsibleModule, "run_command", _bind(fake)),
        mock.patch.object(basic.AnsibleModule, "exit_json", exit_json),
        mock.patch.object(basic.AnsibleModule, "fail_json", fail_json),
        mock.patch.object(basic.AnsibleModule, "get_bin_path", get_bin_path),
        mock.patch.object(basic.AnsibleModule, "warn", warn),
    ):
        try:
            main()
        except ModuleExit as done:
            result = done.result
        else:
            raise AssertionError("module returned without exit_json/fail_json")
    assert not fake.expected, f"expected commands not run: {[c.argv for c in fake.expected]}"
    result["_calls"] = fake.seen
    result["_warnings"] = warnings
    return result


def _bind(fake: FakeRunCommand):
    def run_command(self, args, **kwargs):
        return fake(self, args, **kwargs)

    return run_command


def run_module_fixture() -> Callable[..., dict]:
    """What the ``run_module`` fixture gives: see the module docstring."""
    return _run_module
