"""Quantizing with the bundled llama-quantize, and the importance matrices it can use: two tracked jobs.

``quantize(QuantizeOptions(...)) -> QuantizeResult`` writes one quantized
GGUF (an ftype, a HIFI mixture of the build, or a strategy from the planner,
whose every tensor type is checked in the written file) as a run named
``quantize``; ``imatrix(ImatrixOptions(...)) -> ImatrixResult`` computes an
importance matrix with llama-imatrix as a run named ``imatrix``. ``make_step``
builds the quantize step other jobs (compare, the demo, the baselines) put in
their own runs. The types llama-quantize accepts are quant_rules.py's.

``quantize_verify(QuantizeVerifyOptions(input, output, strategy, text, ...)) ->
QuantizeVerifyResult`` quantizes with a strategy, measures the file's KL
divergence against the input and, with ``bench``, runs llama-bench on it (and on
the strategy's speed reference, quantized beside it) to set the measured speed
against the strategy's predicted one: one run named ``quantize-verify``.
"""
from __future__ import annotations

import dataclasses
import logging
import sqlite3
from pathlib import Path
from typing import Any

from . import atomic, gguf_io, imatrix_stats, jobs, kld, report
from .errors import HifikitError
from .planner import strategy as strat
from .quant_rules import check_imatrix, resolve_hifi, resolve_type

log = logging.getLogger(__name__)


def make_step(src: Path, out: Path, ftype: str, imatrix: Path | None, threads: int | None,
              name: str = "quantize") -> jobs.StepSpec:
    """A quantize step: src -> out in ftype (with an importance matrix when given)."""
    spec = {"input": str(src), "output": str(Path(out).resolve()), "ftype": ftype, "threads": threads}
    if imatrix:
        spec["imatrix"] = str(Path(imatrix).resolve())
    return jobs.StepSpec(name, "quantize", spec)


@dataclasses.dataclass
class QuantizeOptions:
    input: Path
    output: Path
    ftype: str | None = None          # a llama-quantize type, e.g. "Q4_K_M"; or
    hifi: str | None = None           # a HIFI mixture of this build ("" = its _M variant); or
    strategy: Path | None = None      # a strategy file from the planner: one type per tensor
    imatrix: Path | None = None       # an importance matrix (GGUF) from imatrix()
    threads: int | None = None


@dataclasses.dataclass
class QuantizeResult:
    run_id: int
    output: str
    ftype: str
    file_bytes: int
    quant_mib: float                  # tensor data, as llama-quantize reports it
    quant_bpw: float
    tensors: list[dict[str, Any]]     # per tensor: name, shape, source_type, target_type, MiB before and after
    predicted_bytes: int | None       # a strategy: the file size model's bytes (equal to file_bytes)
    predicted_error: float | None
    step: dict[str, Any]              # the quantize step's stored result
    run: dict[str, Any]

    @classmethod
    def from_run(cls, run: dict[str, Any]) -> "QuantizeResult":
        res = jobs.step_result(run, "quantize")
        return cls(run["id"], res["output"], res["ftype"], res["bytes"], res["quant_mib"], res["quant_bpw"],
                   res["tensors"], res.get("predicted_bytes"), res.get("predicted_error"), res, run)


def quantize(opts: QuantizeOptions, *, conn: sqlite3.Connection | None = None,
             progress: bool | None = None) -> QuantizeResult:
    """Quantize opts.input into opts.output (exactly one of ftype, hifi, strategy) as one tracked run."""
    if sum(x is not None for x in (opts.ftype, opts.hifi, opts.strategy)) != 1:
        raise HifikitError("give one of: a type (--type), a HIFI mixture (--hifi) or a strategy (--strategy)")
    src = gguf_io.check_model(opts.input)
    out = Path(opts.output)
    if opts.strategy is not None:
        s, layout, res = strat.prepare(opts.strategy, src, opts.imatrix)
        args: dict[str, Any] = {"input": str(src), "output": str(out), "strategy": str(opts.strategy),
                                "imatrix": s.imatrix}
        step = strat.quantize_step(src, out, s, layout, opts.threads, res.bytes, res.error)
    else:
        ftype = resolve_hifi(opts.hifi) if opts.hifi is not None else resolve_type(opts.ftype or "")
        check_imatrix(opts.imatrix)
        args = {"input": str(src), "output": str(out), "ftype": ftype,
                "imatrix": str(opts.imatrix) if opts.imatrix else None}
        step = make_step(src, out, ftype, opts.imatrix, opts.threads)
    atomic.check_writable(out)
    if out.resolve() == src:
        raise HifikitError(f"{out}: output would overwrite the input")
    return QuantizeResult.from_run(jobs.start("quantize", args, [step], progress=progress, conn=conn))


@dataclasses.dataclass
class ImatrixOptions:
    model: Path
    text: Path
    output: Path | None = None        # default: MODEL.imatrix.gguf beside the model
    ctx: int = 512
    chunks: int | None = None         # default: all that fit
    threads: int | None = None
    statistics: bool = False          # also the per-tensor activation statistics (imatrix_stats.py)


@dataclasses.dataclass
class ImatrixResult:
    run_id: int
    path: str
    entries: int
    chunks: int
    chunk_size: int | None
    datasets: list[str]
    ppl: float | None
    statistics: list[imatrix_stats.ImatrixStat] | None
    step: dict[str, Any]
    run: dict[str, Any]

    @classmethod
    def from_run(cls, run: dict[str, Any], statistics: bool = False) -> "ImatrixResult":
        res = jobs.step_result(run, "imatrix")
        stats = imatrix_stats.statistics(res["path"]) if statistics else None
        return cls(run["id"], res["path"], res["entries"], res["chunks"], res.get("chunk_size"),
                   list(res.get("datasets") or []), res.get("ppl"), stats, res, run)


def imatrix(opts: ImatrixOptions, *, conn: sqlite3.Connection | None = None,
            progress: bool | None = None) -> ImatrixResult:
    """An importance matrix of opts.model over opts.text (llama-imatrix, GGUF output) as one tracked run."""
    model = gguf_io.check_model(opts.model)
    jobs.check_positive(ctx=opts.ctx, chunks=opts.chunks)
    out = Path(opts.output) if opts.output else model.with_name(model.stem + ".imatrix.gguf")
    atomic.check_writable(out)
    chunks = kld.check_text(model, opts.text, opts.ctx, opts.chunks)
    spec = {"model": str(model), "text": str(Path(opts.text).resolve()), "output": str(out.resolve()),
            "ctx": opts.ctx, "chunks": chunks, "threads": opts.threads}
    run = jobs.start("imatrix", spec, [jobs.StepSpec("imatrix", "imatrix", spec)], progress=progress, conn=conn)
    return ImatrixResult.from_run(run, opts.statistics)


# ---- quantize with a strategy, then measure the file: KL divergence and (optionally) speed -------------

@dataclasses.dataclass
class QuantizeVerifyOptions:
    input: Path                       # the model the strategy was planned for (F16/BF16/F32 GGUF)
    output: Path                      # the quantized GGUF to write
    strategy: Path                    # a strategy file from the planner
    text: Path                        # the evaluation text of the KL divergence
    imatrix: Path | None = None       # the importance matrix (default: the strategy's own, if any)
    ctx: int = 512
    chunks: int | None = None         # default: all that fit
    threads: int | None = None        # for llama-quantize, llama-perplexity and llama-bench
    bench: bool = False               # also llama-bench the file (and the strategy's speed reference)
    n_prompt: int | None = None       # llama-bench -p (default: the strategy's predicted prompt length, else 512)
    n_gen: int = 128                  # llama-bench -n
    repetitions: int = 5              # llama-bench -r
    reference_output: Path | None = None   # the speed reference's file (default: OUTPUT's name + -FTYPE.gguf)


@dataclasses.dataclass
class SpeedRow:
    """One benchmarked file: predicted (from the strategy) and measured (llama-bench) tokens per second."""
    role: str                         # strategy | reference
    model: str
    ftype: str | None                 # the reference's ftype
    predicted_pp_tps: float | None
    predicted_tg_tps: float | None
    measured_pp_tps: float | None
    measured_pp_std: float | None
    measured_tg_tps: float | None
    measured_tg_std: float | None

    @property
    def pp_ratio(self) -> float | None:
        """Predicted over measured prompt speed."""
        return _ratio(self.predicted_pp_tps, self.measured_pp_tps)

    @property
    def tg_ratio(self) -> float | None:
        return _ratio(self.predicted_tg_tps, self.measured_tg_tps)

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "pp_ratio": self.pp_ratio, "tg_ratio": self.tg_ratio}


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


@dataclasses.dataclass
class SpeedComparison:
    n_prompt: int
    n_gen: int
    repetitions: int
    source: str | None                # where the strategy's predicted times came from (None: no speed section)
    rows: list[SpeedRow]              # the strategy's file, then the reference's (when the strategy has one)
    note: str | None = None           # why a prediction is missing

    @property
    def strategy(self) -> SpeedRow:
        return self.rows[0]

    @property
    def reference(self) -> SpeedRow | None:
        return self.rows[1] if len(self.rows) > 1 else None

    def to_json(self) -> dict[str, Any]:
        return {"n_prompt": self.n_prompt, "n_gen": self.n_gen, "repetitions": self.repetitions,
                "source": self.source, "note": self.note, "rows": [r.to_json() for r in self.rows]}


@dataclasses.dataclass
class QuantizeVerifyResult:
    run_id: int
    output: str
    file_bytes: int
    predicted_bytes: int | None       # the file size model's bytes for the strategy
    predicted_error: float | None     # the strategy's predicted error (sum of its candidates' errors)
    kld_mean: float | None            # measured against the input over the text
    kld_error: float | None
    ppl: float | None
    same_top_p: float | None
    rows: list[report.Row]            # the input (reference), the quantized file (and the speed reference, benched)
    speed: SpeedComparison | None     # None without bench
    run: dict[str, Any]

    @classmethod
    def from_run(cls, run: dict[str, Any]) -> "QuantizeVerifyResult":
        args = run["args"] if isinstance(run["args"], dict) else {}
        q = jobs.step_result(run, "quantize")
        rows = report.rows([run])
        out = q.get("output", args.get("output"))
        m = next((r for r in rows if r.role != "reference" and r.kld_mean is not None), None)
        speed = _speed_of(run, args) if args.get("bench") else None
        return cls(run["id"], out, q.get("bytes"), q.get("predicted_bytes"), q.get("predicted_error"),
                   m.kld_mean if m else None, m.kld_error if m else None, m.ppl if m else None,
                   m.same_top_p if m else None, rows, speed, run)

    def to_json(self) -> dict[str, Any]:
        return {"run": self.run_id, "output": self.output, "file_bytes": self.file_bytes,
                "predicted_bytes": self.predicted_bytes, "predicted_error": self.predicted_error,
                "kld_mean": self.kld_mean, "kld_error": self.kld_error, "ppl": self.ppl, "same_top_p": self.same_top_p,
                "models": [dataclasses.asdict(r) for r in self.rows],
                "speed": self.speed.to_json() if self.speed else None}


def _speed_of(run: dict[str, Any], args: dict[str, Any]) -> SpeedComparison | None:
    bench = args["bench"]
    p, n = bench["n_prompt"], bench["n_gen"]
    measured: dict[str, dict[str, tuple[float, float]]] = {}
    for b in jobs.step_result(run, "bench").get("rows", []):
        by_test = measured.setdefault(str(Path(b["model"]).resolve()), {})
        by_test[b["test"]] = (float(b["avg_ts"]), float(b.get("stddev_ts") or 0.0))
    predicted = args.get("predicted_speed") or {}
    ref = args.get("speed_reference") or {}
    n_pred = predicted.get("n_prompt")
    note = None
    if not predicted:
        note = "the strategy has no speed section (plan it with --max-slowdown, --min-tg or --min-pp)"
    elif n_pred != p:
        note = f"the strategy's prompt time is predicted for pp{n_pred}, llama-bench ran pp{p}: no pp prediction"

    def row(role: str, model: str, ftype: str | None, pp_s: float | None, tg_s: float | None) -> SpeedRow:
        got = measured.get(str(Path(model).resolve()), {})
        mp, mt = got.get(f"pp{p}"), got.get(f"tg{n}")
        return SpeedRow(role, model, ftype, n_pred / pp_s if pp_s and n_pred == p else None,
                        1.0 / tg_s if tg_s else None, mp[0] if mp else None, mp[1] if mp else None,
                        mt[0] if mt else None, mt[1] if mt else None)

    rows = [row("strategy", args["output"], None, predicted.get("pp_seconds"), predicted.get("tg_seconds"))]
    if args.get("reference_output"):
        rows.append(row("reference", args["reference_output"], ref.get("ftype"), ref.get("pp_seconds"),
                        ref.get("tg_seconds")))
    return SpeedComparison(p, n, bench["repetitions"], predicted.get("source"), rows, note)


def quantize_verify(opts: QuantizeVerifyOptions, *, conn: sqlite3.Connection | None = None,
                    progress: bool | None = None) -> QuantizeVerifyResult:
    """Quantize opts.input with opts.strategy, measure the file's KL divergence against the input over
    opts.text and, with opts.bench, llama-bench it beside the strategy's speed reference (quantized with
    the reference ftype next to the output): one tracked run named quantize-verify."""
    from .evaluate import eval_steps  # evaluate builds on this module's make_step

    if opts.text is None:
        raise HifikitError("--verify needs --text F (the evaluation text)")
    jobs.check_positive(ctx=opts.ctx, chunks=opts.chunks, bench_prompt=opts.n_prompt, bench_gen=opts.n_gen,
                        bench_reps=opts.repetitions)
    src = gguf_io.check_model(opts.input)
    out = Path(opts.output)
    s, layout, checked = strat.prepare(opts.strategy, src, opts.imatrix)
    if s.model and Path(s.model).resolve() != src:
        log.warning("%s was planned for %s; it fits %s (every tensor checked)", opts.strategy, s.model, src)
    chunks = kld.check_text(src, opts.text, opts.ctx, opts.chunks)
    predicted = s.raw.get("speed") if isinstance(s.raw.get("speed"), dict) else None
    ref = s.raw.get("speed_reference") if isinstance(s.raw.get("speed_reference"), dict) else None
    ref_ftype = resolve_type(str(ref["ftype"])) if ref and ref.get("ftype") else None
    atomic.check_writable(out)
    if out.resolve() == src:
        raise HifikitError(f"{out}: output would overwrite the input")
    steps = [strat.quantize_step(src, out, s, layout, opts.threads, checked.bytes, checked.error)]
    args: dict[str, Any] = {"input": str(src), "output": str(out.resolve()),
                            "strategy": str(Path(opts.strategy).resolve()), "imatrix": s.imatrix,
                            "text": str(Path(opts.text).resolve()), "ctx": opts.ctx, "chunks": chunks,
                            "predicted_speed": predicted, "speed_reference": ref}
    bench_models = [str(out.resolve())]
    if opts.bench:
        n_prompt = opts.n_prompt or (int(predicted["n_prompt"]) if predicted and predicted.get("n_prompt") else 512)
        args["bench"] = {"n_prompt": n_prompt, "n_gen": opts.n_gen, "repetitions": opts.repetitions}
        if ref_ftype:
            ref_out = Path(opts.reference_output) if opts.reference_output else \
                out.with_name(f"{out.stem}-{ref_ftype}.gguf")
            atomic.check_writable(ref_out)
            if ref_out.resolve() in (src, out.resolve()):
                raise HifikitError(f"{ref_out}: the reference's file would overwrite the input or the output")
            args["reference_output"] = str(ref_out.resolve())
            steps.append(make_step(src, ref_out, ref_ftype, Path(s.imatrix) if s.imatrix else None, opts.threads,
                                   name="quantize-reference"))
            bench_models.append(str(ref_out.resolve()))
    steps += eval_steps(src, [out.resolve()], opts.text, opts.ctx, chunks, opts.threads)
    if opts.bench:
        spec = {"models": bench_models, "p": args["bench"]["n_prompt"], "n": opts.n_gen, "r": opts.repetitions,
                "threads": opts.threads}
        steps.append(jobs.StepSpec("bench", "bench", spec))
    run = jobs.start("quantize-verify", args, steps, progress=progress, conn=conn)
    return QuantizeVerifyResult.from_run(run)
