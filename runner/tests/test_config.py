"""Config: env file merge, environment overrides, one-line errors, masking, CLI `config`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from harness import worker_env
from travis_worker.cli import EXIT_CONFIG, main
from travis_worker.config import MIB, ConfigError, deep_merge, load_config


def write(path: Path, data: object) -> Path:
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def test_defaults_without_any_file(tmp_path: Path) -> None:
    cfg = load_config(None, {"TRAVIS_WORKER_CONFIG": ""})
    assert cfg["queue"] == "builds"
    assert cfg["redis.url"] == "redis://localhost:6379/0"
    assert cfg["redis.namespace"] == "resque"
    assert cfg["reporter"] == "redis"
    assert cfg["vms.provider"] == "local"
    assert cfg["vms.name_prefix"] == "worker-"
    assert cfg["timeouts.hard_limit"] == 3000
    assert cfg["timeouts.log_silence"] == 600
    assert cfg["limits.log_length"] == 4 * MIB
    assert cfg["shutdown_timeout"] == 3600
    assert cfg["max_attempts"] == 3
    assert cfg["heartbeat_interval"] == 10
    assert cfg["git.base_url"] == "https://github.com"
    assert cfg["git.clone_depth"] == 50


def test_env_file_merged_under_worker_yml(tmp_path: Path) -> None:
    base = write(
        tmp_path / "worker.yml",
        {"env": "staging", "queue": "local-q", "timeouts": {"hard_limit": 100}, "vms": {"count": 2}},
    )
    write(
        tmp_path / "worker.staging.yml",
        {
            "queue": "env-q",
            "timeouts": {"hard_limit": 50, "log_silence": 30},
            "redis": {"url": "redis://:pw@redis.example:6380/2"},
            "vms": {"count": 9, "name_prefix": "ci-"},
        },
    )
    cfg = load_config(str(base), {})
    assert cfg["queue"] == "local-q"  # worker.yml (local) wins
    assert cfg["timeouts.hard_limit"] == 100
    assert cfg["timeouts.log_silence"] == 30  # maps merge: the env file's other keys survive
    assert cfg["redis.url"] == "redis://:pw@redis.example:6380/2"
    assert cfg["vms.count"] == 2 and cfg["vms.name_prefix"] == "ci-"
    assert cfg.sources == (str(tmp_path / "worker.staging.yml"), str(base))


def test_lists_replace_in_deep_merge() -> None:
    merged = deep_merge({"a": {"l": [1, 2, 3], "k": 1}}, {"a": {"l": [9]}})
    assert merged == {"a": {"l": [9], "k": 1}}


def test_environment_overrides(tmp_path: Path) -> None:
    base = write(tmp_path / "worker.yml", {"env": "production", "queue": "builds", "vm": "worker-1"})
    write(tmp_path / "worker.development.yml", {"max_attempts": 7})
    write(tmp_path / "worker.production.yml", {"max_attempts": 2})
    env = {"QUEUE": "builds.linux", "TRAVIS_ENV": "development", "VM": "worker-3", "VERBOSE": "true"}
    cfg = load_config(str(base), env)
    assert cfg["queue"] == "builds.linux"
    assert cfg["env"] == "development"
    assert cfg["max_attempts"] == 7  # TRAVIS_ENV picks worker.development.yml
    assert cfg["vm"] == "worker-3"
    assert cfg["verbose"] is True


def test_search_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config").mkdir()
    write(tmp_path / "config" / "worker.yml", {"queue": "from-cwd"})
    other = write(tmp_path / "other.yml", {"queue": "from-env-var"})
    assert load_config(None, {})["queue"] == "from-cwd"
    assert load_config(None, {"TRAVIS_WORKER_CONFIG": str(other)})["queue"] == "from-env-var"


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"worker.yml": {"redis": {"urll": "x"}}}, "worker.yml: redis.urll: unknown key"),
        ({"worker.yml": {"colour": "red"}}, "worker.yml: colour: unknown key"),
        (
            {"worker.yml": {"timeouts": {"hard_limit": "long"}}},
            "worker.yml: timeouts.hard_limit: expected int or float",
        ),
        ({"worker.yml": {"max_attempts": True}}, "worker.yml: max_attempts: expected int"),
        ({"worker.yml": {"vms": "many"}}, "worker.yml: vms: must be a map"),
        ({"worker.yml": {"vms": {"provider": "docker"}}}, "worker.yml: vms.provider: 'docker' is not one of"),
        ({"worker.yml": {"heartbeat_interval": 0}}, "worker.yml: heartbeat_interval: must be greater than 0"),
        (
            {"worker.yml": {"env": "dev"}, "worker.dev.yml": {"limits": {"log_lenght": 5}}},
            "worker.dev.yml: limits.log_lenght: unknown key",
        ),
        (
            {"worker.yml": {"env": "dev"}, "worker.dev.yml": {"limits": {"log_length": "4M"}}},
            "worker.dev.yml: limits.log_length: expected int",
        ),
        ({"worker.yml": {"reporter": "http"}}, "worker.yml: travis.url: required when reporter is http"),
        (
            {"worker.yml": {"travis": {"url": "https://app.example", "username": "w"}}},
            "worker.yml: travis.token: required when reporter is http",
        ),
        (
            {"worker.yml": {"vms": {"provider": "lxc"}}},
            "worker.yml: vms.project_dir: required when vms.provider",
        ),
        (
            {"worker.yml": {"vms": {"provider": "lxc", "project_dir": "/srv/vms", "count": 3}}},
            "worker.yml: vm: required when vms.provider is lxc; set VM=worker-1 (.. worker-3)",
        ),
        ({"worker.yml": "queue: [unclosed\n"}, "worker.yml: line"),
        ({"worker.yml": "- a list\n"}, "worker.yml: top level must be a map"),
    ],
)
def test_one_line_errors(tmp_path: Path, files: dict[str, object], expected: str) -> None:
    for name, data in files.items():
        write(tmp_path / name, data)
    with pytest.raises(ConfigError) as err:
        load_config(str(tmp_path / "worker.yml"), {})
    message = str(err.value)
    assert "\n" not in message
    assert expected in message
    assert message.startswith(str(tmp_path))


def test_missing_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yml: cannot read config file"):
        load_config(str(tmp_path / "nope.yml"), {})


def test_cli_exit_code_and_single_line(tmp_path: Path) -> None:
    bad = write(tmp_path / "worker.yml", {"timeouts": {"hard_limt": 5}})
    done = subprocess.run(
        [sys.executable, "-m", "travis_worker", "--config", str(bad), "run"],
        capture_output=True,
        text=True,
        env=worker_env(),
        timeout=30,
    )
    assert done.returncode == EXIT_CONFIG
    assert done.stderr.strip().count("\n") == 0
    assert f"{bad}: timeouts.hard_limt: unknown key" in done.stderr


def test_only_run_needs_a_vm(tmp_path: Path) -> None:
    path = write(
        tmp_path / "worker.yml", {"vms": {"provider": "lxc", "project_dir": str(tmp_path), "count": 2}}
    )
    shown = subprocess.run(
        [sys.executable, "-m", "travis_worker", "--config", str(path), "config"],
        capture_output=True,
        text=True,
        env=worker_env(),
        timeout=30,
    )
    assert shown.returncode == 0, shown.stderr
    assert "provider: lxc" in shown.stdout
    run = subprocess.run(
        [sys.executable, "-m", "travis_worker", "--config", str(path), "run"],
        capture_output=True,
        text=True,
        env=worker_env(),
        timeout=30,
    )
    assert run.returncode == EXIT_CONFIG
    assert "vm: required when vms.provider is lxc; set VM=worker-1 (.. worker-2)" in run.stderr


def test_cli_config_masks_secrets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(
        tmp_path / "worker.yml",
        {
            "redis": {"url": "rediss://default:hunter2@redis.example:6380/1"},
            "travis": {"url": "https://ci.example", "username": "worker", "token": "t0ps3cret"},
        },
    )
    assert main(["config", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "hunter2" not in out and "t0ps3cret" not in out
    printed = yaml.safe_load(out)
    assert printed["redis"]["url"] == "rediss://default:***@redis.example:6380/1"
    assert printed["travis"]["token"] == "***"
    assert printed["reporter"] == "http"
    assert printed["travis"]["username"] == "worker"
