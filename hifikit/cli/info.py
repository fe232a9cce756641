"""``hifikit info``: what was built, from what, and the GGML type table."""
from __future__ import annotations

import argparse
import dataclasses

from ..info import build_report
from ..tables import table
from .output import emit_json, say


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="versions, pin, patches, binaries and the GGML type table")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    data = dataclasses.asdict(build_report())
    if args.json:
        emit_json(data)
        return 0
    say(f"hifikit {data['version']}")
    say(f"llama.cpp  {data['llama_cpp_commit']}  (sdist sha256 {data['source_sha256'][:16]}…)")
    say(f"patches    {len(data['patches'])}")
    for patch in data["patches"]:
        say(f"  {patch['name']}")
    build = data["build"]
    say(f"build      CUDA {'on' if build.get('GGML_CUDA') else 'off'}, native {'on' if build.get('GGML_NATIVE') else 'off'}, "
        f"{build.get('compiler', '?')}")
    say(f"cpu        {' '.join(sorted(data['cpu_features']))}")
    say("binaries")
    for name, path in data["binaries"].items():
        say(f"  {name:18s} {path or 'MISSING'}")
    say("")
    say(table(["id", "type", "block", "bytes", "bpw"],
              [[t["id"], t["name"], t["block_size"], t["type_size"], f"{t['bits_per_weight']:.4f}"]
               for t in data["types"]], right=[True, False, True, True, True]))
    return 0
