"""``hifikit compare --ref REF --text F [MODEL ...] [--quant TYPE ...]``: one table for several models.

``--quant`` quantizes the reference into each type first (into --out-dir),
so one resumable run goes from an F16 GGUF to the comparison table.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from .. import atomic, kld
from ..errors import HifikitError
from . import eval as eval_cli
from .. import quantize as quantize_lib
from .common import add_eval_args, add_json, model_path, positive, run_job


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="PPL and KLD of several models against one reference, in one table")
    p.add_argument("models", type=Path, nargs="*", help="GGUF files to compare")
    p.add_argument("--ref", type=Path, required=True, help="reference model (e.g. F16)")
    p.add_argument("--quant", action="append", default=[], metavar="TYPE",
                   help="also quantize the reference to TYPE and compare it (repeatable)")
    p.add_argument("--imatrix", type=Path, help="importance matrix for --quant")
    p.add_argument("--out-dir", type=Path, default=None, help="where --quant writes (default: next to REF)")
    add_eval_args(p)
    add_json(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    ref = model_path(args.ref)
    models = [model_path(m) for m in args.models]
    if not models and not args.quant:
        raise HifikitError("nothing to compare: give MODEL files and/or --quant TYPE")
    positive(args.ctx, "ctx")
    positive(args.chunks, "chunks")
    ftypes = [quantize_lib.resolve_type(t) for t in args.quant]
    quantize_lib.check_imatrix(args.imatrix)
    out_dir = (args.out_dir or ref.parent).resolve()
    outputs = [out_dir / f"{ref.stem}-{t}.gguf" for t in ftypes]
    for out in outputs:
        atomic.check_writable(out)
    chunks = kld.check_text(ref, args.text, args.ctx, args.chunks)
    steps = eval_cli.eval_steps(ref, [], args.text, args.ctx, chunks, args.threads)
    for t, out in zip(ftypes, outputs):
        steps.append(quantize_lib.make_step(ref, out, t, args.imatrix, args.threads, name=f"quantize-{t}"))
    steps += eval_cli.eval_steps(ref, [*models, *outputs], args.text, args.ctx, chunks, args.threads)[1:]
    run = run_job("compare", {"ref": str(ref), "models": [str(m) for m in models], "quant": ftypes,
                              "text": str(args.text), "ctx": args.ctx, "chunks": chunks}, steps, args)
    render(run, args.json)
    return 0


render = eval_cli.render
