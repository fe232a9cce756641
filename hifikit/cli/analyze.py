"""``hifikit analyze MODEL [--imatrix F] [--types ...] --mode proxy|measured``: per-tensor error curves."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..sweep import curves, proxy
from ..sweep.analyze import BPW_LEVELS, AnalyzeOptions, AnalyzeResult, analyze
from ..tables import table
from .common import add_json, progress_mode
from .output import emit_json, note, say


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
                   help="proxy: worker processes (default: every CPU); measured: tool threads (with --ray: "
                        "threads and CPUs per actor, default 1)")
    p.add_argument("--text", type=Path, default=None, help="measured mode: evaluation text")
    p.add_argument("--ctx", type=int, default=512, help="measured mode: context per chunk (default 512)")
    p.add_argument("--chunks", type=int, default=None, help="measured mode: chunks to score (default: all that fit)")
    p.add_argument("--ngl", type=int, default=None, metavar="N",
                   help="measured mode: layers llama-sensitivity stores and computes on the GPU (its -ngl; 999 = "
                        "all; default 0, every weight on the CPU; with --ray on a cluster with GPUs: all)")
    p.add_argument("--device", default=None, metavar="DEV[,DEV..]",
                   help="measured mode: llama-sensitivity's offload devices (its --device, e.g. CUDA0; none = "
                        "no offload; llama-sensitivity --list-devices lists them)")
    p.add_argument("--baseline", type=Path, default=None, metavar="GGUF",
                   help="measured mode only: the model llama-sensitivity loads, a quantized copy of MODEL (e.g. its "
                        "Q8_0, half the F16's memory); each swept tensor's values are read from MODEL and the "
                        "reference is MODEL's, computed once: a pair measures the baseline with that tensor in "
                        "the candidate type against MODEL (pairs bigger than the baseline's tensor are left out)")
    p.add_argument("--plots", type=Path, default=None, metavar="DIR",
                   help="write per-tensor curve plots and an overview (PNG) into DIR")
    p.add_argument("--ray", nargs="?", const="auto", default=None, metavar="auto|ADDRESS",
                   help="run the sweep on a Ray cluster: measured pairs on actors, one llama-sensitivity each, "
                        "proxy chunks as tasks (auto: the cluster RAY_ADDRESS or a local 'ray start --head' names; "
                        "or the head's HOST:PORT); needs pip install 'hifikit[cluster]'")
    p.add_argument("--batch", type=int, default=None, metavar="N",
                   help="with --ray: the most pairs an actor takes from the queue at a time, fewer as the queue "
                        "empties so the actors end together (each actor's one long-lived llama-sensitivity loads "
                        "the model once, whatever the batch; default 16)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="with --ray: measured actors (default: one per GPU of the cluster, else its CPUs / "
                        "--threads); proxy tasks in flight (default: its CPUs)")
    add_json(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    res = analyze(AnalyzeOptions(args.model, args.mode, args.types, args.tensors, args.imatrix, args.text, args.ctx,
                                 args.chunks, args.threads, args.points, args.layers, args.plots,
                                 ray=args.ray, batch=args.batch, workers=args.workers, ngl=args.ngl,
                                 device=args.device, baseline=args.baseline),
                  progress=progress_mode(args))
    render(res, args.json)
    return 0


def render(res: AnalyzeResult, as_json: bool) -> None:
    rec = res.to_json()
    if as_json:
        emit_json(rec)
        return
    levels = [f"{lv:g}" for lv in BPW_LEVELS]
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


def show(run: dict, as_json: bool) -> None:
    """For `hifikit runs show/resume` of an analyze run."""
    render(AnalyzeResult.from_run(run), as_json)
