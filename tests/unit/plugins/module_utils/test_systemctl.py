"""The systemctl runner: argv lists, C locale, show/list-units parsing against recorded systemd 252 output."""

from __future__ import annotations

from typing import Any

import pytest
from ansible_collections.travis.worker.plugins.module_utils import systemctl as sc
from module_harness import recorded

W1, W2 = "travis-worker@worker-1.service", "travis-worker@worker-2.service"


class FakeModule:
    def __init__(self, *steps: Any) -> None:
        self.queue = [recorded(f"systemctl/{s}") if isinstance(s, str) else s for s in steps]
        self.calls: list[list[str]] = []

    def get_bin_path(self, name: str, required: bool = False) -> str:
        return "/bin/" + name

    def run_command(self, argv: list[str], **kwargs: Any) -> tuple[int, str, str]:
        assert isinstance(argv, list)
        assert kwargs["environ_update"]["LANG"] == "C"
        self.calls.append(argv)
        rec = self.queue.pop(0)
        assert argv == ["/bin/systemctl", *rec["argv"][1:]]
        return rec["rc"], rec["stdout"], rec["stderr"]


def test_parse_show_blocks() -> None:
    blocks = sc.parse_show(recorded("systemctl/show_two_active")["stdout"])
    assert [b["Id"] for b in blocks] == [W1, W2]
    assert blocks[0]["ActiveState"] == "active" and int(blocks[0]["MainPID"]) > 1
    assert blocks[1]["UnitFileState"] == "disabled"  # systemd prints MainPID first, whatever --property says


def test_show_keys_by_unit() -> None:
    module = FakeModule("show_two_active")
    props = sc.Systemctl(module).show([W1, W2])
    assert props[W2]["SubState"] == "running"


def test_list_units_all_with_pattern() -> None:
    module = FakeModule("list_units_workers")
    units = sc.Systemctl(module).list_units("travis-worker@*.service")
    assert [(u["unit"], u["active"]) for u in units] == [
        (W1, "active"),
        ("travis-worker@worker-3.service", "failed"),
        ("travis-worker@worker-4.service", "inactive"),  # enabled, never started: loaded, inactive
    ]
    assert units[0]["description"] == "travis-worker runner for worker-1"


def test_parse_list_units_with_bullet() -> None:
    (unit,) = sc.parse_list_units("● travis-worker@worker-3.service loaded failed failed runner worker-3\n")
    assert unit["unit"] == "travis-worker@worker-3.service" and unit["active"] == "failed"


def test_wants_of_target() -> None:
    module = FakeModule("show_target_wants")
    assert sc.Systemctl(module).wants("travis-worker.target") == ["travis-worker@worker-4.service", W1]


def test_verbs_argv() -> None:
    def step(argv: list[str]) -> dict[str, Any]:
        return {"argv": argv, "rc": 0, "stdout": "", "stderr": ""}

    module = FakeModule(
        step(["systemctl", "stop", "--no-block", "--", W1, W2]),
        step(["systemctl", "start", "--", W1]),
        step(["systemctl", "kill", "--signal=SIGQUIT", "--kill-who=main", "--", W1]),
        step(["systemctl", "reload", "--", W2]),
    )
    ctl = sc.Systemctl(module)
    ctl.stop([W1, W2], no_block=True)
    ctl.start([W1])
    ctl.kill([W1], "SIGQUIT")
    ctl.reload([W2])
    ctl.start([])  # nothing to do: no command
    assert not module.queue and len(module.calls) == 4


def test_failure_carries_rc_and_stderr() -> None:
    module = FakeModule("stop_not_loaded")
    with pytest.raises(sc.SystemctlError) as info:
        sc.Systemctl(module).stop(["nope.service"])
    kwargs = info.value.fail_kwargs()
    assert kwargs["rc"] == 5 and "not loaded" in kwargs["stderr"]
    assert "nope.service" in kwargs["msg"] and "journalctl" in kwargs["msg"]
