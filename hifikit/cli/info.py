"""``hifikit info``: what was built, from what, and the GGML type table."""
from __future__ import annotations

import argparse
import platform

from .. import __version__, ggml, paths
from ..upstream import LLAMA_CPP_COMMIT, SDIST_SHA256
from .output import emit_json, say, table


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="versions, pin, patches, binaries and the GGML type table")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def collect() -> dict:
    build = paths.build_info()
    lib = ggml.load()
    binaries = {}
    for name in paths.BINARIES:
        path = paths.bin_dir() / name
        binaries[name] = str(path) if path.is_file() else None
    return {
        "version": __version__,
        "llama_cpp_commit": build.get("llama_cpp_commit", LLAMA_CPP_COMMIT),
        "source_sha256": build.get("sdist_sha256", SDIST_SHA256),
        "patches": build.get("patches", []),
        "native": build.get("native", []),
        "binaries": binaries,
        "library_dir": str(paths.lib_dir()),
        "build": build.get("build", {}),
        "cpu_features": {k: v for k, v in ggml.cpu_features().items() if v},
        "platform": platform.platform(),
        "types": [{"id": t.id, "name": t.name, "block_size": t.block_size, "type_size": t.type_size,
                   "bits_per_weight": round(t.bits_per_weight, 4), "quantized": t.is_quantized}
                  for t in lib.types()],
    }


def run(args: argparse.Namespace) -> int:
    data = collect()
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
