""">= 1,000 generated malformed payloads through a REAL worker process: no crash, each one in failed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from harness import WorkerProc, make_repo, registered, wait_for
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

EXAMPLES = 1000
Env = tuple[redis.Redis, dict[str, Any], WorkerProc]

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
BAD_FIELDS: list[tuple[tuple[str, ...], Any]] = [
    (("repository", "slug"), "a b"),
    (("repository", "slug"), "owner/name; touch /tmp/pwned"),
    (("repository", "slug"), "../etc"),
    (("repository", "source_url"), "--upload-pack=touch /tmp/pwned"),
    (("job", "commit"), "not-hex"),
    (("job", "commit"), "abc"),
    (("job", "commit"), "$(touch /tmp/pwned)"),
    (("job", "branch"), "a..b"),
    (("job", "branch"), "-rf"),
    (("job", "branch"), "x\ny"),
    (("job", "id"), -1),
    (("job", "id"), "seven"),
    (("config", "script"), 42),
    (("config", "install"), ["ok", 3]),
    (("config",), "not a map"),
    (("job",), None),
    (("repository",), []),
]


@pytest.fixture(scope="module")
def fuzz_env(tmp_path_factory: pytest.TempPathFactory, redis_server: Any) -> Iterator[Env]:
    """The lab's session redis-server, emptied; one worker process for all generated payloads."""
    tmp = tmp_path_factory.mktemp("twt-fuzz")
    server = redis_server
    if not server.running:
        server.start()
    server.flushall()
    _, commit = make_repo(Path(tmp) / "git")
    good = {
        "repository": {"slug": "twt/repo", "source_url": "/nonexistent"},
        "job": {"id": 1, "commit": commit, "branch": "master"},
        "config": {"script": "true"},
    }
    worker = WorkerProc(Path(tmp), server.url, "w")
    client = redis.Redis.from_url(server.url)
    try:
        wait_for(lambda: registered(client, worker), 15, "fuzz worker registration")
        yield client, good, worker
    finally:
        worker.stop()


def mutate(good: dict[str, Any], path: tuple[str, ...], value: Any) -> str:
    payload = json.loads(json.dumps(good))
    node = payload
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return json.dumps({"class": "Travis::Worker", "args": [payload]})


malformed = st.one_of(
    st.binary(max_size=64),  # mostly not UTF-8 / not JSON
    st.text(max_size=64).map(str.encode),
    json_values.map(lambda v: json.dumps(v).encode()),
    json_values.map(lambda v: json.dumps({"class": "Travis::Worker", "args": [v]}).encode()),
    json_values.map(lambda v: json.dumps({"class": v, "args": [{}]}).encode()),
    st.tuples(st.sampled_from(BAD_FIELDS), json_values),
)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(item=malformed)
def test_malformed_payload_goes_to_failed(fuzz_env: Env, item: Any) -> None:
    client, good, worker = fuzz_env
    if isinstance(item, tuple):  # a valid payload with one field broken (json_values: unused)
        (path, value), _ = item
        raw = mutate(good, path, value).encode()
    else:
        raw = item
    before = client.llen("resque:failed")
    client.rpush("resque:queue:builds", raw)
    wait_for(lambda: client.llen("resque:failed") > before, 10, f"{raw[:80]!r} in failed", step=0.001)
    assert worker.proc.poll() is None, worker.log()[-2000:]
    entry = json.loads(client.lindex("resque:failed", -1))
    assert entry["exception"] == "PayloadError"
    assert isinstance(entry["error"], str) and entry["error"].strip()
    assert client.llen("resque:queue:builds") == 0
    assert client.llen(f"resque:processing:{worker.id}") == 0
    stored = entry["payload"]
    text = raw.decode("utf-8", "surrogateescape")
    assert stored == text or stored == json.loads(text)


def test_all_examples_reached_the_worker(fuzz_env: Env) -> None:
    """Runs after the property test (same module worker): every generated payload was failed by the worker."""
    client, _, worker = fuzz_env
    assert client.llen("resque:failed") >= EXAMPLES
    assert int(client.get(f"resque:stat:failed:{worker.id}")) >= EXAMPLES
    assert worker.proc.poll() is None
