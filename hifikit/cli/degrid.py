"""``hifikit degrid IN.gguf OUT.gguf [--seed N]``: the same model without its published quantization grid."""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from .. import degrid
from ..progress import Progress
from .common import add_json, progress_mode
from .output import emit_json, say


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("degrid", help="write an exactly equivalent twin of a model whose weights lie on no "
                                      "quantization grid (a channel permutation)")
    p.add_argument("input", type=Path, help="F32/F16/BF16 GGUF (dequantize a quantized model to F16 first)")
    p.add_argument("output", type=Path)
    p.add_argument("--seed", type=int, default=0, help="permutation seed (default 0)")
    p.add_argument("--check", action="store_true", help="run the grid check on the input and the output")
    add_json(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    bar = Progress(f"degrid {args.input.name}", progress_mode(args))
    try:
        res = degrid.degrid(args.input, args.output, args.seed, progress=bar.update, check=args.check)
    finally:
        bar.close()
    info = {k: v for k, v in dataclasses.asdict(res).items() if args.check or not k.startswith("grid_")}
    if args.json:
        emit_json(info)
        return 0
    say(f"{res.output}: {res.architecture}, seed {res.seed}: {res.permuted} tensors permuted, {res.unchanged} kept, "
        f"{res.file_bytes} bytes in {res.seconds:.1f} s")
    if args.check:
        for label in ("grid_before", "grid_after"):
            g = info[label]
            say(f"{label.replace('_', ' ')}: {len(g['tensors'])} of {g['checked']} tensors on a grid"
                + (f" ({', '.join(f'{t} on {n}' for t, n in g['by_type'].items())})" if g["by_type"] else ""))
    return 0
