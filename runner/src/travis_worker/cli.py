"""Command line entry point (`travis-worker`)."""

from __future__ import annotations

import argparse
import sys

from travis_worker import __version__


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="travis-worker")
    parser.add_argument("--version", action="version", version=f"travis-worker {__version__}")
    parser.parse_args(argv)
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
