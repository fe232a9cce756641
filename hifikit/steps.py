"""The step kinds a job is made of: quantize, imatrix, kld-base, eval, bench, calib, fetch, convert
(and, from analyze.py, sweep-proxy, sweep-measured, knees; from costs_job.py, costs-measure,
costs-constant).

Each takes a JSON spec (stored in the runs database, so `runs resume` needs
nothing else) and returns a StepOutput. Outputs are written atomically.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from . import atomic, db, gguf_io, kld, parsers, runner
from .errors import HifikitError
from .jobs import StepContext, StepOutput, step_kind
from .progress import Progress

log = logging.getLogger(__name__)


def _threads(spec: dict[str, Any]) -> list[str]:
    return ["-t", str(spec["threads"])] if spec.get("threads") else []


@step_kind("quantize")
def quantize(ctx: StepContext, spec: dict[str, Any]) -> StepOutput:
    src, out = Path(spec["input"]), Path(spec["output"])
    gguf_io.check_file(src)
    args: list[Any] = []
    if spec.get("imatrix"):
        args += ["--imatrix", spec["imatrix"]]
    args += list(spec.get("extra", []))
    # no ftype: an extra argument chooses it (llama-quantize --hifi); the tool's log says which
    ftype = [spec["ftype"]] if spec.get("ftype") else []
    if spec.get("tensor_types"):
        # a strategy: one anchored pattern per tensor (see strategy.overrides)
        types_file = ctx.run_dir / f"{ctx.name}.tensor-types.txt"
        atomic.write_text(types_file, "".join(f"{p}={t}\n" for p, t in spec["tensor_types"]))
        args += ["--tensor-type-file", types_file]
    with atomic.output_file(out) as tmp:
        result = runner.run_tool("llama-quantize", [*args, src, tmp, *ftype, *(
            [str(spec["threads"])] if spec.get("threads") else [])], log_path=ctx.log_path,
            progress=Progress(f"quantize {out.name}", ctx.progress), watcher=runner.watch_quantize)
        if spec.get("expect_types"):
            _check_types(tmp, out, spec["expect_types"])
        size = tmp.stat().st_size
    parsed = parsers.parse_quantize(result.text)
    chosen = spec.get("ftype") or parsers.parse_quantize_ftype(result.text)
    sha = db.file_sha256(ctx.conn, out)
    common = dict(model=str(out.resolve()), model_sha256=sha)
    measurements = [db.Measurement("size_mib", parsed.quant_mib, **common),
                    db.Measurement("bpw", parsed.quant_bpw, **common)]
    extra: dict[str, Any] = {}
    if spec.get("expect_bytes") is not None:
        extra = {"file_bytes": size, "predicted_bytes": spec["expect_bytes"],
                 "predicted_error": spec.get("predicted_error")}
        if size != spec["expect_bytes"]:
            log.warning("%s: %d bytes, the file size model predicted %d", out, size, spec["expect_bytes"])
        measurements += [db.Measurement("file_bytes", size, **common),
                         db.Measurement("predicted_bytes", spec["expect_bytes"], **common)]
        if spec.get("predicted_error") is not None:
            measurements.append(db.Measurement("predicted_error", spec["predicted_error"], **common))
    return StepOutput(
        result={"output": str(out.resolve()), "ftype": chosen, "sha256": sha, "bytes": size,
                **dataclasses.asdict(parsed), **extra, "log": result.log_path},
        measurements=measurements,
        artifacts=[db.Artifact(str(out), "gguf", sha, out.stat().st_size)])


def _check_types(path: Path, out: Path, expected: dict[str, str]) -> None:
    """Every tensor of the written file has the planned type; otherwise one error naming them."""
    from .filesize import tensor_types

    got = tensor_types(path)
    wrong = [f"{n}: {got[n]} instead of {t}" for n, t in expected.items() if n in got and got[n].lower() != t.lower()]
    absent = [n for n in expected if n not in got]
    if wrong or absent:
        items = wrong + [f"{n}: not in the output" for n in absent]
        raise HifikitError(f"{out}: {len(items)} tensor(s) do not have the planned type "
                           f"(llama-quantize fell back or ignored an override): {'; '.join(items[:8])}"
                           + (f"; and {len(items) - 8} more" if len(items) > 8 else ""))


@step_kind("imatrix")
def imatrix(ctx: StepContext, spec: dict[str, Any]) -> StepOutput:
    model, text, out = Path(spec["model"]), Path(spec["text"]), Path(spec["output"])
    args = ["-m", model, "-f", text, "-c", str(spec["ctx"]), *_threads(spec)]
    if spec.get("chunks"):
        args += ["--chunks", str(spec["chunks"])]
    with atomic.output_file(out) as tmp:
        result = runner.run_tool("llama-imatrix", [*args, "-o", tmp], log_path=ctx.log_path,
                                 progress=Progress(f"imatrix {out.name}", ctx.progress),
                                 watcher=runner.watch_chunks)
        summary = gguf_io.imatrix_summary(tmp)
    ppl = None
    try:
        ppl = parsers.parse_perplexity(result.text).ppl
    except parsers.ParseError:
        pass
    parsed = parsers.ImatrixResult(str(out.resolve()), int(summary["chunks"] or 0), summary["chunk_size"],
                                   int(summary["entries"]), list(summary["datasets"]), ppl)
    sha = db.file_sha256(ctx.conn, out)
    return StepOutput(result=dataclasses.asdict(parsed),
                      measurements=[db.Measurement("imatrix_entries", parsed.entries, model=str(model),
                                                   text=str(text), ctx=spec["ctx"], chunks=parsed.chunks)],
                      artifacts=[db.Artifact(str(out), "imatrix", sha, out.stat().st_size)])


def _model_facts(conn, model: Path) -> dict[str, Any]:
    info = gguf_io.read_info(model)
    return {"model": str(model.resolve()), "model_sha256": db.file_sha256(conn, model),
            "file_bytes": info.size, "size_mib": info.size_mib, "bpw": info.bits_per_weight, "types": info.types,
            "file_type": info.file_type}


@step_kind("kld-base")
def kld_base(ctx: StepContext, spec: dict[str, Any]) -> StepOutput:
    ref, text = Path(spec["ref"]), Path(spec["text"])
    r = kld.ensure_reference(ctx.conn, ref, text, spec["ctx"], spec["chunks"], log_path=ctx.log_path,
                             progress=ctx.progress, threads=spec.get("threads"))
    facts = _model_facts(ctx.conn, ref)
    where = dict(model=facts["model"], model_sha256=r.model_sha256, text=str(text.resolve()),
                 text_sha256=r.text_sha256, ctx=r.ctx, chunks=r.chunks)
    return StepOutput(result={**dataclasses.asdict(r), **facts},
                      measurements=[db.Measurement("ppl", r.ppl.get("ppl"), r.ppl.get("ppl_error"), **where)])


@step_kind("eval")
def evaluate(ctx: StepContext, spec: dict[str, Any]) -> StepOutput:
    model, text = Path(spec["model"]), Path(spec["text"])
    gguf_io.check_file(model)
    facts = _model_facts(ctx.conn, model)
    args: list[Any] = ["-m", model, "-f", text, "-c", str(spec["ctx"]), "--chunks", str(spec["chunks"]),
                       *_threads(spec)]
    text_sha = db.file_sha256(ctx.conn, text)
    where = dict(model=facts["model"], model_sha256=facts["model_sha256"], text=str(text.resolve()),
                 text_sha256=text_sha, ctx=spec["ctx"], chunks=spec["chunks"])
    measurements = [db.Measurement("file_bytes", facts["file_bytes"], **where),
                    db.Measurement("size_mib", facts["size_mib"], **where),
                    db.Measurement("bpw", facts["bpw"], **where)]
    label = f"eval {model.name}"
    if spec.get("ref"):
        # cached: this is a lookup unless `runs gc` removed it since the kld-base step
        ref = kld.ensure_reference(ctx.conn, Path(spec["ref"]), text, spec["ctx"], spec["chunks"],
                                   log_path=ctx.log_path, progress=ctx.progress, threads=spec.get("threads"))
        res = runner.run_tool("llama-perplexity", [*args, "--kl-divergence-base", ref.path, "--kl-divergence"],
                              log_path=ctx.log_path, progress=Progress(label, ctx.progress),
                              watcher=runner.watch_chunks)
        k = parsers.parse_kld(res.text)
        measurements += [
            db.Measurement("ppl", k.ppl, k.ppl_error, **where),
            db.Measurement("ppl_ratio", k.ppl_ratio, k.ppl_ratio_error, **where),
            db.Measurement("kld_mean", k.kld_mean, k.kld_error, **where),
            db.Measurement("kld_max", k.kld_max, **where),
            db.Measurement("kld_median", k.kld_median, **where),
            *[db.Measurement(f"kld_p{p}", v, **where) for p, v in k.kld_percentiles.items()],
            db.Measurement("same_top_p", k.same_top_p, k.same_top_p_error, **where),
            db.Measurement("rms_dp", k.rms_dp, k.rms_dp_error, **where),
        ]
        result = {**facts, "ref": str(Path(spec["ref"]).resolve()), "kld": dataclasses.asdict(k),
                  "ppl": k.ppl, "ppl_error": k.ppl_error}
    else:
        res = runner.run_tool("llama-perplexity", args, log_path=ctx.log_path,
                              progress=Progress(label, ctx.progress), watcher=runner.watch_chunks)
        p = parsers.parse_perplexity(res.text)
        measurements.append(db.Measurement("ppl", p.ppl, p.ppl_error, **where))
        result = {**facts, "ppl": p.ppl, "ppl_error": p.ppl_error, "ppl_chunks": p.chunks}
    result.update(text=str(text.resolve()), ctx=spec["ctx"], chunks=spec["chunks"])
    return StepOutput(result=result, measurements=measurements)


@step_kind("bench")
def bench(ctx: StepContext, spec: dict[str, Any]) -> StepOutput:
    args: list[Any] = []
    for m in spec["models"]:
        gguf_io.check_file(m)
        args += ["-m", m]
    args += ["-p", str(spec.get("p", 512)), "-n", str(spec.get("n", 128)), "-r", str(spec.get("r", 5)),
             *_threads(spec), "-o", "json"]
    res = runner.run_tool("llama-bench", args, log_path=ctx.log_path)
    rows = parsers.parse_bench_json(res.stdout)
    ms = [db.Measurement(f"{r.test}_tps", r.avg_ts, r.stddev_ts, model=str(Path(m).resolve()))
          for r in rows for m in spec["models"] if Path(m).name == r.model or m == r.model]
    return StepOutput(result={"rows": [dict(dataclasses.asdict(r), test=r.test) for r in rows]}, measurements=ms)


@step_kind("calib")
def calib_build(ctx: StepContext, spec: dict[str, Any]) -> StepOutput:
    from . import calib

    domains = [calib.Domain(**d) for d in spec["domains"]]
    res = calib.build(domains, spec["tokens"], Path(spec["output"]), spec["seed"],
                      Path(spec["model"]) if spec.get("model") else None)
    sha = db.file_sha256(ctx.conn, res.output)
    # a re-run of this step (after a kill) replaces what an earlier attempt recorded
    ctx.conn.execute("DELETE FROM compositions WHERE run_id=?", (ctx.run_id,))
    ctx.conn.executemany(
        "INSERT INTO compositions (run_id, output, output_sha256, domain, source, weight, target_tokens, tokens, "
        "pieces, chars, seed) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
        [(ctx.run_id, res.output, sha, d.name, d.source, d.weight, d.target_tokens, d.tokens, d.pieces, d.chars,
          res.seed) for d in res.domains])
    return StepOutput(result={**dataclasses.asdict(res), "sha256": sha},
                      measurements=[db.Measurement(f"calib_tokens_{d.name}", d.tokens, text=res.output,
                                                   text_sha256=sha) for d in res.domains]
                      + [db.Measurement("calib_tokens", res.tokens, text=res.output, text_sha256=sha)],
                      artifacts=[db.Artifact(res.output, "calibration-text", sha, Path(res.output).stat().st_size)])


@step_kind("fetch")
def fetch(ctx: StepContext, spec: dict[str, Any]) -> StepOutput:
    from . import hub

    res = hub.download(spec["repo_id"], spec.get("revision"), spec.get("include"), progress=ctx.progress)
    artifacts = [db.Artifact(str(Path(res.snapshot) / f), "gguf") for f in res.files] if res.kind == "gguf" else []
    return StepOutput(result=dataclasses.asdict(res), artifacts=artifacts)


@step_kind("convert")
def convert(ctx: StepContext, spec: dict[str, Any]) -> StepOutput:
    from . import hub

    fetched = hub.FetchResult(**ctx.previous["fetch"])
    if fetched.kind == "gguf":
        return StepOutput(result={"models": [str(Path(fetched.snapshot) / f) for f in fetched.files]})
    out = hub.converted_path(fetched, spec["outtype"])
    out.parent.mkdir(parents=True, exist_ok=True)
    if not out.is_file():
        hub.convert(Path(fetched.snapshot), out, spec["outtype"], log_path=ctx.log_path)
    sha = db.file_sha256(ctx.conn, out)
    return StepOutput(result={"models": [str(out)]}, artifacts=[db.Artifact(str(out), "gguf", sha, out.stat().st_size)])


from . import analyze as _analyze  # noqa: E402,F401  (registers the analyze step kinds)
from . import costs_job as _costs_job  # noqa: E402,F401  (registers the costs step kinds)
