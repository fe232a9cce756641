"""Entry point: assembles the subcommands and maps errors to one line each."""
from __future__ import annotations

import argparse
import logging
import os
import sys

from .. import __version__
from ..errors import HifikitError
from ..upstream import UpstreamError
from . import (analyze, bench, calib, chat, compare, costs, degrid, demo, fetch, imatrix, info, inspect, plan, pr,
               publish, quantize, recipes, report, runs, serve, tool, ui)
from . import eval as eval_

# the exceptions shown as one line, "hifikit: error: MESSAGE", exit status 1 (HIFIKIT_DEBUG=1: the traceback).
# HifikitError is every library error; UpstreamError is upstream.py's own (it runs inside the CMake build too,
# where hifikit cannot be imported); OSError covers files the user named.
ONE_LINE_ERRORS: tuple[type[BaseException], ...] = (HifikitError, UpstreamError, OSError)

# each module registers one noun: add_parser(subparsers) sets args.func
COMMANDS = (info, tool, inspect, quantize, imatrix, eval_, compare, bench, calib, fetch, degrid, analyze, plan, recipes,
            costs, runs, report, publish, demo, pr, ui, serve, chat)

# the commands that hand everything after the first `--` to the tool they run (args.extra_args); argparse
# cannot take options after a positional and a `--` at once
PASSTHROUGH_COMMANDS = ("serve", "chat")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hifikit", description="HIFI-enabled llama.cpp and a quantization lab")
    parser.add_argument("--version", action="version", version=f"hifikit {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        module.add_parser(sub)
    return parser


def split_passthrough(argv: list[str]) -> tuple[list[str], list[str] | None]:
    """argv without the `--` of a PASSTHROUGH_COMMANDS command and what follows it (None: no `--`)."""
    command = next((a for a in argv if not a.startswith("-")), None)
    if command not in PASSTHROUGH_COMMANDS or "--" not in argv:
        return argv, None
    i = argv.index("--")
    return argv[:i], argv[i + 1:]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # `hifikit tool NAME ARGS...` passes everything after NAME through untouched
    if argv[:1] == ["tool"]:
        return tool.passthrough(argv[1:])
    argv, extra = split_passthrough(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if extra is not None:
        args.extra_args = extra
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s: %(message)s", stream=sys.stderr)
    for noisy in ("httpx", "httpx2", "httpcore", "huggingface_hub", "filelock"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("hifikit: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `hifikit ... | head`
        sys.stderr.close()
        return 141
    except ONE_LINE_ERRORS as exc:
        if os.environ.get("HIFIKIT_DEBUG"):
            raise
        print(f"hifikit: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
