"""``hifikit demo``: a small real model, stock vs HIFI quantizations, a table and report.html."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from .. import db, demo, report
from .common import add_json, positive, progress_mode
from .output import emit_json, note, say


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="quantize a small real model (stock and HIFI), measure it, write report.html")
    p.add_argument("--full", action="store_true",
                   help=f"score {demo.FULL_CHUNKS} chunks (default {demo.DEFAULT_CHUNKS}; slower, tighter ±)")
    p.add_argument("--chunks", type=int, default=None, help="chunks of --ctx tokens to score (overrides --full)")
    p.add_argument("--ctx", type=int, default=demo.CTX, help=f"tokens per chunk (default {demo.CTX})")
    p.add_argument("--out", type=Path, default=Path("hifikit-demo"),
                   help="directory for the models, the text and report.html (default ./hifikit-demo)")
    p.add_argument("--model", type=Path, default=None,
                   help=f"a local GGUF instead of the '{demo.DEMO_PACKAGE}' package")
    p.add_argument("--text", type=Path, default=None,
                   help="a local evaluation text instead of the standard library's sources")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for the tools")
    p.add_argument("--seed", type=int, default=demo.DEFAULT_SEED,
                   help=f"permutation seed of the de-gridded twin (default {demo.DEFAULT_SEED})")
    p.add_argument("--no-degrid", action="store_true",
                   help="compare on the dequantized model itself (figures then re-find its published grid)")
    p.add_argument("--bench-p", type=int, default=demo.BENCH_DEFAULTS["p"], help="llama-bench prompt tokens")
    p.add_argument("--bench-n", type=int, default=demo.BENCH_DEFAULTS["n"], help="llama-bench generated tokens")
    p.add_argument("--bench-r", type=int, default=demo.BENCH_DEFAULTS["r"], help="llama-bench repetitions")
    add_json(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    chunks = args.chunks or (demo.FULL_CHUNKS if args.full else demo.DEFAULT_CHUNKS)
    for name in ("chunks", "ctx", "threads", "bench_p", "bench_n", "bench_r"):
        positive(chunks if name == "chunks" else getattr(args, name), name.replace("_", "-"))
    opts = demo.DemoOptions(out=args.out, chunks=chunks, ctx=args.ctx, model=args.model, text=args.text,
                            threads=args.threads, bench={"p": args.bench_p, "n": args.bench_n, "r": args.bench_r},
                            degrid=not args.no_degrid, seed=args.seed)
    progress = progress_mode(args)
    show = progress is not False

    def on_step(idx: int, count: int, step: dict) -> None:
        if show:
            note(f"[{idx + 1}/{count}] {step['name']}")

    start = time.monotonic()
    conn = db.connect()
    finished, reused = demo.run(opts, progress=progress, on_step=on_step, conn=conn)
    out = report.write(conn, [finished["id"]], opts.out / "report.html", title="hifikit demo")
    seconds = time.monotonic() - start
    records = report.rows([finished])
    results = {s["name"]: s["result"] for s in finished["steps"]}
    if args.json:
        emit_json({"run": finished["id"], "resumed": reused, "seconds": seconds, "report": str(out),
                   "degrid": results.get("degrid"), "models": records})
        return 0
    say(report.format_table(records))
    text, calib = results.get("text"), results.get("calibration")
    what = (f"the source of {len(text['modules'])} Python {text['python']} standard library modules "
            f"({', '.join(text['modules'])}), {text['tokens']} tokens" if text else finished["args"]["text"])
    if opts.degrid:
        say(f"\nModel: the de-gridded twin (hifikit degrid, seed {opts.seed}) of the dequantized F16: the same "
            "function with every weight row off the grid it was published on.")
    else:
        say("\nModel: the dequantized F16 itself (--no-degrid): its tensors lie on the grid it was published on, "
            "so per-tensor methods look better than they are.")
    say(f"KLD against it over {chunks} chunks × {opts.ctx} tokens of {what}.")
    if calib:
        say(f"Calibration text (imatrix, measured pairs), kept apart: the source of {', '.join(calib['modules'])}.")
    recipe = (results.get("quantize-recipe-Q3_K_M") or {})
    if recipe.get("recipes_fit"):
        say(f"recipe@Q3_K_M: the best of {recipe['recipes_fit']} simple recipes that fit "
            f"({recipe['recipes_considered']} enumerated) by predicted KLD, 1 measured: {recipe['ftype']}.")
    say(f"report: {out}  [run {finished['id']}{', resumed' if reused else ''}; {seconds:.0f} s]")
    return 0


def render(run: dict, as_json: bool) -> None:
    """For `hifikit runs show/resume` of a demo run."""
    records = report.rows([run])
    if as_json:
        emit_json({"run": run["id"], "models": records})
    else:
        say(report.format_table(records))
