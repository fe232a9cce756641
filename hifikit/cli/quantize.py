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
    g.add_argument("--strategy", type=Path, metavar="FILE",
                   help="a strategy YAML from 'hifikit plan': one type per tensor, checked after writing")
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
    if args.strategy is not None:
        return run_strategy(args, src)
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
    if res.get("predicted_bytes") is not None:
        say(f"file {res['file_bytes']} bytes (predicted {res['predicted_bytes']}); every tensor has its planned type")


def strategy_step(src: Path, out: Path, s, layout, threads: int | None, expect_bytes: int | None = None,
                  predicted_error: float | None = None) -> jobs.StepSpec:
    """A quantize step applying strategy s: --tensor-type-file with one anchored pattern per tensor."""
    from .. import strategy as strat

    pairs = strat.overrides(s, layout)
    spec = {"input": str(src), "output": str(out.resolve()), "ftype": resolve_type(s.base_ftype),
            "threads": threads, "tensor_types": pairs, "strategy": s.path,
            "expect_types": {name: t for name, t in s.types.items()
                             if any(slot.name == name and slot.quantizable for slot in layout.tensors)}}
    if s.imatrix:
        spec["imatrix"] = str(Path(s.imatrix).resolve())
    if expect_bytes is not None:
        spec["expect_bytes"] = expect_bytes
        spec["predicted_error"] = predicted_error
    return jobs.StepSpec("quantize", "quantize", spec)


def run_strategy(args: argparse.Namespace, src: Path) -> int:
    from .. import filesize
    from .. import strategy as strat

    s = strat.load(args.strategy)
    if args.imatrix is not None:
        check_imatrix(args.imatrix)
        if s.imatrix and Path(s.imatrix).resolve() != args.imatrix.resolve():
            raise HifikitError(f"--imatrix {args.imatrix} differs from the strategy's imatrix {s.imatrix}")
        s.imatrix = str(args.imatrix.resolve())
    layout = filesize.FileLayout.read(src)
    ikeys = filesize.ImatrixKeys.from_file(s.imatrix, str(Path(s.imatrix).resolve())) if s.imatrix else None
    res = strat.check(s, layout, ikeys)
    if not res.ok:
        raise HifikitError(f"{args.strategy}: {len(res.errors)} error(s): " + "; ".join(res.errors[:5])
                           + (" ..." if len(res.errors) > 5 else "") + f" (see 'hifikit plan --check {args.strategy}')")
    atomic.check_writable(args.output)
    if args.output.resolve() == src:
        raise HifikitError(f"{args.output}: output would overwrite the input")
    run = run_job("quantize", {"input": str(src), "output": str(args.output), "strategy": str(args.strategy),
                               "imatrix": s.imatrix},
                  [strategy_step(src, args.output, s, layout, args.threads, res.bytes, res.error)], args)
    render(run, args.json)
    return 0
