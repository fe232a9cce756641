"""Entry point: assembles the subcommands and maps errors to one line each."""
from __future__ import annotations

import argparse
import logging
import os
import sys

from .. import __version__
from ..errors import HifikitError
from ..upstream import UpstreamError
from . import (analyze, bench, calib, compare, costs, degrid, demo, fetch, imatrix, info, inspect, plan, pr, publish,
               quantize, recipes, report, runs, tool, ui)
from . import eval as eval_

# the exceptions shown as one line, "hifikit: error: MESSAGE", exit status 1 (HIFIKIT_DEBUG=1: the traceback).
# HifikitError is every library error; UpstreamError is upstream.py's own (it runs inside the CMake build too,
# where hifikit cannot be imported); OSError covers files the user named.
ONE_LINE_ERRORS: tuple[type[BaseException], ...] = (HifikitError, UpstreamError, OSError)

# each module registers one noun: add_parser(subparsers) sets args.func
COMMANDS = (info, tool, inspect, quantize, imatrix, eval_, compare, bench, calib, fetch, degrid, analyze, plan, recipes,
            costs, runs, report, publish, demo, pr, ui)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hifikit", description="HIFI-enabled llama.cpp and a quantization lab")
    parser.add_argument("--version", action="version", version=f"hifikit {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # `hifikit tool NAME ARGS...` passes everything after NAME through untouched
    if argv[:1] == ["tool"]:
        return tool.passthrough(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
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
