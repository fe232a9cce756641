"""``hifikit imatrix MODEL --text F [-o OUT]``: an importance matrix with llama-imatrix."""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from .. import atomic, imatrix_stats, jobs, kld
from .common import add_eval_args, add_json, model_path, positive, run_job, step_result
from .output import emit_json, say, table


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("imatrix", help="compute an importance matrix (GGUF) over a text")
    p.add_argument("model", type=Path)
    p.add_argument("-o", "--output", type=Path, default=None, help="output file (default MODEL.imatrix.gguf)")
    p.add_argument("--show-statistics", action="store_true", help="also print per-tensor activation statistics")
    add_eval_args(p)
    add_json(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    model = model_path(args.model)
    positive(args.ctx, "ctx")
    positive(args.chunks, "chunks")
    out = args.output or model.with_name(model.stem + ".imatrix.gguf")
    atomic.check_writable(out)
    chunks = kld.check_text(model, args.text, args.ctx, args.chunks)
    spec = {"model": str(model), "text": str(args.text.resolve()), "output": str(out.resolve()),
            "ctx": args.ctx, "chunks": chunks, "threads": args.threads}
    run = run_job("imatrix", spec, [jobs.StepSpec("imatrix", "imatrix", spec)], args)
    res = step_result(run, "imatrix")
    stats = None
    if args.show_statistics:
        stats = [dataclasses.asdict(s) for s in imatrix_stats.statistics(res["path"])]
    if args.json:
        emit_json({"run": run["id"], **res, **({"statistics": stats} if stats is not None else {})})
        return 0
    say(f"{res['path']}: {res['entries']} entries over {res['chunks']} chunks of {res['chunk_size']} "
        f"[run {run['id']}]")
    if stats:
        say(table(["layer", "tensor", "Σ(act²)", "min", "max", "mean", "σ", "active %", "ZD %", "cos"],
                  [[s["layer"], s["tensor"], f"{s['sum_act2']:.2f}", f"{s['min']:.4f}", f"{s['max']:.4f}",
                    f"{s['mean']:.2f}", f"{s['std']:.2f}", f"{s['active_pct']:.2f}", f"{s['zd_pct']:.2f}",
                    f"{s['cos_sim']:.4f}"] for s in stats], right=[True, False] + [True] * 8))
    return 0


def render(run: dict, as_json: bool) -> None:
    res = step_result(run, "imatrix")
    if as_json:
        emit_json({"run": run["id"], **res})
    else:
        say(f"{res['path']}: {res['entries']} entries over {res['chunks']} chunks [run {run['id']}]")
