"""``hifikit analyze MODEL [--imatrix F] [--types ...] --mode proxy|measured``: per-tensor error curves."""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from ..sweep import curves, proxy
from ..sweep import steps as sweep_steps
from .. import db, gguf_io, grid, jobs, kld
from ..errors import HifikitError
from .common import add_json, model_path, positive, run_job
from .output import emit_json, note, say, table


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("analyze", help="per-tensor sensitivity: error vs bits per weight for every candidate type")
    p.add_argument("model", type=Path, help="reference GGUF (F16/BF16/F32, or quantized: it is dequantized first)")
    p.add_argument("--mode", choices=(*curves.MODES, curves.CALIBRATED), default="proxy",
                   help="proxy: weighted quantization error of each tensor (fast); measured: KL divergence "
                        "of the model with only that tensor quantized (needs --text); calibrated: the proxy "
                        "sweep plus --points measured pairs per tensor, which scale it to KL divergence")
    p.add_argument("--points", default="2", metavar="N|all",
                   help="calibrated mode: measured pairs per tensor (1, 2, or all; default 2)")
    p.add_argument("--layers", type=int, default=None, metavar="K",
                   help="calibrated mode: measure only K layers of each tensor kind, spread out, and interpolate "
                        "the others (default: every layer)")
    p.add_argument("--imatrix", type=Path, default=None, help="importance matrix (GGUF) used as llama-quantize does")
    p.add_argument("--types", nargs="+", default=None, metavar="TYPE",
                   help=f"candidate types (default: {' '.join(proxy.DEFAULT_TYPES)})")
    p.add_argument("--tensors", metavar="REGEX", default=None,
                   help="only the tensors whose name this regular expression finds (e.g. 'ffn_down|attn_output')")
    p.add_argument("--threads", type=int, default=None,
                   help="proxy: worker processes (default: every CPU); measured: tool threads")
    p.add_argument("--text", type=Path, default=None, help="measured mode: evaluation text")
    p.add_argument("--ctx", type=int, default=512, help="measured mode: context per chunk (default 512)")
    p.add_argument("--chunks", type=int, default=None, help="measured mode: chunks to score (default: all that fit)")
    p.add_argument("--plots", type=Path, default=None, metavar="DIR",
                   help="write per-tensor curve plots and an overview (PNG) into DIR")
    add_json(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # the header only: gguf-py's reader takes tens of seconds on a 262k-token vocabulary
    model = Path(gguf_io.tensor_index(args.model).path).resolve()
    positive(args.threads, "threads")
    spec: dict = {"model": str(model), "types": args.types, "imatrix": None, "tensors": args.tensors}
    if args.imatrix:
        spec["imatrix"] = str(model_path(args.imatrix))
    if args.plots:
        args.plots.mkdir(parents=True, exist_ok=True)
    # validate the types and the imatrix before a run exists: errors stay one line
    importance = proxy.load_importance(spec["imatrix"]) if spec["imatrix"] else None
    cands = proxy.candidates(model, args.types, importance, args.tensors)
    if args.points not in ("1", "2", "all"):
        raise HifikitError(f"--points must be 1, 2 or all, got {args.points!r}")
    positive(args.layers, "layers")
    if args.mode == "proxy":
        if args.text:
            raise HifikitError("--text is for --mode measured or calibrated (proxy mode reads only the weights)")
        steps = [jobs.StepSpec("sweep", "sweep-proxy", {**spec, "workers": args.threads})]
    else:
        if not args.text:
            raise HifikitError(f"--mode {args.mode} needs --text FILE (a calibration text, kept apart from the "
                               "evaluation text)")
        positive(args.ctx, "ctx")
        positive(args.chunks, "chunks")
        chunks = kld.check_text(model, args.text, args.ctx, args.chunks)
        measured_spec = {**spec, "text": str(args.text.resolve()), "ctx": args.ctx, "chunks": chunks,
                         "threads": args.threads}
        steps = []
        if args.mode == curves.CALIBRATED:
            steps.append(jobs.StepSpec("proxy", "sweep-proxy", {**spec, "workers": args.threads}))
            measured_spec["calibration_points"] = args.points
            measured_spec["calibration_layers"] = args.layers
        steps.append(jobs.StepSpec("sweep", "sweep-measured", measured_spec))
    steps.append(jobs.StepSpec("knees", "knees", {"mode": args.mode, "workers": args.threads,
                                                  "plots": str(args.plots.resolve()) if args.plots else None}))
    calibration = args.points if args.mode == curves.CALIBRATED else None
    run_ = run_job("analyze", {**spec, "mode": args.mode, "calibration_points": calibration, "tensors": len(cands),
                               "points": sum(len(c.types) for c in cands)}, steps, args)
    render(run_, args.json)
    return 0


def _knees(run: dict) -> dict:
    for step in run["steps"]:
        if step["kind"] == "knees" and step["result"]:
            return step["result"].get("knees", {})
    return {}


def _sweep_result(run: dict) -> dict:
    """The sweep steps' figures (a calibrated run has a proxy and a measured one)."""
    out: dict = {}
    for step in run["steps"]:
        if step["kind"].startswith("sweep-"):
            out.update(step["result"] or {})
    return out


def records(run: dict) -> dict:
    """What --json prints: the run, its sweep figures and per tensor the points, best types and knee."""
    conn = db.connect()
    mode = run["args"].get("mode") if isinstance(run["args"], dict) else None
    sweep = curves.load_sweep(conn, run["id"], mode)
    knees = _knees(run)
    tensors = []
    for s in sweep_steps.summarize(sweep):
        rec = dict(s.__dict__)
        rec["knee"] = knees.get(s.tensor)
        tensors.append(rec)
    plots = next((st["result"].get("plots") for st in run["steps"] if st["kind"] == "knees" and st["result"]), None)
    report = grid.detect(run["args"]["model"]).to_json()
    hifi = [dataclasses.asdict(h) for h in sweep_steps.hifi_standing(sweep)]
    return {"run": run["id"], "mode": sweep.mode, "sweep": _sweep_result(run), "plots": plots, "grid": report,
            "hifi": hifi, "tensors": tensors}


def render(run: dict, as_json: bool) -> None:
    rec = records(run)
    if as_json:
        emit_json(rec)
        return
    levels = [f"{lv:g}" for lv in sweep_steps.BPW_LEVELS]
    rows = []
    for t in rec["tensors"]:
        knee = t["knee"] or {}
        best = []
        for lv in levels:
            b = t["best"].get(lv)
            best.append(f"{b['type']} {b['error']:.2e}" if b else "-")
        rows.append([t["tensor"], "x".join(map(str, t["shape"])), len(t["points"]), *best,
                     f"{knee['knee_bpw']:.2f} {knee['knee_type']}" if knee.get("knee_bpw") is not None else "-"])
    say(table(["tensor", "shape", "types", *[f"best <= {lv} bpw" for lv in levels], "knee bpw/type"], rows))
    s = rec["sweep"]
    if s:
        timing = (f"{s['seconds']:.1f} s wall, {s['cpu_seconds']:.1f} s CPU, {s['workers']} processes; "
                  if "cpu_seconds" in s else "")
        say(f"\n{rec['mode']} sweep: {s.get('tensors_total')} tensors, {s.get('points_total')} points; "
            f"{timing}run {rec['run']}")
    if rec["plots"]:
        say(f"plots: {len(rec['plots'])} PNG files in {Path(rec['plots'][0]).parent}")
    if rec["hifi"]:
        say("\nHIFI types against the stock types of the nearest size (the tensors that hold both):")
        say(table(["type", "tensors", "on front", "on hull", "vs", "bytes ×", "error × (median)", "lower error on"],
                  [[h["type"], h["tensors"], h["on_front"], h["on_hull"], t, f"{h['bytes_ratio'][t]:.3f}",
                    f"{h['error_ratio'].get(t, float('nan')):.3f}", h["beats"][t]]
                   for h in rec["hifi"] for t in h["beats"]], right=[False, True, True, True, False, True, True, True]))
    if rec["grid"]["message"]:
        note(("warning: " if rec["grid"]["detected"] else "") + rec["grid"]["message"])
