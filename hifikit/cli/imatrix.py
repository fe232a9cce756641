"""``hifikit imatrix MODEL --text F [-o OUT]``: an importance matrix with llama-imatrix."""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from ..quantize import ImatrixOptions, ImatrixResult, imatrix
from ..tables import table
from .common import add_eval_args, add_json, progress_mode
from .output import emit_json, say


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("imatrix", help="compute an importance matrix (GGUF) over a text")
    p.add_argument("model", type=Path)
    p.add_argument("-o", "--output", type=Path, default=None, help="output file (default MODEL.imatrix.gguf)")
    p.add_argument("--show-statistics", action="store_true", help="also print per-tensor activation statistics")
    add_eval_args(p)
    add_json(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    res = imatrix(ImatrixOptions(args.model, args.text, args.output, args.ctx, args.chunks, args.threads,
                                 args.show_statistics), progress=progress_mode(args))
    render(res, args.json)
    return 0


def render(res: ImatrixResult, as_json: bool) -> None:
    stats = [dataclasses.asdict(s) for s in res.statistics] if res.statistics is not None else None
    if as_json:
        emit_json({"run": res.run_id, **res.step, **({"statistics": stats} if stats is not None else {})})
        return
    say(f"{res.path}: {res.entries} entries over {res.chunks} chunks of {res.chunk_size} [run {res.run_id}]")
    if stats:
        say(table(["layer", "tensor", "Σ(act²)", "min", "max", "mean", "σ", "active %", "ZD %", "cos"],
                  [[s["layer"], s["tensor"], f"{s['sum_act2']:.2f}", f"{s['min']:.4f}", f"{s['max']:.4f}",
                    f"{s['mean']:.2f}", f"{s['std']:.2f}", f"{s['active_pct']:.2f}", f"{s['zd_pct']:.2f}",
                    f"{s['cos_sim']:.4f}"] for s in stats], right=[True, False] + [True] * 8))


def show(run: dict, as_json: bool) -> None:
    """For `hifikit runs show/resume` of an imatrix run."""
    render(ImatrixResult.from_run(run), as_json)
