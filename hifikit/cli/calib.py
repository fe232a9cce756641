"""``hifikit calib build --mix NAME=PATH:WEIGHT ... --tokens N -o calib.txt``."""
from __future__ import annotations

import argparse
from pathlib import Path

from .. import calib
from ..tables import table
from .common import add_json, progress_mode
from .output import emit_json, say


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
    res = calib.build_calibration(calib.CalibOptions(args.tokens, args.output, args.mix, args.seed, args.model),
                                  progress=progress_mode(args))
    render(res, args.json)
    return 0


def render(res: calib.CalibJobResult, as_json: bool) -> None:
    if as_json:
        emit_json({"run": res.run_id, **res.step})
        return
    t = res.text
    say(table(["domain", "source", "weight", "target", "tokens", "pieces", "chars"],
              [[d.name, d.source, f"{d.weight:.2f}", d.target_tokens, d.tokens, d.pieces, d.chars] for d in t.domains],
              right=[False, False, True, True, True, True, True]))
    say(f"\n{t.output}: {t.tokens} tokens ({'tokenizer of ' + t.tokenizer if t.tokenizer else 'estimated'}), "
        f"seed {t.seed}  [run {res.run_id}]")


def show(run: dict, as_json: bool) -> None:
    """For `hifikit runs show/resume` of a calib run."""
    render(calib.CalibJobResult.from_run(run), as_json)
