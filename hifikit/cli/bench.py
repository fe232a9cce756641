"""``hifikit bench MODEL ...``: llama-bench throughput (prompt and generation)."""
from __future__ import annotations

import argparse
from pathlib import Path

from .. import jobs
from .common import add_json, model_path, run_job, step_result
from .output import emit_json, say, table


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
    models = [str(model_path(m)) for m in args.models]
    spec = {"models": models, "p": args.n_prompt, "n": args.n_gen, "r": args.repetitions, "threads": args.threads}
    run = run_job("bench", spec, [jobs.StepSpec("bench", "bench", spec)], args)
    render(run, args.json)
    return 0


def render(run: dict, as_json: bool) -> None:
    rows = step_result(run, "bench")["rows"]
    if as_json:
        emit_json({"run": run["id"], "rows": rows})
        return
    say(table(["model", "type", "MiB", "backend", "threads", "test", "t/s"],
              [[Path(r["model"]).name, r["model_type"], f"{r['model_size'] / 2**20:.2f}", r["backends"], r["n_threads"],
                r["test"], f"{r['avg_ts']:.2f} ± {r['stddev_ts']:.2f}"] for r in rows],
              right=[False, False, True, False, True, False, True]))
