"""``hifikit eval MODEL [--ref REF] --text F``: perplexity and, with a reference, KL divergence."""
from __future__ import annotations

import argparse
from pathlib import Path

from .. import jobs, kld
from .common import add_eval_args, add_json, model_path, positive, run_job
from .output import emit_json, note, say, table


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="perplexity, and KL divergence against a reference model")
    p.add_argument("model", type=Path)
    p.add_argument("--ref", type=Path, help="reference model (e.g. the F16 GGUF) for KL divergence")
    add_eval_args(p)
    add_json(p)
    p.set_defaults(func=run)


def eval_steps(ref: Path | None, models: list[Path], text: Path, ctx: int, chunks: int,
               threads: int | None) -> list[jobs.StepSpec]:
    base = {"text": str(text.resolve()), "ctx": ctx, "chunks": chunks, "threads": threads}
    steps = []
    if ref is not None:
        steps.append(jobs.StepSpec("reference", "kld-base", {"ref": str(ref), **base}))
    for i, model in enumerate(models):
        spec = {"model": str(model), **base}
        if ref is not None:
            spec["ref"] = str(ref)
        steps.append(jobs.StepSpec(f"eval-{i}", "eval", spec))
    return steps


def run(args: argparse.Namespace) -> int:
    model = model_path(args.model)
    ref = model_path(args.ref) if args.ref else None
    positive(args.ctx, "ctx")
    positive(args.chunks, "chunks")
    chunks = kld.check_text(ref or model, args.text, args.ctx, args.chunks)
    run = run_job("eval", {"model": str(model), "ref": str(ref) if ref else None, "text": str(args.text),
                           "ctx": args.ctx, "chunks": chunks},
                  eval_steps(ref, [model], args.text, args.ctx, chunks, args.threads), args)
    render(run, args.json)
    return 0


def rows(run: dict) -> list[dict]:
    """One record per evaluated model (the reference first), as compare and eval print them."""
    out = []
    for step in run["steps"]:
        res = step["result"] or {}
        if step["kind"] == "kld-base" and res:
            ppl = res.get("ppl") or {}
            out.append({"model": res["model"], "role": "reference", "size_mib": res["size_mib"], "bpw": res["bpw"],
                        "ppl": ppl.get("ppl"), "ppl_error": ppl.get("ppl_error"), "kld_mean": None,
                        "kld_error": None, "kld_p99": None, "kld_p999": None, "kld_max": None, "same_top_p": None,
                        "rms_dp": None, "kld_base_mib": res["size"] / 2**20})
        elif step["kind"] == "eval" and res:
            k = res.get("kld") or {}
            out.append({"model": res["model"], "role": "model", "size_mib": res["size_mib"], "bpw": res["bpw"],
                        "ppl": res["ppl"], "ppl_error": res["ppl_error"], "kld_mean": k.get("kld_mean"),
                        "kld_error": k.get("kld_error"), "kld_p99": (k.get("kld_percentiles") or {}).get("99.0"),
                        "kld_p999": (k.get("kld_percentiles") or {}).get("99.9"),
                        "kld_max": k.get("kld_max"), "same_top_p": k.get("same_top_p"),
                        "rms_dp": k.get("rms_dp"), "warnings": res.get("warnings", [])})
    return out


def _pm(v, e, fmt: str) -> str:
    if v is None:
        return ""
    return f"{v:{fmt}} ± {e:{fmt}}" if e is not None else f"{v:{fmt}}"


def format_table(records: list[dict]) -> str:
    return table(["model", "MiB", "BPW", "PPL", "mean KLD", "KLD 99%", "KLD 99.9%", "max KLD", "same top %",
                  "RMS Δp %"],
                 [[Path(r["model"]).name + (" (ref)" if r["role"] == "reference" else ""), f"{r['size_mib']:.2f}",
                   f"{r['bpw']:.3f}", _pm(r["ppl"], r["ppl_error"], ".4f"), _pm(r["kld_mean"], r["kld_error"], ".6f"),
                   "" if r["kld_p99"] is None else f"{r['kld_p99']:.4f}",
                   "" if r["kld_p999"] is None else f"{r['kld_p999']:.4f}",
                   "" if r["kld_max"] is None else f"{r['kld_max']:.4f}",
                   "" if r["same_top_p"] is None else f"{r['same_top_p']:.2f}",
                   "" if r["rms_dp"] is None else f"{r['rms_dp']:.3f}"] for r in records],
                 right=[False] + [True] * 9)


def render(run: dict, as_json: bool) -> None:
    records = rows(run)
    if as_json:
        emit_json({"run": run["id"], "args": run["args"], "models": records})
        return
    say(format_table(records))
    for r in records:
        for w in r.get("warnings") or []:
            note(f"warning: {w}")
    args = run["args"]
    say(f"\ntext {args.get('text')}, ctx {args.get('ctx')}, {args.get('chunks')} chunks  [run {run['id']}]")
    for r in records:
        if r.get("kld_base_mib") is not None:
            say(f"reference logits: {r['kld_base_mib']:.1f} MiB in {kld.kld_dir()} ('hifikit runs gc' removes them)")
