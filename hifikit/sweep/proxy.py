"""Per-tensor candidates and the proxy sweep of ``hifikit analyze``.

Candidates: every tensor that ``llama-quantize`` would quantize
(``quant_rules.allows_quantization``), and for each
every type of the list whose block size divides the row length (``ne[0]``)
and that does not need an importance matrix when none is given.

Proxy error of a (tensor, type): quantize -> dequantize the tensor through the
built libggml (``ggml_quantize_chunk``, the call llama-quantize makes, with the
imatrix column importances as ``quant_weights``) and take the
importance-weighted relative squared error

    error = sum_ij w_j (x_ij - q_ij)^2 / sum_ij w_j x_ij^2

where ``w_j`` is the imatrix importance of input column j (``in_sum2/counts``,
as llama-quantize loads it) and 1 without an imatrix. Every row is used (no
sampling). ``nbytes`` is the exact ggml row size times the number of rows.
"""
from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import logging
import math
import os
import re
import sqlite3
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from . import curves
from .. import db, ggml, gguf_io, runner
from ..errors import HifikitError
from ..quant_rules import allows_quantization

log = logging.getLogger(__name__)

STOCK_TYPES = ("q2_K", "q3_K", "q4_K", "q5_K", "q6_K", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl", "iq4_xs")
DEFAULT_TYPES = (*STOCK_TYPES, *ggml.HIFI_TYPES, "f16")

# rows per work unit: about 4 M weights, so a big tensor (Gemma's 262144 x 640 embedding)
# is split across processes and memory stays bounded
CHUNK_ELEMENTS = 1 << 22


@dataclasses.dataclass(frozen=True)
class TensorCandidates:
    tensor: str
    shape: tuple[int, ...]          # ggml order: ne[0] is the row length
    n_elements: int
    source_type: str
    types: tuple[str, ...]          # candidate type names, ggml spelling
    nbytes: dict[str, int]          # exact bytes per candidate

    @property
    def n_per_row(self) -> int:
        return self.shape[0]

    @property
    def n_rows(self) -> int:
        return self.n_elements // self.shape[0]


def resolve_types(names: Iterable[str] | None, has_imatrix: bool) -> list[ggml.GGMLType]:
    """The candidate types, by name (case-insensitive); one clear error for an unknown name."""
    lib = ggml.load()
    known = {t.name.lower(): t for t in lib.types()}
    wanted = list(names) if names else list(DEFAULT_TYPES)
    out: list[ggml.GGMLType] = []
    for name in wanted:
        t = known.get(name.strip().lower())
        if t is None:
            raise HifikitError(f"unknown type '{name}' (known: {', '.join(sorted(known, key=str.lower))})")
        if not t.can_dequantize:
            raise HifikitError(f"type {t.name} cannot be dequantized, so it cannot be measured")
        if lib.requires_imatrix(t.id) and not has_imatrix:
            if names:
                log.warning("type %s needs an importance matrix: skipped (pass --imatrix)", t.name)
            continue
        if t not in out:
            out.append(t)
    if not out:
        raise HifikitError("no candidate types left (the ones given need an importance matrix: pass --imatrix)")
    return out


def candidates(model: Path | str, types: Iterable[str] | None = None,
               importance: dict[str, np.ndarray] | None = None, tensors: str | None = None
               ) -> list[TensorCandidates]:
    """Per quantizable tensor of the model (those whose name the regex `tensors` finds, when given),
    the candidate types that fit its rows."""
    index = gguf_io.tensor_index(model)
    lib = ggml.load()
    names = {t.id: t.name for t in lib.types()}
    type_list = resolve_types(types, importance is not None)
    try:
        wanted = re.compile(tensors) if tensors else None
    except re.error as exc:
        raise HifikitError(f"--tensors {tensors!r}: not a regular expression ({exc})") from exc
    out = []
    for t in index.tensors:
        if not allows_quantization(t.name, t.shape, index.architecture):
            continue
        if wanted is not None and not wanted.search(t.name):
            continue
        ne0 = t.shape[0]
        rows = t.n_elements // ne0
        fits = []
        for c in type_list:
            if ne0 % c.block_size:
                continue
            if lib.requires_imatrix(c.id) and (importance is None or t.name not in importance):
                continue  # llama-quantize would refuse this tensor without importance data
            fits.append(c)
        if not fits:
            log.warning("%s: no candidate type fits rows of %d", t.name, ne0)
            continue
        cand = TensorCandidates(t.name, tuple(t.shape), t.n_elements, names.get(t.type_id, str(t.type_id)),
                                tuple(c.name for c in fits), {c.name: c.row_size(ne0) * rows for c in fits})
        importance_for(importance, cand)  # an imatrix of another model fails here, before any work
        out.append(cand)
    if not out:
        raise HifikitError(f"{model}: no tensor that llama-quantize would quantize"
                           + (f" matches --tensors {tensors!r}" if tensors else ""))
    return out


def load_importance(path: Path | str) -> dict[str, np.ndarray]:
    """Per-column importance of a GGUF imatrix, as llama-quantize loads it.

    Returns tensor name -> float32 array (n_experts, ne0): in_sum2 / counts,
    and 1 where a count is zero (tools/quantize/quantize.cpp load_imatrix).
    """
    kind = gguf_io.general_type(path)
    if kind not in (None, "imatrix"):
        raise HifikitError(f"{path}: not an imatrix GGUF (general.type = {kind!r})")
    reader = gguf_io.open_reader(path)
    tensors = {t.name: t for t in reader.tensors}
    out: dict[str, np.ndarray] = {}
    for name in tensors:
        if not name.endswith(".in_sum2"):
            continue
        base = name[: -len(".in_sum2")]
        if base + ".counts" not in tensors:
            raise HifikitError(f"{path}: {base} has in_sum2 but no counts")
        sums = np.asarray(tensors[name].data, dtype=np.float32).reshape(-1)
        counts = np.asarray(tensors[base + ".counts"].data, dtype=np.float32).reshape(-1)
        if counts.size == 0 or sums.size % counts.size:
            raise HifikitError(f"{path}: {base}: {sums.size} sums do not split into {counts.size} experts")
        per = sums.reshape(counts.size, -1)
        imp = np.ones_like(per)
        keep = counts > 0
        imp[keep] = per[keep] / counts[keep, None]
        if not np.isfinite(imp).all():
            raise HifikitError(f"{path}: {base}: non-finite importance values")
        out[base] = imp
    if not out:
        raise HifikitError(f"{path}: no imatrix entries (no *.in_sum2 tensors)")
    return out


def importance_for(importance: dict[str, np.ndarray] | None, cand: TensorCandidates) -> np.ndarray | None:
    """The (n_experts, ne0) importance of one tensor, None when the imatrix has no entry (as llama-quantize)."""
    if importance is None or cand.tensor not in importance:
        return None
    imp = importance[cand.tensor]
    n_experts = int(np.prod(cand.shape[2:])) if len(cand.shape) > 2 else 1
    if imp.shape != (n_experts, cand.n_per_row):
        raise HifikitError(f"imatrix entry for {cand.tensor} has {imp.size} values, the tensor needs "
                           f"{n_experts * cand.n_per_row} ({n_experts} x {cand.n_per_row})")
    return imp


# ---- the work done in pool processes -------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Task:
    tensor: str
    path: str
    offset: int                 # absolute file offset of the tensor's data
    source_type_id: int
    n_per_row: int
    row0: int
    n_rows: int
    types: tuple[tuple[int, str], ...]
    importance: np.ndarray | None   # (n_per_row,) for the expert these rows belong to


@dataclasses.dataclass
class _ChunkResult:
    tensor: str
    num: dict[str, float]       # type -> sum w (x - q)^2
    den: float                  # sum w x^2
    seconds: dict[str, float]
    cpu_seconds: float


def _measure(task: _Task) -> _ChunkResult:
    cpu0 = time.process_time()
    lib = ggml.load()
    x = gguf_io.read_rows(task.path, task.offset, task.source_type_id, task.n_per_row, task.row0, task.n_rows)
    w = task.importance.astype(np.float64) if task.importance is not None else None
    colsq = np.einsum("ij,ij->j", x, x, dtype=np.float64)
    den = float(colsq @ w) if w is not None else float(colsq.sum())
    num: dict[str, float] = {}
    secs: dict[str, float] = {}
    for type_id, name in task.types:
        t0 = time.perf_counter()
        q = lib.dequantize(type_id, lib.quantize(type_id, x, task.importance), task.n_per_row)
        q -= x
        sq = np.einsum("ij,ij->j", q, q, dtype=np.float64)
        num[name] = float(sq @ w) if w is not None else float(sq.sum())
        secs[name] = time.perf_counter() - t0
    return _ChunkResult(task.tensor, num, den, secs, time.process_time() - cpu0)


def _tasks(path: Path, cand: TensorCandidates, types: Sequence[str], imp: np.ndarray | None,
           offset: int, source_type_id: int) -> list[_Task]:
    lib = ggml.load()
    ids = tuple((lib.type_by_name(t).id, t) for t in types)
    rows_per_expert = cand.shape[1]
    chunk_rows = max(1, min(rows_per_expert, CHUNK_ELEMENTS // cand.n_per_row))
    out = []
    for row0 in range(0, cand.n_rows, rows_per_expert):  # chunks never cross an expert boundary
        expert = row0 // rows_per_expert
        for r in range(row0, row0 + rows_per_expert, chunk_rows):
            n = min(chunk_rows, row0 + rows_per_expert - r)
            out.append(_Task(cand.tensor, str(path), offset, source_type_id, cand.n_per_row, r, n, ids,
                             imp[expert] if imp is not None else None))
    return out


# ---- the sweep ---------------------------------------------------------------------------------

@dataclasses.dataclass
class SweepStats:
    tensors: int            # tensors measured in this call
    skipped: int            # tensors already complete (a resumed run)
    points: int
    seconds: float          # wall time
    cpu_seconds: float      # CPU time of every process (pool workers and this one)
    workers: int


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _data_offsets(path: Path) -> dict[str, tuple[int, int]]:
    return {t.name: (t.offset, t.type_id) for t in gguf_io.tensor_index(path).tensors}


def store_tensors(conn: sqlite3.Connection, run_id: int, cands: Sequence[TensorCandidates]) -> None:
    with db.transaction(conn):
        for c in cands:
            curves.store_tensor(conn, run_id, c.tensor, c.shape, c.n_elements, c.source_type)


def run_proxy(conn: sqlite3.Connection, run_id: int, model: Path | str, cands: Sequence[TensorCandidates],
              importance: dict[str, np.ndarray] | None = None, workers: int | None = None,
              progress: Callable[[int, int], None] | None = None, ray: str | None = None) -> SweepStats:
    """Measure every missing (tensor, type) point; each tensor's points are committed together.

    A resumed call skips the (tensor, type) pairs already stored for this run. `ray`: run the work
    units as tasks on the Ray cluster at that address (cluster.proxy_results; `workers` caps the
    tasks in flight) instead of a local pool.
    """
    model = Path(model)
    t0, cpu0 = time.perf_counter(), time.process_time()
    workers = workers or (None if ray else default_workers())
    store_tensors(conn, run_id, cands)
    done = curves.done_points(conn, run_id, "proxy")
    offsets = _data_offsets(model)
    todo: list[tuple[TensorCandidates, list[str]]] = []
    for c in cands:
        missing = [t for t in c.types if (c.tensor, t) not in done]
        if missing:
            todo.append((c, missing))
    skipped = len(cands) - len(todo)
    if skipped:
        log.info("run %d: %d of %d tensors already measured", run_id, skipped, len(cands))
    tasks: list[_Task] = []
    for c, missing in todo:
        offset, src_id = offsets[c.tensor]
        tasks.extend(_tasks(model, c, missing, importance_for(importance, c), offset, src_id))
    remaining = {c.tensor: sum(1 for t in tasks if t.tensor == c.tensor) for c, _ in todo}
    by_name = {c.tensor: (c, missing) for c, missing in todo}
    acc: dict[str, list[_ChunkResult]] = {name: [] for name in remaining}
    points = 0
    worker_cpu = 0.0
    finished = 0

    def absorb(res: _ChunkResult) -> None:
        nonlocal points, worker_cpu, finished
        worker_cpu += res.cpu_seconds
        acc[res.tensor].append(res)
        remaining[res.tensor] -= 1
        if remaining[res.tensor]:
            return
        c, missing = by_name[res.tensor]
        parts = acc.pop(res.tensor)
        den = sum(p.den for p in parts)
        pts = []
        for t in missing:
            num = sum(p.num[t] for p in parts)
            err = num / den if den > 0 else (0.0 if num == 0 else math.inf)
            pts.append(curves.CurvePoint(t, c.nbytes[t], err, None, sum(p.seconds[t] for p in parts)))
        with db.transaction(conn):
            curves.store_points(conn, run_id, "proxy", c.tensor, pts)
        points += len(pts)
        finished += 1
        if progress:
            progress(skipped + finished, len(cands))

    if ray:
        from . import cluster

        workers = workers or max(1, int(cluster.connect(ray).cluster_resources().get("CPU", 1)))
        for res in cluster.proxy_results(tasks, ray, workers):
            absorb(res)
        return SweepStats(len(todo), skipped, points, time.perf_counter() - t0,
                          worker_cpu + time.process_time() - cpu0, workers)
    pooled = workers > 1 and len(tasks) > 1
    if not pooled:
        for task in tasks:
            absorb(_measure(task))
        worker_cpu = 0.0  # already in this process's CPU time
    else:
        with runner.worker_pool(workers) as pool:
            futures = [pool.submit(_measure, task) for task in tasks]
            for fut in cf.as_completed(futures):
                absorb(fut.result())
    return SweepStats(len(todo), skipped, points, time.perf_counter() - t0,
                      worker_cpu + time.process_time() - cpu0, workers if pooled else 1)


def sweep_pairs(cands: Sequence[TensorCandidates]) -> list[tuple[str, str]]:
    """Every (tensor, type) of the candidates, in file order."""
    return [(c.tensor, t) for c in cands for t in c.types]


def candidate_summary(cands: Sequence[TensorCandidates]) -> dict[str, Any]:
    return {"tensors_total": len(cands), "points_total": sum(len(c.types) for c in cands),
            "elements": sum(c.n_elements for c in cands)}


def proxy_points(model: Path | str, cand: TensorCandidates, importance: dict[str, np.ndarray] | None = None,
                 types: Sequence[str] | None = None) -> list[curves.CurvePoint]:
    """One tensor's proxy points, computed in this process (no database): the sweep's own arithmetic."""
    model = Path(model)
    offset, src_id = _data_offsets(model)[cand.tensor]
    types = list(types) if types is not None else list(cand.types)
    parts = [_measure(t) for t in _tasks(model, cand, types, importance_for(importance, cand), offset, src_id)]
    den = sum(p.den for p in parts)
    return [curves.CurvePoint(t, cand.nbytes[t], sum(p.num[t] for p in parts) / den if den > 0 else 0.0, None,
                              sum(p.seconds[t] for p in parts)) for t in types]
