"""``hifikit plan MODEL --from-run ID (--target-bpw X | --target-size MiB | --match FTYPE) -o FILE``
and ``hifikit plan --check FILE [MODEL]``."""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from ..sweep import curves, knee
from .. import db, gguf_io, grid, jobs, kld
from ..planner import filesize
from ..planner import plan as planner
from ..planner import strategy as strat
from ..errors import HifikitError
from .common import add_json, add_target_args, add_verify_args, model_path, positive, run_job, step_result
from .eval import format_table, rows
from .output import emit_json, note, say, table
from ..quantize import check_imatrix, resolve_type, strategy_step


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="choose a type per tensor under a byte budget (strategy YAML), or check one")
    p.add_argument("model", type=Path, nargs="?", help="the model to quantize (F16/BF16/F32 GGUF)")
    p.add_argument("--check", type=Path, metavar="FILE", help="validate an (edited) strategy file and exit")
    p.add_argument("--from-run", type=int, metavar="ID", help="the 'hifikit analyze' run whose curves to use "
                   "(default: the latest one of this model)")
    p.add_argument("--mode", choices=curves.LOAD_MODES,
                   help="which curves of the run: proxy, measured, or calibrated (the proxy scaled to KL divergence by "
                        "the measured points; the default when the run has both, else measured, else proxy)")
    add_target_args(p)
    p.add_argument("-o", "--output", type=Path, help="strategy YAML to write")
    p.add_argument("--imatrix", type=Path, help="importance matrix the quantization will use (sizes and types)")
    p.add_argument("--base-ftype", default="Q8_0",
                   help="ftype passed to llama-quantize; unswept tensors get its choice (default Q8_0)")
    p.add_argument("--types", help="comma-separated candidate types to allow (default: every type in the sweep)")
    p.add_argument("--error-scale", choices=planner.ERROR_SCALES, default="none",
                   help="how per-tensor errors add up: as stored (none) or weighted by the tensor's share of "
                        "the weights (elements)")
    p.add_argument("--plots", type=Path, metavar="DIR", help="write the overview plot (PNG) here")
    p.add_argument("--verify", action="store_true", help="quantize with the strategy and measure KLD")
    p.add_argument("--quant-out", type=Path, help="with --verify: the quantized GGUF (default: next to -o)")
    add_verify_args(p)
    add_json(p)
    p.set_defaults(func=run)


def target_of(args: argparse.Namespace) -> planner.Target:
    return planner.make_target(args.target_bpw, args.target_size, args.match)


def build_plan(args: argparse.Namespace, conn) -> tuple[planner.Plan, filesize.FileLayout]:
    model = model_path(args.model)
    check_imatrix(args.imatrix)
    base = resolve_type(args.base_ftype)
    if base.upper() in strat.UNQUANTIZED_BASES:
        raise HifikitError(f"--base-ftype {base}: per-tensor types need a quantized base ftype (e.g. Q8_0)")
    target = target_of(args)
    run_id = args.from_run if args.from_run is not None else planner.find_sweep_run(conn, model)
    sweep = curves.load_sweep(conn, run_id, args.mode)
    layout = filesize.FileLayout.read(model)
    imatrix = args.imatrix.resolve() if args.imatrix else None
    ikeys = filesize.ImatrixKeys.from_file(imatrix, str(imatrix)) if imatrix else None
    budget = planner.budget_for(target, layout, lambda f: planner.ftype_file_size(conn, model, layout, f,
                                                                                  imatrix, ikeys))
    base_types = planner.dry_run_types(model, base, imatrix)
    types = [t.strip() for t in args.types.split(",")] if args.types else None
    p = planner.make_plan(sweep, model, layout, target, budget, base_types, base, imatrix, ikeys,
                          args.error_scale, types, knee.knee_type)
    return p, layout


def run(args: argparse.Namespace) -> int:
    if args.check is not None:
        return run_check(args)
    if args.model is None:
        raise HifikitError("give the model (or --check FILE)")
    if args.output is None:
        raise HifikitError("give -o FILE: where to write the strategy")
    if args.verify and args.text is None:
        raise HifikitError("--verify needs --text F (the evaluation text)")
    positive(args.ctx, "ctx")
    positive(args.chunks, "chunks")
    conn = db.connect()
    p, layout = build_plan(args, conn)
    strat.write(p, args.output)
    plot_path = None
    if args.plots:
        from ..planner import plots as plan_plots
        plot_path = plan_plots.strategy_overview(p, args.plots / f"{args.output.stem}-overview.png")
        _curve_plots(args, conn, p)
    info = {**planner.summary(p), "strategy": str(args.output.resolve()),
            "plot": str(plot_path) if plot_path else None, "grid": grid.detect(p.model).to_json()}
    verify = None
    if args.verify:
        verify = run_verify(args, p, layout)
        info["verify"] = verify
    if args.json:
        emit_json(info)
        return 0
    render(info)
    return 0


def _curve_plots(args: argparse.Namespace, conn, p: planner.Plan) -> None:
    """Per-tensor error curves with the chosen type and the knee (plots.py of the analyze work, when present)."""
    try:
        from ..sweep import plots  # type: ignore[attr-defined]
    except ImportError:
        return
    fn = getattr(plots, "plot_curves", None)
    if fn is not None:
        fn(curves.load_sweep(conn, p.run_id, p.mode), args.plots, chosen={t.name: t.type for t in p.tensors})


def run_verify(args: argparse.Namespace, p: planner.Plan, layout: filesize.FileLayout) -> dict:
    model = Path(p.model)
    out = args.quant_out or args.output.with_suffix(".gguf")
    chunks = kld.check_text(model, args.text, args.ctx, args.chunks)
    s = strat.load(args.output)
    step = strategy_step(model, out, s, layout, args.threads, p.predicted_bytes, p.predicted_error)
    base = {"text": str(args.text.resolve()), "ctx": args.ctx, "chunks": chunks, "threads": args.threads}
    steps = [step,
             jobs.StepSpec("reference", "kld-base", {"ref": str(model), **base}),
             jobs.StepSpec("eval-0", "eval", {"model": str(out.resolve()), "ref": str(model), **base})]
    run = run_job("plan-verify", {"model": str(model), "strategy": str(args.output.resolve()),
                                  "target": dataclasses.asdict(p.target), "sweep_run": p.run_id,
                                  "mode": p.mode, "text": str(args.text), "ctx": args.ctx, "chunks": chunks},
                  steps, args)
    q = step_result(run, "quantize")
    records = rows(run)
    measured = next(r for r in records if r["role"] == "model")
    return {"run": run["id"], "output": q["output"], "file_bytes": q["file_bytes"],
            "predicted_bytes": q["predicted_bytes"], "predicted_error": q["predicted_error"],
            "models": records, "kld_mean": measured["kld_mean"], "kld_error": measured["kld_error"],
            "ppl": measured["ppl"], "ppl_error": measured["ppl_error"], "same_top_p": measured["same_top_p"]}


def render(info: dict) -> None:
    if info["grid"]["message"]:
        note(("warning: " if info["grid"]["detected"] else "") + info["grid"]["message"])
    say(table(["type", "tensors", "MiB"], [[t, n, f"{info['type_bytes'][t] / 2**20:.2f}"]
                                          for t, n in sorted(info["types"].items())], right=[False, True, True]))
    say(f"\nstrategy {info['strategy']}: target {info['target']['kind']} {info['target']['value']}, "
        f"budget {info['budget_bytes']} bytes")
    say(f"predicted file {info['predicted_bytes']} bytes ({info['predicted_mib']:.3f} MiB, "
        f"{info['bpw_file']:.4f} bits per weight over the whole file), {info['slack_bytes']} bytes under budget")
    say(f"predicted error {info['predicted_error']:.6g} ({info['mode']} curves of run {info['run']}, "
        f"scale {info['error_scale']}); lower bound {info['lower_bound']:.6g}")
    say(f"{info['n_planned']} tensors planned, {info['n_fixed']} fixed (base ftype {info['base_ftype']})")
    if info["expert_bytes"]:
        say(f"expert tensors: {info['expert_bytes'] / 2**20:.2f} MiB, {100 * info['expert_share']:.1f} % of the file")
    if info.get("plot"):
        say(f"overview: {info['plot']}")
    v = info.get("verify")
    if v:
        say("")
        say(format_table(v["models"]))
        say(f"\nfile {v['file_bytes']} bytes (predicted {v['predicted_bytes']}), predicted error "
            f"{v['predicted_error']:.6g}, measured mean KLD {v['kld_mean']:.6f} ± {v['kld_error']:.6f}  "
            f"[run {v['run']}]")


def run_check(args: argparse.Namespace) -> int:
    s = strat.load(args.check)
    model_arg = args.model or (Path(s.model) if s.model else None)
    if model_arg is None:
        raise HifikitError(f"{args.check}: no 'model:' entry; give the model: hifikit plan --check FILE MODEL")
    model = model_path(model_arg)
    layout = filesize.FileLayout.read(model)
    ikeys = None
    if s.imatrix:
        gguf_io.check_file(s.imatrix)
        ikeys = filesize.ImatrixKeys.from_file(s.imatrix, str(s.imatrix))
    res = strat.check(s, layout, ikeys)
    if args.json:
        emit_json({"file": str(args.check), "model": str(model), **dataclasses.asdict(res), "ok": res.ok})
    else:
        for w in res.warnings:
            note(f"warning: {w}")
        for e in res.errors:
            note(f"error: {e}")
        if res.ok:
            say(f"{args.check}: ok, {res.bytes} bytes ({res.bytes / 2**20:.3f} MiB)"
                + (f", budget {res.budget} ({res.budget - res.bytes} to spare)" if res.budget is not None else "")
                + (f", predicted error {res.error:.6g}" if res.error is not None else ""))
        else:
            note(f"{args.check}: {len(res.errors)} error(s)")
    return 0 if res.ok else 1
