"""``hifikit quantize IN OUT --type T | --hifi [VARIANT] | --strategy FILE [--imatrix F]``."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..quant_rules import quant_options
from ..quantize import QuantizeOptions, QuantizeResult, quantize
from ..tables import table
from .common import add_json, progress_mode
from .output import emit_json, say


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
