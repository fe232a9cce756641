"""The Pareto front of plans: file bytes, predicted time per prompt and per token, predicted error.

``front(FrontOptions(model, ...)) -> FrontResult`` is ``hifikit plan MODEL --front``. It plans the same
sweep again and again (plan.make_plan, allocate.allocate_limited with a speed budget) over a grid of byte
budgets x speed limits and keeps the plans no other plan beats on every axis, so a user can pick one:

- byte budgets: ``sizes`` of them, evenly from the smallest file the candidates allow to the file with
  every swept tensor at its lowest-error candidate;
- speed limits (with the stored cost model, docs/costs.md): per budget no limit, and ``speeds - 1``
  limits on both the time per prompt and per generated token, evenly between the fastest the candidates
  allow (every tensor at its fastest type, a bound no plan may reach) and the slowest unlimited plan.

A grid cell whose budgets cannot be met gives no plan. A cell's point is the plan of least predicted
error among the grid's plans that meet its budgets (its own or one made under tighter budgets), so more
bytes or a looser limit never give a worse point; the plan at the largest budget without a limit is the
best of the grid. Without stored costs for this machine (``hifikit costs MODEL``) the front is 2-D:
bytes and error, and ``note`` says so. Nothing is written but the optional plot and strategies; no run is
created (planning measures nothing).
"""
from __future__ import annotations

import dataclasses
import logging
import sqlite3
from pathlib import Path
from typing import Any, Sequence

from . import plots, speed, strategy
from .. import db, gguf_io, jobs
from ..errors import HifikitError
from ..frontier import nondominated, pareto_front
from ..quant_rules import resolve_type
from ..sweep import knee
from .plan import Plan, SpeedBudget, Target, cached_dry_run, ftype_file_size, load_inputs, make_plan

log = logging.getLogger(__name__)

# a limit or budget a plan meets within float noise counts as met
SLACK = 1e-9


@dataclasses.dataclass
class FrontOptions:
    model: Path                        # the model to quantize (F16/BF16/F32 GGUF)
    from_run: int | None = None        # the analyze run whose curves to use (default: the latest of the model)
    mode: str | None = None            # proxy | measured | calibrated (default: curves.default_mode)
    imatrix: Path | None = None        # the importance matrix the quantization will use
    base_ftype: str = "Q8_0"           # as plan's: unswept tensors get llama-quantize's choice under it
    types: Sequence[str] | None = None     # the candidate types to allow (default: every type of the sweep)
    error_scale: str = "none"          # none | elements
    sizes: int = 10                    # byte budgets of the grid
    speeds: int = 5                    # speed levels per budget: no limit and speeds - 1 limits
    costs: speed.SpeedLimits = dataclasses.field(default_factory=speed.SpeedLimits)
    # ^ which stored costs (fingerprint, threads, n_prompt, n_gen, working set); its limit fields are not read
    use_speed: bool | None = None      # None: with the stored costs when there are any; True: required; False: 2-D
    reference: str | None = None       # an ftype whose file size (and predicted speed) is shown beside the front
    plots: Path | None = None          # write the front's PNG here
    strategies: Path | None = None     # write each front point's strategy YAML here (front-NN.yaml)


@dataclasses.dataclass
class FrontPoint:
    budget_bytes: int                  # the byte budget of the grid cell
    pp_limit: float | None             # its limit in seconds per prompt (None: no limit)
    tg_limit: float | None             # its limit in seconds per generated token
    predicted_bytes: int
    predicted_error: float
    lower_bound: float                 # the cell's Lagrangian bound on the least error under its budgets
    bpw: float                         # bits per weight of the whole file
    pp_seconds: float | None           # predicted (None without the cost model)
    tg_seconds: float | None
    pp_tps: float | None
    tg_tps: float | None
    plan: Plan
    strategy: str | None = None        # the strategy file written for it (with strategies)

    def plan_args(self, n_prompt: int | None) -> list[str]:
        """The `hifikit plan` budget options that hold a plan to this point's budgets."""
        args = ["--target-size", repr(self.budget_bytes / 2**20)]
        if self.pp_limit is not None and n_prompt:
            args += ["--min-pp", f"{n_prompt / self.pp_limit:.17g}"]
        if self.tg_limit is not None:
            args += ["--min-tg", f"{1.0 / self.tg_limit:.17g}"]
        return args

    def to_json(self, n_prompt: int | None = None) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for t in self.plan.tensors:
            counts[t.type] = counts.get(t.type, 0) + 1
        return {"budget_bytes": self.budget_bytes, "budget_mib": self.budget_bytes / 2**20,
                "pp_limit_seconds": self.pp_limit, "tg_limit_seconds": self.tg_limit,
                "predicted_bytes": self.predicted_bytes, "predicted_mib": self.predicted_bytes / 2**20,
                "bpw_file": self.bpw, "predicted_error": self.predicted_error, "lower_bound": self.lower_bound,
                "pp_seconds": self.pp_seconds, "tg_seconds": self.tg_seconds, "pp_tps": self.pp_tps,
                "tg_tps": self.tg_tps, "types": counts, "plan_args": self.plan_args(n_prompt),
                "strategy": self.strategy}


@dataclasses.dataclass
class FrontResult:
    model: str
    run_id: int                        # the sweep run
    mode: str
    error_scale: str
    points: list[FrontPoint]           # the non-dominated plans, by predicted bytes
    dimensions: list[str]              # what the front is over: bytes, pp_seconds, tg_seconds, error (or 2)
    n_prompt: int | None               # the prompt length the prompt times are for (None without costs)
    source: str | None                 # where the costs came from
    note: str | None                   # why the front is 2-D, when it is
    reference: dict[str, Any] | None   # ftype, bytes, pp_seconds, tg_seconds, pp_tps, tg_tps (speeds with costs)
    budgets: list[int]                 # the grid's byte budgets
    tried: int                         # grid cells planned
    infeasible: int                    # cells whose budgets no plan met
    plot: str | None

    @property
    def best(self) -> FrontPoint:
        """The point of least predicted error: the plan the largest budget without a speed limit gets
        (reported with the tightest budgets of the grid that it meets)."""
        return min(self.points, key=lambda p: (p.predicted_error, p.predicted_bytes))

    def to_json(self) -> dict[str, Any]:
        """What `hifikit plan --front --json` prints."""
        return {"model": self.model, "run": self.run_id, "mode": self.mode, "error_scale": self.error_scale,
                "dimensions": self.dimensions, "n_prompt": self.n_prompt, "source": self.source, "note": self.note,
                "reference": self.reference, "budgets": self.budgets, "tried": self.tried,
                "infeasible": self.infeasible, "plot": self.plot,
                "points": [p.to_json(self.n_prompt) for p in self.points]}


@dataclasses.dataclass
class _Cell:
    budget: int
    limits: tuple[float | None, float | None]
    plan: Plan | None = None


def _times(p: Plan) -> tuple[float, float]:
    return (p.speed["pp_seconds"], p.speed["tg_seconds"]) if p.speed else (0.0, 0.0)


def _meets(p: Plan, cell: _Cell) -> bool:
    if p.predicted_bytes > cell.budget:
        return False
    return all(lim is None or t <= lim * (1 + SLACK) for t, lim in zip(_times(p), cell.limits))


def front(opts: FrontOptions, *, conn: sqlite3.Connection | None = None) -> FrontResult:
    """The (bytes, predicted pp and tg time, predicted error) Pareto front of the plans of one sweep."""
    gguf_io.check_model(opts.model)
    jobs.check_positive(front_sizes=opts.sizes, front_speeds=opts.speeds)
    ref_ftype = resolve_type(opts.reference) if opts.reference else None
    if opts.strategies is not None and Path(opts.strategies).exists() and not Path(opts.strategies).is_dir():
        raise HifikitError(f"{opts.strategies}: not a directory (where the front's strategies go)")
    conn = conn or db.connect()
    inputs = load_inputs(conn, opts.model, opts.from_run, opts.mode, opts.imatrix, opts.base_ftype, opts.types)
    model, base, sweep, layout = inputs.model, inputs.base, inputs.sweep, inputs.layout
    imatrix, ikeys, types = inputs.imatrix, inputs.imatrix_keys, inputs.types
    base_types = cached_dry_run(conn, model, base, imatrix)
    ref_types = cached_dry_run(conn, model, ref_ftype, imatrix) if ref_ftype else None

    sp: SpeedBudget | None = None
    note = None
    if opts.use_speed is not False:
        try:
            sp = speed.unlimited(conn, model, opts.costs, speed.priced_types(sweep, layout, base_types, types),
                                 ref_types)
        except HifikitError as exc:
            if opts.use_speed:
                raise
            note = (f"no stored cost model for this model and machine ({str(exc).splitlines()[0]}): the front is "
                    "(bytes, error) only; 'hifikit costs MODEL' measures one")
            log.debug("%s", note)

    def make(budget: int, limits: tuple[float | None, float | None]) -> Plan:
        budgeted = dataclasses.replace(sp, limits=limits) if sp is not None else None
        return make_plan(sweep, model, layout, Target("size", repr(budget / 2**20)), budget, base_types, base,
                         imatrix, ikeys, opts.error_scale, types, knee.knee_type, speed=budgeted)

    # the byte range: every swept tensor at its smallest candidate .. at its lowest-error one
    widest = make(1 << 62, (None, None))
    low = widest.meta_bytes + widest.fixed_bytes + sum(min(o.cost for o in t.options) for t in widest.tensors)
    high = widest.predicted_bytes
    n = opts.sizes
    budgets = sorted({low + (high - low) * i // (n - 1) for i in range(n)}) if n > 1 and high > low else [high]

    cells: list[_Cell] = []
    for b in budgets:
        cell = _Cell(b, (None, None))
        try:
            cell.plan = make(b, cell.limits)
        except HifikitError as exc:
            log.debug("budget %d: %s", b, exc)
        cells.append(cell)
    if sp is not None and opts.speeds > 1:
        free = [c.plan for c in cells if c.plan is not None]
        slow = tuple(max(_times(p)[k] for p in free) for k in (0, 1))
        fixed_pp, fixed_tg = sp.total(widest.fixed)
        fast = (fixed_pp + sum(min(o.seconds[0] for o in t.options) for t in widest.tensors),
                fixed_tg + sum(min(o.seconds[1] for o in t.options) for t in widest.tensors))
        for b in budgets:
            for j in range(1, opts.speeds):
                f = j / opts.speeds
                cell = _Cell(b, (fast[0] + f * (slow[0] - fast[0]), fast[1] + f * (slow[1] - fast[1])))
                try:
                    cell.plan = make(b, cell.limits)
                except HifikitError as exc:
                    log.debug("budget %d, limits %s: %s", b, cell.limits, exc)
                cells.append(cell)
    plans = [c.plan for c in cells if c.plan is not None]
    if not plans:
        raise HifikitError("no plan meets any budget of the grid")

    # each cell's point: the least-error plan of the grid that meets its budgets; tighter cells first,
    # so a plan shared by several cells is reported with the tightest budgets it was found for
    order = sorted(cells, key=lambda c: (c.budget, *(lim if lim is not None else float("inf") for lim in c.limits)))
    seen: dict[int, FrontPoint] = {}
    for cell in order:
        if cell.plan is None:
            continue
        best = min((p for p in plans if _meets(p, cell)), key=lambda p: (p.predicted_error, p.predicted_bytes))
        if id(best) in seen:
            continue
        pp, tg = (best.speed["pp_seconds"], best.speed["tg_seconds"]) if best.speed else (None, None)
        # the point's plan carries the budgets it is reported with (it meets them), so its strategy says so
        shown = dataclasses.replace(best, budget=cell.budget, target=Target("size", repr(cell.budget / 2**20)),
                                    speed={**best.speed, "limits": list(cell.limits)} if best.speed else None)
        seen[id(best)] = FrontPoint(cell.budget, *cell.limits, best.predicted_bytes, best.predicted_error,
                                    cell.plan.lower_bound, best.bpw, pp, tg,
                                    sp.n_prompt / pp if pp else None, 1.0 / tg if tg else None, shown)
    candidates = list(seen.values())
    if sp is not None:
        keep = nondominated([(p.predicted_bytes, p.pp_seconds, p.tg_seconds, p.predicted_error) for p in candidates],
                            rel_tol=SLACK)
        dims = ["bytes", "pp_seconds", "tg_seconds", "error"]
    else:
        keep = pareto_front([p.predicted_bytes for p in candidates], [p.predicted_error for p in candidates])
        dims = ["bytes", "error"]
    points = sorted((candidates[i] for i in keep), key=lambda p: (p.predicted_bytes, p.predicted_error))

    reference = None
    if ref_ftype:
        ref_bytes = ftype_file_size(conn, model, layout, ref_ftype, imatrix, ikeys)
        reference = {"ftype": ref_ftype, "bytes": ref_bytes}
        if sp is not None and ref_types is not None:
            rpp, rtg = sp.total(ref_types)
            reference.update(pp_seconds=rpp, tg_seconds=rtg, pp_tps=sp.n_prompt / rpp, tg_tps=1.0 / rtg)
    if opts.strategies is not None:
        out_dir = Path(opts.strategies)
        out_dir.mkdir(parents=True, exist_ok=True)
        for i, p in enumerate(points):
            path = out_dir / f"front-{i:02d}.yaml"
            strategy.write(p.plan, path)
            p.strategy = str(path.resolve())
    res = FrontResult(str(model), sweep.run_id, sweep.mode, opts.error_scale, points, dims,
                      sp.n_prompt if sp else None, sp.source if sp else None, note, reference, budgets, len(cells),
                      sum(c.plan is None for c in cells), None)
    if opts.plots:
        res.plot = str(plots.front_plot(res, Path(opts.plots) / f"{model.stem}-front.png"))
    return res
