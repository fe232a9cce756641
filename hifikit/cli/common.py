"""The arguments several subcommands share, and how their progress bars are decided."""
from __future__ import annotations

import argparse
from pathlib import Path

from .. import progress


def add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable output (no progress bars)")


def add_eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--text", type=Path, required=True, help="evaluation text file")
    p.add_argument("--ctx", type=int, default=512, help="context size per chunk (default 512)")
    p.add_argument("--chunks", type=int, default=None, help="chunks to score (default: all that fit)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for the tools")


def add_target_args(p: argparse.ArgumentParser) -> None:
    """The file-size target of plan and recipes (one of three)."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("--target-bpw", metavar="X", help="bits per weight of the whole file (8 x file bytes / weights)")
    g.add_argument("--target-size", metavar="MiB", help="size of the whole file in MiB")
    g.add_argument("--match", metavar="FTYPE", help="the size of the file llama-quantize writes with FTYPE")


def add_verify_args(p: argparse.ArgumentParser) -> None:
    """The evaluation options of a --verify (quantize what was chosen and measure it)."""
    p.add_argument("--text", type=Path, help="with --verify: evaluation text")
    p.add_argument("--ctx", type=int, default=512, help="with --verify: tokens per chunk (default 512)")
    p.add_argument("--chunks", type=int, default=None, help="with --verify: chunks to score (default: all)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for the tools")


def progress_mode(args: argparse.Namespace) -> bool | None:
    return progress.enabled_for(args)
