"""Command line entry point (`travis-worker`). Exit codes are documented in docs/runner.md."""

from __future__ import annotations

import argparse
import json
import logging
import socket
import sys
from typing import Any

import redis
import yaml

from travis_worker import __version__
from travis_worker.config import Config, ConfigError, load_config
from travis_worker.keys import Keys, host_of
from travis_worker.queue import Queue, loads_safely, parse_iso, server_time
from travis_worker.redact import RedactingFormatter, mask_urls

EXIT_OK = 0
EXIT_ERROR = 1  # runtime failure (Redis unreachable, ...)
EXIT_USAGE = 2  # bad command line (argparse)
EXIT_NOT_FOUND = 3  # retry: no such failed entry
EXIT_DATA = 65  # enqueue: the payload is not a valid job
EXIT_CONFIG = 78  # configuration invalid (EX_CONFIG)
DEFAULT_CLASS = "Travis::Worker"
DEAD_AFTER_BEATS = 5


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        metavar="PATH",
        default=argparse.SUPPRESS,
        help="worker.yml (default: $TRAVIS_WORKER_CONFIG, "
        "/etc/travis-worker/worker.yml, ./config/worker.yml)",
    )
    parser = argparse.ArgumentParser(
        prog="travis-worker", parents=[common], description="Build worker on a resque-compatible Redis queue."
    )
    parser.add_argument("--version", action="version", version=f"travis-worker {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser(
        "run", parents=[common], help="work jobs until SIGTERM (honours QUEUE, TRAVIS_ENV, VM, VERBOSE)"
    )
    status = sub.add_parser(
        "status", parents=[common], help="every worker: state, job, heartbeat age, counts"
    )
    status.add_argument("--json", action="store_true")
    status.add_argument(
        "--local", action="store_true", help="only this box's workers (worker id <this host name>:...)"
    )
    failed = sub.add_parser("failed", parents=[common], help="the failed list with reasons")
    failed.add_argument("--json", action="store_true")
    retry = sub.add_parser("retry", parents=[common], help="requeue failed job(s)")
    which = retry.add_mutually_exclusive_group(required=True)
    which.add_argument("index", nargs="?", type=int, help="index in `travis-worker failed`")
    which.add_argument("--all", action="store_true")
    enqueue = sub.add_parser("enqueue", parents=[common], help="push a job (resque JSON or a bare payload)")
    enqueue.add_argument("--queue", help="queue name (default: the configured queue)")
    enqueue.add_argument(
        "--no-validate", action="store_true", help="push even if the payload does not validate"
    )
    enqueue.add_argument("file", help="JSON file, or - for stdin")
    sub.add_parser("config", parents=[common], help="print the merged configuration, secrets masked")
    return parser


def setup_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    # every line the runner logs goes through this formatter: URL user info never reaches the log
    line = "%(asctime)s %(levelname)s %(name)s[%(threadName)s]: %(message)s"
    handler.setFormatter(RedactingFormatter(line))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler])


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        # Only `run` serves a VM; the other commands work on a box without VM=... set.
        cfg = load_config(getattr(args, "config", None), require_vm=args.command == "run")
    except ConfigError as exc:
        print(mask_urls(f"travis-worker: config error: {exc}"), file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(cfg["verbose"])
    try:
        return COMMANDS[args.command](cfg, args)
    except redis.RedisError as exc:
        print(mask_urls(f"travis-worker: redis at {cfg['redis.url']}: {exc}"), file=sys.stderr)
        return EXIT_ERROR


def cmd_run(cfg: Config, args: argparse.Namespace) -> int:
    from travis_worker.worker import Worker

    try:
        worker = Worker(cfg)
    except ValueError as exc:
        print(f"travis-worker: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return worker.run()


def cmd_config(cfg: Config, args: argparse.Namespace) -> int:
    print(f"# merged from: {', '.join(cfg.sources) or '(defaults only)'}")
    print(yaml.safe_dump(cfg.nested(masked=True), sort_keys=True, default_flow_style=False), end="")
    return EXIT_OK


def _client(cfg: Config) -> redis.Redis:
    return redis.Redis.from_url(
        cfg["redis.url"],
        decode_responses=True,
        encoding_errors="surrogateescape",
        socket_connect_timeout=5,
        socket_timeout=10,
    )


def worker_rows(client: redis.Redis, keys: Keys, default_interval: float) -> list[dict[str, Any]]:
    beats = client.hgetall(keys.heartbeat)
    states = client.hgetall(keys.worker_state)
    ids = sorted(set(client.smembers(keys.workers)) | set(beats))
    now = server_time(client)
    rows = []
    for worker_id in ids:
        doc = loads_safely(states.get(worker_id))  # anyone may write these hashes: never trust their shape
        doc = doc if isinstance(doc, dict) else {}
        ts = parse_iso(beats.get(worker_id))
        age = None if ts is None else max(0.0, now - ts)
        interval = doc.get("heartbeat_interval")
        if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not interval > 0:
            interval = default_interval
        state = doc.get("state") if isinstance(doc.get("state"), str) else "unknown"
        if age is None or age > DEAD_AFTER_BEATS * interval:
            state = "dead"
        rows.append(
            {
                "id": worker_id,
                "host": host_of(worker_id),
                "state": state,
                "job_id": doc.get("job_id") if isinstance(doc.get("job_id"), (int, str)) else None,
                "vm": doc.get("vm") if isinstance(doc.get("vm"), str) else None,
                "image": _image(doc.get("image")),
                "heartbeat_age": None if age is None else round(age, 3),
                "processed": _count(client.get(keys.stat("processed", worker_id))),
                "failed": _count(client.get(keys.stat("failed", worker_id))),
            }
        )
    return rows


def _image(value: Any) -> dict[str, str] | None:
    """The worker's ``image`` ({version, digest}) when it has that shape; None otherwise."""
    if not isinstance(value, dict):
        return None
    version, digest = value.get("version"), value.get("digest")
    if not isinstance(version, str) or not isinstance(digest, str):
        return None
    return {"version": version, "digest": digest}


def _count(value: str | None) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0


def cmd_status(cfg: Config, args: argparse.Namespace) -> int:
    rows = worker_rows(_client(cfg), Keys(cfg.namespace), float(cfg["heartbeat_interval"]))
    if args.local:
        host = socket.gethostname()  # what make_worker_id puts first in this box's worker ids
        rows = [row for row in rows if row["host"] == host]
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    if not rows:
        print("no workers registered")
        return EXIT_OK
    print(f"{'WORKER':40} {'STATE':8} {'JOB':>10} {'VM':12} {'BEAT AGE':>9} {'DONE':>6} {'FAILED':>6} IMAGE")
    for row in rows:
        age = "-" if row["heartbeat_age"] is None else f"{row['heartbeat_age']:.1f}s"
        image = f"{row['image']['version']} ({row['image']['digest'][:12]})" if row["image"] else "-"
        print(
            f"{row['id']:40} {row['state']:8} {row['job_id'] or '-':>10} {row['vm'] or '-':12} {age:>9} "
            f"{row['processed']:>6} {row['failed']:>6} {image}"
        )
    return EXIT_OK


def _queue(cfg: Config, queue: str | None = None) -> Queue:
    return Queue(
        _client(cfg),
        Keys(cfg.namespace),
        queue or cfg["queue"],
        "cli",
        cfg["max_attempts"],
        cfg["limits.payload_size"],
    )


def cmd_failed(cfg: Config, args: argparse.Namespace) -> int:
    entries = _queue(cfg).failed()
    if args.json:
        print(mask_urls(json.dumps(entries, indent=2)))
        return EXIT_OK
    if not entries:
        print("no failed jobs")
    for i, entry in enumerate(entries):
        print(
            f"[{i}] {entry.get('failed_at', '?')} queue={entry.get('queue', '?')} "
            f"worker={entry.get('worker', '?')}"
        )
        print(mask_urls(f"    {entry.get('exception', '?')}: {str(entry.get('error', '?'))[:2000]}"))
    return EXIT_OK


def cmd_retry(cfg: Config, args: argparse.Namespace) -> int:
    from travis_worker.payload import PayloadError

    try:
        count = _queue(cfg).retry(None if args.all else args.index)
    except IndexError as exc:
        print(f"travis-worker: {exc}; see `travis-worker failed`", file=sys.stderr)
        return EXIT_NOT_FOUND
    except PayloadError as exc:
        print(f"travis-worker: {exc}; left in the failed list", file=sys.stderr)
        return EXIT_DATA
    print(f"requeued {count} job(s)")
    return EXIT_OK


def cmd_enqueue(cfg: Config, args: argparse.Namespace) -> int:
    from travis_worker.payload import PayloadError, decode_json, job_of, make_envelope

    limit = cfg["limits.payload_size"]
    try:
        if args.file == "-":
            stdin = getattr(sys.stdin, "buffer", None)  # bytes: invalid UTF-8 is reported, not a crash
            data = stdin.read(limit + 1) if stdin else sys.stdin.read(limit + 1).encode("utf-8", "replace")
        else:
            with open(args.file, "rb") as handle:
                data = handle.read(limit + 1)
    except OSError as exc:
        print(f"travis-worker: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return EXIT_ERROR
    if len(data) > limit:
        print(
            f"travis-worker: {args.file}: payload: more than {limit} bytes (limits.payload_size)",
            file=sys.stderr,
        )
        return EXIT_DATA
    try:
        value = decode_json(data, limit)  # whatever the bytes or the depth: PayloadError, never a crash
    except PayloadError as exc:
        print(f"travis-worker: {args.file}: {exc}", file=sys.stderr)
        return EXIT_DATA
    if isinstance(value, dict) and "class" not in value and "args" not in value:
        value = {"class": DEFAULT_CLASS, "args": [value]}  # a bare payload
    raw = json.dumps(value, ensure_ascii=False)
    if len(raw.encode("utf-8")) > limit:
        print(f"travis-worker: {args.file}: payload: more than {limit} bytes once wrapped", file=sys.stderr)
        return EXIT_DATA
    if not args.no_validate:
        try:
            job_of(make_envelope(raw, value))
        except PayloadError as exc:
            message = f"travis-worker: {args.file}: {exc} (--no-validate pushes it anyway)"
            print(mask_urls(message), file=sys.stderr)
            return EXIT_DATA
    queue = args.queue or cfg["queue"]
    _queue(cfg, queue).push(raw, queue)
    print(f"enqueued on {Keys(cfg.namespace).queue(queue)}")
    return EXIT_OK


COMMANDS = {
    "run": cmd_run,
    "status": cmd_status,
    "failed": cmd_failed,
    "retry": cmd_retry,
    "enqueue": cmd_enqueue,
    "config": cmd_config,
}


if __name__ == "__main__":
    sys.exit(main())
