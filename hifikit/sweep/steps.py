"""The steps of ``hifikit analyze`` (a sweep, proxy or measured) and its per-tensor summary.

A run is: one sweep step that streams each tensor's points to the database
(a resumed step skips what is stored), then a ``knees`` step that fits the
curves and writes the plots. The step specs hold everything, so
``hifikit runs resume ID`` needs nothing else.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import curves, proxy
from .. import db
from ..errors import HifikitError
from ..frontier import lower_hull, pareto_front
from ..jobs import StepContext, StepOutput
from ..progress import Progress

log = logging.getLogger(__name__)

# bpw levels of the summary table: the best candidate at or below each
BPW_LEVELS = (3.5, 4.5, 5.5, 8.5)


def _candidates(spec: dict[str, Any]) -> tuple[list[proxy.TensorCandidates], Any]:
    importance = proxy.load_importance(spec["imatrix"]) if spec.get("imatrix") else None
    return proxy.candidates(spec["model"], spec.get("types"), importance, spec.get("tensors")), importance


def sweep_proxy(ctx: StepContext, spec: dict[str, Any]) -> StepOutput:
    cands, importance = _candidates(spec)
    bar = Progress(f"proxy sweep {Path(spec['model']).name}", ctx.progress)
    try:
        stats = proxy.run_proxy(ctx.conn, ctx.run_id, spec["model"], cands, importance,
                                      workers=spec.get("workers"), progress=bar.update)
    finally:
        bar.close()
    log.info("proxy sweep: %d tensors (%d already done), %d points in %.1f s wall, %.1f s CPU, %d processes",
             stats.tensors, stats.skipped, stats.points, stats.seconds, stats.cpu_seconds, stats.workers)
    return StepOutput(result={**proxy.candidate_summary(cands), **dataclasses.asdict(stats)},
                      measurements=[db.Measurement("proxy_sweep_seconds", stats.seconds, model=spec["model"]),
                                    db.Measurement("proxy_sweep_cpu_seconds", stats.cpu_seconds,
                                                   model=spec["model"])])


def sweep_measured(ctx: StepContext, spec: dict[str, Any]) -> StepOutput:
    try:
        from . import measured  # written alongside (branch sens); imported only when asked for
    except ImportError as exc:
        raise HifikitError(f"--mode measured is not available in this hifikit ({exc})") from exc

    cands, _ = _candidates(spec)
    proxy.store_tensors(ctx.conn, ctx.run_id, cands)
    # a tensor in its own (source) type is the reference itself: KLD 0 by construction, nothing to measure
    exact = [c for c in cands if c.source_type in c.types]
    with db.transaction(ctx.conn):
        for c in exact:
            curves.store_points(ctx.conn, ctx.run_id, "measured", c.tensor,
                                [curves.CurvePoint(c.source_type, c.nbytes[c.source_type], 0.0, 0.0, 0.0)])
    exact_pairs = {(c.tensor, c.source_type) for c in exact}
    pairs = [pair for pair in proxy.sweep_pairs(cands) if pair not in exact_pairs]
    points = spec.get("calibration_points")
    stages = [pairs]
    if points is not None:
        # calibrated mode: a few pairs per tensor, picked from the proxy points this run stored before;
        # with "all", those first (a calibration is usable early) and then every other pair
        from . import objective

        picked = objective.pick_pairs(curves.load_sweep(ctx.conn, ctx.run_id, "proxy"),
                                      len(objective.CALIBRATION_TARGETS) if points == "all" else int(points),
                                      spec.get("calibration_layers"))
        stages = [picked, pairs] if points == "all" else [picked]
    for stage in stages:
        measured.run_sweep(ctx.conn, ctx.run_id, Path(spec["model"]), Path(spec["text"]),
                           stage, ctx=spec["ctx"], chunks=spec["chunks"],
                           imatrix=Path(spec["imatrix"]) if spec.get("imatrix") else None,
                           threads=spec.get("threads"), log_path=ctx.log_path, progress=ctx.progress)
    return StepOutput(result={**proxy.candidate_summary(cands), "measured_pairs": len(stages[-1])})


@dataclasses.dataclass
class TensorSummary:
    tensor: str
    shape: list[int]
    n_elements: int
    source_type: str
    points: list[dict[str, Any]]            # type, nbytes, bpw, error (by bpw)
    best: dict[str, dict[str, Any] | None]  # bpw level -> lowest-error point at or below it


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


def knees(ctx: StepContext, spec: dict[str, Any]) -> StepOutput:
    from . import knee

    sweep = curves.load_sweep(ctx.conn, ctx.run_id, spec.get("mode"))
    fits = knee.fit_sweep(sweep)
    result: dict[str, Any] = {"knees": {name: dataclasses.asdict(f) for name, f in fits.items()},
                              "methods": {m: sum(1 for f in fits.values() if f.method == m)
                                          for m in sorted({f.method for f in fits.values()})},
                              "plots": None}
    artifacts = []
    if spec.get("plots"):
        from . import plots

        paths = plots.plot_curves(sweep, Path(spec["plots"]), fits=fits,
                                  workers=spec.get("workers") or proxy.default_workers())
        result["plots"] = [str(p) for p in paths]
        artifacts = [db.Artifact(str(p), "plot") for p in paths]
    return StepOutput(result=result, artifacts=artifacts)


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
