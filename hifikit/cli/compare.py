"""``hifikit compare --ref REF --text F [MODEL ...] [--quant TYPE ...] [--baselines FTYPE,...]``: one table.

``--quant`` quantizes the reference into each type first (into --out-dir),
so one resumable run goes from an F16 GGUF to the comparison table
(evaluate.compare). ``--baselines`` compares, at each ftype's exact size,
what users publish: the stock ftype (with and without ``--imatrix``), the best
simple recipes and the plan of a sweep run (planner/baselines.py), with
``--bench`` llama-bench speed beside.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import HifikitError
from ..evaluate import CompareOptions, EvalResult, compare
from ..planner.baselines import BaselinesOptions, BaselinesResult, compare_baselines
from ..tables import num, pm, table
from .common import add_eval_args, add_json, progress_mode
from .output import emit_json, render_eval, say


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="PPL and KLD of several models against one reference, in one table")
    p.add_argument("models", type=Path, nargs="*", help="GGUF files to compare")
    p.add_argument("--ref", type=Path, required=True, help="reference model (e.g. F16)")
    p.add_argument("--quant", action="append", default=[], metavar="TYPE",
                   help="also quantize the reference to TYPE and compare it (repeatable)")
    p.add_argument("--imatrix", type=Path, help="importance matrix for --quant")
    p.add_argument("--out-dir", type=Path, default=None, help="where --quant writes (default: next to REF)")
    p.add_argument("--baselines", metavar="FTYPE,...", help="at each ftype's size: the stock ftype, the best simple "
                   "recipes and the plan (needs a sweep run of REF)")
    p.add_argument("--from-run", type=int, metavar="ID", help="with --baselines: the sweep run without an imatrix "
                   "(default: the latest of REF)")
    p.add_argument("--imatrix-run", type=int, metavar="ID", help="with --baselines and --imatrix: the sweep run "
                   "made with that imatrix (prices and plans the imatrix files)")
    p.add_argument("--mode", help="with --baselines: which curves of the runs (default as for 'hifikit plan')")
    p.add_argument("--top", type=int, default=2, help="with --baselines: simple recipes measured per size (default 2)")
    p.add_argument("--hifi", action="store_true", help="with --baselines: also the HIFI ftypes of no more bytes")
    p.add_argument("--bench", action="store_true", help="llama-bench every file in one run (pp128/tg32 by default)")
    add_eval_args(p)
    add_json(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.baselines:
        if args.models or args.quant:
            raise HifikitError("--baselines makes its own files: give no MODEL or --quant with it")
        res = compare_baselines(BaselinesOptions(
            args.ref, args.baselines.split(","), args.text, args.from_run, args.imatrix, args.imatrix_run, args.mode,
            args.top, args.hifi, args.bench, args.out_dir, args.ctx, args.chunks, args.threads),
            progress=progress_mode(args))
        render_baselines(res, args.json)
        return 0
    res = compare(CompareOptions(args.ref, args.text, args.models, args.quant, args.imatrix, args.out_dir, args.ctx,
                                 args.chunks, args.threads), progress=progress_mode(args))
    render_eval(res, args.json)
    return 0


def format_baselines(res: BaselinesResult) -> str:
    """One table per size: each file's bytes and KLD as ratios to the stock ftype of that size, and its speed."""
    out = []
    for size, recs in res.groups.items():
        tests = sorted({t for r in recs for t in (r["speed_ratio"] or {})}, key=lambda t: (not t.startswith("pp"), t))
        out.append(f"== {size}")
        out.append(table(["file", "role", "bytes", "× bytes", "predicted", "mean KLD", "× KLD", "KLD 99.9%",
                          "same top %", *[f"{t} ×" for t in tests], "note"],
                         [[r["label"], r["role"], r["file_bytes"], num(r["bytes_ratio"], ".3f"),
                           num(r["predicted"], ".5f"), pm(r["kld_mean"], r["kld_error"], ".5f"),
                           num(r["kld_ratio"], ".3f"), num(r["kld_p999"], ".4f"), num(r["same_top_p"], ".2f"),
                           *[num((r["speed_ratio"] or {}).get(t), ".3f") for t in tests], r["note"]] for r in recs],
                         right=[False, False] + [True] * (7 + len(tests)) + [False]))
        out.append("")
    a = res.additivity
    if a["files"]:
        out.append(f"objective vs measured mean KLD over {a['files']} files: measured/predicted median "
                   f"{a['median_ratio']:.2f} (range {a['min_ratio']:.2f}..{a['max_ratio']:.2f}), Spearman "
                   + ("—" if a["spearman"] is None else f"{a['spearman']:.3f}"))
    return "\n".join(out)


def render_baselines(res: BaselinesResult, as_json: bool) -> None:
    if as_json:
        emit_json({"run": res.run_id, "args": res.run["args"], "groups": res.groups, "additivity": res.additivity})
        return
    say(format_baselines(res))
    say(f"\ntext {res.text}, ctx {res.ctx}, {res.chunks} chunks  [run {res.run_id}]")


def show(run: dict, as_json: bool) -> None:
    """For `hifikit runs show/resume` of a compare run (with --baselines or without)."""
    if isinstance(run["args"], dict) and run["args"].get("baselines"):
        render_baselines(BaselinesResult.from_run(run), as_json)
    else:
        render_eval(EvalResult.from_run(run), as_json)
