"""``hifikit plan MODEL --from-run ID (--target-bpw X | --target-size MiB | --match FTYPE) -o FILE``,
``hifikit plan MODEL --front`` and ``hifikit plan --check FILE [MODEL]``."""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from ..errors import HifikitError
from ..planner import front as front_lib
from ..planner import plan as planner
from ..planner import speed as speed_lib
from ..planner import strategy as strat
from ..sweep import curves
from ..tables import table
from .common import add_json, add_target_args, add_verify_args, progress_mode
from .output import emit_json, eval_table, note, say


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
    g = p.add_argument_group("speed budget (the cost model of 'hifikit costs MODEL', docs/costs.md)")
    g.add_argument("--max-slowdown", type=float, metavar="R",
                   help="predicted prompt and generation time at most R x the reference ftype's "
                        "(--match Q3_K_M --max-slowdown 1.0: no bigger and no slower than Q3_K_M)")
    g.add_argument("--speed-ref", metavar="FTYPE", help="the ftype --max-slowdown is relative to (default: --match's)")
    g.add_argument("--min-tg", type=float, metavar="T", help="predicted generation speed at least T tokens/s")
    g.add_argument("--min-pp", type=float, metavar="T", help="predicted prompt speed at least T tokens/s")
    g.add_argument("--costs-machine", metavar="FINGERPRINT",
                   help="plan for a machine whose costs were imported (default: this machine)")
    g.add_argument("--costs-threads", type=int, metavar="N", help="this machine's costs at N threads "
                   "(default: llama-bench's default, as 'hifikit costs')")
    g.add_argument("--costs-batch", type=int, default=speed_lib.costs.DEFAULT_BATCH, metavar="P",
                   help=f"prompt length of the costs' constant (default {speed_lib.costs.DEFAULT_BATCH})")
    g.add_argument("--costs-gen", type=int, default=speed_lib.costs.DEFAULT_GEN, metavar="N",
                   help=f"generation length of the costs' constant (default {speed_lib.costs.DEFAULT_GEN})")
    g.add_argument("--costs-working-set", type=int, default=speed_lib.costs.DEFAULT_WORKING_SET_MIB, metavar="MIB",
                   help="the --working-set the costs were measured with (default "
                        f"{speed_lib.costs.DEFAULT_WORKING_SET_MIB})")
    f = p.add_argument_group("the Pareto front (bytes, predicted pp and tg time, predicted error)")
    f.add_argument("--front", action="store_true",
                   help="plan over a grid of byte budgets x speed limits and print (and with --plots, plot) the "
                        "plans no other beats; without stored costs the front is bytes x error")
    f.add_argument("--front-sizes", type=int, default=10, metavar="N", help="byte budgets of the grid (default 10)")
    f.add_argument("--front-speeds", type=int, default=5, metavar="N",
                   help="speed levels per budget: no limit and N-1 limits (default 5)")
    f.add_argument("--front-out", type=Path, metavar="DIR", help="write each point's strategy here (front-NN.yaml)")
    f.add_argument("--no-speed", action="store_true", help="a front over bytes and error only, ignoring stored costs")
    p.add_argument("--verify", action="store_true", help="quantize with the strategy and measure KLD")
    p.add_argument("--quant-out", type=Path, help="with --verify: the quantized GGUF (default: next to -o)")
    add_verify_args(p)
    add_json(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.check is not None:
        check = strat.check_file(args.check, args.model)
        render_check(check, args.json)
        return 0 if check.ok else 1
    if args.model is None:
        raise HifikitError("give the model (or --check FILE)")
    if args.front:
        return run_front(args)
    if args.output is None:
        raise HifikitError("give -o FILE: where to write the strategy")
    if args.verify and args.text is None:
        raise HifikitError("--verify needs --text F (the evaluation text)")
    verify = planner.VerifyOptions(args.text, args.ctx, args.chunks, args.threads, args.quant_out) \
        if args.verify else None
    res = planner.plan(planner.PlanOptions(
        args.model, args.output, planner.make_target(args.target_bpw, args.target_size, args.match), args.from_run,
        args.mode, args.imatrix, args.base_ftype, args.types.split(",") if args.types else None, args.error_scale,
        args.plots, verify=verify, speed_limits=speed_lib.SpeedLimits(
            args.max_slowdown, args.speed_ref, args.min_tg, args.min_pp, args.costs_machine, args.costs_threads,
            args.costs_batch, args.costs_gen, args.costs_working_set)), progress=progress_mode(args))
    render(res, args.json)
    return 0


def run_front(args: argparse.Namespace) -> int:
    if args.target_bpw is not None or args.target_size is not None:
        raise HifikitError("--front sweeps the byte budget itself: give no --target-bpw/--target-size "
                           "(--match FTYPE or --speed-ref FTYPE names a reference shown beside the front)")
    given = [o for o, v in (("--max-slowdown", args.max_slowdown), ("--min-tg", args.min_tg),
                            ("--min-pp", args.min_pp), ("--verify", args.verify or None),
                            ("-o", args.output)) if v is not None]
    if given:
        raise HifikitError(f"--front plans a grid of budgets and writes no single strategy: drop {', '.join(given)} "
                           "(--front-out DIR writes each point's strategy)")
    costs = speed_lib.SpeedLimits(fingerprint=args.costs_machine, threads=args.costs_threads,
                                  n_prompt=args.costs_batch, n_gen=args.costs_gen,
                                  working_set_mib=args.costs_working_set)
    use_speed = False if args.no_speed else (True if args.costs_machine else None)
    res = front_lib.front(front_lib.FrontOptions(
        args.model, args.from_run, args.mode, args.imatrix, args.base_ftype,
        args.types.split(",") if args.types else None, args.error_scale, args.front_sizes, args.front_speeds,
        costs, use_speed, args.speed_ref or args.match, args.plots, args.front_out))
    render_front(res, args.json)
    return 0


def render_front(res: front_lib.FrontResult, as_json: bool) -> None:
    if as_json:
        emit_json(res.to_json())
        return
    if res.note:
        note(f"note: {res.note}")
    ref = res.reference or {}
    speed = res.n_prompt is not None
    n = res.n_prompt
    headers = ["#", "budget MiB", "MiB", "BPW", "pred. error", "lower bound"]
    if speed:
        headers += [f"pp{n} t/s", "tg t/s", "limits (pp / tg t/s)"]
        if "pp_seconds" in ref:
            headers += [f"× {ref['ftype']} pp / tg"]
    rows = []
    for i, p in enumerate(res.points):
        row = [i, f"{p.budget_bytes / 2**20:.3f}", f"{p.predicted_bytes / 2**20:.3f}", f"{p.bpw:.3f}",
               f"{p.predicted_error:.6g}", f"{p.lower_bound:.6g}"]
        if speed:
            lim = "none" if p.pp_limit is None else f"{n / p.pp_limit:.1f} / {1 / p.tg_limit:.2f}"
            row += [f"{p.pp_tps:.1f}", f"{p.tg_tps:.2f}", lim]
            if "pp_seconds" in ref:
                row += [f"{ref['pp_seconds'] / p.pp_seconds:.3f} / {ref['tg_seconds'] / p.tg_seconds:.3f}"]
        rows.append(row)
    say(table(headers, rows, right=[True] * len(headers)))
    dims = ", ".join(res.dimensions)
    say(f"\n{len(res.points)} non-dominated plans over ({dims}) of {res.tried} planned "
        f"({res.infeasible} budgets unmet); {res.mode} curves of run {res.run_id}"
        + (f"; costs of {res.source}" if res.source else ""))
    if ref:
        say(f"reference {ref['ftype']}: {ref['bytes'] / 2**20:.3f} MiB"
            + (f", predicted pp{n} {ref['pp_tps']:.1f} t/s, tg {ref['tg_tps']:.2f} t/s" if "pp_tps" in ref else ""))
    if res.points and res.points[0].strategy:
        say(f"strategies: {Path(res.points[0].strategy).parent}/front-NN.yaml "
            "('hifikit quantize IN OUT --strategy FILE' applies one)")
    elif res.points:
        p = res.points[-1]
        say(f"to write point {len(res.points) - 1}'s strategy: hifikit plan {res.model} --from-run {res.run_id} "
            + " ".join(p.plan_args(n)) + " -o FILE" + (" --costs-... as here" if p.pp_limit is not None else ""))
    if res.plot:
        say(f"plot: {res.plot}")


def render(res: planner.PlanResult, as_json: bool) -> None:
    info = res.to_json()
    if as_json:
        emit_json(info)
        return
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
    if info.get("speed"):
        say(speed_line(info["speed"]))
    say(f"{info['n_planned']} tensors planned, {info['n_fixed']} fixed (base ftype {info['base_ftype']})")
    if info["expert_bytes"]:
        say(f"expert tensors: {info['expert_bytes'] / 2**20:.2f} MiB, {100 * info['expert_share']:.1f} % of the file")
    if info.get("plot"):
        say(f"overview: {info['plot']}")
    if res.verify is not None:
        say("")
        render_verify(res.verify, False)


def speed_line(sp: dict) -> str:
    """The predicted speed of a plan, its limits and its reference."""
    n = sp["n_prompt"]
    pp_lim, tg_lim = sp["limits"]
    limits = ", ".join(x for x in (f"pp at least {n / pp_lim:.1f} t/s" if pp_lim else "",
                                   f"tg at least {1 / tg_lim:.2f} t/s" if tg_lim else "") if x)
    line = f"predicted speed pp{n} {sp['pp_tps']:.1f} t/s, tg {sp['tg_tps']:.2f} t/s (limits: {limits})"
    ref = sp.get("reference")
    if ref:
        line += (f"; {ref['ftype']} predicted pp{n} {n / ref['pp_seconds']:.1f} t/s, "
                 f"tg {1 / ref['tg_seconds']:.2f} t/s: the plan at {ref['pp_seconds'] / sp['pp_seconds']:.3f}x / "
                 f"{ref['tg_seconds'] / sp['tg_seconds']:.3f}x its speed")
    return line + f"; costs of {sp['source']}"


def render_verify(v: planner.PlanVerifyResult, as_json: bool) -> None:
    if as_json:
        emit_json(v.to_json())
        return
    m = v.measured
    say(eval_table(v.rows))
    say(f"\nfile {v.file_bytes} bytes (predicted {v.predicted_bytes}), predicted error "
        f"{v.predicted_error:.6g}, measured mean KLD {m.kld_mean:.6f} ± {m.kld_error:.6f}  [run {v.run_id}]")


def show(run: dict, as_json: bool) -> None:
    """For `hifikit runs show/resume` of a plan-verify run."""
    render_verify(planner.PlanVerifyResult.from_run(run), as_json)


def render_check(check: strat.StrategyCheck, as_json: bool) -> None:
    res = check.result
    if as_json:
        emit_json({"file": check.file, "model": check.model, **dataclasses.asdict(res), "ok": res.ok})
        return
    for w in res.warnings:
        note(f"warning: {w}")
    for e in res.errors:
        note(f"error: {e}")
    if res.ok:
        say(f"{check.file}: ok, {res.bytes} bytes ({res.bytes / 2**20:.3f} MiB)"
            + (f", budget {res.budget} ({res.budget - res.bytes} to spare)" if res.budget is not None else "")
            + (f", predicted error {res.error:.6g}" if res.error is not None else ""))
    else:
        note(f"{check.file}: {len(res.errors)} error(s)")
