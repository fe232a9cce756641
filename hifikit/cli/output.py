"""One output helper: results to stdout (text or JSON), everything else to stderr.

Also the table of measured models that eval, compare, plan --verify and recipes
--verify print (report.Row records, the reference first).
"""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from .. import kld
from ..evaluate import EvalResult
from ..report import Row
from ..tables import num, pm, table


def to_jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: to_jsonable(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if hasattr(value, "__fspath__"):
        return str(value)
    return value


def emit_json(value: Any) -> None:
    json.dump(to_jsonable(value), sys.stdout, indent=2)
    sys.stdout.write("\n")


def say(text: str = "") -> None:
    print(text, file=sys.stdout)


def note(text: str) -> None:
    print(text, file=sys.stderr)


def eval_table(records: list[Row]) -> str:
    """One line per model: size, PPL, KLD mean and tail, same top token, RMS Δp."""
    return table(["model", "MiB", "BPW", "PPL", "mean KLD", "KLD 99%", "KLD 99.9%", "max KLD", "same top %",
                  "RMS Δp %"],
                 [[Path(r.model).name + (" (ref)" if r.role == "reference" else ""), num(r.size_mib, ".2f"),
                   num(r.bpw, ".3f"), pm(r.ppl, r.ppl_error, ".4f"), pm(r.kld_mean, r.kld_error, ".6f"),
                   num(r.kld_p99, ".4f"), num(r.kld_p999, ".4f"), num(r.kld_max, ".4f"), num(r.same_top_p, ".2f"),
                   num(r.rms_dp, ".3f")] for r in records],
                 right=[False] + [True] * 9)


def render_eval(res: EvalResult, as_json: bool) -> None:
    """An eval or compare run: the table, its warnings, the text and the cached reference logits."""
    if as_json:
        emit_json({"run": res.run_id, "args": res.run["args"], "models": [dataclasses.asdict(r) for r in res.rows]})
        return
    say(eval_table(res.rows))
    for r in res.rows:
        for w in r.warnings:
            note(f"warning: {w}")
    say(f"\ntext {res.text}, ctx {res.ctx}, {res.chunks} chunks  [run {res.run_id}]")
    for r in res.rows:
        if r.kld_base_mib is not None:
            say(f"reference logits: {r.kld_base_mib:.1f} MiB in {kld.kld_dir()} ('hifikit runs gc' removes them)")
