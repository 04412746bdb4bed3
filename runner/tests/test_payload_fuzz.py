"""Generated payloads: malformed ones raise PayloadError (never anything else), valid ones parse."""

from __future__ import annotations

import copy
import json
import subprocess
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from travis_worker.payload import PayloadError, parse_job

ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_"
SLUG_PART = st.text(ALNUM, min_size=1, max_size=12).map(lambda s: s + "-x.y")
COMMIT = st.text("0123456789abcdef", min_size=7, max_size=40)
BRANCH_PART = (
    st.tuples(st.text(ALNUM + "+@#,=%", min_size=1, max_size=8), st.text(ALNUM + "-.", max_size=6))
    .map(lambda t: (t[0] + t[1].replace("..", "-")).rstrip(".") or "b")
    .filter(lambda s: s != "@" and not s.endswith(".lock"))
)
BRANCH = st.lists(BRANCH_PART, min_size=1, max_size=3).map("/".join)
COMMAND = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=40)
PHASE = st.one_of(st.none(), COMMAND, st.lists(COMMAND, max_size=3))
ENV_NAME = st.text(ALNUM, min_size=1, max_size=8).map(lambda s: "V" + s)
ENV_VALUE = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=20)
ENV_ENTRY = st.tuples(ENV_NAME, ENV_VALUE).map(lambda kv: f"{kv[0]}={json.dumps(kv[1])[1:-1]!r}")
SECONDS = st.one_of(st.none(), st.integers(1, 10**6), st.floats(0.001, 10**6))

# Values that are wrong for every validated field (wrong type or hostile text).
HOSTILE = st.sampled_from(
    [
        "; touch /tmp/pwned",
        "$(touch /tmp/pwned)",
        "`touch /tmp/pwned`",
        "a\nb",
        "--upload-pack=touch /tmp/pwned",
        "-x",
        "a b",
        "..",
        "",
        "\x00",
        "ext::sh -c touch% /tmp/pwned",
    ]
)
WRONG = st.one_of(
    st.booleans(),
    st.floats(max_value=0.0, allow_nan=False, allow_infinity=False),
    st.integers(max_value=0),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
PHASES = [
    "before_install",
    "install",
    "before_script",
    "script",
    "after_success",
    "after_failure",
    "after_script",
]


_CONFIG = {
    "env": ["A=1 B='two words'"],
    **{phase: [f"echo {phase}", "true"] for phase in PHASES},
}
BASES = [
    {
        "uuid": "2f1c4c1e-0d2b-4a8e-9c1a-6f2d3e4b5a6c",
        "repository": {"slug": "owner/name", "source_url": "https://example.org/owner/name.git"},
        "job": {"id": 7, "number": "3.1", "commit": "abcdef0123", "branch": "feature/x"},
        "config": _CONFIG,
        "timeouts": {"hard_limit": 60, "log_silence": 10},
    },
    {
        "repository": {"slug": "owner/name"},
        "build": {"id": 7, "commit": "abcdef0123", "branch": "master", "config": _CONFIG},
    },
]


@st.composite
def valid_payload(draw: st.DrawFn) -> dict[str, Any]:
    config: dict[str, Any] = {phase: draw(PHASE) for phase in draw(st.sets(st.sampled_from(PHASES)))}
    if draw(st.booleans()):
        config["env"] = draw(st.one_of(ENV_ENTRY, st.lists(ENV_ENTRY, max_size=3)))
    slug = f"{draw(SLUG_PART)}/{draw(SLUG_PART)}"
    ident = draw(st.integers(1, 2**62))
    if draw(st.booleans()):
        return {
            "repository": {"slug": slug},
            "build": {"id": ident, "commit": draw(COMMIT), "branch": draw(BRANCH), "config": config},
        }
    return {
        "uuid": draw(st.uuids()).hex,
        "repository": {"slug": slug, "source_url": f"https://example.org/{slug}.git"},
        "job": {"id": ident, "number": "3.1", "commit": draw(COMMIT), "branch": draw(BRANCH)},
        "config": config,
        "timeouts": {"hard_limit": draw(SECONDS), "log_silence": draw(SECONDS)},
    }


def field_paths(body: dict[str, Any]) -> list[tuple[str, ...]]:
    top = "job" if "job" in body else "build"
    paths = [("repository", "slug"), (top, "id"), (top, "commit"), (top, "branch"), ("repository",), (top,)]
    if top == "job":
        paths += [("repository", "source_url"), ("timeouts", "hard_limit"), ("timeouts", "log_silence")]
        paths += [("timeouts",), ("config",), ("uuid",), ("job", "number")]
        paths += [("config", phase) for phase in PHASES] + [("config", "env")]
    else:
        paths += [("build", "config", phase) for phase in PHASES] + [
            ("build", "config", "env"),
            ("build", "config"),
        ]
    return paths


@st.composite
def malformed_payload(draw: st.DrawFn) -> tuple[str, str]:
    """A valid payload with one field broken; returns (raw job, dotted path of the broken field)."""
    body = copy.deepcopy(draw(st.sampled_from(BASES)))
    path = draw(st.sampled_from(field_paths(body)))
    parent = body
    for key in path[:-1]:
        parent = parent[key]
    leaf = path[-1]
    if leaf in ("id", "commit", "branch", "slug", "repository", "job", "build") and draw(st.booleans()):
        del parent[leaf]
        if leaf in ("job", "build"):  # neither shape's key is left: the error names "job"
            path = ("job",)
    elif leaf in PHASES or leaf == "env":
        bad = draw(st.one_of(st.integers(), st.booleans(), st.lists(st.integers(), min_size=1, max_size=2)))
        parent[leaf] = [bad] if leaf == "env" and draw(st.booleans()) else bad
        if leaf == "env" and isinstance(bad, list):
            parent[leaf] = draw(HOSTILE.filter(lambda s: s not in ("", "..", "-x")))
    elif leaf in ("config", "timeouts"):
        parent[leaf] = draw(st.one_of(st.integers(), st.text(max_size=5), st.lists(st.none(), max_size=2)))
    else:
        parent[leaf] = draw(st.one_of(HOSTILE, WRONG))
    return json.dumps({"class": "Travis::Worker::Job", "args": [body]}), ".".join(path)


def _accepts(body: dict[str, Any]) -> bool:
    """Some mutations are harmless (a hostile env *value*); only what parse_job accepts may differ."""
    try:
        parse_job(json.dumps({"class": "X", "args": [body]}))
    except PayloadError:
        return False
    return True


def test_at_least_1000_malformed_payloads_raise_payload_error_naming_the_field() -> None:
    seen: list[str] = []

    @settings(max_examples=1100, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(malformed_payload())
    def check(case: tuple[str, str]) -> None:
        raw, path = case
        try:
            parse_job(raw)
        except PayloadError as exc:
            reason = str(exc)
            assert reason.strip()
            head = reason.split(":", 1)[0]
            # the reason names the broken field, or its parent object when that is what is wrong
            assert path.startswith(head) or head.startswith(path) or head.startswith(path.split(".")[0]), (
                reason,
                path,
            )
            seen.append(raw)
            return
        # accepted: only possible when the mutation left a valid value (e.g. env "NAME='a b'"), re-check
        assert path.endswith("env"), (raw, path)

    check()
    assert len(seen) >= 1000, len(seen)


def test_arbitrary_bytes_and_json_never_raise_anything_but_payload_error() -> None:
    count = {"n": 0}
    json_values = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
        max_leaves=20,
    )
    envelopes = st.one_of(
        json_values.map(json.dumps),
        json_values.map(lambda v: json.dumps({"class": "X", "args": [v]})),
        json_values.map(
            lambda v: json.dumps({"class": "X", "args": [{"repository": {"slug": "o/n"}, "job": v}]})
        ),
    )

    @settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(st.one_of(st.binary(max_size=64), st.text(max_size=64), envelopes))
    def check(raw: Any) -> None:
        count["n"] += 1
        try:
            parse_job(raw)
        except PayloadError as exc:
            assert str(exc).strip()

    check()
    assert count["n"] >= 400


def test_generated_valid_payloads_parse() -> None:
    @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(valid_payload())
    def check(body: dict[str, Any]) -> None:
        job = parse_job(json.dumps({"class": "Travis::Worker::Job", "args": [body]}))
        top = body.get("job") or body["build"]
        assert (job.id, job.commit, job.branch, job.slug) == (
            top["id"],
            top["commit"],
            top["branch"],
            body["repository"]["slug"],
        )
        assert job.payload == body

    check()


def test_accepted_branches_are_valid_git_branch_names() -> None:
    @settings(max_examples=60, deadline=None, database=None)
    @given(BRANCH)
    def check(branch: str) -> None:
        body = {"repository": {"slug": "o/n"}, "job": {"id": 1, "commit": "abcdef0", "branch": branch}}
        assert parse_job(json.dumps({"class": "X", "args": [body]})).branch == branch
        subprocess.run(["git", "check-ref-format", "--branch", branch], check=True, capture_output=True)

    check()
