"""``hifikit quantize IN OUT --type T | --hifi [VARIANT] [--imatrix F]``."""
from __future__ import annotations

import argparse
from functools import lru_cache
from pathlib import Path

from .. import atomic, gguf_io, jobs, parsers, runner
from ..errors import HifikitError
from .common import add_json, model_path, run_job, step_result
from .output import emit_json, say, table


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quantize", help="quantize a GGUF with llama-quantize (one tracked run)")
    p.add_argument("input", type=Path)
    p.add_argument("output", type=Path)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--type", dest="ftype", help="llama-quantize type, e.g. Q4_K_M (see 'hifikit quantize --list')")
    g.add_argument("--hifi", nargs="?", const="", metavar="VARIANT",
                   help="a HIFI mixture of this build (default: the _M variant)")
    g.add_argument("--list", action="store_true", help="list the types this build accepts")
    p.add_argument("--imatrix", type=Path, help="importance matrix (GGUF) from 'hifikit imatrix'")
    p.add_argument("--threads", type=int, default=None)
    add_json(p)
    p.set_defaults(func=run)


@lru_cache(maxsize=1)
def quant_options() -> dict[str, dict]:
    """name -> {ftype, desc}, as the built llama-quantize lists them."""
    res = runner.run_tool("llama-quantize", ["--help"], check=False)
    return parsers.parse_quant_options(res.stdout + res.stderr)


def resolve_type(name: str) -> str:
    options = quant_options()
    for known in options:
        if known.lower() == name.lower():
            return known
    raise HifikitError(f"unknown quantization type '{name}'; this build accepts: {', '.join(options)}")


def resolve_hifi(variant: str) -> str:
    hifi = [n for n in quant_options() if "HIFI" in n.upper()]
    if not hifi:
        raise HifikitError("this build has no HIFI quantization types (llama-quantize lists none)")
    if variant:
        return resolve_type(variant if "HIFI" in variant.upper() else f"{variant}_HIFI")
    medium = [n for n in hifi if n.upper().endswith("_M")]
    return (medium or hifi)[0]


def make_step(src: Path, out: Path, ftype: str, imatrix: Path | None, threads: int | None,
              name: str = "quantize") -> jobs.StepSpec:
    spec = {"input": str(src), "output": str(out.resolve()), "ftype": ftype, "threads": threads}
    if imatrix:
        spec["imatrix"] = str(imatrix.resolve())
    return jobs.StepSpec(name, "quantize", spec)


def check_imatrix(path: Path | None) -> None:
    if path is None:
        return
    kind = gguf_io.general_type(path)
    if kind != "imatrix":
        raise HifikitError(f"{path}: not an imatrix GGUF (general.type is {kind!r})")


def run(args: argparse.Namespace) -> int:
    if args.list:
        opts = quant_options()
        if args.json:
            emit_json(opts)
        else:
            say(table(["type", "ftype", "description"], [[k, v["ftype"], v["desc"]] for k, v in opts.items()]))
        return 0
    src = model_path(args.input)
    ftype = resolve_hifi(args.hifi) if args.hifi is not None else resolve_type(args.ftype)
    check_imatrix(args.imatrix)
    atomic.check_writable(args.output)
    if args.output.resolve() == src:
        raise HifikitError(f"{args.output}: output would overwrite the input")
    run = run_job("quantize", {"input": str(src), "output": str(args.output), "ftype": ftype,
                               "imatrix": str(args.imatrix) if args.imatrix else None},
                  [make_step(src, args.output, ftype, args.imatrix, args.threads)], args)
    render(run, args.json)
    return 0


def render(run: dict, as_json: bool) -> None:
    res = step_result(run, "quantize")
    if as_json:
        emit_json({"run": run["id"], **res})
        return
    say(table(["tensor", "shape", "from", "to", "MiB before", "MiB after"],
              [[t["name"], "×".join(map(str, t["shape"])), t["source_type"], t["target_type"],
                f"{t['mib_before']:.3f}", f"{t['mib_after']:.3f}"] for t in res["tensors"]],
              right=[False, False, False, False, True, True]))
    say(f"\n{res['output']}: {res['ftype']}, {res['model_mib']:.2f} MiB -> {res['quant_mib']:.2f} MiB "
        f"({res['quant_bpw']:.2f} BPW)  [run {run['id']}]")
