"""``hifikit fetch REPO_ID [--revision R] [--include GLOB]``: a model from the Hugging Face Hub."""
from __future__ import annotations

import argparse
import dataclasses

from .. import hub
from .common import add_json, progress_mode
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
    res = hub.fetch(hub.FetchOptions(args.repo_id, args.revision, args.include or None, args.outtype),
                    progress=progress_mode(args))
    render(res, args.json)
    return 0


def render(res: hub.FetchJobResult, as_json: bool) -> None:
    f = res.fetched
    if as_json:
        emit_json({"run": res.run_id, **dataclasses.asdict(f), "models": res.models})
        return
    say(f"{f.repo_id} @ {f.commit}: {f.kind}, {len(f.files)} file(s)")
    for m in res.models:
        say(m)


def show(run: dict, as_json: bool) -> None:
    """For `hifikit runs show/resume` of a fetch run."""
    render(hub.FetchJobResult.from_run(run), as_json)
