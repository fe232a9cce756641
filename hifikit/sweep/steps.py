"""The step kinds of the sweep job (analyze.py): sweep-proxy, sweep-measured and knees.

A run is: one sweep step that streams each tensor's points to the database
(a resumed step skips what is stored), then a ``knees`` step that fits the
curves and writes the plots. The step specs hold everything, so
``hifikit runs resume ID`` needs nothing else.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from . import curves, knee, measured, objective, plots, proxy
from .. import db
from ..jobs import StepContext, StepOutput
from ..progress import Progress

log = logging.getLogger(__name__)


def _candidates(spec: dict[str, Any]) -> tuple[list[proxy.TensorCandidates], Any]:
    importance = proxy.load_importance(spec["imatrix"]) if spec.get("imatrix") else None
    return proxy.candidates(spec["model"], spec.get("types"), importance, spec.get("tensors")), importance


def sweep_proxy(ctx: StepContext, spec: dict[str, Any]) -> StepOutput:
    cands, importance = _candidates(spec)
    bar = Progress(f"proxy sweep {Path(spec['model']).name}", ctx.progress)
    try:
        stats = proxy.run_proxy(ctx.conn, ctx.run_id, spec["model"], cands, importance,
                                workers=spec.get("workers"), progress=bar.update, ray=spec.get("ray"))
    finally:
        bar.close()
    log.info("proxy sweep: %d tensors (%d already done), %d points in %.1f s wall, %.1f s CPU, %d processes",
             stats.tensors, stats.skipped, stats.points, stats.seconds, stats.cpu_seconds, stats.workers)
    return StepOutput(result={**proxy.candidate_summary(cands), **dataclasses.asdict(stats)},
                      measurements=[db.Measurement("proxy_sweep_seconds", stats.seconds, model=spec["model"]),
                                    db.Measurement("proxy_sweep_cpu_seconds", stats.cpu_seconds,
                                                   model=spec["model"])])


def _baseline_pairs(cands: list[proxy.TensorCandidates],
                    room: dict[str, int]) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """On a baseline: the pairs whose bytes fit in the baseline's tensor, and those that do not (f16 in a Q8_0
    tensor's place), which cannot be measured there."""
    fit, left_out = [], []
    for c in cands:
        for t in c.types:
            (fit if c.nbytes[t] <= room[c.tensor] else left_out).append((c.tensor, t))
    return fit, left_out


def sweep_measured(ctx: StepContext, spec: dict[str, Any]) -> StepOutput:
    cands, _ = _candidates(spec)
    proxy.store_tensors(ctx.conn, ctx.run_id, cands)
    baseline = Path(spec["baseline"]) if spec.get("baseline") else None
    reference = None
    left_out: list[tuple[str, str]] = []
    if baseline is None:
        # a tensor in its own (source) type is the reference itself: KLD 0 by construction, nothing to measure
        exact = [c for c in cands if c.source_type in c.types]
        with db.transaction(ctx.conn):
            for c in exact:
                curves.store_points(ctx.conn, ctx.run_id, "measured", c.tensor,
                                    [curves.CurvePoint(c.source_type, c.nbytes[c.source_type], 0.0, 0.0, 0.0)])
        exact_pairs = {(c.tensor, c.source_type) for c in exact}
        pairs = [pair for pair in proxy.sweep_pairs(cands) if pair not in exact_pairs]
    else:
        # on a baseline every pair is measured (the source type too is the baseline plus that tensor), but only
        # those whose bytes fit in the baseline tensor's place; the reference is the model's, computed once
        pairs, left_out = _baseline_pairs(cands, measured.check_baseline(Path(spec["model"]), baseline))
        if left_out:
            log.info("measured sweep on the baseline %s: %d pair(s) bigger than the baseline's tensor left out, "
                     "e.g. %s %s", baseline.name, len(left_out), *left_out[0])
        reference = ctx.run_dir / "reference.bin"
        if reference.is_file():
            log.info("reference distributions: %s, from before (the tool checks they are this sweep's)", reference)
        else:
            measured.write_reference(Path(spec["model"]), Path(spec["text"]), reference, ctx=spec["ctx"],
                                     chunks=spec["chunks"], threads=spec.get("threads"), log_path=ctx.log_path,
                                     ngl=spec.get("ngl"), device=spec.get("device"))
    points = spec.get("calibration_points")
    stages = [pairs]
    if points is not None:
        # calibrated mode: a few pairs per tensor, picked from the proxy points this run stored before;
        # with "all", those first (a calibration is usable early) and then every other pair
        picked = objective.pick_pairs(curves.load_sweep(ctx.conn, ctx.run_id, "proxy"),
                                      len(objective.CALIBRATION_TARGETS) if points == "all" else int(points),
                                      spec.get("calibration_layers"))
        stages = [picked, pairs] if points == "all" else [picked]
    ray_stats = []
    for stage in stages:
        kw = dict(ctx=spec["ctx"], chunks=spec["chunks"],
                  imatrix=Path(spec["imatrix"]) if spec.get("imatrix") else None, threads=spec.get("threads"),
                  log_path=ctx.log_path, progress=ctx.progress, ngl=spec.get("ngl"), device=spec.get("device"),
                  baseline=baseline, reference=reference)
        if spec.get("ray"):
            # the same pairs and points on a Ray cluster (cluster.py); Ray is imported only there
            from . import cluster

            ray_stats.append(dataclasses.asdict(cluster.run_sweep(
                ctx.conn, ctx.run_id, Path(spec["model"]), Path(spec["text"]), stage, address=spec["ray"],
                batch=spec.get("batch") or cluster.DEFAULT_BATCH, workers=spec.get("ray_workers"), **kw)))
        else:
            measured.run_sweep(ctx.conn, ctx.run_id, Path(spec["model"]), Path(spec["text"]), stage, **kw)
    result = {**proxy.candidate_summary(cands), "measured_pairs": len(stages[-1])}
    if ray_stats:
        result["ray"] = ray_stats
    artifacts = []
    if baseline is not None:
        result.update(baseline=str(baseline), left_out_pairs=len(left_out))
        artifacts.append(db.Artifact(str(reference), "reference"))
    return StepOutput(result=result, artifacts=artifacts)


def knees(ctx: StepContext, spec: dict[str, Any]) -> StepOutput:
    sweep = curves.load_sweep(ctx.conn, ctx.run_id, spec.get("mode"))
    fits = knee.fit_sweep(sweep)
    result: dict[str, Any] = {"knees": {name: dataclasses.asdict(f) for name, f in fits.items()},
                              "methods": {m: sum(1 for f in fits.values() if f.method == m)
                                          for m in sorted({f.method for f in fits.values()})},
                              "plots": None}
    artifacts = []
    if spec.get("plots"):
        paths = plots.plot_curves(sweep, Path(spec["plots"]), fits=fits,
                                  workers=spec.get("workers") or proxy.default_workers())
        result["plots"] = [str(p) for p in paths]
        artifacts = [db.Artifact(str(p), "plot") for p in paths]
    return StepOutput(result=result, artifacts=artifacts)
