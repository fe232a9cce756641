"""PNG plots of error(bpw) curves (matplotlib, no pyplot), written atomically.

``plot_curves(sweep, out_dir, chosen)`` draws one file per tensor (linear and
log error side by side: every candidate labelled by type, the Pareto frontier,
the monotone fit, the knee, and the planner's choice when given) and
``overview.png``, a grid of every tensor's fitted curve.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import numpy as np

from . import curves, knee
from .. import runner
from ..plots import figure, save_png, split_layer

OVERVIEW = "overview.png"


def file_name(tensor: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", tensor) + ".png"


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
    fig = figure(figsize=(11, 4.2), dpi=100)
    a1, a2 = fig.subplots(1, 2)
    _curve_axes(a1, curve, fit, chosen, log_scale=False)
    _curve_axes(a2, curve, fit, chosen, log_scale=True, labels=False)
    a1.set_ylabel("relative weighted squared error" if mode == "proxy" else "mean KL divergence")
    a1.legend(fontsize=7)
    fig.suptitle(f"{curve.tensor}  {'x'.join(map(str, curve.shape))}  ({mode})", fontsize=10)
    fig.tight_layout()
    return save_png(fig, path)


def _grid_layout(names: Sequence[str]) -> tuple[dict[str, tuple[int, int]], list[str], list[str]]:
    """Cell (row, column) per tensor: a row per layer, a column per tensor kind (first-seen order);
    tensors outside the blocks fill the top rows, one per cell."""
    split = {n: split_layer(n) for n in names}
    kinds = list(dict.fromkeys(kind for layer, kind in split.values() if layer is not None))
    layers = list(dict.fromkeys(layer for layer, _ in split.values() if layer is not None))
    ncols = max(len(kinds), 1)
    others = [n for n in names if split[n][0] is None]
    n_top = -(-len(others) // ncols)
    pos = {n: (i // ncols, i % ncols) for i, n in enumerate(others)}
    for n, (layer, kind) in split.items():
        if layer is not None:
            pos[n] = (n_top + layers.index(layer), kinds.index(kind))
    return pos, [""] * n_top + [f"blk.{x}" for x in layers], kinds or [""]


def plot_overview(sweep: curves.Sweep, fits: dict[str, knee.KneeFit], path: Path,
                  chosen: dict[str, str] | None = None) -> Path:
    """One grid: a row per layer (tensors outside the blocks on top), a column per tensor kind; log error."""
    items = [c for c in sweep.curves if c.tensor in fits]
    pos, row_names, col_names = _grid_layout([c.tensor for c in items])
    rows, cols = max(1, len(row_names)), max(1, len(col_names))
    fig = figure(figsize=(2.0 * cols + 0.8, 1.35 * rows + 0.8), dpi=80)
    axes = fig.subplots(rows, cols, squeeze=False, sharex=True)
    used = set()
    for c in items:
        r, k = pos[c.tensor]
        used.add((r, k))
        ax = axes[r][k]
        f = fits[c.tensor]
        bpw = np.array([c.bpw(p) for p in c.points])
        err = np.array([p.error for p in c.points])
        floor = max(float(err[err > 0].min()) / 10 if (err > 0).any() else 1e-12, 1e-30)
        ax.scatter(bpw, np.maximum(err, floor), s=4, color="0.5")
        lo, hi = min(f.frontier_bpw), max(f.frontier_bpw)
        if hi > lo:
            xs = np.linspace(lo, hi, 100)
            ax.plot(xs, np.maximum(f.predict(xs), floor), color="C1", lw=0.8)
        if f.knee_bpw is not None:
            ax.axvline(f.knee_bpw, color="C2", ls="--", lw=0.8)
        if chosen and c.tensor in chosen:
            try:
                p = c.point(chosen[c.tensor])
                ax.scatter([c.bpw(p)], [max(p.error, floor)], marker="*", s=40, color="C3", zorder=5)
            except Exception:  # noqa: BLE001 - a choice outside the sweep is just not drawn
                pass
        ax.set_yscale("log")
        ax.set_title(f"{row_names[r]} {col_names[k]}" if row_names[r] else c.tensor, fontsize=6)
        ax.tick_params(labelsize=5)
    for r in range(rows):
        for k in range(cols):
            if (r, k) not in used:
                axes[r][k].axis("off")
    fig.suptitle(f"run {sweep.run_id}: error vs bpw per tensor ({sweep.mode}, log scale); "
                 "dashed: knee, star: chosen", fontsize=9)
    # tight_layout costs minutes on a 19 x 7 grid; fixed margins do
    fig.subplots_adjust(left=0.04, right=0.99, bottom=0.03, top=1 - 0.5 / fig.get_figheight(),
                        wspace=0.35, hspace=0.6)
    return save_png(fig, path)


def _plot_many(jobs: list[tuple]) -> list[Path]:
    return [plot_tensor(*job) for job in jobs]


def plot_curves(sweep: curves.Sweep, out_dir: Path | str, chosen: dict[str, str] | None = None,
                fits: dict[str, knee.KneeFit] | None = None, tensors: Sequence[str] | None = None,
                workers: int | None = None) -> list[Path]:
    """One PNG per tensor plus the overview; returns the paths written (tensor order, overview last).

    workers > 1 draws in that many processes (about 0.4 s of CPU per figure: Gemma 3 270M has 127).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fits = fits if fits is not None else knee.fit_sweep(sweep)
    wanted = set(tensors) if tensors is not None else None
    jobs = [(c, fits[c.tensor], out_dir / file_name(c.tensor), sweep.mode, (chosen or {}).get(c.tensor))
            for c in sweep.curves if c.tensor in fits and (wanted is None or c.tensor in wanted)]
    workers = min(workers or 1, len(jobs))
    if workers > 1:
        parts = [jobs[i::workers] for i in range(workers)]
        with runner.worker_pool(workers) as pool:
            done = {p: path for part, fut in zip(parts, [pool.submit(_plot_many, part) for part in parts])
                    for p, path in zip([j[2] for j in part], fut.result())}
        paths = [done[j[2]] for j in jobs]
    else:
        paths = _plot_many(jobs)
    paths.append(plot_overview(sweep, fits, out_dir / OVERVIEW, chosen))
    return paths
