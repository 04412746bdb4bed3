"""Payload validation: the two shapes, one error per bad field naming its dotted path."""

from __future__ import annotations

import json

import pytest
from travis_worker.payload import Job, PayloadError, Timeouts, parse_job

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def later(**overrides: object) -> dict:
    body = {
        "uuid": "2f1c4c1e-0d2b-4a8e-9c1a-6f2d3e4b5a6c",
        "repository": {
            "slug": "travis-ci/travis-ci",
            "source_url": "https://github.com/travis-ci/travis-ci.git",
        },
        "job": {"id": 42, "number": "7.1", "commit": COMMIT, "branch": "feature/x-1"},
        "config": {"script": "rake", "env": ["A=1 B='two words'"], "install": ["bundle", "make deps"]},
        "timeouts": {"hard_limit": 120, "log_silence": 30.5},
    }
    body.update(overrides)
    return body


def wrap(body: object) -> str:
    return json.dumps({"class": "Travis::Worker::Job", "args": [body]})


def test_later_shape_parses() -> None:
    body = later()
    job = parse_job(wrap(body).encode())
    assert job == Job(
        id=42,
        number="7.1",
        uuid="2f1c4c1e-0d2b-4a8e-9c1a-6f2d3e4b5a6c",
        slug="travis-ci/travis-ci",
        source_url="https://github.com/travis-ci/travis-ci.git",
        commit=COMMIT,
        branch="feature/x-1",
        config=body["config"],
        timeouts=Timeouts(hard_limit=120.0, log_silence=30.5),
        payload=body,
    )


def test_2011_shape_parses() -> None:
    body = {
        "repository": {"slug": "svenfuchs/minimal"},
        "build": {"id": 1, "commit": "62aae5f70ceee39123ef", "branch": "master", "config": {"rvm": "1.9.2"}},
    }
    job = parse_job(wrap(body))
    assert (job.id, job.slug, job.commit, job.branch) == (
        1,
        "svenfuchs/minimal",
        "62aae5f70ceee39123ef",
        "master",
    )
    assert job.config == {"rvm": "1.9.2"}
    assert job.source_url is None and job.uuid is None and job.number is None
    assert job.timeouts == Timeouts(None, None)


def test_commit_is_normalised_to_lower_case() -> None:
    assert parse_job(wrap(later(job={"id": 1, "commit": "ABCDEF1", "branch": "m"}))).commit == "abcdef1"


def test_scp_like_and_local_source_urls_are_accepted() -> None:
    for url in ("git@github.com:owner/name.git", "/srv/git/owner/name.git", "file:///srv/git/o/n.git"):
        body = later(repository={"slug": "owner/name", "source_url": url})
        assert parse_job(wrap(body)).source_url == url


@pytest.mark.parametrize(
    ("raw", "path"),
    [
        (b"\xff\xfe", "payload: not UTF-8"),
        ("{", "payload: not JSON"),
        ("[1]", "payload: expected a resque job object"),
        ('{"class": "X", "args": [{"job": {}}], "x": NaN}', "payload: NaN"),
        ('{"args": []}', "class:"),
        ('{"class": "X", "args": []}', "args:"),
        ('{"class": "X", "args": {"a": 1}}', "args:"),
        ('{"class": "X", "args": [3]}', "args[0]:"),
        ("[" * 100000 + "]" * 100000, "payload:"),
    ],
)
def test_envelope_errors_name_the_problem(raw: object, path: str) -> None:
    with pytest.raises(PayloadError) as info:
        parse_job(raw)  # type: ignore[arg-type]
    assert str(info.value).startswith(path)


@pytest.mark.parametrize(
    ("mutate", "path"),
    [
        (lambda b: b.pop("repository"), "repository:"),
        (lambda b: b["repository"].update(slug="a b"), "repository.slug:"),
        (lambda b: b["repository"].update(slug="owner"), "repository.slug:"),
        (lambda b: b["repository"].update(slug="-o/name"), "repository.slug:"),
        (lambda b: b["repository"].update(slug="o/.."), "repository.slug:"),
        (lambda b: b["repository"].update(slug="o/n;touch x"), "repository.slug:"),
        (lambda b: b["repository"].update(source_url="--upload-pack=touch /tmp/x"), "repository.source_url:"),
        (lambda b: b["repository"].update(source_url="ext::sh -c touch% /tmp/x"), "repository.source_url:"),
        (lambda b: b["repository"].update(source_url="https://h/x\nrm"), "repository.source_url:"),
        (lambda b: b["repository"].update(source_url="ssh://-oProxyCommand=id/x"), "repository.source_url:"),
        (lambda b: b["repository"].update(source_url="-oProxyCommand=id@h:x"), "repository.source_url:"),
        (lambda b: b["repository"].update(source_url="relative/path"), "repository.source_url:"),
        (lambda b: b.pop("job"), "job: missing"),
        (lambda b: b["job"].update(id=0), "job.id:"),
        (lambda b: b["job"].update(id=True), "job.id:"),
        (lambda b: b["job"].update(id="5"), "job.id:"),
        (lambda b: b["job"].update(number="1; ls"), "job.number:"),
        (lambda b: b["job"].update(commit="abc"), "job.commit:"),
        (lambda b: b["job"].update(commit="g" * 40), "job.commit:"),
        (lambda b: b["job"].update(commit="a" * 41), "job.commit:"),
        (lambda b: b["job"].update(commit="--upload-pack=x"), "job.commit:"),
        (lambda b: b["job"].update(branch="-x"), "job.branch:"),
        (lambda b: b["job"].update(branch="a..b"), "job.branch:"),
        (lambda b: b["job"].update(branch="a b"), "job.branch:"),
        (lambda b: b["job"].update(branch="a\nb"), "job.branch:"),
        (lambda b: b["job"].update(branch="a;touch x"), "job.branch:"),
        (lambda b: b["job"].update(branch="$(id)"), "job.branch:"),
        (lambda b: b["job"].update(branch="x.lock"), "job.branch:"),
        (lambda b: b["job"].update(branch="a/.b"), "job.branch:"),
        (lambda b: b["job"].update(branch=""), "job.branch:"),
        (lambda b: b["job"].pop("branch"), "job.branch:"),
        (lambda b: b.update(config=[]), "config:"),
        (lambda b: b["config"].update(script=3), "config.script:"),
        (lambda b: b["config"].update(install=["ok", None]), "config.install[1]:"),
        (lambda b: b["config"].update(after_script="a\x00b"), "config.after_script:"),
        (lambda b: b["config"].update(env=["A=1", "1A=2"]), "config.env[1]:"),
        (lambda b: b["config"].update(env="A=1; touch /tmp/x"), "config.env:"),
        (lambda b: b["config"].update(env="A='unbalanced"), "config.env:"),
        (lambda b: b["config"].update(env={"A B": "1"}), "config.env:"),
        (lambda b: b["config"].update(env={"A": [1]}), "config.env.A:"),
        (lambda b: b["config"].update(env=5), "config.env:"),
        (lambda b: b.update(timeouts=5), "timeouts:"),
        (lambda b: b["timeouts"].update(hard_limit=0), "timeouts.hard_limit:"),
        (lambda b: b["timeouts"].update(hard_limit=-1), "timeouts.hard_limit:"),
        (lambda b: b["timeouts"].update(log_silence="10"), "timeouts.log_silence:"),
        (lambda b: b["timeouts"].update(log_silence=1e300), "timeouts.log_silence:"),
        (lambda b: b.update(uuid="a b"), "uuid:"),
    ],
)
def test_field_errors_name_the_dotted_path(mutate, path: str) -> None:
    body = later()
    mutate(body)
    with pytest.raises(PayloadError) as info:
        parse_job(wrap(body))
    assert str(info.value).startswith(path), str(info.value)


def test_2011_errors_use_build_paths() -> None:
    body = {"repository": {"slug": "o/n"}, "build": {"id": 1, "commit": COMMIT, "branch": "m", "config": 1}}
    with pytest.raises(PayloadError, match=r"^build\.config:"):
        parse_job(wrap(body))
    body["build"]["config"] = {"script": {"x": 1}}
    with pytest.raises(PayloadError, match=r"^build\.config\.script:"):
        parse_job(wrap(body))


def test_error_message_example_from_the_contract() -> None:
    body = later(repository={"slug": "a b"})
    with pytest.raises(PayloadError) as info:
        parse_job(wrap(body))
    assert str(info.value) == "repository.slug: 'a b' is not owner/name (letters, digits, '_', '.', '-')"
    assert isinstance(info.value, ValueError)
