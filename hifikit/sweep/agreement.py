"""How well the cheap ``proxy`` sweep ranks candidates like the ``measured`` one.

Spearman's rank correlation over the (tensor, type) points both sweeps have:
per tensor (does the proxy order one tensor's types as the model's output
does?) and overall (does it also order the tensors against each other?).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # curves imports the objective, which ranks with this module
    from .curves import Sweep


def rank_correlation(xs: list[float], ys: list[float]) -> float | None:
    """Spearman's rho of two paired lists; None when a side is constant or too short."""
    from scipy.stats import spearmanr

    if len(xs) < 2 or len(set(xs)) < 2 or len(set(ys)) < 2:
        return None  # a constant side has no ranks to compare
    rho = float(spearmanr(xs, ys)[0])
    return None if math.isnan(rho) else rho


def spearman(proxy_sweep: Sweep, measured_sweep: Sweep) -> dict:
    """{"overall": {"rho", "n"}, "mean_per_tensor": rho or None, "tensors": {name: {"rho", "n"}}}."""
    measured = {c.tensor: {p.type: p.error for p in c.points} for c in measured_sweep.curves}
    tensors: dict[str, dict] = {}
    all_x: list[float] = []
    all_y: list[float] = []
    for curve in proxy_sweep.curves:
        other = measured.get(curve.tensor)
        if not other:
            continue
        common = [p for p in curve.points if p.type in other]
        xs = [p.error for p in common]
        ys = [other[p.type] for p in common]
        all_x += xs
        all_y += ys
        tensors[curve.tensor] = {"rho": rank_correlation(xs, ys), "n": len(common)}
    rhos = [t["rho"] for t in tensors.values() if t["rho"] is not None]
    return {
        "overall": {"rho": rank_correlation(all_x, all_y), "n": len(all_x)},
        "mean_per_tensor": sum(rhos) / len(rhos) if rhos else None,
        "tensors": tensors,
    }
