# -*- coding: utf-8 -*-
# Copyright: travis.worker developers
# MIT License (see galaxy.yml)
"""What the three CLI runners (``vagrant.py``, ``vboxmanage.py``, ``systemctl.py``) share, in one place.

- ``C_LOCALE``: the environment every call gets (``LANG``/``LC_ALL``/``LC_MESSAGES`` = ``C``), so that a
  program that honours the locale prints what the parsers expect. (VBoxManage 7 may still translate its
  human output: the runners use ``--machinereadable`` forms wherever one exists; docs/recordings.md lists
  where the code still reads human text.)
- ``CommandError``: the error type of all three (``message``, ``cmd``, ``rc``, ``stdout``, ``stderr``,
  ``fail_kwargs()`` for ``module.fail_json``). Each runner subclasses it and puts its remedy in ``message``.
- ``CommandRunner``: finds the binary (``module.get_bin_path``, with the runner's own "not installed" remedy),
  builds the argv (a list, never a string), runs it through an executor with the C locale, and in check mode
  (``dry_run``) skips what would change something, keeping the argv a real run would use in ``planned``.
- ``headline(text)``: the line a failure message starts with: the first ``<program>: error:`` line if there is
  one, else the first line that is not a progress line (``0%...10%...``), else ``"no error output"``.
- ``module_executor(module)``: an executor ``execute(argv, cwd, env) -> (rc, stdout, stderr)`` through
  ``module.run_command`` (controller-side code passes its own).

We do not use community.general's ``CmdRunner``: the collection does not depend on community.general, and
the three runners need little of it (argv lists, check-mode skip, forced locale) but keep their own error
classification and remedies.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Optional

C_LOCALE = {"LANG": "C", "LC_ALL": "C", "LC_MESSAGES": "C"}
NO_OUTPUT = "no error output"

Executor = Callable[[list, Optional[str], dict], tuple]

_PROGRESS = re.compile(r"^\d{1,3}%(?:\.\.\.(?:\d{1,3}%)?)*$")


def is_progress(line: str) -> bool:
    """True for VBoxManage's progress line (``0%...10%...100%``, possibly cut off)."""
    return bool(_PROGRESS.match(line.strip()))


def error_lines(text: str, program: str) -> list[str]:
    """The ``<program>: error: ...`` lines of ``text`` (``program`` may carry ``.exe``)."""
    pattern = re.compile(r"^" + re.escape(program) + r"(?:\.exe)?: error: ")
    return [line.strip() for line in (text or "").splitlines() if pattern.match(line.strip())]


def headline(text: str, program: Optional[str] = None) -> str:
    """The line a failure message should start with (see the module docstring)."""
    if program:
        errors = error_lines(text, program)
        if errors:
            return errors[0]
    for line in (text or "").splitlines():
        if line.strip() and not is_progress(line):
            return line.strip()
    return NO_OUTPUT


class CommandError(Exception):
    """A failed command, with the command, rc and output for the operator."""

    def __init__(
        self,
        message: str,
        cmd: Optional[list] = None,
        rc: Optional[int] = None,
        stdout: str = "",
        stderr: str = "",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.cmd = list(cmd or [])
        self.rc = rc
        self.stdout = stdout or ""
        self.stderr = stderr or ""

    def __str__(self) -> str:
        return self.message

    def fail_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``module.fail_json``."""
        return {
            "msg": self.message,
            "cmd": self.cmd,
            "rc": self.rc,
            "stdout": self.stdout,
            "stderr": self.stderr,
        }


def module_executor(module: Any) -> Executor:
    """An executor that goes through ``module.run_command`` (argv list, ``environ_update``)."""

    def execute(argv: list, cwd: Optional[str], env: dict) -> tuple:
        return module.run_command(argv, cwd=cwd, environ_update=env, check_rc=False)

    return execute


class CommandRunner:
    """Binary lookup, argv, environment, check-mode skip: the part the three runners have in common.

    Subclasses set ``program`` (the name looked up on PATH), ``error_type`` and ``missing_remedy``, and may
    extend ``environment()`` and ``argv()``.
    """

    program = ""
    error_type: type = CommandError
    missing_remedy = "install it or put it on PATH"

    def __init__(
        self,
        module: Any = None,
        binary: Optional[str] = None,
        execute: Optional[Executor] = None,
        dry_run: bool = False,
    ) -> None:
        self.module = module
        self._binary = binary
        self.execute = execute or (module_executor(module) if module is not None else None)
        self.dry_run = dry_run
        self.planned: list[list] = []  # argv of the changing commands a dry run skipped

    @property
    def binary(self) -> str:
        if self._binary is None:
            found = (
                self.module.get_bin_path(self.program, required=False) if self.module is not None else None
            )
            if not found:
                raise self.error_type(
                    f"{self.program} was not found in PATH on this host: {self.missing_remedy}"
                )
            self._binary = found
        return self._binary

    @binary.setter
    def binary(self, value: Optional[str]) -> None:
        self._binary = value

    def environment(self) -> dict:
        return dict(C_LOCALE)

    def argv(self, args: list) -> list:
        return [self.binary, *[str(a) for a in args]]

    def call(self, argv: list, cwd: Optional[str] = None, env: Optional[dict] = None) -> tuple[int, str, str]:
        """Run ``argv`` with the runner's environment (plus ``env``); returns (rc, stdout, stderr)."""
        rc, out, err = self.execute(argv, cwd, dict(self.environment(), **(env or {})))
        return rc, out or "", err or ""

    def skip(self, argv: list) -> bool:
        """True when ``argv`` changes something and must not run (check mode); it is added to ``planned``."""
        if self.dry_run:
            self.planned.append(list(argv))
        return self.dry_run
