"""worker.yml loading: environment file merge, environment overrides, schema validation, masking."""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from travis_worker.redact import mask_urls

DEFAULT_SEARCH = ("/etc/travis-worker/worker.yml", "./config/worker.yml")
MIB = 1024 * 1024

# dotted key -> (accepted types, default). A default of None means "optional, unset".
NUMBER = (int, float)
SCHEMA: dict[str, tuple[tuple[type, ...], Any]] = {
    "env": ((str,), None),
    "queue": ((str,), "builds"),
    "vm": ((str,), None),
    "verbose": ((bool,), False),
    "metrics.port": ((int,), None),  # Prometheus /metrics port (off when unset); see metrics.py
    "metrics.address": ((str,), "0.0.0.0"),
    "metrics.textfile": ((str,), None),  # node_exporter textfile path (off when unset); {vm} = VM name
    "redis.url": ((str,), "redis://localhost:6379/0"),
    "redis.namespace": ((str,), "resque"),
    "travis.url": ((str,), None),
    "travis.username": ((str,), None),
    "travis.token": ((str,), None),
    "reporter": ((str,), None),  # computed: http when travis.url is set, else redis
    "vms.provider": ((str,), "local"),
    "vms.project_dir": ((str,), None),
    "vms.count": ((int,), 1),
    "vms.name_prefix": ((str,), "worker-"),
    "vms.image_store": ((str,), "/var/lib/travis-worker/images"),  # published images per box (images.py)
    "vms.box": ((str,), None),  # the box whose images the VMs follow (unset: no image switching)
    "git.base_url": ((str,), "https://github.com"),
    "git.clone_depth": ((int,), 50),
    "timeouts.hard_limit": (NUMBER, 3000),
    "timeouts.log_silence": (NUMBER, 600),
    "limits.log_length": ((int,), 4 * MIB),
    "limits.payload_size": ((int,), 1 * MIB),
    "build_root": ((str,), None),  # local executor: None = <TMPDIR>/travis-worker-builds
    "shutdown_timeout": (NUMBER, 3600),
    "max_attempts": ((int,), 3),
    "heartbeat_interval": (NUMBER, 10),
    "noop_class": ((str,), None),
}
SECTIONS = {key.split(".", 1)[0] for key in SCHEMA if "." in key}
CHOICES = {"reporter": ("http", "redis"), "vms.provider": ("local", "virtualbox", "lxc")}
POSITIVE = (
    "timeouts.hard_limit",
    "timeouts.log_silence",
    "limits.log_length",
    "limits.payload_size",
    "shutdown_timeout",
    "max_attempts",
    "heartbeat_interval",
    "vms.count",
    "git.clone_depth",
    "metrics.port",
)
ENV_OVERRIDES = {"QUEUE": "queue", "TRAVIS_ENV": "env", "VM": "vm", "VERBOSE": "verbose"}
SECRET_KEYS = ("travis.token",)
ENV_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


class ConfigError(Exception):
    """One line for the operator: the file, the dotted key, what is wrong and what to do."""


@dataclass(frozen=True)
class Config:
    values: dict[str, Any]  # dotted key -> value, every key of SCHEMA present
    sources: tuple[str, ...]  # files read, in merge order (base first)

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    @property
    def namespace(self) -> str:
        return self.values["redis.namespace"]

    def nested(self, masked: bool = False) -> dict[str, Any]:
        """The merged configuration as nested maps (secrets masked when asked)."""
        out: dict[str, Any] = {}
        for key, value in sorted(self.values.items()):
            if masked:
                value = mask_value(key, value)
            node = out
            *parents, leaf = key.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
        return out


def mask_url(url: str) -> str:
    return mask_urls(url)


def mask_value(key: str, value: Any) -> Any:
    if value is None:
        return None
    if key in SECRET_KEYS:
        return "***"
    if key in ("redis.url", "travis.url"):
        return mask_url(value)
    return value


def deep_merge(under: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """`over` wins; maps merge recursively, every other value (lists included) is replaced."""
    out = copy.deepcopy(dict(under))
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def find_config(path: str | None, environ: Mapping[str, str]) -> Path | None:
    if path:
        return Path(path)
    if environ.get("TRAVIS_WORKER_CONFIG"):
        return Path(environ["TRAVIS_WORKER_CONFIG"])
    for candidate in DEFAULT_SEARCH:
        if Path(candidate).is_file():
            return Path(candidate)
    return None


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}; pass --config PATH") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{where} is not valid YAML; fix the syntax") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a map of keys, got {type(data).__name__}")
    return data


def _flatten(data: Mapping[str, Any], origin: Mapping[str, str], path: str, prefix: str = "") -> dict:
    """Nested maps -> dotted keys; reports unknown keys with the file they came from."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        where = origin.get(dotted, path)
        if not isinstance(key, str):
            raise ConfigError(f"{where}: key {dotted!r} is not a string")
        if dotted in SCHEMA:
            flat[dotted] = value
        elif dotted in SECTIONS:
            if not isinstance(value, Mapping):
                raise ConfigError(f"{where}: {dotted}: must be a map, got {type(value).__name__}")
            flat.update(_flatten(value, origin, path, f"{dotted}."))
        else:
            raise ConfigError(f"{where}: {dotted}: unknown key; see docs/runner.md for the valid keys")
    return flat


def _origins(data: Mapping[str, Any], path: str, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        out[dotted] = path
        if isinstance(value, Mapping):
            out.update(_origins(value, path, f"{dotted}."))
    return out


def _coerce_env(key: str, raw: str) -> Any:
    if key == "verbose":
        return raw.strip().lower() in ("1", "true", "yes", "on")
    return raw


def load_config(
    path: str | None = None, environ: Mapping[str, str] | None = None, *, require_vm: bool = True
) -> Config:
    """Read, merge, override and validate. Raises ConfigError with one line naming file and key.

    ``require_vm=False`` is for commands that serve no VM (config, status, enqueue, ...): they work on a box
    with ``vms.provider`` lxc/virtualbox without ``VM`` set; ``run`` needs it.
    """
    environ = os.environ if environ is None else environ
    base_path = find_config(path, environ)
    sources: list[str] = []
    merged: dict[str, Any] = {}
    origin: dict[str, str] = {}
    if base_path is not None:
        base = _read_yaml(base_path)
        sources.append(str(base_path))
        env = environ.get("TRAVIS_ENV") or base.get("env")
        if env is not None:
            if not isinstance(env, str) or not ENV_NAME.match(env):
                raise ConfigError(f"{base_path}: env: {env!r} is not a valid environment name")
            local_path = base_path.with_name(f"worker.{env}.yml")
            if local_path.is_file():
                local = _read_yaml(local_path)
                sources.insert(0, str(local_path))
                origin.update(_origins(local, str(local_path)))
                merged = deep_merge(merged, local)
        origin.update(_origins(base, str(base_path)))
        merged = deep_merge(merged, base)
    where = sources[-1] if sources else "(no config file)"
    flat = _flatten(merged, origin, where)
    for var, key in ENV_OVERRIDES.items():
        if environ.get(var) not in (None, ""):
            flat[key] = _coerce_env(key, environ[var])
            origin[key] = f"${var}"
    values: dict[str, Any] = {}
    for key, (types, default) in SCHEMA.items():
        value = flat.get(key, default)
        src = origin.get(key, where)
        if value is not None and (
            not isinstance(value, types) or (bool not in types and isinstance(value, bool))
        ):
            wanted = " or ".join(t.__name__ for t in types)
            raise ConfigError(f"{src}: {key}: expected {wanted}, got {type(value).__name__} {value!r}")
        if key in CHOICES and value is not None and value not in CHOICES[key]:
            raise ConfigError(f"{src}: {key}: {value!r} is not one of {', '.join(CHOICES[key])}")
        if key in POSITIVE and value is not None and value <= 0:
            raise ConfigError(f"{src}: {key}: must be greater than 0, got {value!r}")
        values[key] = value
    _check_required(values, origin, where, require_vm=require_vm)
    return Config(values=values, sources=tuple(sources))


def _check_required(
    values: dict[str, Any], origin: Mapping[str, str], where: str, *, require_vm: bool
) -> None:
    if values["reporter"] is None:
        values["reporter"] = "http" if values["travis.url"] else "redis"
    if values["reporter"] == "http":
        for key in ("travis.url", "travis.username", "travis.token"):
            if not values[key]:
                raise ConfigError(
                    f"{where}: {key}: required when reporter is http; set it or use reporter: redis"
                )
        if urlsplit(values["travis.url"]).scheme not in ("http", "https"):
            raise ConfigError(f"{origin.get('travis.url', where)}: travis.url: must be an http(s):// URL")
    if urlsplit(values["redis.url"]).scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(
            f"{origin.get('redis.url', where)}: redis.url: must start with redis://, rediss:// or unix://"
        )
    if values["vms.provider"] != "local" and not values["vms.project_dir"]:
        raise ConfigError(f"{where}: vms.project_dir: required when vms.provider is {values['vms.provider']}")
    if require_vm and values["vms.provider"] != "local" and not values["vm"]:
        first, last = f"{values['vms.name_prefix']}1", f"{values['vms.name_prefix']}{values['vms.count']}"
        raise ConfigError(
            f"{where}: vm: required when vms.provider is {values['vms.provider']}; "
            f"set VM={first} (.. {last}), as travis-worker@<vm>.service does"
        )
    if values["metrics.port"] is not None and values["metrics.port"] + values["vms.count"] - 1 > 65535:
        raise ConfigError(f"{origin.get('metrics.port', where)}: metrics.port: must be a TCP port (1-65535)")
    if values["metrics.textfile"] and values["vms.count"] > 1 and "{vm}" not in values["metrics.textfile"]:
        raise ConfigError(
            f"{origin.get('metrics.textfile', where)}: metrics.textfile: put {{vm}} in the path when "
            f"vms.count > 1 (one file per worker), e.g. /var/lib/node_exporter/travis-worker-{{vm}}.prom"
        )
    if values["vms.box"] is not None and not re.match(
        r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)?$", values["vms.box"]
    ):
        raise ConfigError(
            f"{origin.get('vms.box', where)}: vms.box: {values['vms.box']!r} is not a box name "
            "(e.g. travis/worker-base)"
        )
    if not values["vms.image_store"].startswith("/"):
        raise ConfigError(
            f"{origin.get('vms.image_store', where)}: vms.image_store: must be an absolute path"
        )
    if not values["queue"] or not re.match(r"^[A-Za-z0-9_.-]+$", values["queue"]):
        raise ConfigError(
            f"{origin.get('queue', where)}: queue: {values['queue']!r} must be letters, digits, _ . -"
        )
