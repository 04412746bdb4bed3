"""Untrusted jobs are decoded once, and no depth, size or byte sequence escapes as anything but a reason."""

from __future__ import annotations

import json

import pytest
from travis_worker.payload import (
    DEFAULT_MAX_PAYLOAD,
    MAX_DEPTH,
    PayloadError,
    job_of,
    parse_job,
    read_envelope,
)

COMMIT = "a" * 40


def later(**config: object) -> dict:
    return {
        "repository": {"slug": "o/n", "source_url": "/srv/repo"},
        "job": {"id": 1, "commit": COMMIT, "branch": "master"},
        "config": {"script": "true", **config},
    }


def wrap(payload: object, **extra: object) -> str:
    return json.dumps({"class": "Travis::Worker", "args": [payload], **extra})


def nested(depth: int, opener: str = "[", closer: str = "]") -> str:
    return opener * depth + closer * depth


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 1000, 100_000])
@pytest.mark.parametrize(("opener", "closer"), [("[", "]"), ('{"a":', "}")])
def test_deep_json_is_a_reason_never_an_exception(depth: int, opener: str, closer: str) -> None:
    raw = opener * depth + ("1" if opener != "[" else "") + closer * depth
    envelope = read_envelope(raw)
    assert envelope.data is None
    assert envelope.error is not None and "nested deeper than" in envelope.error
    assert envelope.raw == raw
    with pytest.raises(PayloadError, match="nested deeper than"):
        parse_job(raw)


def test_deep_json_inside_a_valid_envelope_is_refused() -> None:
    raw = wrap(later(), extra=json.loads(nested(MAX_DEPTH)))
    assert "nested deeper than 100 levels" in read_envelope(raw).error
    ok = wrap(later(), extra=json.loads(nested(MAX_DEPTH - 3)))  # envelope + args + payload = 3 levels
    assert read_envelope(ok).error is None
    assert job_of(read_envelope(ok)).id == 1


@pytest.mark.parametrize(
    "raw",
    [
        wrap(later()).replace('"true"', '"echo \\udc80"').encode(),  # a JSON escape of a lone surrogate
        wrap(later()).replace('"true"', '"echo \xff"').encode("latin-1"),  # a raw invalid byte
    ],
    ids=["escaped-surrogate", "invalid-byte"],
)
def test_invalid_utf8_inside_a_command_is_refused(raw: bytes) -> None:
    # the worker reads Redis with decode_responses and surrogateescape: test that form and the bytes
    for form in (raw, raw.decode("utf-8", "surrogateescape")):
        envelope = read_envelope(form)
        with pytest.raises(PayloadError, match=r"UTF-8") as info:
            job_of(envelope)
        assert str(info.value).startswith(("payload: not UTF-8", "config.script: not valid UTF-8"))


def test_payload_size_limit_names_the_size() -> None:
    payload = later(script=["echo " + "x" * 60_000] * 20)  # ~1.2 MB of valid commands
    raw = wrap(payload)
    assert len(raw) > DEFAULT_MAX_PAYLOAD
    envelope = read_envelope(raw)
    assert envelope.error == (
        f"payload: {len(raw)} bytes, more than the limit of {DEFAULT_MAX_PAYLOAD} bytes (limits.payload_size)"
    )
    assert read_envelope(raw, max_bytes=2 * DEFAULT_MAX_PAYLOAD).error is None
    small = wrap(later())
    assert "more than the limit of 100 bytes" in read_envelope(small, max_bytes=100).error


def test_envelope_is_decoded_once_and_carries_attempts() -> None:
    raw = wrap(later(), attempts=2)
    envelope = read_envelope(raw)
    assert envelope.raw == raw and envelope.attempts == 2 and envelope.job_class == "Travis::Worker"
    assert json.loads(envelope.with_attempts(3))["attempts"] == 3
    assert "attempts" not in json.loads(envelope.without_attempts())
    assert job_of(envelope).id == 1
    bad = read_envelope("not json{")
    assert bad.attempts == 0 and bad.with_attempts(1) is None and bad.without_attempts() == "not json{"
    assert bad.stored == "not json{"
    for weird in (-1, True, "2", 1.5):
        assert read_envelope(wrap(later(), attempts=weird)).attempts == 0


def test_arbitrary_bytes_never_raise() -> None:
    samples = [b"", b"\x00", b"\xff\xfe", b"[" * 10**6, b'{"class":' * 50_000, b"1" * 5000, b'"\\ud800"']
    for raw in samples:
        envelope = read_envelope(raw)
        assert envelope.error, raw[:20]
