"""The planner's speed budget, from the measured cost model (costs.py): time limits a plan must meet.

A limit is either relative to a reference ftype of the same model (``--max-slowdown R``: predicted time
per prompt and per generated token at most R x the time of llama-quantize's FTYPE file, as its dry run
chooses the types) or absolute (``--min-tg T`` / ``--min-pp T`` tokens per second). The costs are read
from the runs database, measuring nothing: ``hifikit costs MODEL`` (or ``--import``) puts them there.
"""
from __future__ import annotations

import dataclasses
import logging
import sqlite3
from pathlib import Path
from typing import Callable, Mapping, Sequence

from .. import costs, jobs
from ..errors import HifikitError
from ..quant_rules import resolve_type
from ..sweep import curves
from . import filesize
from .plan import SpeedBudget, cached_dry_run

log = logging.getLogger(__name__)


@dataclasses.dataclass
class SpeedLimits:
    """What the user asked for; every field None: no speed budget."""
    max_slowdown: float | None = None   # predicted pp and tg time at most this x the reference ftype's
    reference_ftype: str | None = None  # the ftype max_slowdown is relative to (default: the --match ftype)
    min_tg: float | None = None         # generated tokens per second, at least
    min_pp: float | None = None         # prompt tokens per second, at least
    fingerprint: str | None = None      # the machine whose costs to use (default: this one, as costs measures it)
    threads: int | None = None          # this machine's costs at that thread count (default: llama-bench's)
    n_prompt: int = costs.DEFAULT_BATCH
    n_gen: int = costs.DEFAULT_GEN
    working_set_mib: int = costs.DEFAULT_WORKING_SET_MIB   # part of this machine's fingerprint, as costs measured

    @property
    def wanted(self) -> bool:
        return any(v is not None for v in (self.max_slowdown, self.min_tg, self.min_pp))


def seconds_of(mc: costs.ModelCosts) -> Callable[[str, str], tuple[float, float]]:
    """(tensor, type) -> (seconds per prompt, per token). Tensors without weight ops (norms, 1-D) cost
    nothing here: their time is part of the measured constant."""
    def seconds(tensor: str, type_name: str) -> tuple[float, float]:
        if tensor not in mc.tensors:
            return 0.0, 0.0
        c = mc.cost(tensor, type_name)
        return c.pp_seconds, c.tg_seconds
    return seconds


def priced_types(sweep: curves.Sweep, layout: filesize.FileLayout, base_types: Mapping[str, str],
                 types: Sequence[str] | None = None) -> dict[str, list[str]]:
    """The types a plan may give each quantizable tensor, which the cost model must price: the sweep's
    candidates (those allowed by ``types``) and the base ftype's type for the tensors the plan fixes."""
    swept = {c.tensor: c for c in sweep.curves if c.points}
    wanted: dict[str, list[str]] = {}
    for slot in layout.tensors:
        if not slot.quantizable:
            continue
        curve = swept.get(slot.name)
        ts = [pt.type for pt in curve.points if types is None or pt.type in types] if curve else []
        base = base_types.get(slot.name, slot.source_type)
        wanted[slot.name] = ts + ([base] if base not in ts else [])
    return wanted


def unlimited(conn: sqlite3.Connection, model: Path, limits: SpeedLimits,
              types_by_tensor: Mapping[str, Sequence[str]], extra: Mapping[str, str] | None = None) -> SpeedBudget:
    """A SpeedBudget without limits: the stored costs of every type in types_by_tensor (and of ``extra``,
    tensor -> type, e.g. a reference ftype's) and the constant, for predicting times. The limit fields of
    ``limits`` are not read; a missing machine, case or constant is a HifikitError naming it."""
    wanted = {name: list(ts) for name, ts in types_by_tensor.items()}
    for name, t in (extra or {}).items():
        # the reference's own types are costed too (hifikit costs measures a model's own types; --types adds more)
        if name in wanted and t not in wanted[name]:
            wanted[name].append(t)
    mc, constant = costs.for_model(conn, model, fingerprint=limits.fingerprint, threads=limits.threads,
                                   n_prompt=limits.n_prompt, n_gen=limits.n_gen, types_by_tensor=wanted,
                                   working_set_mib=limits.working_set_mib)
    if constant.negative:
        log.warning("the cost model's constant is negative (%.4g s per prompt, %.4g s per token): the op "
                    "costs exceed llama-bench's time on %s; taken as 0", constant.pp_seconds, constant.tg_seconds,
                    Path(constant.reference).name)
    return SpeedBudget(seconds_of(mc), constant.rest, (None, None), f"{mc.machine.fingerprint} ({mc.machine.label})",
                       limits.n_prompt)


def budget(conn: sqlite3.Connection, model: Path, limits: SpeedLimits,
           types_by_tensor: Mapping[str, Sequence[str]],
           reference_types: Callable[[str], dict[str, str]] | None = None) -> SpeedBudget:
    """The SpeedBudget for make_plan: the costs of every candidate type of every tensor, and the limits.

    ``reference_types(ftype)`` gives the tensor -> type map of a reference ftype (the planner's cached
    llama-quantize dry run); it is needed only with max_slowdown."""
    jobs.check_positive(max_slowdown=limits.max_slowdown, min_tg=limits.min_tg, min_pp=limits.min_pp)
    if not limits.wanted:
        raise HifikitError("no speed limit given (--max-slowdown, --min-tg or --min-pp)")
    ref_types: dict[str, str] = {}
    if limits.max_slowdown is not None:
        if not limits.reference_ftype:
            raise HifikitError("--max-slowdown needs a reference ftype: plan with --match FTYPE or give --speed-ref")
        if reference_types is None:
            raise HifikitError("--max-slowdown: no way to find the reference ftype's types")
        ref_types = reference_types(limits.reference_ftype)
    partial = unlimited(conn, model, limits, types_by_tensor, ref_types)
    pp_limit: float | None = None
    tg_limit: float | None = None
    ref = None
    if ref_types:
        pp, tg = partial.total(ref_types)
        ref = {"ftype": limits.reference_ftype, "pp_seconds": pp, "tg_seconds": tg}
        pp_limit, tg_limit = limits.max_slowdown * pp, limits.max_slowdown * tg
        log.info("speed reference %s: predicted %.4g s per prompt, %.4g s per token", limits.reference_ftype, pp, tg)
    if limits.min_pp is not None:
        pp_limit = min(x for x in (pp_limit, limits.n_prompt / limits.min_pp) if x is not None)
    if limits.min_tg is not None:
        tg_limit = min(x for x in (tg_limit, 1.0 / limits.min_tg) if x is not None)
    return dataclasses.replace(partial, limits=(pp_limit, tg_limit), reference=ref)


def plan_budget(conn: sqlite3.Connection, model: Path, limits: SpeedLimits, sweep: curves.Sweep,
                layout: filesize.FileLayout, base_types: Mapping[str, str], *, match: str | None = None,
                types: Sequence[str] | None = None, imatrix: Path | None = None) -> SpeedBudget:
    """budget() for a plan: every type the plan may choose priced, a relative limit against ``match``
    (the ftype whose size the plan matches) unless the limits name their own reference."""
    if limits.reference_ftype is None and match is not None:
        limits = dataclasses.replace(limits, reference_ftype=match)
    return budget(conn, model, limits, priced_types(sweep, layout, base_types, types),
                  lambda ftype: cached_dry_run(conn, model, resolve_type(ftype), imatrix))
