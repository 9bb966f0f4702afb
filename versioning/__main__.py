"""``versioning`` and ``python -m versioning``: the command line (see :mod:`versioning.cli`).

The command line needs the ``cli`` extra (click and rich); without it, only ``demo`` runs (the
first thing the README suggests), and any other command says what to install.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

INSTALL = "pip install 'sqlalchemy-versioning[cli]'"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        from versioning import cli
    except ImportError as error:
        if args[:1] == ["demo"]:
            return _demo(args[1:])
        print(
            f"versioning: the command line needs its extra ({error.name or error} is missing): "
            f"{INSTALL}",
            file=sys.stderr,
        )
        return 3
    return cli.main(args)


def _demo(argv: list[str]) -> int:
    """``demo [PATH]`` without the ``cli`` extra."""
    parser = argparse.ArgumentParser(
        prog="versioning demo",
        description="Record, read and restore the history of a model in a SQLite database file.",
    )
    parser.add_argument(
        "path",
        nargs="?",
        type=Path,
        default=Path("versioning-demo.sqlite"),
        metavar="PATH",
        help="database file to create, replaced if it exists (default: %(default)s)",
    )
    path: Path = parser.parse_args(argv).path
    if path.is_dir():
        print(f"versioning demo: {path} is a directory", file=sys.stderr)
        return 2
    from versioning.demo import run

    try:
        run(path)
    except BrokenPipeError:  # e.g. `versioning demo | head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
