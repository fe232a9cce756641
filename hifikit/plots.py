"""PNG plots of error(bpw) curves (matplotlib, Agg backend), written atomically.

``plot_curves(sweep, out_dir, chosen)`` draws one file per tensor (linear and
log error side by side: every candidate labelled by type, the Pareto frontier,
the monotone fit, the knee, and the planner's choice when given) and
``overview.png``, a grid of every tensor's fitted curve.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from . import atomic, curves, knee

OVERVIEW = "overview.png"


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def file_name(tensor: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", tensor) + ".png"


def _save(fig, path: Path) -> Path:
    with atomic.output_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=fig.dpi)
    return path


def _curve_axes(ax, curve: curves.TensorCurve, fit: knee.KneeFit, chosen: str | None, log_scale: bool,
                labels: bool = True) -> None:
    bpw = np.array([curve.bpw(p) for p in curve.points])
    err = np.array([p.error for p in curve.points])
    floor = max(float(err[err > 0].min()) / 10 if (err > 0).any() else 1e-12, 1e-30)
    shown = np.maximum(err, floor) if log_scale else err
    frontier = set(fit.frontier)
    on = np.array([p.type in frontier for p in curve.points])
    ax.scatter(bpw[~on], shown[~on], s=14, color="0.6", label="dominated", zorder=2)
    ax.scatter(bpw[on], shown[on], s=18, color="C0", label="frontier", zorder=3)
    if labels:
        for p, x, y in zip(curve.points, bpw, shown):
            ax.annotate(p.type, (x, y), fontsize=6, xytext=(3, 2), textcoords="offset points")
    lo, hi = min(fit.frontier_bpw), max(fit.frontier_bpw)
    if hi > lo:
        xs = np.linspace(lo, hi, 200)
        ys = fit.predict(xs)
        ax.plot(xs, np.maximum(ys, floor) if log_scale else ys, color="C1", lw=1.2, label=f"fit ({fit.method})")
    if fit.knee_bpw is not None:
        ky = max(fit.knee_error or 0.0, floor) if log_scale else fit.knee_error
        ax.axvline(fit.knee_bpw, color="C2", ls="--", lw=1)
        ax.scatter([fit.knee_bpw], [ky], marker="D", s=40, color="C2", zorder=4,
                   label=f"knee {fit.knee_bpw:.2f} ({fit.knee_type})")
    if chosen is not None:
        try:
            p = curve.point(chosen)
        except Exception:  # noqa: BLE001 - a choice outside the sweep is just not drawn
            p = None
        if p is not None:
            y = max(p.error, floor) if log_scale else p.error
            ax.scatter([curve.bpw(p)], [y], marker="*", s=140, color="C3", zorder=5, label=f"chosen {chosen}")
    if log_scale:
        ax.set_yscale("log")
    ax.set_xlabel("bits per weight")
    ax.grid(True, alpha=0.3)


def plot_tensor(curve: curves.TensorCurve, fit: knee.KneeFit, path: Path, mode: str = "proxy",
                chosen: str | None = None) -> Path:
    plt = _pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=100)
    try:
        _curve_axes(a1, curve, fit, chosen, log_scale=False)
        _curve_axes(a2, curve, fit, chosen, log_scale=True, labels=False)
        a1.set_ylabel("relative weighted squared error" if mode == "proxy" else "mean KL divergence")
        a1.legend(fontsize=7)
        fig.suptitle(f"{curve.tensor}  {'x'.join(map(str, curve.shape))}  ({mode})", fontsize=10)
        fig.tight_layout()
        return _save(fig, path)
    finally:
        plt.close(fig)


def plot_overview(sweep: curves.Sweep, fits: dict[str, knee.KneeFit], path: Path,
                  chosen: dict[str, str] | None = None) -> Path:
    plt = _pyplot()
    items = [c for c in sweep.curves if c.tensor in fits]
    n = max(1, len(items))
    cols = math.ceil(math.sqrt(n * 1.5))
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 1.8 * rows), dpi=80, squeeze=False)
    try:
        for ax in axes.flat[len(items):]:
            ax.axis("off")
        for ax, c in zip(axes.flat, items):
            f = fits[c.tensor]
            bpw = [c.bpw(p) for p in c.points]
            err = [p.error for p in c.points]
            ax.scatter(bpw, err, s=4, color="0.5")
            lo, hi = min(f.frontier_bpw), max(f.frontier_bpw)
            if hi > lo:
                xs = np.linspace(lo, hi, 100)
                ax.plot(xs, f.predict(xs), color="C1", lw=0.8)
            if f.knee_bpw is not None:
                ax.axvline(f.knee_bpw, color="C2", ls="--", lw=0.8)
            if chosen and c.tensor in chosen:
                try:
                    p = c.point(chosen[c.tensor])
                    ax.scatter([c.bpw(p)], [p.error], marker="*", s=40, color="C3", zorder=5)
                except Exception:  # noqa: BLE001
                    pass
            ax.set_title(c.tensor, fontsize=6)
            ax.tick_params(labelsize=5)
        fig.suptitle(f"run {sweep.run_id}: error vs bpw per tensor ({sweep.mode}); dashed: knee", fontsize=9)
        fig.tight_layout()
        return _save(fig, path)
    finally:
        plt.close(fig)


def plot_curves(sweep: curves.Sweep, out_dir: Path | str, chosen: dict[str, str] | None = None,
                fits: dict[str, knee.KneeFit] | None = None, tensors: Sequence[str] | None = None) -> list[Path]:
    """One PNG per tensor plus the overview; returns the paths written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fits = fits if fits is not None else knee.fit_sweep(sweep)
    wanted = set(tensors) if tensors is not None else None
    paths = []
    for c in sweep.curves:
        if c.tensor not in fits or (wanted is not None and c.tensor not in wanted):
            continue
        paths.append(plot_tensor(c, fits[c.tensor], out_dir / file_name(c.tensor), sweep.mode,
                                 (chosen or {}).get(c.tensor)))
    paths.append(plot_overview(sweep, fits, out_dir / OVERVIEW, chosen))
    return paths
