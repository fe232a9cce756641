"""``hifikit inspect MODEL.gguf``: tensors, shapes, types and sizes, and whether the file needs a HIFI build."""
from __future__ import annotations

import argparse
from pathlib import Path

from .. import gguf_io
from .common import add_json
from ..tables import table
from .output import emit_json, say


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="tensors, shapes, types and sizes of a GGUF file")
    p.add_argument("model", type=Path)
    p.add_argument("--metadata", action="store_true", help="also print the metadata key/values")
    add_json(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    info = gguf_io.read_info(args.model)
    if args.json:
        emit_json(info.to_json(metadata=args.metadata))
        return 0
    say(f"{info.path}: {info.architecture or '?'} '{info.name or ''}', {info.n_tensors} tensors, "
        f"{info.n_elements / 1e6:.2f} M weights, {info.size_mib:.2f} MiB of tensors ({info.bits_per_weight:.3f} BPW)")
    say("types: " + ", ".join(f"{k} ×{v}" for k, v in sorted(info.types.items())))
    if info.hifi_format is not None:
        say(f"HIFI format {info.hifi_format}: needs hifikit or a HIFI-enabled llama.cpp "
            "(stock llama.cpp and the gguf package refuse its tensor types)")
    if args.metadata:
        for k, v in info.metadata.items():
            say(f"  {k} = {v}")
    say("")
    say(table(["tensor", "shape", "type", "MiB", "BPW"],
              [[t.name, "×".join(map(str, t.shape)), t.type, f"{t.n_bytes / 2**20:.3f}", f"{t.bits_per_weight:.3f}"]
               for t in info.tensors], right=[False, False, False, True, True]))
    return 0
