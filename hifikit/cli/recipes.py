"""``hifikit recipes MODEL (--match FTYPE | --target-size MiB | --target-bpw X)``: the best simple recipes.

Every ``--pure`` type x token-embedding type (x output type) whose file fits the
target, ranked by the predicted error of a sweep run (the planner's objective);
``--verify N --text F`` quantizes and measures the best N as one resumable run.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from .. import db, grid, jobs, kld
from ..planner import recipes
from ..planner import plan as planner
from ..errors import HifikitError
from .common import add_json, add_target_args, add_verify_args, model_path, positive, run_job
from .eval import format_table, rows
from .output import emit_json, note, say, table
from .plan import target_of
from ..quantize import check_imatrix


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


def verify_steps(search: recipes.RecipeSearch, n: int, out_dir: Path, text: Path, ctx: int, chunks: int,
                 threads: int | None, imatrix: Path | None) -> list[jobs.StepSpec]:
    """Quantize and evaluate the best n candidates (one reference-logits step first)."""
    model = Path(search.model)
    base = {"text": str(text.resolve()), "ctx": ctx, "chunks": chunks, "threads": threads}
    steps = [jobs.StepSpec("reference", "kld-base", {"ref": str(model), **base})]
    for i, c in enumerate(search.candidates[:n]):
        out = out_dir / f"{model.stem}-recipe{i}.gguf"
        spec = {"input": str(model), "output": str(out.resolve()), "ftype": c.recipe.ftype,
                "extra": c.recipe.args(), "threads": threads, "expect_bytes": c.bytes,
                "predicted_error": c.predicted, "recipe": c.recipe.label}
        if imatrix:
            spec["imatrix"] = str(imatrix.resolve())
        steps.append(jobs.StepSpec(f"quantize-{i}", "quantize", spec))
        steps.append(jobs.StepSpec(f"eval-{i}", "eval", {"model": str(out.resolve()), "ref": str(model), **base,
                                                         "label": c.recipe.label, "role": "recipe"}))
    return steps


def run(args: argparse.Namespace) -> int:
    model = model_path(args.model)
    check_imatrix(args.imatrix)
    positive(args.top, "top")
    if args.verify < 0:
        raise HifikitError(f"--verify must be a count of recipes, got {args.verify}")
    if args.verify and args.text is None:
        raise HifikitError("--verify needs --text F (the evaluation text)")
    conn = db.connect()
    target = target_of(args)
    run_id = args.from_run if args.from_run is not None else planner.find_sweep_run(conn, model)
    imatrix = args.imatrix.resolve() if args.imatrix else None
    search = recipes.search_model(conn, model, target, run_id, args.mode, imatrix)
    info = {**search.to_json(args.top), "grid": grid.detect(model).to_json()}
    if args.verify:
        chunks = kld.check_text(model, args.text, args.ctx, args.chunks)
        out_dir = (args.out_dir or model.parent).resolve()
        run_ = run_job("recipes-verify", {"model": str(model), "target": search.target, "run": run_id,
                                          "top": args.verify, "text": str(args.text), "ctx": args.ctx,
                                          "chunks": chunks},
                       verify_steps(search, args.verify, out_dir, args.text, args.ctx, chunks, args.threads,
                                    imatrix), args)
        measured = [r for r in rows(run_) if r["role"] == "model"]
        for rec, c in zip(measured, search.candidates):
            rec["recipe"] = c.recipe.label
        info["verify"] = {"run": run_["id"], "measured": len(measured), "models": measured,
                          "best": min(measured, key=lambda r: r["kld_mean"])["recipe"] if measured else None}
    if args.json:
        emit_json(info)
        return 0
    if info["grid"]["message"]:
        note(("warning: " if info["grid"]["detected"] else "") + info["grid"]["message"])
    say(table(["#", "recipe", "bytes", "× budget", "predicted"],
              [[i, c["recipe"], c["bytes"], f"{c['bytes'] / search.budget:.4f}",
                "—" if c["predicted"] is None else f"{c['predicted']:.6g}"]
               for i, c in enumerate(info["candidates"])], right=[True, False, True, True, True]))
    say(f"\n{info['fit']} of {info['considered']} recipes fit {search.budget} bytes; ranked by the {search.mode} "
        f"curves of run {run_id}")
    if args.verify:
        v = info["verify"]
        say("")
        say(format_table(v["models"]))
        say(f"\nmeasured the best {v['measured']} of {info['fit']}: lowest mean KLD {v['best']}  [run {v['run']}]")
    return 0
