"""Monotone fits of a tensor's error(bpw) curve and its knee: where extra bits stop paying.

Only the Pareto frontier of the candidates is fitted: a point is kept when its
error is below that of every cheaper candidate (others are dominated: a type
that costs more and errs more is never worth it). The frontier is fitted with

    error(bpw) = a * 2^(-b * (bpw - x0)) + c      a, b, c >= 0, x0 = cheapest frontier bpw

(``scipy.optimize.curve_fit`` with bounds; quantization error falls by a
constant factor per extra bit, 4x for b = 2). That model is non-increasing and
convex by construction. When the fit fails or misses a frontier point by more
than ``RESIDUAL_TOL`` of the error range, the frontier's lower convex hull is
used instead: piecewise linear, non-increasing and convex.

The knee (Kneedle's definition): on the fitted curve over the frontier's bpw
range, the point farthest below the chord joining its two ends. There the
curve's slope equals the chord's: before the knee a bit buys more error
reduction than the average bit over the range, after it less. The distance is
the same up to a constant factor whether the axes are normalised to [0, 1] or
not, so the knee does not depend on the units. For the exponential model it is
analytic: x* = x0 + log2(a * b * ln 2 / s) / b, with s the chord's drop per bit.
``knee_type`` is the frontier candidate at or just above the knee.
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Sequence

import numpy as np

from . import curves
from ..errors import HifikitError
from ..frontier import lower_hull, pareto_front

RESIDUAL_TOL = 0.05
_LN2 = math.log(2.0)


@dataclasses.dataclass
class KneeFit:
    method: str                     # "exp" | "hull" | "single"
    knee_bpw: float | None          # None: no knee (fewer than two frontier points, or a straight line)
    knee_error: float | None        # the fitted error at the knee
    knee_type: str | None           # frontier candidate at or just above the knee
    frontier: list[str]             # types on the Pareto frontier, by bpw
    frontier_bpw: list[float]
    frontier_error: list[float]
    params: dict[str, float] | None = None   # exp: a, b, c, x0
    residual: float | None = None   # exp fit: max |fit - point| / error range over the frontier
    hull_bpw: list[float] | None = None      # hull: vertices
    hull_error: list[float] | None = None

    def predict(self, bpw: float | Sequence[float] | np.ndarray) -> np.ndarray:
        """The fitted error at bpw (flat beyond the frontier's range for the hull)."""
        x = np.asarray(bpw, dtype=np.float64)
        if self.method == "exp" and self.params:
            p = self.params
            return p["a"] * np.exp2(-p["b"] * (x - p["x0"])) + p["c"]
        xs = np.asarray(self.hull_bpw or self.frontier_bpw, dtype=np.float64)
        ys = np.asarray(self.hull_error or self.frontier_error, dtype=np.float64)
        return np.interp(x, xs, ys)


def _model(x: np.ndarray, a: float, b: float, c: float, x0: float) -> np.ndarray:
    return a * np.exp2(-b * (x - x0)) + c


def _fit_exp(x: np.ndarray, y: np.ndarray) -> tuple[dict[str, float], float] | None:
    from scipy.optimize import curve_fit

    x0 = float(x[0])
    scale = float(y.max()) or 1.0
    yn = y / scale
    span = float(yn.max() - yn.min()) or 1.0
    best = None
    for b0 in (2.0, 1.0, 0.5, 4.0):  # a few starts: cheap, and curve_fit is local
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                (a, b, c), _ = curve_fit(lambda xx, a, b, c: _model(xx, a, b, c, x0), x, yn,
                                         p0=(max(yn[0] - yn[-1], 1e-12), b0, max(yn[-1], 0.0)),
                                         bounds=([0.0, 1e-3, 0.0], [np.inf, 30.0, float(yn.max())]), maxfev=5000)
        except (RuntimeError, ValueError):
            continue
        resid = float(np.max(np.abs(_model(x, a, b, c, x0) - yn))) / span
        if best is None or resid < best[1]:
            best = ({"a": float(a) * scale, "b": float(b), "c": float(c) * scale, "x0": x0}, resid)
    return best


def _chord_knee(xs: np.ndarray, ys: np.ndarray) -> int | None:
    """Index of the point farthest below the chord of its ends, None for a straight line."""
    chord = ys[0] + (ys[-1] - ys[0]) * (xs - xs[0]) / (xs[-1] - xs[0])
    gap = chord - ys
    i = int(np.argmax(gap))
    return i if gap[i] > 1e-12 * max(abs(ys[0] - ys[-1]), 1e-300) else None


def fit(bpw: Sequence[float], error: Sequence[float], types: Sequence[str] | None = None,
        residual_tol: float = RESIDUAL_TOL) -> KneeFit:
    """Fit one curve (points in any order) and find its knee."""
    if len(bpw) != len(error) or not len(bpw):
        raise ValueError("fit needs as many errors as bpw values, at least one")
    types = list(types) if types is not None else [f"{b:g}" for b in bpw]
    # a point with an infinite or undefined error is on no curve worth fitting
    finite = [i for i in range(len(bpw)) if math.isfinite(error[i])]
    if not finite:
        raise ValueError("fit needs at least one finite error")
    idx = [finite[j] for j in pareto_front([bpw[i] for i in finite], [error[i] for i in finite])]
    fx = np.array([bpw[i] for i in idx], dtype=np.float64)
    fy = np.array([error[i] for i in idx], dtype=np.float64)
    ftypes = [types[i] for i in idx]
    base = dict(frontier=ftypes, frontier_bpw=fx.tolist(), frontier_error=fy.tolist())
    if len(idx) == 1:
        return KneeFit("single", float(fx[0]), float(fy[0]), ftypes[0], **base)

    def at_or_above(x: float) -> str:
        for t, b in zip(ftypes, fx):
            if b >= x - 1e-6:
                return t
        return ftypes[-1]

    exp = _fit_exp(fx, fy) if len(idx) >= 3 else None
    if exp is not None and exp[1] <= residual_tol:
        p, resid = exp
        s = (float(_model(fx[0], **p)) - float(_model(fx[-1], **p))) / (fx[-1] - fx[0])
        if s > 0 and p["a"] > 0:
            knee = p["x0"] + math.log2(p["a"] * p["b"] * _LN2 / s) / p["b"]
            knee = min(max(knee, float(fx[0])), float(fx[-1]))
            return KneeFit("exp", knee, float(_model(np.float64(knee), **p)), at_or_above(knee), **base,
                           params=p, residual=resid)
    hull = lower_hull(fx.tolist(), fy.tolist())
    hx, hy = fx[hull], fy[hull]
    k = _chord_knee(hx, hy) if len(hull) >= 3 else None
    return KneeFit("hull", float(hx[k]) if k is not None else None, float(hy[k]) if k is not None else None,
                   at_or_above(float(hx[k])) if k is not None else None, **base,
                   residual=exp[1] if exp else None, hull_bpw=hx.tolist(), hull_error=hy.tolist())


def fit_curve(curve: curves.TensorCurve, residual_tol: float = RESIDUAL_TOL) -> KneeFit:
    pts = curve.points
    return fit([curve.bpw(p) for p in pts], [p.error for p in pts], [p.type for p in pts], residual_tol)


def fit_sweep(sweep: curves.Sweep, residual_tol: float = RESIDUAL_TOL) -> dict[str, KneeFit]:
    """Knee fits of every tensor of a sweep that has points."""
    return {c.tensor: fit_curve(c, residual_tol) for c in sweep.curves if c.points}


def knee_type(curve: curves.TensorCurve) -> str | None:
    """The type at the knee of one tensor's curve, None when the curve has no usable knee."""
    try:
        return fit_curve(curve).knee_type
    except (HifikitError, ValueError, RuntimeError):
        return None
