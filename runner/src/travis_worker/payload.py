"""Job payloads: parse and validate the resque envelope and the two Travis payload shapes.

Shapes accepted (unknown keys are ignored, known keys are validated):

* 2011: ``{"repository": {"slug"}, "build": {"id", "commit", "branch", "config"}}``
* later: ``{"uuid", "repository": {"slug", "source_url"}, "job": {"id", "number", "commit", "branch"},
  "config", "timeouts": {"hard_limit", "log_silence"}}``

Every :class:`PayloadError` names the dotted path of the bad field, so an operator reading the
``failed`` list knows what to fix in the producer.
"""

from __future__ import annotations

import json
import math
import re
import shlex
from dataclasses import dataclass
from typing import Any, Optional, Union

PHASES = (
    "before_install",
    "install",
    "before_script",
    "script",
    "after_success",
    "after_failure",
    "after_script",
)

_SLUG_PART = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}"
_SLUG_RE = re.compile(rf"\A{_SLUG_PART}/(?:{_SLUG_PART}|\.[A-Za-z0-9_-][A-Za-z0-9_.-]{{0,98}})\Z")
_COMMIT_RE = re.compile(r"\A[0-9a-fA-F]{7,40}\Z")
_REF_CHARS_RE = re.compile(r"\A[A-Za-z0-9._/+@#,=%-]{1,255}\Z")
_TOKEN_RE = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
_ENV_NAME_RE = re.compile(r"\A[A-Za-z_][A-Za-z0-9_]{0,127}\Z")
_URL_RE = re.compile(
    r"\A(?:(?:https?|git|ssh|file)://(?!-)[^\s\x00-\x1f\x7f]+"  # URL with an allowed scheme, no "-host"
    # scp-like user@host:path
    r"|[A-Za-z0-9_][A-Za-z0-9_.-]*@[A-Za-z0-9][A-Za-z0-9_.-]*:[^\s\x00-\x1f\x7f:-][^\s\x00-\x1f\x7f]*"
    r"|/[^\s\x00-\x1f\x7f]*)\Z"  # absolute local path (also a git bundle)
)
_MAX_URL = 2048
_MAX_COMMAND = 64 * 1024
DEFAULT_MAX_PAYLOAD = 1024 * 1024  # bytes; worker.yml limits.payload_size
MAX_DEPTH = 100  # JSON nesting levels (Ruby's JSON.parse default max_nesting, so Resque reads what we accept)


class PayloadError(ValueError):
    """A job payload that cannot be run; ``str(e)`` names the dotted path of the bad field and why."""


@dataclass(frozen=True)
class Timeouts:
    hard_limit: Optional[float]
    log_silence: Optional[float]


@dataclass(frozen=True)
class Job:
    id: int
    number: Optional[str]
    uuid: Optional[str]
    slug: str
    source_url: Optional[str]
    commit: str
    branch: str
    config: dict
    timeouts: Timeouts
    payload: dict


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _mapping(value: Any, path: str) -> dict:
    if not isinstance(value, dict):
        raise PayloadError(f"{path}: expected an object, got {_type_name(value)}")
    return value


def _optional_mapping(value: Any, path: str) -> dict:
    return {} if value is None else _mapping(value, path)


def _positive_int(value: Any, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise PayloadError(f"{path}: expected a positive integer, got {_type_name(value)} {_show(value)}")
    if value <= 0 or value >= 2**63:
        raise PayloadError(f"{path}: {value} is not a positive 64-bit integer")
    return value


def _string(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise PayloadError(f"{path}: expected a string, got {_type_name(value)} {_show(value)}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate, e.g. from a "\\udc80" escape
        raise PayloadError(
            f"{path}: not valid UTF-8 text (lone surrogate at character {exc.start})"
        ) from None
    return value


def validate_slug(value: Any, path: str = "repository.slug") -> str:
    slug = _string(value, path)
    if not _SLUG_RE.match(slug) or ".." in slug:
        raise PayloadError(f"{path}: {_show(slug)} is not owner/name (letters, digits, '_', '.', '-')")
    return slug


def validate_commit(value: Any, path: str) -> str:
    commit = _string(value, path)
    if not _COMMIT_RE.match(commit):
        raise PayloadError(f"{path}: {_show(commit)} is not a commit id (7 to 40 hex digits)")
    return commit.lower()


def validate_branch(value: Any, path: str) -> str:
    """A conservative subset of ``git check-ref-format --branch``: also safe to read in a log."""
    branch = _string(value, path)
    problem = None
    if not _REF_CHARS_RE.match(branch):
        problem = "has characters outside letters, digits and ._/+@#,=%-"
    elif branch.startswith(("-", "/", ".")) or branch.endswith(("/", ".", ".lock")):
        problem = "starts with '-', '/' or '.', or ends with '/', '.' or '.lock'"
    elif ".." in branch or "//" in branch or "/." in branch or branch == "@":
        problem = "contains '..', '//' or a component starting with '.', or is '@'"
    elif any(part.endswith(".lock") for part in branch.split("/")):
        problem = "has a component ending with '.lock'"
    if problem:
        raise PayloadError(f"{path}: {_show(branch)} is not a safe branch name: {problem}")
    return branch


def validate_source_url(value: Any, path: str) -> Optional[str]:
    if value is None:
        return None
    url = _string(value, path)
    if len(url) > _MAX_URL or not _URL_RE.match(url):
        raise PayloadError(
            f"{path}: {_show(url)} is not a git URL (https://, http://, git://, ssh://, file://, "
            "user@host:path or an absolute path; no spaces or control characters)"
        )
    return url


def _token(value: Any, path: str, *, numbers: bool = False) -> Optional[str]:
    if value is None:
        return None
    if numbers and isinstance(value, int) and not isinstance(value, bool):
        value = str(_positive_int(value, path))
    text = _string(value, path)
    if not _TOKEN_RE.match(text):
        raise PayloadError(
            f"{path}: {_show(text)} must be 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return text


def _command(value: Any, path: str) -> str:
    command = _string(value, path)
    if "\x00" in command:
        raise PayloadError(f"{path}: a command cannot contain a NUL character")
    if len(command) > _MAX_COMMAND:
        raise PayloadError(f"{path}: command longer than {_MAX_COMMAND} characters")
    return command


def _phase(value: Any, path: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [_command(value, path)]
    if isinstance(value, list):
        return [_command(item, f"{path}[{index}]") for index, item in enumerate(value)]
    raise PayloadError(f"{path}: expected a command string or a list of them, got {_type_name(value)}")


def _env_entry(value: Any, path: str) -> list[tuple[str, str]]:
    """``"A=1 B='two words'"`` -> [("A", "1"), ("B", "two words")]; values are never evaluated."""
    text = _command(value, path)
    try:
        words = shlex.split(text, comments=False, posix=True)
    except ValueError as exc:
        raise PayloadError(f"{path}: {_show(text)} cannot be split into NAME=value words: {exc}") from None
    pairs = []
    for word in words:
        name, sep, val = word.partition("=")
        if not sep or not _ENV_NAME_RE.match(name):
            raise PayloadError(f"{path}: {_show(word)} is not NAME=value (NAME is a shell identifier)")
        pairs.append((name, val))
    return pairs


def env_pairs(config: dict) -> list[tuple[str, str]]:
    """The ``config.env`` of a validated job as ordered (name, value) pairs."""
    return [(name, value) for name, value, _secure in _env(config.get("env"), "config.env")]


def env_settings(config: dict) -> list[tuple[str, str, bool]]:
    """The ``config.env`` of a validated job as ordered (name, value, secure) triples."""
    return _env(config.get("env"), "config.env")


def repository_env(payload: dict) -> list[tuple[str, str, bool]]:
    """The payload's ``env_vars`` (repository settings: ``{"name", "value", "public"}``) as triples."""
    return _env(payload.get("env_vars"), "env_vars")


def _env_object(value: dict, path: str) -> tuple[str, str, bool]:
    """``{"name": "X", "value": "v", "secure": true}`` or ``{"name", "value", "public": false}``."""
    name = value.get("name")
    if not isinstance(name, str) or not _ENV_NAME_RE.match(name):
        raise PayloadError(f"{path}.name: {_show(name)} is not a shell identifier")
    val = value.get("value")
    if isinstance(val, bool) or not isinstance(val, (str, int, float)):
        raise PayloadError(f"{path}.value: expected a string or number, got {_type_name(val)}")
    for flag in ("secure", "public"):
        if flag in value and not isinstance(value[flag], bool):
            raise PayloadError(f"{path}.{flag}: expected true or false, got {_show(value[flag])}")
    secure = value.get("secure") is True or value.get("public") is False
    return name, _command(str(val), f"{path}.value"), secure


def _env(value: Any, path: str) -> list[tuple[str, str, bool]]:
    if value is None:
        return []
    if isinstance(value, str):
        return [(name, val, False) for name, val in _env_entry(value, path)]
    if isinstance(value, list):
        triples: list[tuple[str, str, bool]] = []
        for index, item in enumerate(value):
            if isinstance(item, dict):
                triples.append(_env_object(item, f"{path}[{index}]"))
            else:
                triples.extend((name, val, False) for name, val in _env_entry(item, f"{path}[{index}]"))
        return triples
    if isinstance(value, dict):
        triples = []
        for name, val in value.items():
            if not isinstance(name, str) or not _ENV_NAME_RE.match(name):
                raise PayloadError(f"{path}: key {_show(name)} is not a shell identifier")
            if isinstance(val, bool) or not isinstance(val, (str, int, float)):
                raise PayloadError(f"{path}.{name}: expected a string or number, got {_type_name(val)}")
            triples.append((name, _command(str(val), f"{path}.{name}"), False))
        return triples
    raise PayloadError(f"{path}: expected NAME=value string(s), got {_type_name(value)}")


def _config(value: Any, path: str) -> dict:
    config = _optional_mapping(value, path)
    for phase in PHASES:
        _phase(config.get(phase), f"{path}.{phase}")
    _env(config.get("env"), f"{path}.env")
    return config


def phase_commands(config: dict, phase: str) -> list[str]:
    """The commands of one phase of a validated config, always as a list."""
    return _phase(config.get(phase), f"config.{phase}")


def _seconds(value: Any, path: str) -> Optional[float]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PayloadError(f"{path}: expected a positive number of seconds, got {_type_name(value)}")
    if not math.isfinite(value) or value <= 0 or value > 10 * 365 * 86400:
        raise PayloadError(f"{path}: {_show(value)} is not a positive number of seconds")
    return float(value)


def _timeouts(value: Any, path: str) -> Timeouts:
    timeouts = _optional_mapping(value, path)
    return Timeouts(
        hard_limit=_seconds(timeouts.get("hard_limit"), f"{path}.hard_limit"),
        log_silence=_seconds(timeouts.get("log_silence"), f"{path}.log_silence"),
    )


def _reject_constant(name: str) -> Any:
    raise PayloadError(f"payload: {name} is not valid JSON")


def _too_deep(value: Any, limit: int) -> bool:
    """True if ``value`` nests lists/objects more than ``limit`` levels (iterative: no recursion)."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


def _too_large(size: int, max_bytes: int) -> PayloadError:
    return PayloadError(
        f"payload: {size} bytes, more than the limit of {max_bytes} bytes (limits.payload_size)"
    )


def decode_json(raw: Union[bytes, str], max_bytes: int = DEFAULT_MAX_PAYLOAD) -> Any:
    """Untrusted bytes (or a str read with ``surrogateescape``) -> JSON value; anything else: PayloadError."""
    if isinstance(raw, str):
        if raw.isascii() and len(raw) > max_bytes:  # isascii is O(1) in CPython: no copy of a huge job
            raise _too_large(len(raw), max_bytes)
        try:
            raw = raw.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError as exc:
            raise PayloadError(f"payload: not UTF-8 (lone surrogate at character {exc.start})") from None
    if not isinstance(raw, (bytes, bytearray)):
        raise PayloadError(f"payload: expected JSON text, got {_type_name(raw)}")
    if len(raw) > max_bytes:
        raise _too_large(len(raw), max_bytes)
    try:
        text = bytes(raw).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PayloadError(f"payload: not UTF-8 ({exc.reason} at byte {exc.start})") from None
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise PayloadError(f"payload: not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except PayloadError:
        raise
    except RecursionError:
        raise PayloadError(f"payload: JSON nested deeper than {MAX_DEPTH} levels") from None
    except Exception as exc:  # e.g. an integer with too many digits; nothing may escape as a crash
        raise PayloadError(f"payload: not acceptable JSON: {exc}") from None
    if _too_deep(value, MAX_DEPTH):
        raise PayloadError(f"payload: JSON nested deeper than {MAX_DEPTH} levels")
    return value


@dataclass(frozen=True)
class Envelope:
    """One job as it came from Redis, decoded once at the boundary.

    ``raw`` is the exact string in Redis (what LPOS/LREM match), ``data`` the decoded resque envelope
    ``{"class", "args", ["attempts"]}`` or None, ``error`` the :class:`PayloadError` text when it is not one.
    """

    raw: str
    data: Optional[dict] = None
    error: Optional[str] = None

    @property
    def attempts(self) -> int:
        value = self.data.get("attempts", 0) if self.data is not None else 0
        return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0

    @property
    def job_class(self) -> Optional[str]:
        return self.data["class"] if self.data is not None else None

    @property
    def stored(self) -> Any:
        """What failure records and ``<ns>:worker:<id>`` show: the decoded envelope, else the raw text."""
        return self.data if self.data is not None else self.raw

    def with_attempts(self, attempts: int) -> Optional[str]:
        """The envelope with ``attempts`` set (Resque ignores unknown envelope keys); None if undecodable."""
        if self.data is None:
            return None
        return json.dumps({**self.data, "attempts": attempts}, separators=(",", ":"))

    def without_attempts(self) -> str:
        """The envelope as the producer pushed it (``retry`` starts the count again)."""
        if self.data is None or "attempts" not in self.data:
            return self.raw
        return json.dumps({k: v for k, v in self.data.items() if k != "attempts"})


def make_envelope(raw: str, data: Any) -> Envelope:
    """The :class:`Envelope` of ``raw`` given its decoded value (``data`` kept only if it is a resque job)."""
    error = None
    if not isinstance(data, dict):
        error = f"payload: expected a resque job object, got {_type_name(data)}"
    elif not isinstance(data.get("class"), str) or not data["class"]:
        error = f"class: expected a non-empty string, got {_show(data.get('class'))}"
    elif not isinstance(data.get("args"), list) or not data["args"]:
        error = f"args: expected a non-empty list [payload], got {_show(data.get('args'))}"
    return Envelope(raw, data if error is None else None, error)


def read_envelope(raw: Union[bytes, str], max_bytes: int = DEFAULT_MAX_PAYLOAD) -> Envelope:
    """Decode one job taken from Redis. Never raises: whatever the bytes, depth or size, a failure is
    returned as ``Envelope.error`` (which sends the job to ``failed`` with that reason)."""
    text = raw.decode("utf-8", "surrogateescape") if isinstance(raw, (bytes, bytearray)) else raw
    try:
        return make_envelope(text, decode_json(raw, max_bytes))
    except PayloadError as exc:
        return Envelope(text, None, str(exc))
    except Exception as exc:  # a decoder bug must not kill a worker or its reaper either
        return Envelope(text, None, f"payload: cannot be decoded: {exc!r}")


def parse_payload(payload: Any) -> Job:
    """Validate one payload (the first resque argument) and build a :class:`Job`."""
    payload = _mapping(payload, "args[0]")
    repository_env(payload)  # validates env_vars
    repository = _mapping(payload.get("repository"), "repository")
    slug = validate_slug(repository.get("slug"), "repository.slug")
    source_url = validate_source_url(repository.get("source_url"), "repository.source_url")
    if "job" in payload:
        job = _mapping(payload["job"], "job")
        job_id = _positive_int(job.get("id"), "job.id")
        number = _token(job.get("number"), "job.number", numbers=True)
        commit = validate_commit(job.get("commit"), "job.commit")
        branch = validate_branch(job.get("branch"), "job.branch")
        config = _config(payload.get("config"), "config")
        uuid = _token(payload.get("uuid"), "uuid")
        timeouts = _timeouts(payload.get("timeouts"), "timeouts")
    elif "build" in payload:
        build = _mapping(payload["build"], "build")
        job_id = _positive_int(build.get("id"), "build.id")
        number = _token(build.get("number"), "build.number", numbers=True)
        commit = validate_commit(build.get("commit"), "build.commit")
        branch = validate_branch(build.get("branch"), "build.branch")
        config = _config(build.get("config"), "build.config")
        uuid = _token(payload.get("uuid"), "uuid")
        timeouts = _timeouts(payload.get("timeouts"), "timeouts")
    else:
        raise PayloadError(
            "job: missing; expected 'job' (current payload shape) or 'build' (2011 payload shape)"
        )
    return Job(
        id=job_id,
        number=number,
        uuid=uuid,
        slug=slug,
        source_url=source_url,
        commit=commit,
        branch=branch,
        config=config,
        timeouts=timeouts,
        payload=payload,
    )


def job_of(envelope: Envelope) -> Job:
    """The validated :class:`Job` of a decoded envelope; raise :class:`PayloadError`."""
    if envelope.error is not None or envelope.data is None:
        raise PayloadError(envelope.error or "payload: not a resque job")
    return parse_payload(envelope.data["args"][0])


def parse_job(raw: Union[bytes, str], max_bytes: int = DEFAULT_MAX_PAYLOAD) -> Job:
    """Parse a resque job ``{"class": str, "args": [payload, ...]}``; raise :class:`PayloadError`."""
    return job_of(read_envelope(raw, max_bytes))
