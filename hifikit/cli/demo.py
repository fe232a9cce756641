"""``hifikit demo``: a small real model, stock vs HIFI quantizations, a table and report.html."""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from .. import demo, report
from .common import add_json, progress_mode
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
    opts = demo.DemoOptions(out=args.out, chunks=chunks, ctx=args.ctx, model=args.model, text=args.text,
                            threads=args.threads, bench={"p": args.bench_p, "n": args.bench_n, "r": args.bench_r},
                            degrid=not args.no_degrid, seed=args.seed)
    progress = progress_mode(args)

    def on_step(idx: int, count: int, step: dict) -> None:
        if progress is not False:
            note(f"[{idx + 1}/{count}] {step['name']}")

    render(demo.demo(opts, progress=progress, on_step=on_step), args.json)
    return 0


def render(res: demo.DemoResult, as_json: bool) -> None:
    if as_json:
        emit_json({"run": res.run_id, "resumed": res.reused, "seconds": res.seconds, "report": res.report,
                   "degrid": res.results.get("degrid"), "models": [dataclasses.asdict(r) for r in res.rows]})
        return
    say(report.format_table(res.rows))
    if res.report is None:  # runs show: the table only
        return
    args = res.run["args"]
    text, calib = res.results.get("text"), res.results.get("calibration")
    what = (f"the source of {len(text['modules'])} Python {text['python']} standard library modules "
            f"({', '.join(text['modules'])}), {text['tokens']} tokens" if text else args["text"])
    if args.get("degrid"):
        say(f"\nModel: the de-gridded twin (hifikit degrid, seed {args['seed']}) of the dequantized F16: the same "
            "function with every weight row off the grid it was published on.")
    else:
        say("\nModel: the dequantized F16 itself (--no-degrid): its tensors lie on the grid it was published on, "
            "so per-tensor methods look better than they are.")
    say(f"KLD against it over {args['chunks']} chunks × {args['ctx']} tokens of {what}.")
    if calib:
        say(f"Calibration text (imatrix, measured pairs), kept apart: the source of {', '.join(calib['modules'])}.")
    recipe = (res.results.get("quantize-recipe-Q3_K_M") or {})
    if recipe.get("recipes_fit"):
        say(f"recipe@Q3_K_M: the best of {recipe['recipes_fit']} simple recipes that fit "
            f"({recipe['recipes_considered']} enumerated) by predicted KLD, 1 measured: {recipe['ftype']}.")
    say(f"report: {res.report}  [run {res.run_id}{', resumed' if res.reused else ''}; {res.seconds:.0f} s]")


def show(run: dict, as_json: bool) -> None:
    """For `hifikit runs show/resume` of a demo run."""
    res = demo.DemoResult.from_run(run)
    if as_json:
        emit_json({"run": res.run_id, "models": [dataclasses.asdict(r) for r in res.rows]})
    else:
        render(res, False)
