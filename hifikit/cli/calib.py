"""``hifikit calib build --mix NAME=PATH:WEIGHT ... --tokens N -o calib.txt``."""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from .. import atomic, calib, jobs
from .common import add_json, model_path, run_job, step_result
from .output import emit_json, say, table


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("calib", help="calibration text mixes")
    cs = p.add_subparsers(dest="calib_command", required=True, metavar="ACTION")
    b = cs.add_parser("build", help="sample domains by token counts into one calibration text",
                      description="Default mix (seed 000): prose 60%%, code 25%% (Python's standard library "
                                  "when no code source is given), math 15%%.")
    b.add_argument("--mix", action="append", default=[], metavar="NAME=PATH:WEIGHT",
                   help="a domain: file or directory (PATH 'stdlib' = Python's own sources); repeatable")
    b.add_argument("--tokens", type=int, required=True, help="total token budget")
    b.add_argument("-o", "--output", type=Path, required=True)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--model", type=Path, help="GGUF whose tokenizer counts the tokens (else estimated)")
    add_json(b)
    b.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    domains = calib.complete_mix([calib.parse_mix(m) for m in args.mix])
    model = model_path(args.model) if args.model else None
    atomic.check_writable(args.output)
    spec = {"domains": [dataclasses.asdict(d) for d in domains], "tokens": args.tokens,
            "output": str(args.output.resolve()), "seed": args.seed, "model": str(model) if model else None}
    run = run_job("calib", spec, [jobs.StepSpec("build", "calib", spec)], args)
    render(run, args.json)
    return 0


def render(run: dict, as_json: bool) -> None:
    res = step_result(run, "build")
    if as_json:
        emit_json({"run": run["id"], **res})
        return
    say(table(["domain", "source", "weight", "target", "tokens", "pieces", "chars"],
              [[d["name"], d["source"], f"{d['weight']:.2f}", d["target_tokens"], d["tokens"], d["pieces"], d["chars"]]
               for d in res["domains"]], right=[False, False, True, True, True, True, True]))
    say(f"\n{res['output']}: {res['tokens']} tokens ({'tokenizer of ' + res['tokenizer'] if res['tokenizer'] else 'estimated'}), "
        f"seed {res['seed']}  [run {run['id']}]")
