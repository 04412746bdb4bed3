"""The filters that report the worker configuration without its secrets (issue #11 section 4)."""

from __future__ import annotations

from ansible_collections.travis.worker.plugins.filter.worker_config import (
    FilterModule,
    config_changes,
    redact_config,
)


def test_redact_masks_credential_keys_and_url_passwords_and_keeps_the_rest() -> None:
    conf = {
        "env": "production",
        "redis": {"url": "rediss://:s3cret@redis.example:6380/0", "namespace": "resque"},
        "travis": {"url": "https://app.example", "username": "worker", "token": "t0ken"},
        "git": {"base_url": "https://bot:gh-pat@github.example"},
        "extra": {"api_key": "k", "password": "", "count": 2},
    }
    shown = redact_config(conf)
    assert shown["redis"] == {"url": "rediss://:***@redis.example:6380/0", "namespace": "resque"}
    assert shown["travis"] == {"url": "https://app.example", "username": "worker", "token": "***"}
    assert shown["git"]["base_url"] == "https://bot:***@github.example"
    assert shown["extra"] == {"api_key": "***", "password": "", "count": 2}
    assert conf["travis"]["token"] == "t0ken"  # a copy: the input is left alone
    text = repr(shown)
    assert "s3cret" not in text and "t0ken" not in text and "gh-pat" not in text


def test_changes_list_keys_with_masked_values() -> None:
    old = {"queue": "builds", "redis": {"url": "redis://:a@h/0"}, "travis": {"token": "x"}, "gone": 1}
    new = {
        "queue": "other",
        "redis": {"url": "redis://:b@h/0"},
        "travis": {"token": "y"},
        "vms": {"count": 2},
    }
    assert config_changes(old, new) == [
        "- gone",
        "queue: builds -> other",
        "redis.url: changed (value not shown)",
        "travis.token: changed (value not shown)",
        "+ vms.count: 2",
    ]
    assert config_changes(new, new) == []
    assert config_changes(None, {"redis": {"url": "redis://:pw@host:1/0"}}) == [
        "+ redis.url: redis://:***@host:1/0"
    ]
    moved = config_changes({"redis": {"url": "redis://:pw@a/0"}}, {"redis": {"url": "redis://:pw@b/0"}})
    assert moved == ["redis.url: redis://:***@a/0 -> redis://:***@b/0"]


def test_the_filter_is_registered() -> None:
    assert set(FilterModule().filters()) == {"config_changes"}
