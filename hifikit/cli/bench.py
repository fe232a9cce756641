"""``hifikit bench MODEL ...``: llama-bench throughput (prompt and generation)."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..evaluate import BenchOptions, BenchResult, bench
from ..tables import table
from .common import add_json, progress_mode
from .output import emit_json, say


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="tokens per second with llama-bench")
    p.add_argument("models", type=Path, nargs="+")
    p.add_argument("-p", "--n-prompt", type=int, default=512)
    p.add_argument("-n", "--n-gen", type=int, default=128)
    p.add_argument("-r", "--repetitions", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    add_json(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    res = bench(BenchOptions(args.models, args.n_prompt, args.n_gen, args.repetitions, args.threads),
                progress=progress_mode(args))
    render(res, args.json)
    return 0


def render(res: BenchResult, as_json: bool) -> None:
    if as_json:
        emit_json({"run": res.run_id, "rows": res.rows})
        return
    say(table(["model", "type", "MiB", "backend", "threads", "test", "t/s"],
              [[Path(r["model"]).name, r["model_type"], f"{r['model_size'] / 2**20:.2f}", r["backends"], r["n_threads"],
                r["test"], f"{r['avg_ts']:.2f} ± {r['stddev_ts']:.2f}"] for r in res.rows],
              right=[False, False, True, False, True, False, True]))


def show(run: dict, as_json: bool) -> None:
    """For `hifikit runs show/resume` of a bench run."""
    render(BenchResult.from_run(run), as_json)
