"""``hifikit analyze`` as a library job: a sweep of one model, its per-tensor summary and knees.

``analyze(AnalyzeOptions(model, mode=...)) -> AnalyzeResult`` runs the sweep
(steps.py: ``sweep-proxy`` and/or ``sweep-measured``, then ``knees``, which
fits the curves and draws the plots) as one tracked, resumable run named
``analyze``; ``AnalyzeResult.from_run`` reads one back. Modes:

- ``proxy``: the weights only (proxy.py);
- ``measured``: llama-sensitivity's KL divergence per (tensor, type) on a text;
- ``calibrated``: a proxy sweep, then ``points`` measured pairs per tensor (of
  ``layers`` layers per tensor kind, the others interpolated) that scale it to
  KL divergence (objective.py).

The summary gives per tensor its points, the best candidate at or below each
of BPW_LEVELS and the knee; ``hifi_standing`` how each HIFI type fares against
the stock types of the nearest size.
"""
from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .. import db, gguf_io, grid, jobs, kld
from ..errors import HifikitError
from ..frontier import lower_hull, pareto_front
from . import curves, measured, proxy

# bpw levels of the summary table: the best candidate at or below each
BPW_LEVELS = (3.5, 4.5, 5.5, 8.5)


@dataclasses.dataclass
class TensorSummary:
    tensor: str
    shape: list[int]
    n_elements: int
    source_type: str
    points: list[dict[str, Any]]            # type, nbytes, bpw, error (by bpw)
    best: dict[str, dict[str, Any] | None]  # bpw level -> lowest-error point at or below it
    knee: dict[str, Any] | None = None      # the run's knee fit of this tensor (knee.KneeFit as stored)


def best_at(curve: curves.TensorCurve, level: float) -> curves.CurvePoint | None:
    fits = [p for p in curve.points if curve.bpw(p) <= level + 1e-9]
    return min(fits, key=lambda p: (p.error, p.nbytes)) if fits else None


def summarize(sweep: curves.Sweep, levels: Sequence[float] = BPW_LEVELS) -> list[TensorSummary]:
    out = []
    for c in sweep.curves:
        pts = sorted(c.points, key=lambda p: (c.bpw(p), p.error))
        best = {}
        for level in levels:
            p = best_at(c, level)
            best[f"{level:g}"] = ({"type": p.type, "bpw": c.bpw(p), "error": p.error} if p else None)
        out.append(TensorSummary(c.tensor, list(c.shape), c.n_elements, c.source_type,
                                 [{"type": p.type, "nbytes": p.nbytes, "bpw": c.bpw(p), "error": p.error,
                                   "error_pm": p.error_pm, "seconds": p.seconds} for p in pts], best))
    return out


# each HIFI type and the stock types of the nearest size an upstream reviewer compares it with
HIFI_NEIGHBOURS = {
    "q3_K_hifi": ("iq4_xs", "q4_K"),
    "q4_K_hifi": ("q5_K",),
    "q5_K_hifi": ("q6_K",),
    "q6_K_hifi": ("q8_0",),
}


@dataclasses.dataclass
class HifiStanding:
    """How one HIFI type fares on the tensors that can hold it."""
    type: str
    tensors: int                    # tensors with a point for it and its neighbours
    on_front: int                   # on the tensor's (bytes, error) Pareto front
    on_hull: int                    # on its lower convex hull: the planner's efficient choices
    beats: dict[str, int]           # neighbour -> tensors where the HIFI type has the lower error
    error_ratio: dict[str, float]   # neighbour -> median of (HIFI error / neighbour error)
    bytes_ratio: dict[str, float]   # neighbour -> HIFI bytes / neighbour bytes (the same on every tensor)


def hifi_standing(sweep: curves.Sweep, neighbours: dict[str, tuple[str, ...]] = HIFI_NEIGHBOURS
                  ) -> list[HifiStanding]:
    """Per HIFI type: on how many tensors it is on the front and on the hull, and against its neighbours."""
    out = []
    for hifi, near in neighbours.items():
        n = front = hull = 0
        beats = {t: 0 for t in near}
        ratios: dict[str, list[float]] = {t: [] for t in near}
        sizes: dict[str, float] = {}
        for c in sweep.curves:
            pts = {p.type: p for p in c.points}
            if hifi not in pts or not all(t in pts for t in near):
                continue
            n += 1
            order = sorted(c.points, key=lambda p: (p.nbytes, p.error))
            xs, ys = [p.nbytes for p in order], [p.error for p in order]
            on_front = {order[i].type for i in pareto_front(xs, ys)}
            front_pts = sorted((p for p in order if p.type in on_front), key=lambda p: p.nbytes)
            on_hull = {front_pts[i].type
                       for i in lower_hull([p.nbytes for p in front_pts], [p.error for p in front_pts])}
            front += hifi in on_front
            hull += hifi in on_hull
            h = pts[hifi]
            for t in near:
                beats[t] += h.error < pts[t].error
                if pts[t].error > 0:
                    ratios[t].append(h.error / pts[t].error)
                sizes[t] = h.nbytes / pts[t].nbytes
        if n:
            out.append(HifiStanding(hifi, n, front, hull, beats,
                                    {t: float(np.median(r)) for t, r in ratios.items() if r}, sizes))
    return out


@dataclasses.dataclass
class AnalyzeOptions:
    model: Path                        # the reference GGUF (F16/BF16/F32, or quantized: dequantized first)
    mode: str = "proxy"                # proxy | measured | calibrated
    types: Sequence[str] | None = None     # candidate types (default: proxy.DEFAULT_TYPES)
    tensors: str | None = None         # a regular expression: only the tensors whose name it finds
    imatrix: Path | None = None        # importance matrix, used as llama-quantize does
    text: Path | None = None           # measured and calibrated modes: the calibration text
    ctx: int = 512
    chunks: int | None = None          # default: all that fit
    threads: int | None = None         # proxy: worker processes (default: every CPU); measured: tool threads
    points: str = "2"                  # calibrated: measured pairs per tensor, 1, 2 or all
    layers: int | None = None          # calibrated: measure K layers of each kind (default: every layer)
    plots: Path | None = None          # write per-tensor curve plots and an overview into this folder
    ray: str | None = None             # run the sweep on this Ray cluster (auto | HOST:PORT), cluster.py
    batch: int | None = None           # with ray, measured: pairs an actor takes at a time (cluster.DEFAULT_BATCH)
    workers: int | None = None         # with ray: measured actors (default: one per GPU, else cluster CPUs /
    #                                    threads); proxy tasks in flight (default: the cluster's CPUs)
    ngl: int | None = None             # measured: layers llama-sensitivity offloads (-ngl; default 0, with ray
    #                                    on a cluster with GPUs: all)
    device: str | None = None          # measured: llama-sensitivity's --device list (e.g. CUDA0, or none)
    baseline: Path | None = None       # measured: the model llama-sensitivity loads (a Q8_0 file of `model`, say),
    #                                    each swept tensor's values read from `model` (docs/scale.md)


@dataclasses.dataclass
class AnalyzeResult:
    run_id: int
    sweep: curves.Sweep
    tensors: list[TensorSummary]       # with .knee set from the run's knee fits
    figures: dict[str, Any]            # the sweep steps' figures: tensors_total, points_total, seconds, ...
    plots: list[str] | None
    hifi: list[HifiStanding]
    grid: grid.GridReport
    run: dict[str, Any]

    @classmethod
    def from_run(cls, run: dict[str, Any], conn: sqlite3.Connection | None = None) -> "AnalyzeResult":
        conn = conn or db.connect()
        mode = run["args"].get("mode") if isinstance(run["args"], dict) else None
        sweep = curves.load_sweep(conn, run["id"], mode)
        knee_step = next((s["result"] for s in run["steps"] if s["kind"] == "knees" and s["result"]), {})
        knees = knee_step.get("knees", {})
        tensors = summarize(sweep)
        for t in tensors:
            t.knee = knees.get(t.tensor)
        figures: dict[str, Any] = {}
        for step in run["steps"]:  # a calibrated run has a proxy and a measured sweep step
            if step["kind"].startswith("sweep-"):
                figures.update(step["result"] or {})
        return cls(run["id"], sweep, tensors, figures, knee_step.get("plots"), hifi_standing(sweep),
                   grid.detect(run["args"]["model"]), run)

    def to_json(self) -> dict[str, Any]:
        """What `hifikit analyze --json` prints: the run, its sweep figures and per tensor the points, best
        types and knee."""
        return {"run": self.run_id, "mode": self.sweep.mode, "sweep": self.figures, "plots": self.plots,
                "grid": self.grid.to_json(), "hifi": [dataclasses.asdict(h) for h in self.hifi],
                "tensors": [dataclasses.asdict(t) for t in self.tensors]}


def analyze(opts: AnalyzeOptions, *, conn: sqlite3.Connection | None = None,
            progress: bool | None = None) -> AnalyzeResult:
    """Sweep every candidate type of every quantizable tensor of opts.model, as one tracked run."""
    # the header only: gguf-py's reader takes tens of seconds on a 262k-token vocabulary
    model = Path(gguf_io.tensor_index(opts.model).path).resolve()
    jobs.check_positive(threads=opts.threads)
    if opts.mode not in (*curves.MODES, curves.CALIBRATED):
        raise HifikitError(f"unknown mode '{opts.mode}' (expected proxy, measured or calibrated)")
    spec: dict[str, Any] = {"model": str(model), "types": list(opts.types) if opts.types else None, "imatrix": None,
                            "tensors": opts.tensors}
    if opts.imatrix:
        spec["imatrix"] = str(gguf_io.check_model(opts.imatrix))
    if opts.plots:
        Path(opts.plots).mkdir(parents=True, exist_ok=True)
    # validate the types and the imatrix before a run exists: errors stay one line
    importance = proxy.load_importance(spec["imatrix"]) if spec["imatrix"] else None
    cands = proxy.candidates(model, opts.types, importance, opts.tensors)
    if opts.points not in ("1", "2", "all"):
        raise HifikitError(f"--points must be 1, 2 or all, got {opts.points!r}")
    jobs.check_positive(layers=opts.layers, batch=opts.batch, workers=opts.workers)
    if (opts.batch or opts.workers) and not opts.ray:
        raise HifikitError("--batch and --workers are for --ray (a Ray cluster sweep)")
    measured.check_offload(opts.ngl, opts.device)
    if (opts.ngl is not None or opts.device) and opts.mode == "proxy":
        raise HifikitError("--ngl and --device are for --mode measured or calibrated (a proxy sweep runs no model)")
    if opts.baseline is not None and opts.mode != "measured":
        # a calibrated sweep scales the proxy to the KLD against the model: a baseline's figures hold the
        # baseline's own error as well, which no scale of the proxy has
        raise HifikitError(f"--baseline is for --mode measured (a {opts.mode} sweep "
                           + ("runs no model)" if opts.mode == "proxy" else
                              "scales the proxy by KLDs against the model, which a baseline's figures are not)"))
    if opts.batch and opts.mode == "proxy":
        raise HifikitError("--batch is for --mode measured or calibrated (a proxy sweep's Ray tasks are chunks "
                           "of one tensor)")
    # with --ray the proxy sweep's work units run as Ray tasks too (cluster.proxy_results)
    proxy_ray = {"ray": opts.ray} if opts.ray else {}
    proxy_workers = opts.workers if opts.ray else opts.threads  # with ray: tasks in flight (default: its CPUs)
    if opts.mode == "proxy":
        if opts.text:
            raise HifikitError("--text is for --mode measured or calibrated (proxy mode reads only the weights)")
        steps = [jobs.StepSpec("sweep", "sweep-proxy", {**spec, **proxy_ray, "workers": proxy_workers})]
    else:
        if not opts.text:
            raise HifikitError(f"--mode {opts.mode} needs --text FILE (a calibration text, kept apart from the "
                               "evaluation text)")
        jobs.check_positive(ctx=opts.ctx, chunks=opts.chunks)
        chunks = kld.check_text(model, opts.text, opts.ctx, opts.chunks)
        measured_spec = {**spec, "text": str(Path(opts.text).resolve()), "ctx": opts.ctx, "chunks": chunks,
                         "threads": opts.threads, "ngl": opts.ngl, "device": opts.device}
        if opts.baseline is not None:
            # check_baseline below reads the header; here only the file and the GGUF magic
            baseline = gguf_io.check_file(opts.baseline).resolve()
            if baseline == model:
                raise HifikitError(f"--baseline {opts.baseline} is the model itself (a baseline is a quantized "
                                   "copy, e.g. Q8_0)")
            measured.check_baseline(model, baseline)  # the same tensors: one line now, and no run
            measured_spec["baseline"] = spec["baseline"] = str(baseline)
        if opts.ray:
            measured_spec.update(ray=opts.ray, batch=opts.batch, ray_workers=opts.workers)
        steps = []
        if opts.mode == curves.CALIBRATED:
            steps.append(jobs.StepSpec("proxy", "sweep-proxy", {**spec, **proxy_ray, "workers": proxy_workers}))
            measured_spec["calibration_points"] = opts.points
            measured_spec["calibration_layers"] = opts.layers
        steps.append(jobs.StepSpec("sweep", "sweep-measured", measured_spec))
    steps.append(jobs.StepSpec("knees", "knees", {"mode": opts.mode, "workers": opts.threads,
                                                  "plots": str(Path(opts.plots).resolve()) if opts.plots else None}))
    calibration = opts.points if opts.mode == curves.CALIBRATED else None
    if opts.ray:
        from . import cluster

        cluster.connect(opts.ray)  # Ray missing or the cluster unreachable: one line now, and no run
    conn = conn or db.connect()
    run = jobs.start("analyze", {**spec, "mode": opts.mode, "calibration_points": calibration, "tensors": len(cands),
                                 "points": sum(len(c.types) for c in cands)}, steps, progress=progress, conn=conn)
    return AnalyzeResult.from_run(run, conn)
