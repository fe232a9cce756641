"""Entry point: assembles the subcommands and maps errors to one line each."""
from __future__ import annotations

import argparse
import logging
import os
import sys

from .. import __version__
from ..errors import HifikitError
from . import analyze, bench, calib, compare, costs, demo, fetch, imatrix, info, inspect, plan, pr, quantize, report, runs, tool
from . import eval as eval_

# each module registers one noun: add_parser(subparsers) sets args.func
COMMANDS = (info, tool, inspect, quantize, imatrix, eval_, compare, bench, calib, fetch, analyze, plan, costs, runs,
            report, demo, pr)


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
    for noisy in ("httpx", "httpcore", "huggingface_hub", "filelock"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    try:
        return int(args.func(args) or 0)
    except HifikitError as exc:
        print(f"hifikit: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("hifikit: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `hifikit ... | head`
        sys.stderr.close()
        return 141
    except OSError as exc:
        if os.environ.get("HIFIKIT_DEBUG"):
            raise
        print(f"hifikit: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
