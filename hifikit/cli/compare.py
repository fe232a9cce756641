"""``hifikit compare --ref REF --text F [MODEL ...] [--quant TYPE ...] [--baselines FTYPE,...]``: one table.

``--quant`` quantizes the reference into each type first (into --out-dir),
so one resumable run goes from an F16 GGUF to the comparison table.
``--baselines`` compares, at each ftype's exact size, what users publish: the
stock ftype (with and without ``--imatrix``), the best simple recipes and the
plan of a sweep run (baselines.py), with ``--bench`` llama-bench speed beside.
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from .. import atomic, baselines, db, kld
from .. import plan as planner
from .. import quantize as quantize_lib
from ..errors import HifikitError
from . import eval as eval_cli
from .common import add_eval_args, add_json, model_path, positive, run_job
from .output import emit_json, say, table


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
    ref = model_path(args.ref)
    if args.baselines:
        return run_baselines(args, ref)
    models = [model_path(m) for m in args.models]
    if not models and not args.quant:
        raise HifikitError("nothing to compare: give MODEL files and/or --quant TYPE (or --baselines FTYPE,...)")
    positive(args.ctx, "ctx")
    positive(args.chunks, "chunks")
    ftypes = [quantize_lib.resolve_type(t) for t in args.quant]
    quantize_lib.check_imatrix(args.imatrix)
    out_dir = (args.out_dir or ref.parent).resolve()
    outputs = [out_dir / f"{ref.stem}-{t}.gguf" for t in ftypes]
    for out in outputs:
        atomic.check_writable(out)
    chunks = kld.check_text(ref, args.text, args.ctx, args.chunks)
    steps = eval_cli.eval_steps(ref, [], args.text, args.ctx, chunks, args.threads)
    for t, out in zip(ftypes, outputs):
        steps.append(quantize_lib.make_step(ref, out, t, args.imatrix, args.threads, name=f"quantize-{t}"))
    steps += eval_cli.eval_steps(ref, [*models, *outputs], args.text, args.ctx, chunks, args.threads)[1:]
    run = run_job("compare", {"ref": str(ref), "models": [str(m) for m in models], "quant": ftypes,
                              "text": str(args.text), "ctx": args.ctx, "chunks": chunks}, steps, args)
    render(run, args.json)
    return 0


render = eval_cli.render

HIFI_FTYPES = ("Q3_K_HIFI", "Q4_K_HIFI", "Q4_K_XM", "Q4_K_HIFI_L")
BENCH = {"p": 128, "n": 32, "r": 3}


def run_baselines(args: argparse.Namespace, ref: Path) -> int:
    if args.models or args.quant:
        raise HifikitError("--baselines makes its own files: give no MODEL or --quant with it")
    if args.imatrix_run is not None and args.imatrix is None:
        raise HifikitError("--imatrix-run needs --imatrix F (the importance matrix that run was made with)")
    positive(args.ctx, "ctx")
    positive(args.chunks, "chunks")
    positive(args.top, "top")
    quantize_lib.check_imatrix(args.imatrix)
    sizes = [quantize_lib.resolve_type(s.strip()) for s in args.baselines.split(",") if s.strip()]
    conn = db.connect()
    sweeps = baselines.Sweeps(args.from_run if args.from_run is not None else planner.find_sweep_run(conn, ref),
                              args.imatrix_run, args.mode)
    out_dir = (args.out_dir or ref.parent).resolve()
    hifi = [f for f in HIFI_FTYPES if f in quantize_lib.quant_options()] if args.hifi else []
    items = baselines.contenders(conn, ref, sizes, sweeps, out_dir, imatrix=args.imatrix, top=args.top, hifi=hifi,
                                 threads=args.threads)
    for c in items:
        atomic.check_writable(Path(c.quantize["output"]))
    chunks = kld.check_text(ref, args.text, args.ctx, args.chunks)
    run = run_job("compare", {"ref": str(ref), "baselines": sizes, "sweeps": dataclasses.asdict(sweeps),
                              "imatrix": str(args.imatrix) if args.imatrix else None, "top": args.top,
                              "text": str(args.text), "ctx": args.ctx, "chunks": chunks},
                  baselines.steps(ref, items, args.text, args.ctx, chunks, args.threads,
                                  BENCH if args.bench else None), args)
    table_rows = baselines.summary(run)
    if args.json:
        emit_json({"run": run["id"], "args": run["args"], **table_rows})
        return 0
    say(format_baselines(table_rows))
    say(f"\ntext {run['args']['text']}, ctx {args.ctx}, {chunks} chunks  [run {run['id']}]")
    return 0


def _pm(value, error, fmt: str) -> str:
    if value is None:
        return ""
    return f"{value:{fmt}} ± {error:{fmt}}" if error is not None else f"{value:{fmt}}"


def format_baselines(summary: dict) -> str:
    """One table per size: each file's bytes and KLD as ratios to the stock ftype of that size, and its speed."""
    out = []
    for size, recs in summary["groups"].items():
        tests = sorted({t for r in recs for t in (r["speed_ratio"] or {})}, key=lambda t: (not t.startswith("pp"), t))
        out.append(f"== {size}")
        out.append(table(["file", "role", "bytes", "× bytes", "predicted", "mean KLD", "× KLD", "KLD 99.9%",
                          "same top %", *[f"{t} ×" for t in tests], "note"],
                         [[r["label"], r["role"], r["file_bytes"], _ratio(r["bytes_ratio"]),
                           "" if r["predicted"] is None else f"{r['predicted']:.5f}",
                           _pm(r["kld_mean"], r["kld_error"], ".5f"), _ratio(r["kld_ratio"]),
                           "" if r["kld_p999"] is None else f"{r['kld_p999']:.4f}",
                           "" if r["same_top_p"] is None else f"{r['same_top_p']:.2f}",
                           *[_ratio((r["speed_ratio"] or {}).get(t)) for t in tests], r["note"]] for r in recs],
                         right=[False, False] + [True] * (7 + len(tests)) + [False]))
        out.append("")
    a = summary["additivity"]
    if a["files"]:
        out.append(f"objective vs measured mean KLD over {a['files']} files: measured/predicted median "
                   f"{a['median_ratio']:.2f} (range {a['min_ratio']:.2f}..{a['max_ratio']:.2f}), Spearman "
                   + ("—" if a["spearman"] is None else f"{a['spearman']:.3f}"))
    return "\n".join(out)


def _ratio(x) -> str:
    return "" if x is None else f"{x:.3f}"
