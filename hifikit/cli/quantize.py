"""``hifikit quantize IN OUT --type T | --hifi [VARIANT] | --strategy FILE [--imatrix F]``, and
``hifikit quantize IN OUT --strategy FILE --verify --text T [--bench]``."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import HifikitError
from ..quant_rules import quant_options
from ..quantize import (QuantizeOptions, QuantizeResult, QuantizeVerifyOptions, QuantizeVerifyResult, SpeedComparison,
                        quantize, quantize_verify)
from ..tables import num, table
from .common import add_json, progress_mode
from .output import emit_json, eval_table, note, say


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quantize", help="quantize a GGUF with llama-quantize (one tracked run)")
    p.add_argument("input", type=Path)
    p.add_argument("output", type=Path)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--type", dest="ftype", help="llama-quantize type, e.g. Q4_K_M (see 'hifikit quantize --list')")
    g.add_argument("--hifi", nargs="?", const="", metavar="VARIANT",
                   help="a HIFI mixture of this build (default: the _M variant)")
    g.add_argument("--list", action="store_true", help="list the types this build accepts")
    g.add_argument("--strategy", type=Path, metavar="FILE",
                   help="a strategy YAML from 'hifikit plan': one type per tensor, checked after writing")
    p.add_argument("--imatrix", type=Path, help="importance matrix (GGUF) from 'hifikit imatrix'")
    p.add_argument("--threads", type=int, default=None)
    v = p.add_argument_group("verify (with --strategy): measure the file against IN, one run 'quantize-verify'")
    v.add_argument("--verify", action="store_true", help="measure the quantized file's KL divergence against IN")
    v.add_argument("--text", type=Path, help="with --verify: the evaluation text")
    v.add_argument("--ctx", type=int, default=512, help="with --verify: tokens per chunk (default 512)")
    v.add_argument("--chunks", type=int, default=None, help="with --verify: chunks to score (default: all)")
    v.add_argument("--bench", action="store_true",
                   help="with --verify: also llama-bench the file and the strategy's speed reference (quantized "
                        "beside OUT), predicted speed against measured")
    v.add_argument("--bench-prompt", type=int, metavar="P",
                   help="llama-bench -p (default: the prompt length of the strategy's prediction, else 512)")
    v.add_argument("--bench-gen", type=int, default=128, metavar="N", help="llama-bench -n (default 128)")
    v.add_argument("--bench-reps", type=int, default=5, metavar="R", help="llama-bench -r (default 5)")
    v.add_argument("--ref-out", type=Path, metavar="FILE",
                   help="with --bench: the speed reference's file (default: OUT's name + -FTYPE.gguf)")
    add_json(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.list:
        opts = quant_options()
        if args.json:
            emit_json(opts)
        else:
            say(table(["type", "ftype", "description"], [[k, v["ftype"], v["desc"]] for k, v in opts.items()]))
        return 0
    if args.verify:
        if args.strategy is None:
            raise HifikitError("--verify needs --strategy FILE (to measure a stock ftype: 'hifikit compare')")
        if args.text is None:
            raise HifikitError("--verify needs --text F (the evaluation text)")
        verified = quantize_verify(QuantizeVerifyOptions(
            args.input, args.output, args.strategy, args.text, args.imatrix, args.ctx, args.chunks, args.threads,
            args.bench, args.bench_prompt, args.bench_gen, args.bench_reps, args.ref_out), progress=progress_mode(args))
        render_verify(verified, args.json)
        return 0
    if args.bench:
        raise HifikitError("--bench measures a verified strategy: give --strategy FILE --verify --text F "
                           "('hifikit bench' benchmarks any file)")
    res = quantize(QuantizeOptions(args.input, args.output, args.ftype, args.hifi, args.strategy, args.imatrix,
                                   args.threads), progress=progress_mode(args))
    render(res, args.json)
    return 0


def render(res: QuantizeResult, as_json: bool) -> None:
    if as_json:
        emit_json({"run": res.run_id, **res.step})
        return
    say(table(["tensor", "shape", "from", "to", "MiB before", "MiB after"],
              [[t["name"], "×".join(map(str, t["shape"])), t["source_type"], t["target_type"],
                f"{t['mib_before']:.3f}", f"{t['mib_after']:.3f}"] for t in res.tensors],
              right=[False, False, False, False, True, True]))
    say(f"\n{res.output}: {res.ftype}, {res.step['model_mib']:.2f} MiB -> {res.quant_mib:.2f} MiB "
        f"({res.quant_bpw:.2f} BPW)  [run {res.run_id}]")
    if res.predicted_bytes is not None:
        say(f"file {res.file_bytes} bytes (predicted {res.predicted_bytes}); every tensor has its planned type")


def show(run: dict, as_json: bool) -> None:
    """For `hifikit runs show/resume` of a quantize run."""
    render(QuantizeResult.from_run(run), as_json)


def render_verify(res: QuantizeVerifyResult, as_json: bool) -> None:
    if as_json:
        emit_json(res.to_json())
        return
    say(eval_table([r for r in res.rows if r.kld_mean is not None or r.role == "reference"]))
    pred = f"predicted {res.predicted_bytes}" if res.predicted_bytes is not None else "no prediction"
    err = f", predicted error {res.predicted_error:.6g}" if res.predicted_error is not None else ""
    kld = f"{res.kld_mean:.6f} ± {res.kld_error:.6f}" if res.kld_mean is not None else "not measured"
    say(f"\n{res.output}: {res.file_bytes} bytes ({pred}){err}, measured mean KLD {kld}  [run {res.run_id}]")
    if res.speed is not None:
        say("")
        say(speed_table(res.speed))
        if res.speed.note:
            note(f"note: {res.speed.note}")


def speed_table(sp: SpeedComparison) -> str:
    p, n = sp.n_prompt, sp.n_gen
    lines = [table(["file", "role", f"pp{p} pred", "measured", "pred/meas", f"tg{n} pred", "measured", "pred/meas"],
                   [[Path(r.model).name, r.role if r.ftype is None else f"{r.role} {r.ftype}",
                     num(r.predicted_pp_tps, ".1f"), _pm(r.measured_pp_tps, r.measured_pp_std),
                     num(r.pp_ratio, ".3f"), num(r.predicted_tg_tps, ".2f"), _pm(r.measured_tg_tps, r.measured_tg_std),
                     num(r.tg_ratio, ".3f")] for r in sp.rows],
                   right=[False, False, True, True, True, True, True, True])]
    s, ref = sp.strategy, sp.reference
    if ref is not None and s.measured_pp_tps and ref.measured_pp_tps and s.measured_tg_tps and ref.measured_tg_tps:
        line = (f"measured speed over {ref.ftype}'s: pp {s.measured_pp_tps / ref.measured_pp_tps:.3f}x, "
                f"tg {s.measured_tg_tps / ref.measured_tg_tps:.3f}x")
        if s.predicted_tg_tps and ref.predicted_tg_tps:
            pp = (f"pp {s.predicted_pp_tps / ref.predicted_pp_tps:.3f}x, "
                  if s.predicted_pp_tps and ref.predicted_pp_tps else "")
            line += f" (predicted {pp}tg {s.predicted_tg_tps / ref.predicted_tg_tps:.3f}x)"
        lines.append(line)
    lines.append(f"llama-bench -p {p} -n {n} -r {sp.repetitions}"
                 + (f"; predictions from costs of {sp.source}" if sp.source else ""))
    return "\n".join(lines)


def _pm(value: float | None, err: float | None) -> str:
    return "" if value is None else f"{value:.1f} ± {err or 0.0:.1f}"


def show_verify(run: dict, as_json: bool) -> None:
    """For `hifikit runs show/resume` of a quantize-verify run."""
    render_verify(QuantizeVerifyResult.from_run(run), as_json)
