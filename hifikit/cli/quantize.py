"""``hifikit quantize IN OUT --type T | --hifi [VARIANT] [--imatrix F]``."""
from __future__ import annotations

import argparse
from pathlib import Path

from .. import atomic
from ..errors import HifikitError
from ..quantize import check_imatrix, make_step, quant_options, resolve_hifi, resolve_type, strategy_step
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


def run_strategy(args: argparse.Namespace, src: Path) -> int:
    from ..planner import filesize
    from ..planner import strategy as strat

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
