"""The job of ``hifikit costs``: measure a model's cost cases on this machine, then fit its constant.

A run is two steps: ``costs-measure`` (llama-costs over every case not yet stored for this
machine; each result is committed as it arrives, so a killed step resumes where it stopped) and
``costs-constant`` (llama-bench on the reference file, unless a constant for this model shape,
prompt and generation length is stored). The specs hold everything, so ``hifikit runs resume ID``
needs nothing else.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Sequence

from . import costs, db, gguf_io, jobs
from .errors import HifikitError
from .jobs import StepContext, StepOutput
from .progress import Progress

log = logging.getLogger(__name__)


@dataclasses.dataclass
class CostsOptions:
    model: Path
    backend: str = "CPU"
    threads: int | None = None              # None: llama-bench's default
    types: Sequence[str] | None = None      # candidate types (default: sweep.proxy.DEFAULT_TYPES)
    n_prompt: int = costs.DEFAULT_BATCH
    n_gen: int = costs.DEFAULT_GEN
    reference: Path | None = None           # the file llama-bench fits the constant on (default: model)
    repetitions: int = costs.DEFAULT_REPETITIONS
    bench_repetitions: int = 3
    working_set_mib: int = costs.DEFAULT_WORKING_SET_MIB
    refit: bool = False                     # fit the constant again even if one is stored
    repack: bool = True                     # the CPU's extra buffer types (llama-bench --repack)
    remeasure: bool = False                 # time stored cases again, replacing them


@dataclasses.dataclass
class CostsResult:
    run_id: int                             # 0: shown from stored costs, nothing run
    model: Path
    ops: costs.ModelOps
    machine: costs.Machine
    measure: dict[str, Any]                 # costs.MeasureStats as stored by the step
    constant: costs.Constant
    constant_fitted: bool
    model_costs: costs.ModelCosts           # per tensor, per candidate type
    prediction: costs.Prediction            # of the model file itself


def plan_cases(opts: CostsOptions) -> tuple[costs.ModelOps, dict[str, list[str]], list[costs.Case]]:
    """The model's ops, its candidate types per tensor (its own and the reference's types included), the cases."""
    ops = costs.tensor_ops(opts.model, opts.n_prompt)
    types = costs.candidate_types(opts.model, opts.types)
    files = [opts.model] + ([opts.reference] if opts.reference else [])
    for f in files:
        own = costs.file_types(f)
        for t in ops.tensors:
            if t.tensor not in own:
                raise HifikitError(f"{f} has no tensor {t.tensor}: not a file of the model {opts.model}")
            types.setdefault(t.tensor, [])
            if own[t.tensor] not in types[t.tensor]:
                types[t.tensor].append(own[t.tensor])
    return ops, types, costs.cases_for(ops, types)


def step_specs(opts: CostsOptions) -> tuple[CostsOptions, costs.Machine, list[costs.Case], list[jobs.StepSpec]]:
    """The checked options (paths resolved), this machine, the cases and the two steps of a costs run:
    measure what is not stored yet, then fit the constant on the reference (the demo runs the same)."""
    for value, name in ((opts.n_prompt, "--batch"), (opts.n_gen, "--gen"), (opts.repetitions, "--repetitions"),
                        (opts.bench_repetitions, "--bench-repetitions"), (opts.working_set_mib, "--working-set")):
        costs.check_batch(value, name)
    model = Path(gguf_io.tensor_index(opts.model).path).resolve()
    reference = Path(gguf_io.tensor_index(opts.reference).path).resolve() if opts.reference else model
    opts = dataclasses.replace(opts, model=model, reference=reference)
    ops, _, cases = plan_cases(opts)
    if costs.model_signature(gguf_io.tensor_index(reference)) != ops.signature:
        raise HifikitError(f"{reference} is not a file of the model {model} (other tensors or shapes)")
    machine = costs.describe(opts.backend, opts.threads, opts.working_set_mib, opts.repack)
    machine_spec = dataclasses.asdict(machine)
    steps = [
        jobs.StepSpec("measure", "costs-measure", {
            "model": str(model), "cases": [c.arg() for c in cases], "machine": machine_spec,
            "repetitions": opts.repetitions, "remeasure": opts.remeasure}),
        jobs.StepSpec("constant", "costs-constant", {
            "reference": str(reference), "n_prompt": opts.n_prompt, "n_gen": opts.n_gen,
            "repetitions": opts.bench_repetitions, "machine": machine_spec, "refit": opts.refit}),
    ]
    return opts, machine, cases, steps


def start(opts: CostsOptions, progress: bool | None = None) -> CostsResult:
    """Measure (what is not stored yet) and fit the constant, as one resumable run."""
    opts, machine, cases, steps = step_specs(opts)
    args = {"model": str(opts.model), "backend": opts.backend, "threads": machine.threads, "types": opts.types,
            "n_prompt": opts.n_prompt, "n_gen": opts.n_gen, "reference": str(opts.reference),
            "fingerprint": machine.fingerprint, "cases": len(cases)}
    run = jobs.start("costs", args, steps, progress=progress)
    return result(run)


def result(run: dict[str, Any]) -> CostsResult:
    """The result of a finished costs run (also after `runs resume`)."""
    by_name = {s["name"]: s for s in run["steps"]}
    if run["command"] != "costs" or set(by_name) != {"measure", "constant"}:
        raise HifikitError(f"run {run['id']} is not a costs run")
    args = run["args"]
    conn = db.connect()
    table = costs.load_table(conn, args["fingerprint"])
    opts = CostsOptions(Path(args["model"]), args["backend"], args["threads"], args["types"], args["n_prompt"],
                        args["n_gen"], Path(args["reference"]))
    ops, types, _ = plan_cases(opts)
    mc = costs.model_costs(ops, table, types)
    constant = table.constant(ops.signature, opts.n_prompt, opts.n_gen)
    pred = costs.predict_file(opts.model, mc, constant)
    return CostsResult(run["id"], opts.model, ops, table.machine, by_name["measure"]["result"] or {}, constant,
                       bool((by_name["constant"]["result"] or {}).get("fitted")), mc, pred)


def _machine(spec: dict[str, Any]) -> costs.Machine:
    return costs.Machine(spec["fingerprint"], spec["backend"], int(spec["threads"]), dict(spec["description"]))


def _parse_case(arg: str) -> costs.Case:
    op, type_name, ne0, ne1, n = arg.split(":")
    return costs.Case(op, type_name, int(ne0), int(ne1), int(n))


def measure_step(ctx: StepContext, spec: dict[str, Any]) -> StepOutput:
    machine = _machine(spec["machine"])
    cases = [_parse_case(a) for a in spec["cases"]]
    bar = Progress(f"costs {Path(spec['model']).name}", ctx.progress)
    try:
        stats = costs.measure(ctx.conn, machine, cases, repetitions=spec["repetitions"], run_id=ctx.run_id,
                              work_dir=ctx.run_dir, log_path=ctx.log_path, progress=bar.update,
                              remeasure=spec.get("remeasure", False))
    finally:
        bar.close()
    log.info("costs: %d cases, %d measured now, %d already stored (%.1f s)", stats.cases, stats.measured,
             stats.reused, stats.seconds)
    return StepOutput(result={**dataclasses.asdict(stats), "fingerprint": machine.fingerprint})


def constant_step(ctx: StepContext, spec: dict[str, Any]) -> StepOutput:
    machine = _machine(spec["machine"])
    constant, fitted = costs.fit_constant(ctx.conn, machine, Path(spec["reference"]), spec["n_prompt"], spec["n_gen"],
                                          repetitions=spec["repetitions"], run_id=ctx.run_id, log_path=ctx.log_path,
                                          refit=spec.get("refit", False))
    where = dict(model=constant.reference, model_sha256=constant.reference_sha256)
    ms = [db.Measurement(f"pp{constant.n_prompt}_tps", constant.measured_pp_tps, **where),
          db.Measurement(f"tg{constant.n_gen}_tps", constant.measured_tg_tps, **where)] if fitted else []
    return StepOutput(result={**dataclasses.asdict(constant), "fitted": fitted}, measurements=ms)
