"""An editing session on one model's plan: the slow work done once, then re-plans in place.

A strategy editor (the web UI, a notebook) opens a session on a model and a sweep run, then asks for
plans under targets and pins as the user edits, and assesses hand-edited assignments::

    s = PlanSession.open(conn, Path("model-f16.gguf"), from_run=3)
    p = s.plan(make_target(match="Q4_K_M"))                       # == hifikit plan's plan
    p2 = s.plan(p.target, pins={"token_embd.weight": "q8_0"})      # the rest re-planned around the pin
    a = s.assess({**p2.types, "blk.0.ffn_down.weight": "q6_K"})   # bytes, error, speed, check
    text = s.strategy_text(p2)                                    # the YAML 'hifikit plan' writes
    loaded = s.load_strategy(text)                                # back: target, types, pins

``PlanSession.open`` loads the sweep, reads the model's header (filesize.FileLayout), asks
llama-quantize's dry run for the base ftype's types (cached in $HIFIKIT_HOME), reads the imatrix's keys
and builds every planned tensor's candidates (plan.prepare), knees included; ``plan`` then only runs the
allocation (plan.plan_from). Dry runs of match targets and speed budgets are cached per ftype and per
limits for the session's life. ``PlanSession.from_memory`` builds one from in-memory pieces (a Sweep, a
FileLayout, the base types), for benchmarks and tests that have no model file.

A plan of the session is the plan ``hifikit plan`` makes for the same inputs, and
``strategy_text(plan)`` is the file it writes (tests/test_plan_session.py).
"""
from __future__ import annotations

import dataclasses
import logging
import sqlite3
from pathlib import Path
from typing import Callable, Mapping, Sequence

from ..errors import HifikitError
from ..quant_rules import resolve_type
from ..sweep import curves, knee
from . import filesize, strategy
from .plan import (PINNED, Option, Plan, PlanInputs, SpeedBudget, Target, budget_for, cached_dry_run, load_inputs,
                   plan_from, prepare)
from .speed import SpeedLimits

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Assessment:
    """A full type assignment judged without re-planning: what the file would be, and what is wrong with it."""
    types: dict[str, str]              # every tensor, as assessed (the fixed ones filled in where not given)
    bytes: int | None                  # the exact file size (None when a type cannot be resolved)
    budget: int | None                 # the target's budget, when a target was given
    error: float | None                # the predicted error (None when a type has no measured candidate)
    speed: dict | None                 # with a speed budget: pp_seconds, tg_seconds, pp_tps, tg_tps, limits
    check: strategy.CheckResult        # what 'hifikit plan --check' says of these types
    errors: list[str]                  # check's errors, and any speed limit the types break
    warnings: list[str]

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def fits(self) -> bool:
        """Within the byte budget (True without a budget, once the size is known)."""
        return self.bytes is not None and (self.budget is None or self.bytes <= self.budget)


@dataclasses.dataclass
class LoadedStrategy:
    """A strategy YAML read back into a session: its target, its types and the tensors the user pinned."""
    target: Target | None              # the file's target (None when it has none)
    types: dict[str, str]              # every tensor the file names
    pins: dict[str, str]               # planned tensors whose reason is "pinned by the user"
    assessment: Assessment             # the file's types assessed against the session's model


class PlanSession:
    """One model, one sweep, one base ftype and imatrix: plans, candidates and assessments on them.

    Everything that does not depend on the target or the pins is computed when the session is made;
    ``plan`` re-runs the allocation only. A session is not thread-safe (its caches are plain dicts)."""

    def __init__(self, inputs: PlanInputs, layout: filesize.FileLayout, *,
                 imatrix_keys: filesize.ImatrixKeys | None = None,
                 match_types: Callable[[str], Mapping[str, str]] | None = None,
                 speed_budgets: Callable[[SpeedLimits, str | None], SpeedBudget] | None = None) -> None:
        """From prepared inputs (plan.prepare). match_types(FTYPE) gives llama-quantize's types for an ftype
        (for match targets); speed_budgets(limits, match ftype) makes the SpeedBudget of a SpeedLimits."""
        self.inputs = inputs
        self.layout = layout
        self.imatrix_keys = imatrix_keys
        self._match_types = match_types
        self._speed_budgets = speed_budgets
        self._options = dict(inputs.planned)
        self._match_bytes: dict[str, int] = {}
        self._speed: dict[tuple[tuple, str | None], SpeedBudget] = {}

    @classmethod
    def open(cls, conn: sqlite3.Connection, model: Path | str, from_run: int | None = None, mode: str | None = None,
             imatrix: Path | str | None = None, base_ftype: str = "Q8_0", types: Sequence[str] | None = None,
             error_scale: str = "none") -> "PlanSession":
        """The session of ``hifikit plan MODEL`` with these options (the latest sweep run of the model by
        default); inputs are checked as plan checks them, each problem one HifikitError line."""
        loaded = load_inputs(conn, model, from_run, mode, imatrix, base_ftype, types)
        model_path, base, sweep, layout = loaded.model, loaded.base, loaded.sweep, loaded.layout
        im, ikeys, wanted = loaded.imatrix, loaded.imatrix_keys, loaded.types
        base_types = cached_dry_run(conn, model_path, base, im)

        def speed_budgets(limits: SpeedLimits, match: str | None) -> SpeedBudget:
            from . import speed
            return speed.plan_budget(conn, model_path, limits, sweep, layout, base_types, match=match,
                                     types=wanted, imatrix=im)

        inputs = prepare(sweep, model_path, layout, base_types, base, im, ikeys, error_scale, wanted, knee.knee_type)
        log.info("plan session on %s: run %d (%s), %d planned and %d fixed tensors", model_path, loaded.run_id,
                 sweep.mode, len(inputs.planned), len(inputs.fixed))
        return cls(inputs, layout, imatrix_keys=ikeys,
                   match_types=lambda ftype: cached_dry_run(conn, model_path, ftype, im),
                   speed_budgets=speed_budgets)

    @classmethod
    def from_memory(cls, sweep: curves.Sweep, layout: filesize.FileLayout, base_types: Mapping[str, str], *,
                    model: str | None = None, base_ftype: str = "Q8_0", imatrix: Path | None = None,
                    imatrix_keys: filesize.ImatrixKeys | None = None, error_scale: str = "none",
                    types: Sequence[str] | None = None,
                    knees: Callable[[curves.TensorCurve], str | None] | None = knee.knee_type,
                    match_types: Callable[[str], Mapping[str, str]] | None = None,
                    speed_budgets: Callable[[SpeedLimits, str | None], SpeedBudget] | None = None
                    ) -> "PlanSession":
        """A session from in-memory pieces: no model file, runs database or llama-quantize needed."""
        inputs = prepare(sweep, Path(model or layout.path), layout, dict(base_types), base_ftype, imatrix,
                         imatrix_keys, error_scale, list(types) if types else None, knees)
        return cls(inputs, layout, imatrix_keys=imatrix_keys, match_types=match_types, speed_budgets=speed_budgets)

    # --- what the session plans --------------------------------------------------------------------------

    @property
    def tensors(self) -> list[str]:
        """The planned tensors, in the model's order."""
        return [name for name, _ in self.inputs.planned]

    @property
    def fixed(self) -> dict[str, str]:
        """Tensor -> type of the tensors the planner does not choose."""
        return dict(self.inputs.fixed)

    def candidates(self, tensor: str) -> list[Option]:
        """A planned tensor's candidates (type, bytes, padded cost, error), by increasing bytes: what a pin
        may choose."""
        opts = self._options.get(tensor)
        if opts is None:
            if tensor in self.inputs.fixed:
                raise HifikitError(f"{tensor}: not planned (it keeps {self.inputs.fixed[tensor]}); no candidates")
            raise HifikitError(f"{tensor}: no such tensor in {self.inputs.model}")
        return sorted(opts, key=lambda o: (o.cost, o.weighted))

    def budget(self, target: Target) -> int:
        """The target's budget in bytes of the whole file (a match target through the cached dry run)."""
        return budget_for(target, self.layout, self._match_size)

    def _match_size(self, ftype: str) -> int:
        ftype = resolve_type(ftype)
        if ftype not in self._match_bytes:
            if self._match_types is None:
                raise HifikitError(f"--match {ftype}: this session has no way to ask llama-quantize for its types")
            self._match_bytes[ftype] = filesize.file_size(self.layout, self._match_types(ftype), self.imatrix_keys)
        return self._match_bytes[ftype]

    def speed_budget(self, limits: SpeedLimits, target: Target | None = None) -> SpeedBudget | None:
        """The SpeedBudget of these limits (a relative limit against the match target's ftype), cached;
        None when the limits ask for nothing."""
        if not limits.wanted:
            return None
        match = target.value if target is not None and target.kind == "match" else None
        key = (dataclasses.astuple(limits), match)
        if key not in self._speed:
            if self._speed_budgets is None:
                raise HifikitError("this session has no cost model: speed limits cannot be priced")
            self._speed[key] = self._speed_budgets(limits, match)
        return self._speed[key]

    def plan(self, target: Target, pins: Mapping[str, str] | None = None,
             speed_limits: SpeedLimits | None = None) -> Plan:
        """The plan under target: without pins the plan of ``hifikit plan``; a pinned tensor (tensor -> one
        of its candidates' types) takes exactly that type and the rest is planned in what remains. A bad pin
        (unknown tensor, a type that is not a candidate or does not fit the rows) or pins over the budget
        are one HifikitError line."""
        sb = self.speed_budget(speed_limits, target) if speed_limits is not None else None
        return plan_from(self.inputs, target, self.budget(target), pins, sb)

    # --- hand edits --------------------------------------------------------------------------------------

    def assess(self, types: Mapping[str, str], target: Target | None = None,
               speed_limits: SpeedLimits | None = None) -> Assessment:
        """A full assignment (tensor -> type; fixed tensors not given keep their type) as it stands, without
        re-planning: the file's exact bytes, the predicted error from the candidates, the predicted speed
        with speed limits, and strategy.check's errors and warnings (over the target's budget included)."""
        return self._assess(types, self.budget(target) if target is not None else None, target, speed_limits)

    def _assess(self, types: Mapping[str, str], budget: int | None, target: Target | None,
                speed_limits: SpeedLimits | None) -> Assessment:
        full = {**self.inputs.fixed, **{str(k): str(v) for k, v in types.items()}}
        s = self._strategy(full, budget)
        res = strategy.check(s, self.layout, self.imatrix_keys)
        errors, warnings = list(res.errors), list(res.warnings)
        speed_info = None
        sb = self.speed_budget(speed_limits, target) if speed_limits is not None else None
        if sb is not None and res.bytes is not None:
            resolved = {n: self._canonical(n, t) for n, t in full.items()}
            try:
                pp, tg = sb.total(resolved)
            except HifikitError as exc:
                warnings.append(f"no predicted speed: {exc}")
            else:
                speed_info = {"pp_seconds": pp, "tg_seconds": tg, "n_prompt": sb.n_prompt,
                              "pp_tps": sb.n_prompt / pp if pp > 0 else None, "tg_tps": 1.0 / tg if tg > 0 else None,
                              "limits": list(sb.limits), "source": sb.source}
                for what, got, lim in (("per prompt", pp, sb.limits[0]), ("per token", tg, sb.limits[1])):
                    if lim is not None and got > lim * (1 + 1e-12):
                        errors.append(f"too slow: predicted {got:.4g} s {what}, over the limit of {lim:.4g} s")
        return Assessment(full, res.bytes, budget, res.error, speed_info, res, errors, warnings)

    def _canonical(self, tensor: str, type_name: str) -> str:
        for o in self._options.get(tensor, ()):
            if o.type.lower() == type_name.lower():
                return o.type
        return type_name

    def _strategy(self, types: dict[str, str], budget: int | None, path: str = "<session>") -> strategy.Strategy:
        """An in-memory strategy of these types with this session's candidates (what check reads)."""
        cands = {name: {o.type: (o.nbytes, o.weighted) for o in opts} for name, opts in self._options.items()}
        return strategy.Strategy(path, self.inputs.model, budget, self.inputs.base_ftype, self.inputs.imatrix,
                                 types, cands, {})

    # --- strategy files ----------------------------------------------------------------------------------

    @staticmethod
    def strategy_text(plan: Plan) -> str:
        """The strategy YAML of a plan, as 'hifikit plan' writes it (strategy.write writes this text)."""
        return strategy.render(plan)

    def load_strategy(self, source: str | Path) -> LoadedStrategy:
        """A strategy YAML (its text, or a Path to the file) read back: its target, its types assessed against
        this session's model, and as pins the planned tensors it records as pinned by the user."""
        s = strategy.load(source) if isinstance(source, Path) else strategy.loads(source)
        target = None
        raw_target = s.raw.get("target")
        if isinstance(raw_target, dict) and raw_target.get("kind") in ("bpw", "size", "match"):
            target = Target(str(raw_target["kind"]), str(raw_target.get("value")))
        pins = {}
        for name, entry in (s.raw.get("tensors") or {}).items():
            if str(name) in self._options and isinstance(entry, dict) and \
                    str(entry.get("reason", "")).startswith(PINNED):
                pins[str(name)] = str(entry["type"])
        # the budget of the file's target on this session's model (budget_bytes when it has no target)
        a = self._assess(s.types, self.budget(target) if target is not None else s.budget, target, None)
        if s.model and Path(s.model) != Path(self.inputs.model):
            a.warnings.append(f"the strategy was made for {s.model}, this session's model is {self.inputs.model}")
        return LoadedStrategy(target, s.types, pins, a)
