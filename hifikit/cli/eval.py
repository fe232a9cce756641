"""``hifikit eval MODEL [--ref REF] --text F``: perplexity and, with a reference, KL divergence."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..evaluate import EvalOptions, EvalResult, evaluate
from .common import add_eval_args, add_json, progress_mode
from .output import render_eval


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="perplexity, and KL divergence against a reference model")
    p.add_argument("model", type=Path)
    p.add_argument("--ref", type=Path, help="reference model (e.g. the F16 GGUF) for KL divergence")
    add_eval_args(p)
    add_json(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    res = evaluate(EvalOptions(args.model, args.text, args.ref, args.ctx, args.chunks, args.threads),
                   progress=progress_mode(args))
    render_eval(res, args.json)
    return 0


def show(run: dict, as_json: bool) -> None:
    """For `hifikit runs show/resume` of an eval run."""
    render_eval(EvalResult.from_run(run), as_json)
