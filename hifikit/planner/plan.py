"""The size-budget planner: one type per tensor, least total predicted error, exact file bytes.

Inputs: a sweep (curves.Sweep: per tensor, each candidate's error), the model
(filesize.FileLayout) and a byte budget for the whole output file. Each
tensor's cost is its data padded to the GGUF alignment; the metadata and the
tensors the planner does not choose are fixed costs. Tensors not in the sweep
keep the type ``llama-quantize`` gives them with the strategy's base ftype
(its ``--dry-run``, so norms stay F32 and unswept weights get the base
ftype's mixture); the strategy lists them under ``fixed``.

Candidates are the sweep's points whose type's block size divides the row
length (others would be silently replaced by upstream's fallback) and, without
an imatrix, that llama-quantize can write without one.

Targets (the budget is bytes of the whole file, metadata included):
- ``bpw X``: 8 x file bytes / weights of all tensors <= X;
- ``size MiB``: file bytes <= MiB x 2^20;
- ``match FTYPE``: file bytes <= the size of the file llama-quantize writes
  with that ftype (its --dry-run types through the file size model).

``plan(PlanOptions(model, output, target, ...)) -> PlanResult`` is the job of
``hifikit plan``: it plans from a sweep run, writes the strategy (strategy.py)
and, with ``verify``, quantizes with it and measures the file against the model
as one tracked run named ``plan-verify`` (``PlanVerifyResult.from_run`` reads
one back).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import sqlite3
import math
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from . import allocate, filesize, plots, strategy
from .. import atomic, db, evaluate, ggml, gguf_io, grid, jobs, kld, parsers, report, runner
from ..errors import HifikitError
from ..quant_rules import check_imatrix, requires_imatrix, resolve_type
from ..sweep import curves, knee
from ..sweep import plots as curve_plots

log = logging.getLogger(__name__)

ERROR_SCALES = ("none", "elements")
# error differences below this share of the sweep's largest error are noise (a re-quantization that
# reproduces the source grid gives 1e-7-level relative errors, not exact zeros): never buy bytes for them
TIE_SHARE = 1e-6


@dataclasses.dataclass(frozen=True)
class Target:
    kind: str          # bpw | size | match
    value: str         # as given: "4.5", "230", "Q3_K_M"

    def describe(self) -> str:
        return {"bpw": f"{self.value} bits per weight (whole file)", "size": f"{self.value} MiB (whole file)",
                "match": f"the size of llama-quantize's {self.value}"}[self.kind]


@dataclasses.dataclass
class Option:
    type: str
    nbytes: int            # tensor data, unpadded (as the sweep stores it)
    cost: int              # padded: what it costs in the file
    error: float           # as the sweep gives it
    weighted: float        # error x the tensor's scale: what the planner adds up
    seconds: tuple[float, float] | None = None   # (per prompt, per generated token) with a speed budget


@dataclasses.dataclass
class SpeedBudget:
    """Time limits on the whole file, and what each tensor costs in each type (costs.py measures it)."""
    seconds: Callable[[str, str], tuple[float, float]]   # (tensor, type) -> (s per prompt, s per token)
    constant: tuple[float, float]       # everything that is not a weight op, per prompt and per token
    limits: tuple[float | None, float | None]            # at most these totals (None: no limit)
    source: str                         # where the costs came from (machine, build, threads)
    n_prompt: int                       # the prompt length the prompt time is for
    reference: dict | None = None       # a relative limit's ftype and its predicted pp/tg seconds

    def total(self, types: dict[str, str]) -> tuple[float, float]:
        """Predicted seconds per prompt and per token of a file with these types (every weight priced)."""
        pp, tg = self.constant
        for name, t in types.items():
            a, b = self.seconds(name, t)
            pp, tg = pp + a, tg + b
        return pp, tg


@dataclasses.dataclass
class TensorPlan:
    name: str
    shape: tuple[int, ...]
    n_elements: int
    type: str
    reason: str
    options: list[Option]
    knee: str | None = None

    def option(self, type_name: str) -> Option:
        for o in self.options:
            if o.type == type_name:
                return o
        raise HifikitError(f"{self.name}: {type_name} is not one of its candidates")


@dataclasses.dataclass
class Plan:
    model: str
    target: Target
    budget: int
    base_ftype: str
    imatrix: str | None
    run_id: int
    mode: str
    error_scale: str
    tensors: list[TensorPlan]
    fixed: dict[str, str]          # tensor -> type, not chosen by the planner
    meta_bytes: int
    fixed_bytes: int               # padded data of the fixed tensors
    predicted_bytes: int
    predicted_error: float         # sum of the chosen options' errors (scaled)
    lower_bound: float             # Lagrangian bound on the best possible predicted error
    n_weights: int
    speed: dict | None = None      # with a speed budget: predicted and allowed times, where the costs came from

    @property
    def types(self) -> dict[str, str]:
        return {**self.fixed, **{t.name: t.type for t in self.tensors}}

    @property
    def bpw(self) -> float:
        return 8.0 * self.predicted_bytes / self.n_weights


def make_target(bpw: str | None = None, size: str | None = None, match: str | None = None) -> Target:
    """The one target given (an ftype name is checked against this build's llama-quantize)."""
    given = [(k, v) for k, v in (("bpw", bpw), ("size", size), ("match", match)) if v is not None]
    if len(given) != 1:
        raise HifikitError("give one target: --target-bpw X, --target-size MiB or --match FTYPE")
    kind, value = given[0]
    if kind == "match":
        value = resolve_type(value)
    return Target(kind, str(value))


def find_sweep_run(conn, model: Path) -> int:
    """The latest analyze run of this model that has curves."""
    model = Path(model).resolve()

    def of_model(args: dict) -> bool:
        path = args.get("model") or args.get("input")
        return bool(path) and Path(path).resolve() == model

    def with_curves(run_id: int) -> bool:
        return conn.execute("SELECT 1 FROM curve_points WHERE run_id=? LIMIT 1", (run_id,)).fetchone() is not None

    found = jobs.latest_run(conn, "analyze", of_model, with_curves)
    if found is None:
        raise HifikitError(f"no 'hifikit analyze' run of {model} with curves; run it, or name one with --from-run")
    return found


def quantized_base(name: str) -> str:
    """The base ftype given to llama-quantize, which must quantize (the unswept tensors get its types)."""
    base = resolve_type(name)
    if base.upper() in strategy.UNQUANTIZED_BASES:
        raise HifikitError(f"--base-ftype {base}: per-tensor types need a quantized base ftype (e.g. Q8_0)")
    return base


@dataclasses.dataclass
class SweepInputs:
    """What every planner front (plan, the front, an editing session) reads first, checked as plan checks it."""
    model: Path
    base: str                          # the base ftype, resolved
    run_id: int                        # the sweep run (the latest of the model by default)
    sweep: curves.Sweep
    layout: filesize.FileLayout
    imatrix: Path | None               # resolved
    imatrix_keys: filesize.ImatrixKeys | None
    types: list[str] | None            # the candidate types allowed (None: every type of the sweep)


def load_inputs(conn: sqlite3.Connection, model: Path | str, from_run: int | None, mode: str | None,
                imatrix: Path | str | None, base_ftype: str, types: Sequence[str] | None) -> SweepInputs:
    path = gguf_io.check_model(model)
    check_imatrix(imatrix)
    base = quantized_base(base_ftype)
    run_id = from_run if from_run is not None else find_sweep_run(conn, path)
    sweep = curves.load_sweep(conn, run_id, mode)
    layout = filesize.FileLayout.read(path)
    im = Path(imatrix).resolve() if imatrix else None
    ikeys = filesize.ImatrixKeys.from_file(im, str(im)) if im else None
    return SweepInputs(path, base, run_id, sweep, layout, im, ikeys, [t.strip() for t in types] if types else None)


def type_fits(slot: filesize.TensorSlot, type_name: str) -> bool:
    return slot.row_length % ggml.load().type_by_name(type_name).block_size == 0


def dry_run_types(model: Path, ftype: str, imatrix: Path | None = None, extra: Sequence[str] = ()) -> dict[str, str]:
    """Tensor -> type as ``llama-quantize --dry-run [EXTRA] MODEL FTYPE`` chooses them."""
    args: list = ["--dry-run", *extra]
    if imatrix:
        args += ["--imatrix", imatrix]
    res = runner.run_tool("llama-quantize", [*args, model, ftype])
    return {t.name: t.target_type for t in parsers.parse_quantize(res.text).tensors}


def cached_dry_run(conn, model: Path, ftype: str, imatrix: Path | None = None, extra: Sequence[str] = ()
                   ) -> dict[str, str]:
    """dry_run_types, cached in $HIFIKIT_HOME by model and imatrix content, arguments and build."""
    parts = [db.file_sha256(conn, model), ftype, db.file_sha256(conn, imatrix) if imatrix else "",
             json.dumps(list(extra)), json.dumps(jobs.versions(), sort_keys=True, default=str)]
    path = db.home() / "cache" / "dry-run" / f"{hashlib.sha256(chr(0).join(parts).encode()).hexdigest()[:32]}.json"
    if path.is_file():
        try:
            return dict(json.loads(path.read_text())["types"])
        except (ValueError, KeyError, TypeError):
            pass
    types = dry_run_types(model, ftype, imatrix, extra)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(path, json.dumps({"model": str(model), "ftype": ftype, "extra": list(extra), "types": types}))
    return types


def ftype_file_size(conn, model: Path, layout: filesize.FileLayout, ftype: str, imatrix: Path | None,
                    imatrix_keys: filesize.ImatrixKeys | None, extra: Sequence[str] = ()) -> int:
    """Bytes of the file llama-quantize writes for this model and ftype (its dry run is cached)."""
    return filesize.file_size(layout, cached_dry_run(conn, model, ftype, imatrix, extra), imatrix_keys)


def budget_for(target: Target, layout: filesize.FileLayout, match_size: Callable[[str], int]) -> int:
    n_weights = sum(t.n_elements for t in layout.tensors)
    try:
        if target.kind == "bpw":
            return int(float(target.value) * n_weights // 8)
        if target.kind == "size":
            return int(float(target.value) * 2**20)
    except ValueError as exc:
        raise HifikitError(f"--target-{target.kind}: not a number: {target.value!r}") from exc
    if target.kind == "match":
        return match_size(target.value)
    raise HifikitError(f"unknown target kind '{target.kind}'")


def scale_of(curve: curves.TensorCurve, how: str, total_elements: int) -> float:
    if how == "none":
        return 1.0
    if how == "elements":
        return curve.n_elements / total_elements
    raise HifikitError(f"unknown error scale '{how}' (expected one of {', '.join(ERROR_SCALES)})")


def candidates(curve: curves.TensorCurve, slot: filesize.TensorSlot, scale: float, has_imatrix: bool,
               types: list[str] | None = None, ftype: str | None = None) -> list[Option]:
    out = []
    wanted = {t.lower() for t in types} if types else None
    for p in curve.points:
        if wanted is not None and p.type.lower() not in wanted:
            continue
        if not type_fits(slot, p.type):
            continue
        if not has_imatrix and requires_imatrix(slot.name, p.type, ftype):
            continue
        nbytes = filesize.tensor_bytes(slot, p.type)
        if nbytes != p.nbytes:
            raise HifikitError(f"{curve.tensor}: {p.type} is stored as {p.nbytes} bytes, "
                               f"the model's shape gives {nbytes} (sweep of another model?)")
        out.append(Option(p.type, nbytes, filesize.pad(nbytes), p.error, p.error * scale))
    return out


@dataclasses.dataclass
class PlanInputs:
    """What a plan is made of before any budget: the planned tensors' candidates, the fixed tensors and the
    metadata's bytes. ``prepare`` derives it from a sweep and a model once; ``plan_from`` plans on it for
    any budget and pins (a PlanSession keeps one and re-plans on it after each edit)."""
    model: str
    run_id: int
    mode: str
    base_ftype: str
    imatrix: str | None
    error_scale: str
    slots: dict[str, filesize.TensorSlot]
    planned: list[tuple[str, list[Option]]]     # tensor -> its candidates, in the model's order
    fixed: dict[str, str]                       # tensor -> type, not chosen by the planner
    meta_bytes: int                             # with the HIFI format key when a HIFI type may be chosen
    meta_bytes_stock: int                       # without it: the metadata of a plan that chooses none
    fixed_bytes: int                            # padded data of the fixed tensors
    n_weights: int
    knees: dict[str, str | None]
    tie: float                                  # errors closer than this are noise (TIE_SHARE of the largest)


def prepare(sweep: curves.Sweep, model: Path, layout: filesize.FileLayout, base_types: dict[str, str],
            base_ftype: str, imatrix: Path | None, imatrix_keys: filesize.ImatrixKeys | None,
            error_scale: str = "none", types: list[str] | None = None,
            knees: Callable[[curves.TensorCurve], str | None] | None = None) -> PlanInputs:
    """The candidates of every planned tensor and the fixed part of the file; base_types (llama-quantize's
    choice under base_ftype) fills the unswept tensors."""
    slots = {t.name: t for t in layout.tensors}
    unknown = [c.tensor for c in sweep.curves if c.tensor not in slots]
    if unknown:
        raise HifikitError(f"sweep run {sweep.run_id} has tensors this model lacks: {', '.join(unknown[:5])} "
                           "(a sweep of another model?)")
    total = sum(t.n_elements for t in layout.tensors)
    planned: list[tuple[str, list[Option]]] = []
    fixed: dict[str, str] = {}
    knee_of: dict[str, str | None] = {}
    swept = {c.tensor: c for c in sweep.curves if c.points}
    for slot in layout.tensors:
        curve = swept.get(slot.name)
        if curve is None or not slot.quantizable:
            fixed[slot.name] = base_types.get(slot.name, slot.source_type) if slot.quantizable else slot.source_type
            continue
        opts = candidates(curve, slot, scale_of(curve, error_scale, total), imatrix is not None, types, base_ftype)
        if not opts:
            raise HifikitError(f"{slot.name}: no candidate type fits its rows of {slot.row_length} "
                               f"(sweep types: {', '.join(p.type for p in curve.points)})")
        planned.append((slot.name, opts))
        knee_of[slot.name] = knees(curve) if knees else None
    # the budget holds the metadata with the HIFI format key whenever a HIFI type can end up in the file
    # (llama-quantize writes it then); a plan that chooses none is predicted without it
    may_be_hifi = filesize.has_hifi([*fixed.values(), *(o.type for _, opts in planned for o in opts)])
    meta = layout.meta_bytes(imatrix_keys, hifi=may_be_hifi)
    meta_stock = layout.meta_bytes(imatrix_keys)
    fixed_bytes = sum(filesize.padded_bytes(slots[n], t) for n, t in fixed.items())
    largest = max((o.weighted for _, opts in planned for o in opts), default=0.0)
    return PlanInputs(str(model), sweep.run_id, sweep.mode, base_ftype, str(imatrix) if imatrix else None,
                      error_scale, slots, planned, fixed, meta, meta_stock, fixed_bytes, total, knee_of,
                      TIE_SHARE * largest)


PINNED = "pinned by the user"


def _pinned_index(inputs: PlanInputs, pins: Mapping[str, str]) -> dict[str, int]:
    """Planned tensor -> the index of its pinned option; one error line for the first bad pin."""
    lib = ggml.load()
    options = dict(inputs.planned)
    out: dict[str, int] = {}
    for name, type_name in pins.items():
        opts = options.get(name)
        if opts is None:
            if name in inputs.fixed:
                why = ("llama-quantize does not quantize it" if not inputs.slots[name].quantizable
                       else "the sweep has no curve for it")
                raise HifikitError(f"pin {name}={type_name}: the tensor is not planned ({why}); "
                                   f"it keeps {inputs.fixed[name]}")
            raise HifikitError(f"pin {name}={type_name}: no such tensor in {inputs.model}")
        found = [k for k, o in enumerate(opts) if o.type.lower() == str(type_name).lower()]
        if not found:
            try:
                block: int | None = lib.type_by_name(str(type_name)).block_size
            except HifikitError:
                block = None
            row = inputs.slots[name].row_length
            why = (f"unknown type '{type_name}'" if block is None else
                   f"{type_name} does not fit its rows: {row} is not a multiple of the block size {block}"
                   if row % block else f"{type_name} is not one of its candidates")
            raise HifikitError(f"pin {name}={type_name}: {why} (candidates: {', '.join(o.type for o in opts)})")
        out[name] = found[0]
    return out


def plan_from(inputs: PlanInputs, target: Target, budget: int, pins: Mapping[str, str] | None = None,
              speed: SpeedBudget | None = None) -> Plan:
    """Choose the types of the planned tensors of ``inputs`` within the budget (bytes of the whole file).

    A pinned tensor (pins: tensor -> type, one of its candidates) takes exactly that type, its reason
    "pinned by the user"; the others are planned in the bytes (and times) the pins leave. With a speed
    budget the plan also keeps the predicted time per prompt and per generated token within its limits
    (allocate.allocate_limited); fixed tensors' times count against them."""
    pinned = _pinned_index(inputs, pins or {})
    meta, fixed_bytes, fixed = inputs.meta_bytes, inputs.fixed_bytes, inputs.fixed
    capacity = budget - meta - fixed_bytes
    planned = inputs.planned
    if speed is not None:
        planned = [(name, [dataclasses.replace(o, seconds=speed.seconds(name, o.type)) for o in opts])
                   for name, opts in planned]
    # a pinned tensor is an item of one option
    offered = [[opts[pinned[name]]] if name in pinned else opts for name, opts in planned]
    if pinned:
        floor = meta + fixed_bytes + sum(min(o.cost for o in opts) for opts in offered)
        if floor > budget:
            taken = sum(opts[0].cost for (name, _), opts in zip(planned, offered) if name in pinned)
            raise HifikitError(f"the pins do not fit the target {target.describe()} ({budget} bytes): the "
                               f"{len(pinned)} pinned tensor(s) take {taken} bytes, and with every other tensor "
                               f"at its smallest candidate the file would be {floor} bytes, {floor - budget} over")
    items = [[(o.cost, o.weighted) for o in opts] for opts in offered]
    speed_info = None
    try:
        if speed is None:
            alloc = allocate.allocate(items, capacity, tie=inputs.tie)
        else:
            fixed_time = speed.total(fixed)
            limits = [(lim - f) if lim is not None else math.inf for lim, f in zip(speed.limits, fixed_time)]
            if any(lim <= 0 for lim in limits):
                raise HifikitError(f"the speed budget cannot be met: the tensors the planner does not choose and "
                                   f"the rest of the graph already take {fixed_time[0]:.4g} s per prompt and "
                                   f"{fixed_time[1]:.4g} s per token")
            alloc = allocate.allocate_limited(items, capacity, [[o.seconds for o in opts] for opts in offered],
                                              limits, tie=inputs.tie)
            if not alloc.feasible:
                raise HifikitError("no choice of types meets both the size and the speed budget (the fastest "
                                   f"choice found takes {alloc.totals[0] + fixed_time[0]:.4g} s per prompt, "
                                   f"{alloc.totals[1] + fixed_time[1]:.4g} s per token)")
            times = (alloc.totals[0] + fixed_time[0], alloc.totals[1] + fixed_time[1])
            speed_info = {"pp_seconds": times[0], "tg_seconds": times[1], "n_prompt": speed.n_prompt,
                          "pp_tps": speed.n_prompt / times[0], "tg_tps": 1.0 / times[1],
                          "limits": list(speed.limits), "multipliers": list(alloc.multipliers),
                          "source": speed.source, **({"reference": speed.reference} if speed.reference else {})}
    except HifikitError as exc:
        raise HifikitError(f"target {target.describe()} ({budget} bytes) cannot be met: metadata {meta} + "
                           f"fixed tensors {fixed_bytes} bytes leave {capacity}; {exc}") from exc
    plans = []
    for (name, opts), j, stage in zip(planned, alloc.choice, alloc.stage):
        slot, knee = inputs.slots[name], inputs.knees.get(name)
        if name in pinned:
            j = pinned[name]
            reason = _with_knee(PINNED, opts, j, knee)
        else:
            reason = _reason(stage, opts, j, knee)
        plans.append(TensorPlan(name, slot.shape, slot.n_elements, opts[j].type, reason, opts, knee))
    if not filesize.has_hifi([*fixed.values(), *(p.type for p in plans)]):
        meta = inputs.meta_bytes_stock
    predicted = meta + fixed_bytes + alloc.bytes
    return Plan(inputs.model, target, budget, inputs.base_ftype, inputs.imatrix, inputs.run_id, inputs.mode,
                inputs.error_scale, plans, dict(fixed), meta, fixed_bytes, predicted, alloc.error,
                alloc.lower_bound, inputs.n_weights, speed_info)


def make_plan(sweep: curves.Sweep, model: Path, layout: filesize.FileLayout, target: Target, budget: int,
              base_types: dict[str, str], base_ftype: str, imatrix: Path | None,
              imatrix_keys: filesize.ImatrixKeys | None, error_scale: str = "none",
              types: list[str] | None = None, knees: Callable[[curves.TensorCurve], str | None] | None = None,
              speed: SpeedBudget | None = None, pins: Mapping[str, str] | None = None) -> Plan:
    """Choose the types; base_types (llama-quantize's choice under base_ftype) fills the unswept tensors.

    prepare + plan_from: pins (tensor -> type) hold tensors at a type of their own candidates; with a
    speed budget the plan also keeps the predicted times within its limits."""
    inputs = prepare(sweep, model, layout, base_types, base_ftype, imatrix, imatrix_keys, error_scale, types, knees)
    return plan_from(inputs, target, budget, pins, speed)


def _reason(stage: str, opts: list[Option], j: int, knee: str | None) -> str:
    cheapest = min(range(len(opts)), key=lambda k: (opts[k].cost, opts[k].weighted))
    best = min(range(len(opts)), key=lambda k: (opts[k].weighted, opts[k].cost))
    words = {"minimum": "smallest candidate: no upgrade paid for its bytes",
             "hull": "best error per byte",
             "fill": "budget fill",
             "exchange": "budget fill (exchanged bytes with another tensor)",
             "spare": "spare bytes (a gain at the noise level of the curves)",
             "branch": "a large tensor: the best of its options, the rest re-planned for each",
             "time": "moved to a faster type to meet the speed budget"}[stage]
    if j == best and stage != "minimum":
        words = "lowest error of its candidates"
    elif j == cheapest and stage == "minimum":
        words = "smallest candidate: no upgrade paid for its bytes"
    return _with_knee(words, opts, j, knee)


def _with_knee(words: str, opts: list[Option], j: int, knee: str | None) -> str:
    if knee:
        rel = ("at" if knee == opts[j].type else
               "above" if opts[j].cost > _cost_of(opts, knee) else "below")
        words = f"{words}; {rel} the knee ({knee})"
    return words


def _cost_of(opts: list[Option], type_name: str) -> int:
    for o in opts:
        if o.type == type_name:
            return o.cost
    return 0


def summary(plan: Plan) -> dict:
    """The plan's figures for --json and the text summary."""
    counts: dict[str, int] = {}
    bytes_by_type: dict[str, int] = {}
    for t in plan.tensors:
        counts[t.type] = counts.get(t.type, 0) + 1
        bytes_by_type[t.type] = bytes_by_type.get(t.type, 0) + t.option(t.type).cost
    # MoE: expert tensors are candidates like the others; their share of the file is worth seeing
    expert_bytes = sum(t.option(t.type).cost for t in plan.tensors if "_exps" in t.name)
    return {"model": plan.model, "target": dataclasses.asdict(plan.target), "budget_bytes": plan.budget,
            "predicted_bytes": plan.predicted_bytes, "predicted_mib": plan.predicted_bytes / 2**20,
            "bpw_file": plan.bpw, "predicted_error": plan.predicted_error, "lower_bound": plan.lower_bound,
            "slack_bytes": plan.budget - plan.predicted_bytes, "run": plan.run_id, "mode": plan.mode,
            "error_scale": plan.error_scale, "base_ftype": plan.base_ftype, "types": counts,
            "type_bytes": bytes_by_type, "n_planned": len(plan.tensors), "n_fixed": len(plan.fixed),
            "expert_bytes": expert_bytes, "expert_share": expert_bytes / plan.predicted_bytes,
            "speed": plan.speed}


@dataclasses.dataclass
class VerifyOptions:
    """Quantize with the strategy and measure the file against the model (KL divergence over a text)."""
    text: Path
    ctx: int = 512
    chunks: int | None = None          # default: all that fit
    threads: int | None = None
    output: Path | None = None         # the quantized GGUF (default: the strategy's name with .gguf)


@dataclasses.dataclass
class PlanOptions:
    model: Path                        # the model to quantize (F16/BF16/F32 GGUF)
    output: Path                       # the strategy YAML to write
    target: Target                     # make_target(bpw=, size=, match=)
    from_run: int | None = None        # the analyze run whose curves to use (default: the latest of the model)
    mode: str | None = None            # proxy | measured | calibrated (default: curves.default_mode)
    imatrix: Path | None = None        # the importance matrix the quantization will use
    base_ftype: str = "Q8_0"           # passed to llama-quantize; unswept tensors get its choice
    types: Sequence[str] | None = None     # the candidate types to allow (default: every type of the sweep)
    error_scale: str = "none"          # none | elements
    plots: Path | None = None          # write the overview (and the curves with the chosen types) here
    speed: SpeedBudget | None = None   # time limits besides the byte budget (made by the caller)
    verify: VerifyOptions | None = None
    speed_limits: Any = None           # speed.SpeedLimits: the budget made here from the stored cost model


@dataclasses.dataclass
class PlanVerifyResult:
    run_id: int
    output: str                        # the quantized file
    file_bytes: int
    predicted_bytes: int
    predicted_error: float | None
    rows: list[report.Row]             # the reference, then the planned file
    run: dict[str, Any]

    @classmethod
    def from_run(cls, run: dict[str, Any]) -> "PlanVerifyResult":
        q = jobs.step_result(run, "quantize")
        return cls(run["id"], q["output"], q["file_bytes"], q["predicted_bytes"], q.get("predicted_error"),
                   report.rows([run]), run)

    @property
    def measured(self) -> report.Row:
        return next(r for r in self.rows if r.role != "reference")

    def to_json(self) -> dict[str, Any]:
        m = self.measured
        return {"run": self.run_id, "output": self.output, "file_bytes": self.file_bytes,
                "predicted_bytes": self.predicted_bytes, "predicted_error": self.predicted_error,
                "models": [dataclasses.asdict(r) for r in self.rows], "kld_mean": m.kld_mean,
                "kld_error": m.kld_error, "ppl": m.ppl, "ppl_error": m.ppl_error, "same_top_p": m.same_top_p}


@dataclasses.dataclass
class PlanResult:
    plan: Plan
    strategy: str                      # the strategy file written
    summary: dict[str, Any]            # summary(plan)
    plot: str | None                   # the overview PNG (with plots)
    grid: grid.GridReport              # whether the model re-quantizes losslessly (it was published quantized)
    verify: PlanVerifyResult | None

    def to_json(self) -> dict[str, Any]:
        """What `hifikit plan --json` prints."""
        out = {**self.summary, "strategy": self.strategy, "plot": self.plot, "grid": self.grid.to_json()}
        if self.verify is not None:
            out["verify"] = self.verify.to_json()
        return out


def plan(opts: PlanOptions, *, conn: sqlite3.Connection | None = None, progress: bool | None = None) -> PlanResult:
    """Plan the types under the target from a sweep run and write the strategy; with verify, quantize with it
    and measure the file (a tracked run named plan-verify)."""
    if opts.verify is not None:
        gguf_io.check_model(opts.model)
        jobs.check_positive(ctx=opts.verify.ctx, chunks=opts.verify.chunks)
    conn = conn or db.connect()
    inputs = load_inputs(conn, opts.model, opts.from_run, opts.mode, opts.imatrix, opts.base_ftype, opts.types)
    model, base, sweep, layout = inputs.model, inputs.base, inputs.sweep, inputs.layout
    imatrix, ikeys, types = inputs.imatrix, inputs.imatrix_keys, inputs.types
    budget = budget_for(opts.target, layout, lambda f: ftype_file_size(conn, model, layout, f, imatrix, ikeys))
    base_types = dry_run_types(model, base, imatrix)
    speed_budget = opts.speed
    if opts.speed_limits is not None and opts.speed_limits.wanted:
        from . import speed  # speed.py builds on this module's SpeedBudget
        speed_budget = speed.plan_budget(conn, model, opts.speed_limits, sweep, layout, base_types,
                                         match=opts.target.value if opts.target.kind == "match" else None,
                                         types=types, imatrix=imatrix)
    p = make_plan(sweep, model, layout, opts.target, budget, base_types, base, imatrix, ikeys,
                  opts.error_scale, types, knee.knee_type, speed=speed_budget)
    out = Path(opts.output)
    strategy.write(p, out)
    plot = None
    if opts.plots:
        plot = str(plots.strategy_overview(p, Path(opts.plots) / f"{out.stem}-overview.png"))
        curve_plots.plot_curves(sweep, opts.plots, chosen={t.name: t.type for t in p.tensors})
    verified = _verify(p, layout, out, opts.verify, conn, progress) if opts.verify is not None else None
    return PlanResult(p, str(out.resolve()), summary(p), plot, grid.detect(p.model), verified)


def _verify(p: Plan, layout: filesize.FileLayout, strategy_path: Path, v: VerifyOptions, conn: sqlite3.Connection,
            progress: bool | None) -> PlanVerifyResult:
    model = Path(p.model)
    out = Path(v.output) if v.output else strategy_path.with_suffix(".gguf")
    chunks = kld.check_text(model, v.text, v.ctx, v.chunks)
    step = strategy.quantize_step(model, out, strategy.load(strategy_path), layout, v.threads, p.predicted_bytes,
                                  p.predicted_error)
    steps = [step, *evaluate.eval_steps(model, [out.resolve()], v.text, v.ctx, chunks, v.threads)]
    run = jobs.start("plan-verify", {"model": str(model), "strategy": str(strategy_path.resolve()),
                                     "target": dataclasses.asdict(p.target), "sweep_run": p.run_id,
                                     "mode": p.mode, "text": str(v.text), "ctx": v.ctx, "chunks": chunks},
                     steps, progress=progress, conn=conn)
    return PlanVerifyResult.from_run(run)
