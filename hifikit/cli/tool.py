"""``hifikit tool NAME [ARGS...]``: run a bundled llama.cpp binary."""
from __future__ import annotations

import argparse
import os
import sys

from .. import paths
from ..errors import HifikitError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tool", help="run a bundled binary (exit code passed through)",
                       description=f"Run a bundled binary: {', '.join(paths.BINARIES)}.")
    p.add_argument("name", choices=paths.BINARIES)
    p.add_argument("args", nargs=argparse.REMAINDER)
    p.set_defaults(func=lambda a: passthrough([a.name, *a.args]))


def passthrough(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: hifikit tool NAME [ARGS...]\nbundled: {', '.join(paths.BINARIES)}")
        return 0 if argv else 2
    try:
        exe = paths.binary(argv[0])
    except HifikitError as exc:
        print(f"hifikit: error: {exc}", file=sys.stderr)
        return 2
    sys.stdout.flush()
    # exec: signals, stdin and the exit code belong to the tool itself
    os.execv(str(exe), [str(exe), *argv[1:]])
    return 127  # not reached
