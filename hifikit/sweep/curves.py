"""Per-tensor error curves: the contract between `analyze` (writes) and `plan` (reads).

A sweep measures, for each tensor of one model, every candidate type's exact
byte size and its error. Two modes fill the same rows:

- ``proxy``: importance-weighted relative squared error of the tensor's own
  quantize -> dequantize image (dimensionless, per tensor);
- ``measured``: mean KL divergence of the model's output against the
  reference when only this tensor takes the candidate type.

The planner adds errors across tensors, so a curve's ``error`` must be the
tensor's contribution to the model's total error in one unit per sweep.
"""
from __future__ import annotations

import dataclasses
import json
import sqlite3
import time
from typing import Iterable

from ..errors import HifikitError
from . import objective

MODES = ("proxy", "measured")
# a derived mode: the proxy curves scaled per tensor by the run's measured points (objective.py)
CALIBRATED = "calibrated"
LOAD_MODES = (*MODES, CALIBRATED)


@dataclasses.dataclass(frozen=True)
class CurvePoint:
    type: str
    nbytes: int
    error: float
    error_pm: float | None = None
    seconds: float | None = None


@dataclasses.dataclass
class TensorCurve:
    tensor: str
    shape: tuple[int, ...]
    n_elements: int
    source_type: str
    points: list[CurvePoint]

    def bpw(self, point: CurvePoint) -> float:
        return 8.0 * point.nbytes / self.n_elements

    def point(self, type_name: str) -> CurvePoint:
        for p in self.points:
            if p.type == type_name:
                return p
        raise HifikitError(f"{self.tensor}: no measured point for type {type_name}")


@dataclasses.dataclass
class Sweep:
    run_id: int
    mode: str
    curves: list[TensorCurve]

    def curve(self, tensor: str) -> TensorCurve:
        for c in self.curves:
            if c.tensor == tensor:
                return c
        raise HifikitError(f"sweep of run {self.run_id} has no tensor '{tensor}'")


def store_tensor(conn: sqlite3.Connection, run_id: int, tensor: str, shape: Iterable[int], n_elements: int,
                 source_type: str) -> None:
    conn.execute("INSERT OR REPLACE INTO sweep_tensors (run_id, tensor, shape, n_elements, source_type) "
                 "VALUES (?,?,?,?,?)", (run_id, tensor, json.dumps(list(shape)), n_elements, source_type))


def store_points(conn: sqlite3.Connection, run_id: int, mode: str, tensor: str,
                 points: Iterable[CurvePoint]) -> None:
    """Insert (or replace) a tensor's points; call inside db.transaction for atomicity."""
    if mode not in MODES:
        raise HifikitError(f"unknown sweep mode '{mode}' (expected one of {', '.join(MODES)})")
    now = time.time()
    conn.executemany(
        "INSERT OR REPLACE INTO curve_points (run_id, mode, tensor, type, nbytes, error, error_pm, seconds, created) "
        "VALUES (?,?,?,?,?,?,?,?,?)",
        [(run_id, mode, tensor, p.type, p.nbytes, p.error, p.error_pm, p.seconds, now) for p in points])


def done_points(conn: sqlite3.Connection, run_id: int, mode: str) -> set[tuple[str, str]]:
    """(tensor, type) pairs already stored: what a resumed sweep skips."""
    return {(r[0], r[1]) for r in conn.execute(
        "SELECT tensor, type FROM curve_points WHERE run_id=? AND mode=?", (run_id, mode))}


def default_mode(modes: Iterable[str]) -> str:
    """calibrated when a run has both kinds of points, else measured, else proxy."""
    modes = set(modes)
    if {"proxy", "measured"} <= modes:
        return CALIBRATED
    return "measured" if "measured" in modes else "proxy"


def run_modes(conn: sqlite3.Connection, run_id: int) -> list[str]:
    return [r[0] for r in conn.execute("SELECT DISTINCT mode FROM curve_points WHERE run_id=?", (run_id,))]


def load_sweep(conn: sqlite3.Connection, run_id: int, mode: str | None = None) -> Sweep:
    """The curves of one analyze run; mode defaults to default_mode() of what the run has.

    ``calibrated`` is the proxy curves scaled by the run's measured points (objective.py)."""
    modes = run_modes(conn, run_id)
    if not modes:
        raise HifikitError(f"run {run_id} has no sensitivity curves (run 'hifikit analyze' first)")
    if mode is None:
        mode = default_mode(modes)
    if mode == CALIBRATED:
        if not {"proxy", "measured"} <= set(modes):
            raise HifikitError(f"run {run_id} has no calibrated curves: it needs proxy and measured points "
                               f"(it has: {', '.join(modes)}; 'hifikit analyze MODEL --mode calibrated --text F')")
        proxy = load_sweep(conn, run_id, "proxy")
        return objective.calibrated_sweep(proxy, objective.calibrate(proxy, load_sweep(conn, run_id, "measured")))
    if mode not in modes:
        raise HifikitError(f"run {run_id} has no {mode} curves (it has: {', '.join(modes)})")
    tensors = {r["tensor"]: r for r in conn.execute(
        "SELECT * FROM sweep_tensors WHERE run_id=? ORDER BY rowid", (run_id,))}
    points: dict[str, list[CurvePoint]] = {name: [] for name in tensors}
    for r in conn.execute("SELECT * FROM curve_points WHERE run_id=? AND mode=? ORDER BY tensor, nbytes",
                          (run_id, mode)):
        points.setdefault(r["tensor"], []).append(
            CurvePoint(r["type"], int(r["nbytes"]), float(r["error"]), r["error_pm"], r["seconds"]))
    curves = []
    for name, row in tensors.items():
        curves.append(TensorCurve(name, tuple(json.loads(row["shape"])), int(row["n_elements"]),
                                  row["source_type"], points.get(name, [])))
    return Sweep(run_id, mode, curves)
