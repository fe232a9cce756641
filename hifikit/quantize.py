"""Quantizing with the bundled llama-quantize, and the importance matrices it can use: two tracked jobs.

``quantize(QuantizeOptions(...)) -> QuantizeResult`` writes one quantized
GGUF (an ftype, a HIFI mixture of the build, or a strategy from the planner,
whose every tensor type is checked in the written file) as a run named
``quantize``; ``imatrix(ImatrixOptions(...)) -> ImatrixResult`` computes an
importance matrix with llama-imatrix as a run named ``imatrix``. ``make_step``
builds the quantize step other jobs (compare, the demo, the baselines) put in
their own runs. The types llama-quantize accepts are quant_rules.py's.
"""
from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path
from typing import Any

from . import atomic, gguf_io, imatrix_stats, jobs, kld
from .errors import HifikitError
from .planner import strategy as strat
from .quant_rules import check_imatrix, resolve_hifi, resolve_type


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
