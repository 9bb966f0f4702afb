"""Command line: ``python -m versioning demo [PATH]``."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m versioning",
        description="sqlalchemy-versioning: history for SQLAlchemy models.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    demo = commands.add_parser(
        "demo",
        help="record, read and restore the history of a model in a SQLite database file",
        description=(
            "Create a SQLite database, change a versioned Invoice under two actors and print "
            "its history, an as_of lookup, its deletion, its undeletion (restore) and its "
            "history afterwards."
        ),
    )
    demo.add_argument(
        "path",
        nargs="?",
        type=Path,
        default=Path("versioning-demo.sqlite"),
        metavar="PATH",
        help="database file to create, replaced if it exists (default: %(default)s)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (argparse exits 2 on a usage error)."""
    args = _parser().parse_args(argv)
    if args.command == "demo":
        from versioning.demo import run

        path: Path = args.path
        if path.is_dir():
            print(f"python -m versioning demo: {path} is a directory", file=sys.stderr)
            return 2
        try:
            run(path)
        except BrokenPipeError:  # e.g. `python -m versioning demo | head`: stop quietly
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 1
        return 0
    raise AssertionError(args.command)  # pragma: no cover - argparse rejects other commands


if __name__ == "__main__":
    sys.exit(main())
