"""``hifikit recipes MODEL (--match FTYPE | --target-size MiB | --target-bpw X)``: the best simple recipes.

Every ``--pure`` type x token-embedding type (x output type) whose file fits the
target, ranked by the predicted error of a sweep run (the planner's objective);
``--verify N --text F`` quantizes and measures the best N as one resumable run.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ..planner import plan as planner
from ..planner.recipes import RecipesOptions, RecipesResult, RecipesVerifyResult, find_recipes
from ..tables import table
from .common import add_json, add_target_args, add_verify_args, progress_mode
from .output import emit_json, eval_table, note, say


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("recipes", help="the best one-line llama-quantize recipes (--pure + embedding/output type) "
                                       "at a size, ranked by a sweep's predicted error")
    p.add_argument("model", type=Path, help="the model to quantize (F16/BF16/F32 GGUF)")
    add_target_args(p)
    p.add_argument("--from-run", type=int, metavar="ID", help="the analyze run whose curves rank the recipes "
                   "(default: the latest one of this model)")
    p.add_argument("--mode", help="which curves of the run (default as for 'hifikit plan')")
    p.add_argument("--imatrix", type=Path, help="importance matrix the quantization will use")
    p.add_argument("--top", type=int, default=10, help="candidates to list (default 10)")
    p.add_argument("--verify", type=int, default=0, metavar="N", help="quantize and measure the best N")
    p.add_argument("--out-dir", type=Path, help="with --verify: where the files go (default: next to the model)")
    add_verify_args(p)
    add_json(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    res = find_recipes(RecipesOptions(
        args.model, planner.make_target(args.target_bpw, args.target_size, args.match), args.from_run, args.mode,
        args.imatrix, args.top, args.verify, args.out_dir, args.text, args.ctx, args.chunks, args.threads),
        progress=progress_mode(args))
    render(res, args.json)
    return 0


def render(res: RecipesResult, as_json: bool) -> None:
    info = res.to_json()
    if as_json:
        emit_json(info)
        return
    search = res.search
    if info["grid"]["message"]:
        note(("warning: " if info["grid"]["detected"] else "") + info["grid"]["message"])
    say(table(["#", "recipe", "bytes", "× budget", "predicted"],
              [[i, c["recipe"], c["bytes"], f"{c['bytes'] / search.budget:.4f}",
                "—" if c["predicted"] is None else f"{c['predicted']:.6g}"]
               for i, c in enumerate(info["candidates"])], right=[True, False, True, True, True]))
    say(f"\n{info['fit']} of {info['considered']} recipes fit {search.budget} bytes; ranked by the {search.mode} "
        f"curves of run {search.run}")
    if res.verify is not None:
        say("")
        render_verify(res.verify, False, f" of {info['fit']}")


def render_verify(v: RecipesVerifyResult, as_json: bool, of: str = "") -> None:
    if as_json:
        emit_json(v.to_json())
        return
    say(eval_table(v.measured))
    say(f"\nmeasured the best {len(v.measured)}{of}: lowest mean KLD {v.best}  [run {v.run_id}]")


def show(run: dict, as_json: bool) -> None:
    """For `hifikit runs show/resume` of a recipes-verify run."""
    render_verify(RecipesVerifyResult.from_run(run), as_json)
