"""Measuring models: perplexity and KL divergence against a reference, and llama-bench speed.

Three tracked jobs, each one run in the database:

- ``evaluate(EvalOptions(model, text, ref=...)) -> EvalResult`` (run ``eval``):
  perplexity, and with a reference its KL divergence (reference logits first,
  cached by kld.py);
- ``compare(CompareOptions(ref, text, models=..., quant=...)) -> EvalResult``
  (run ``compare``): several models against one reference, ``quant`` types
  quantized from the reference first, so one resumable run goes from an F16
  GGUF to the table;
- ``bench(BenchOptions(models)) -> BenchResult`` (run ``bench``).

Rows are report.rows', the one reader of eval, reference and bench results.
"""
from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path
from typing import Any, Sequence

from . import atomic, gguf_io, jobs, kld, report
from .errors import HifikitError
from .quantize import make_step
from .quant_rules import check_imatrix, resolve_type


def eval_steps(ref: Path | None, models: Sequence[Path], text: Path, ctx: int, chunks: int,
               threads: int | None) -> list[jobs.StepSpec]:
    """Reference logits (with a reference), then one eval step per model."""
    base = {"text": str(Path(text).resolve()), "ctx": ctx, "chunks": chunks, "threads": threads}
    steps = []
    if ref is not None:
        steps.append(jobs.StepSpec("reference", "kld-base", {"ref": str(ref), **base}))
    for i, model in enumerate(models):
        spec = {"model": str(model), **base}
        if ref is not None:
            spec["ref"] = str(ref)
        steps.append(jobs.StepSpec(f"eval-{i}", "eval", spec))
    return steps


@dataclasses.dataclass
class EvalResult:
    """The rows of an eval or compare run (the reference first) and the text they were measured on."""
    run_id: int
    rows: list[report.Row]
    text: str | None
    ctx: int | None
    chunks: int | None
    run: dict[str, Any]

    @classmethod
    def from_run(cls, run: dict[str, Any]) -> "EvalResult":
        args = run["args"] if isinstance(run["args"], dict) else {}
        return cls(run["id"], report.rows([run]), args.get("text"), args.get("ctx"), args.get("chunks"), run)

    @property
    def models(self) -> list[report.Row]:
        """The evaluated models, without the reference."""
        return [r for r in self.rows if r.role != "reference"]


@dataclasses.dataclass
class EvalOptions:
    model: Path
    text: Path
    ref: Path | None = None            # the reference (e.g. F16) for KL divergence; without it, perplexity only
    ctx: int = 512
    chunks: int | None = None          # default: all that fit
    threads: int | None = None


def evaluate(opts: EvalOptions, *, conn: sqlite3.Connection | None = None,
             progress: bool | None = None) -> EvalResult:
    """Perplexity of opts.model, and its KL divergence against opts.ref, as one tracked run."""
    model = gguf_io.check_model(opts.model)
    ref = gguf_io.check_model(opts.ref) if opts.ref else None
    jobs.check_positive(ctx=opts.ctx, chunks=opts.chunks)
    chunks = kld.check_text(ref or model, opts.text, opts.ctx, opts.chunks)
    run = jobs.start("eval", {"model": str(model), "ref": str(ref) if ref else None, "text": str(opts.text),
                              "ctx": opts.ctx, "chunks": chunks},
                     eval_steps(ref, [model], opts.text, opts.ctx, chunks, opts.threads), progress=progress, conn=conn)
    return EvalResult.from_run(run)


@dataclasses.dataclass
class CompareOptions:
    ref: Path
    text: Path
    models: Sequence[Path] = ()        # GGUF files to compare
    quant: Sequence[str] = ()          # also quantize the reference to these types and compare them
    imatrix: Path | None = None        # for quant
    out_dir: Path | None = None        # where quant writes (default: next to the reference)
    ctx: int = 512
    chunks: int | None = None
    threads: int | None = None


def compare(opts: CompareOptions, *, conn: sqlite3.Connection | None = None,
            progress: bool | None = None) -> EvalResult:
    """Several models (and quantizations of the reference) against one reference, as one tracked run."""
    ref = gguf_io.check_model(opts.ref)
    models = [gguf_io.check_model(m) for m in opts.models]
    if not models and not opts.quant:
        raise HifikitError("nothing to compare: give MODEL files and/or --quant TYPE (or --baselines FTYPE,...)")
    jobs.check_positive(ctx=opts.ctx, chunks=opts.chunks)
    ftypes = [resolve_type(t) for t in opts.quant]
    check_imatrix(opts.imatrix)
    out_dir = Path(opts.out_dir or ref.parent).resolve()
    outputs = [out_dir / f"{ref.stem}-{t}.gguf" for t in ftypes]
    for out in outputs:
        atomic.check_writable(out)
    chunks = kld.check_text(ref, opts.text, opts.ctx, chunks=opts.chunks)
    steps = eval_steps(ref, [], opts.text, opts.ctx, chunks, opts.threads)
    for t, out in zip(ftypes, outputs):
        steps.append(make_step(ref, out, t, opts.imatrix, opts.threads, name=f"quantize-{t}"))
    steps += eval_steps(ref, [*models, *outputs], opts.text, opts.ctx, chunks, opts.threads)[1:]
    run = jobs.start("compare", {"ref": str(ref), "models": [str(m) for m in models], "quant": ftypes,
                                 "text": str(opts.text), "ctx": opts.ctx, "chunks": chunks}, steps,
                     progress=progress, conn=conn)
    return EvalResult.from_run(run)


@dataclasses.dataclass
class BenchOptions:
    models: Sequence[Path]
    n_prompt: int = 512
    n_gen: int = 128
    repetitions: int = 5
    threads: int | None = None


@dataclasses.dataclass
class BenchResult:
    run_id: int
    rows: list[dict[str, Any]]         # llama-bench's rows: model, model_type, model_size, test, avg_ts, ...
    run: dict[str, Any]

    @classmethod
    def from_run(cls, run: dict[str, Any]) -> "BenchResult":
        return cls(run["id"], jobs.step_result(run, "bench")["rows"], run)


def bench(opts: BenchOptions, *, conn: sqlite3.Connection | None = None,
          progress: bool | None = None) -> BenchResult:
    """Prompt and generation tokens per second of the models (llama-bench), as one tracked run."""
    models = [str(gguf_io.check_model(m)) for m in opts.models]
    spec = {"models": models, "p": opts.n_prompt, "n": opts.n_gen, "r": opts.repetitions, "threads": opts.threads}
    return BenchResult.from_run(jobs.start("bench", spec, [jobs.StepSpec("bench", "bench", spec)],
                                           progress=progress, conn=conn))
