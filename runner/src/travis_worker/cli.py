"""Command line entry point (`travis-worker`). Exit codes are documented in docs/runner.md."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

import redis
import yaml

from travis_worker import __version__
from travis_worker.config import Config, ConfigError, load_config
from travis_worker.keys import Keys
from travis_worker.queue import Queue, parse_iso, server_time
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
        try:
            doc = json.loads(states.get(worker_id) or "{}")
        except ValueError:
            doc = {}
        ts = parse_iso(beats.get(worker_id))
        age = None if ts is None else max(0.0, now - ts)
        interval = float(doc.get("heartbeat_interval") or default_interval)
        state = doc.get("state", "unknown")
        if age is None or age > DEAD_AFTER_BEATS * interval:
            state = "dead"
        rows.append(
            {
                "id": worker_id,
                "state": state,
                "job_id": doc.get("job_id"),
                "vm": doc.get("vm"),
                "heartbeat_age": None if age is None else round(age, 3),
                "processed": int(client.get(keys.stat("processed", worker_id)) or 0),
                "failed": int(client.get(keys.stat("failed", worker_id)) or 0),
            }
        )
    return rows


def cmd_status(cfg: Config, args: argparse.Namespace) -> int:
    rows = worker_rows(_client(cfg), Keys(cfg.namespace), float(cfg["heartbeat_interval"]))
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    if not rows:
        print("no workers registered")
        return EXIT_OK
    print(f"{'WORKER':40} {'STATE':8} {'JOB':>10} {'VM':12} {'BEAT AGE':>9} {'DONE':>6} {'FAILED':>6}")
    for row in rows:
        age = "-" if row["heartbeat_age"] is None else f"{row['heartbeat_age']:.1f}s"
        print(
            f"{row['id']:40} {row['state']:8} {row['job_id'] or '-':>10} {row['vm'] or '-':12} {age:>9} "
            f"{row['processed']:>6} {row['failed']:>6}"
        )
    return EXIT_OK


def _queue(cfg: Config, queue: str | None = None) -> Queue:
    return Queue(_client(cfg), Keys(cfg.namespace), queue or cfg["queue"], "cli", cfg["max_attempts"])


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
        print(mask_urls(f"    {entry.get('exception', '?')}: {entry.get('error', '?')}"))
    return EXIT_OK


def cmd_retry(cfg: Config, args: argparse.Namespace) -> int:
    try:
        count = _queue(cfg).retry(None if args.all else args.index)
    except IndexError as exc:
        print(f"travis-worker: {exc}; see `travis-worker failed`", file=sys.stderr)
        return EXIT_NOT_FOUND
    print(f"requeued {count} job(s)")
    return EXIT_OK


def cmd_enqueue(cfg: Config, args: argparse.Namespace) -> int:
    from travis_worker.payload import PayloadError, parse_job

    try:
        text = sys.stdin.read() if args.file == "-" else open(args.file).read()  # noqa: SIM115
    except OSError as exc:
        print(f"travis-worker: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return EXIT_ERROR
    try:
        data = json.loads(text)
    except ValueError as exc:
        print(f"travis-worker: {args.file}: not JSON: {exc}", file=sys.stderr)
        return EXIT_DATA
    if isinstance(data, dict) and "class" not in data and "args" not in data:
        data = {"class": DEFAULT_CLASS, "args": [data]}  # a bare payload
    raw = json.dumps(data)
    if not args.no_validate:
        try:
            parse_job(raw)
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
