"""The planner's objective calibrated to end-to-end KL divergence.

The proxy error of a (tensor, type) is the tensor's own relative squared
quantization error: exact, cheap, and monotone in the type's precision, but in
no common unit across tensors (1 % on a small attn_k and 1 % on the tied
embedding, which is also the output projection, do not cost the model the same).
A measured point (llama-sensitivity: the model's mean KLD with only that tensor
quantized) is in the right unit but costs a forward pass over the text per
pair. The calibrated objective takes the best of both:

    predicted ΔKLD(t, T) = alpha_t x proxy(t, T)

To second order the KL divergence of a small weight perturbation is a
quadratic form of it, so for one tensor and quantization noise of one shape it
grows linearly with the squared error; alpha_t is the tensor's end-to-end
weight. It is fitted per tensor from its measured points (the geometric mean
of measured / proxy over the points that stand clear of their noise), and
where a tensor has none, from the tensors of the same kind (attn_v, ffn_down,
...) that have: log alpha interpolated over the layer index between the
measured layers (flat beyond them); a kind with no measured tensor at all takes
the geometric mean of every measured alpha. ``spread`` (largest over
smallest ratio of one tensor's points) says how well one alpha explains its
points.

``pick_pairs`` chooses which pairs to measure: per tensor the candidates whose
proxy error is nearest (in log) to CALIBRATION_TARGETS, mid-range errors that
stand well above the measurement noise and stay in the small-perturbation
regime. ``holdout`` measures how well a calibration made from a few points
predicts the others (on a full measured sweep), and ``additivity`` compares the
sum of a file's per-tensor predictions with its measured KLD.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import re
from typing import TYPE_CHECKING, Iterable, Mapping, Sequence

import numpy as np

from ..errors import HifikitError
from .agreement import rank_correlation

if TYPE_CHECKING:  # curves.load_sweep calibrates through this module
    from . import curves

log = logging.getLogger(__name__)

MODE = "calibrated"
# proxy errors to calibrate at: about Q4 (3e-3) and Q6 (3e-4) quality on typical weights
CALIBRATION_TARGETS = (3e-3, 3e-4)
# a measured point is usable when it is this many standard errors above zero
MIN_SIGMAS = 2.0
# types that are not calibration points: no quantization error to learn from
_EXACT = ("f32", "f16", "bf16")
_LAYER = re.compile(r"^blk\.\d+\.")


def tensor_kind(name: str) -> str:
    """attn_q.weight for blk.3.attn_q.weight; global tensors are their own kind."""
    return _LAYER.sub("", name)


def tensor_layer(name: str) -> int | None:
    m = _LAYER.match(name)
    return int(name[4:m.end() - 1]) if m else None


@dataclasses.dataclass(frozen=True)
class TensorScale:
    tensor: str
    kind: str
    alpha: float               # predicted ΔKLD per unit of proxy error
    source: str                # measured | layers (interpolated over its kind's measured layers) | all
    points: int                # measured points used for this tensor's own fit
    spread: float | None       # largest / smallest measured-to-proxy ratio of its points


@dataclasses.dataclass
class Calibration:
    run_id: int
    scales: dict[str, TensorScale]

    def alpha(self, tensor: str) -> float:
        return self.scales[tensor].alpha

    def summary(self) -> dict:
        by_source: dict[str, int] = {}
        for s in self.scales.values():
            by_source[s.source] = by_source.get(s.source, 0) + 1
        spreads = [s.spread for s in self.scales.values() if s.spread is not None]
        return {"tensors": len(self.scales), "by_source": by_source,
                "median_spread": float(np.median(spreads)) if spreads else None,
                "max_spread": max(spreads) if spreads else None}


def usable(point: curves.CurvePoint, proxy_error: float) -> bool:
    pm = point.error_pm or 0.0
    return point.error > 0 and point.error > MIN_SIGMAS * pm and proxy_error > 0


def calibrate(proxy: curves.Sweep, measured: curves.Sweep,
              pairs: Iterable[tuple[str, str]] | None = None) -> Calibration:
    """Fit alpha per tensor of the proxy sweep; pairs restricts which measured points are used."""
    allowed = {(t, ty.lower()) for t, ty in pairs} if pairs is not None else None
    proxy_err = {(c.tensor, p.type.lower()): p.error for c in proxy.curves for p in c.points}
    ratios: dict[str, list[float]] = {}
    for c in measured.curves:
        for p in c.points:
            key = (c.tensor, p.type.lower())
            if p.type.lower() in _EXACT or key not in proxy_err or (allowed is not None and key not in allowed):
                continue
            if usable(p, proxy_err[key]):
                ratios.setdefault(c.tensor, []).append(p.error / proxy_err[key])
    own: dict[str, float] = {t: math.exp(float(np.mean(np.log(r)))) for t, r in ratios.items()}
    if not own:
        raise HifikitError(f"run {measured.run_id}: no measured point stands above its noise "
                           f"({MIN_SIGMAS:g} standard errors): measure more chunks or coarser types")
    layered: dict[str, list[tuple[int, float]]] = {}
    for t, a in own.items():
        if tensor_layer(t) is not None:
            layered.setdefault(tensor_kind(t), []).append((tensor_layer(t), math.log(a)))
    overall = math.exp(float(np.mean(np.log(list(own.values())))))
    scales = {}
    for c in proxy.curves:
        kind = tensor_kind(c.tensor)
        if c.tensor in own:
            r = ratios[c.tensor]
            scales[c.tensor] = TensorScale(c.tensor, kind, own[c.tensor], "measured", len(r),
                                           max(r) / min(r) if len(r) > 1 else None)
        elif tensor_layer(c.tensor) is not None and kind in layered:
            # the kind measured at some layers: log alpha interpolated between them (flat beyond)
            xs, ys = zip(*sorted(layered[kind]))
            scales[c.tensor] = TensorScale(c.tensor, kind, math.exp(float(np.interp(tensor_layer(c.tensor), xs, ys))),
                                           "layers", 0, None)
        else:
            scales[c.tensor] = TensorScale(c.tensor, kind, overall, "all", 0, None)
    return Calibration(proxy.run_id, scales)


def calibrated_sweep(proxy: curves.Sweep, calibration: Calibration) -> curves.Sweep:
    """The proxy curves in predicted ΔKLD: each point's error times its tensor's alpha."""
    out = []
    for c in proxy.curves:
        a = calibration.alpha(c.tensor)
        out.append(dataclasses.replace(c, points=[dataclasses.replace(p, error=a * p.error, error_pm=None)
                                                  for p in c.points]))
    return dataclasses.replace(proxy, mode=MODE, curves=out)


def sampled_layers(n_layers: int, k: int) -> set[int]:
    """k layer indices spread over 0..n_layers-1, the first and the last included."""
    if k >= n_layers:
        return set(range(n_layers))
    if k == 1:
        return {n_layers // 2}
    return {round(i * (n_layers - 1) / (k - 1)) for i in range(k)}


def pick_pairs(proxy: curves.Sweep, points_per_tensor: int = len(CALIBRATION_TARGETS), layers: int | None = None
               ) -> list[tuple[str, str]]:
    """Per tensor, the candidates whose proxy error is nearest to each calibration target (distinct types).

    layers: measure only this many layers of each kind (spread out, the rest interpolated by calibrate);
    tensors outside the layers (token_embd, output) are always measured."""
    if not 1 <= points_per_tensor <= len(CALIBRATION_TARGETS):
        raise HifikitError(f"calibration points per tensor must be 1..{len(CALIBRATION_TARGETS)}")
    if layers is not None and layers < 1:
        raise HifikitError(f"calibration layers must be at least 1, got {layers}")
    n_layers = 1 + max((tensor_layer(c.tensor) for c in proxy.curves if tensor_layer(c.tensor) is not None),
                       default=-1)
    keep = sampled_layers(n_layers, layers) if layers is not None else None
    out = []
    for c in proxy.curves:
        if keep is not None and tensor_layer(c.tensor) is not None and tensor_layer(c.tensor) not in keep:
            continue
        pts = [p for p in c.points if p.type.lower() not in _EXACT and p.error > 0]
        chosen: list[str] = []
        for target in CALIBRATION_TARGETS[:points_per_tensor]:
            left = [p for p in pts if p.type not in chosen]
            if not left:
                break
            best = min(left, key=lambda p: (abs(math.log(p.error / target)), p.nbytes))
            chosen.append(best.type)
        out += [(c.tensor, t) for t in chosen]
    return out


@dataclasses.dataclass
class Holdout:
    """How well a calibration from some measured points predicts the other measured points."""
    points: int                # held-out points compared
    median_ratio: float        # predicted / measured
    within_2x: float           # share of points predicted within a factor 2
    spearman: float | None         # rank agreement of predicted and measured
    spearman_proxy: float | None   # the same for the uncalibrated proxy (what calibration adds)


def holdout(proxy: curves.Sweep, measured: curves.Sweep, calibration_pairs: Sequence[tuple[str, str]]) -> Holdout:
    cal = calibrate(proxy, measured, calibration_pairs)
    used = {(t, ty.lower()) for t, ty in calibration_pairs}
    proxy_err = {(c.tensor, p.type.lower()): p.error for c in proxy.curves for p in c.points}
    pred, meas, prox = [], [], []
    for c in measured.curves:
        for p in c.points:
            key = (c.tensor, p.type.lower())
            if key in used or key not in proxy_err or p.type.lower() in _EXACT or not usable(p, proxy_err[key]):
                continue
            pred.append(cal.alpha(c.tensor) * proxy_err[key])
            meas.append(p.error)
            prox.append(proxy_err[key])
    if not pred:
        raise HifikitError("no held-out measured points to compare with")
    ratio = np.array(pred) / np.array(meas)
    return Holdout(len(pred), float(np.median(ratio)), float(np.mean((ratio >= 0.5) & (ratio <= 2.0))),
                   rank_correlation(pred, meas), rank_correlation(prox, meas))


@dataclasses.dataclass
class AdditivityRow:
    label: str
    predicted: float           # sum over tensors of the objective at the file's types
    measured: float            # the file's mean KLD
    measured_pm: float | None
    missing: list[str]         # tensors whose type has no curve point (left out of the sum)

    @property
    def ratio(self) -> float:
        return self.measured / self.predicted if self.predicted > 0 else math.inf


def errors_by_tensor(sweep: curves.Sweep) -> dict[str, dict[str, float]]:
    """tensor -> {type (lower case): error}: the lookup the planner, the recipe search and the checks share."""
    return {c.tensor: {p.type.lower(): p.error for p in c.points} for c in sweep.curves}


def predict(types: Mapping[str, str], errors: Mapping[str, Mapping[str, float]]) -> tuple[float, list[str]]:
    """Sum of the objective over the tensors of a file; and the tensors it could not price."""
    total, missing = 0.0, []
    for tensor, per_type in errors.items():
        t = types.get(tensor)
        if t is None:
            continue
        e = per_type.get(t.lower())
        if e is None:
            if t.lower() not in _EXACT:
                missing.append(f"{tensor}:{t}")
            continue
        total += e
    return total, missing


def additivity(sweep: curves.Sweep, files: Sequence[tuple[str, Mapping[str, str], float, float | None]]
               ) -> tuple[list[AdditivityRow], dict]:
    """files: (label, tensor -> type, measured mean KLD, its ±). Rows and summary statistics."""
    errors = errors_by_tensor(sweep)
    rows = []
    for label, types, kld, pm in files:
        total, missing = predict(types, errors)
        rows.append(AdditivityRow(label, total, kld, pm, missing))
    ok = [r for r in rows if r.predicted > 0 and r.measured > 0]
    ratios = [r.ratio for r in ok]
    summary = {"files": len(rows), "median_ratio": float(np.median(ratios)) if ratios else None,
               "min_ratio": min(ratios) if ratios else None, "max_ratio": max(ratios) if ratios else None,
               "spearman": rank_correlation([r.predicted for r in ok], [r.measured for r in ok])}
    return rows, summary
