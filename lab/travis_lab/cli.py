"""`python -m travis_lab` command line."""

from __future__ import annotations

import argparse
import logging
import sys

from travis_lab.errors import LabError


def _box_build(args: argparse.Namespace) -> int:
    from travis_lab.boxbuild import build_box

    art = build_box(suite=args.suite, mirror=args.mirror, force=args.force)
    print(art.path)
    return 0


def _box_prune(args: argparse.Namespace) -> int:
    from travis_lab.boxbuild import prune

    for path in prune():
        print(f"removed {path}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="travis-lab", description="travis.worker test lab")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    box = sub.add_parser("box", help="Vagrant-LXC base box")
    box_sub = box.add_subparsers(dest="box_command", required=True)
    build = box_sub.add_parser("build", help="build (or reuse the cached) box; prints the .box path")
    build.add_argument("--force", action="store_true", help="rebuild even if a valid cached box exists")
    build.add_argument("--suite", default="bookworm")
    build.add_argument("--mirror", default=None, help="Debian mirror URL (default: the host's apt mirror)")
    build.set_defaults(func=_box_build)
    prune = box_sub.add_parser("prune", help="remove cached boxes built from other inputs")
    prune.set_defaults(func=_box_prune)

    _add_container_commands(sub)
    # Listed for --help only: main() hands `demo ...` to travis_lab.demo, which parses its own options.
    sub.add_parser("demo", help="main job: site.yml on a lab box, a demo build (--down removes it)")
    return parser


def _add_container_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from travis_lab import container_cli

    container_cli.add_commands(sub)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["demo"]:
        from travis_lab import demo

        return demo.main(argv[1:])
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.func(args) or 0)
    except LabError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("travis-lab: interrupted", file=sys.stderr)
        return 130
