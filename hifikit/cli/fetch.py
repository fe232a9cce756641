"""``hifikit fetch REPO_ID [--revision R] [--include GLOB]``: a model from the Hugging Face Hub."""
from __future__ import annotations

import argparse

from .. import jobs
from .common import add_json, run_job, step_result
from .output import emit_json, say


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fetch", help="download a model from the Hugging Face Hub (safetensors are converted)")
    p.add_argument("repo_id")
    p.add_argument("--revision", default=None, help="branch, tag or commit")
    p.add_argument("--include", action="append", default=[], metavar="GLOB",
                   help="only files matching GLOB (repeatable), e.g. '*Q4_K_M.gguf'")
    p.add_argument("--outtype", default="f16", choices=["f32", "f16", "bf16", "q8_0"],
                   help="GGUF type when converting safetensors (default f16)")
    add_json(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    spec = {"repo_id": args.repo_id, "revision": args.revision, "include": args.include or None}
    run = run_job("fetch", {**spec, "outtype": args.outtype},
                  [jobs.StepSpec("fetch", "fetch", spec), jobs.StepSpec("convert", "convert", {"outtype": args.outtype})],
                  args)
    render(run, args.json)
    return 0


def render(run: dict, as_json: bool) -> None:
    fetched, models = step_result(run, "fetch"), step_result(run, "convert")["models"]
    if as_json:
        emit_json({"run": run["id"], **fetched, "models": models})
        return
    say(f"{fetched['repo_id']} @ {fetched['commit']}: {fetched['kind']}, {len(fetched['files'])} file(s)")
    for m in models:
        say(m)
