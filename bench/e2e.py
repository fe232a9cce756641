#!/usr/bin/env python3
"""End-to-end throughput of HIFI (and planned) GGUFs against the stock file of the same size.

Each candidate (a file whose ftype is a HIFI one, or whose name contains "plan") is paired
with the stock file closest to it in size. Every repetition runs one ``llama-bench -r 1``
over all the files, so candidates and stock files are measured side by side under the same
load; the ratio candidate/stock t/s is taken per repetition and given as min / median / max.

  bench/e2e.py MODEL.gguf... [--p 128] [--n 32] [--reps 3] [--threads T] [--json] [--no-doc]

Defaults are pp128/tg32 (smaller than the usual pp512/tg128, to stay short on 2 shared
cores); pass --p 512 --n 128 for those. The binary comes from $HIFIKIT_BIN_DIR.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import benchmd

STOCK_PREFIXES = ("MOSTLY_Q", "MOSTLY_IQ", "MOSTLY_F16", "MOSTLY_BF16", "ALL_F32", "MOSTLY_TQ")


@dataclass
class Model:
    path: Path
    ftype: str
    size: int
    candidate: bool
    tps: dict[str, list[float]] = field(default_factory=dict)   # test -> one t/s per repetition


def load(paths: list[Path]) -> list[Model]:
    out = []
    for p in paths:
        name = benchmd.ftype_name(p)
        out.append(Model(p, name, p.stat().st_size, "HIFI" in name or "plan" in p.name.lower()))
    return out


def pair(models: list[Model]) -> list[tuple[Model, Model]]:
    stock = [m for m in models if not m.candidate]
    if not stock:
        sys.exit("bench/e2e.py: no stock file to compare with")
    return [(c, min(stock, key=lambda s: abs(s.size - c.size))) for c in models if c.candidate]


def bench_once(exe: Path, models: list[Model], p: int, n: int, threads: int | None) -> None:
    cmd = [str(exe)]
    for m in models:
        cmd += ["-m", str(m.path)]
    cmd += ["-p", str(p), "-n", str(n), "-r", "1", "-o", "json"]
    if threads:
        cmd += ["-t", str(threads)]
    env = dict(os.environ)
    lib = os.environ.get("HIFIKIT_LIB_DIR")
    if lib:
        env["LD_LIBRARY_PATH"] = lib + (":" + env["LD_LIBRARY_PATH"] if env.get("LD_LIBRARY_PATH") else "")
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"bench/e2e.py: {' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    rows = json.loads(proc.stdout[proc.stdout.find("["):])
    by_path = {str(m.path): m for m in models}
    for r in rows:
        m = by_path[r["model_filename"]]
        test = f"pp{r['n_prompt']}" if r["n_prompt"] else f"tg{r['n_gen']}"
        m.tps.setdefault(test, []).append(float(r["avg_ts"]))


def format_tables(models: list[Model], pairs: list[tuple[Model, Model]]) -> str:
    tests = sorted({t for m in models for t in m.tps}, key=lambda t: (not t.startswith("pp"), t))
    lines = [f"{'file':34} {'ftype':14} {'bytes':>12} " + " ".join(f"{t + ' t/s (median)':>18}" for t in tests)]
    for m in sorted(models, key=lambda m: m.size):
        lines.append(f"{m.path.name:34} {m.ftype:14} {m.size:12,} " +
                     " ".join(f"{statistics.median(m.tps[t]):18.2f}" for t in tests))
    lines += ["", "ratio candidate / stock of the closest size (t/s, per repetition): min / median / max"]
    lines.append(f"{'candidate':14} {'stock':10} {'size ratio':>10} " + " ".join(f"{t:>24}" for t in tests))
    for c, s in pairs:
        cells = []
        for t in tests:
            q = [a / b for a, b in zip(c.tps[t], s.tps[t]) if b > 0]
            cells.append(f"{benchmd.fmt_spread(q):>24}")
        lines.append(f"{c.ftype:14} {s.ftype:10} {c.size / s.size:10.4f} " + " ".join(cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models", type=Path, nargs="+")
    ap.add_argument("--p", type=int, default=128, help="prompt tokens (default 128)")
    ap.add_argument("--n", type=int, default=32, help="generated tokens (default 32)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--no-doc", action="store_true", help="do not write docs/benchmarks.md")
    args = ap.parse_args(argv)

    bin_dir = os.environ.get("HIFIKIT_BIN_DIR")
    if not bin_dir:
        sys.exit("bench/e2e.py: set HIFIKIT_BIN_DIR (the directory with llama-bench)")
    exe = Path(bin_dir) / "llama-bench"
    models = load([m.resolve() for m in args.models])
    pairs = pair(models)
    if not pairs:
        sys.exit("bench/e2e.py: no HIFI or planned file among the models")
    machine_line = benchmd.machine()
    for rep in range(args.reps):
        bench_once(exe, models, args.p, args.n, args.threads)
        print(f"repetition {rep + 1}/{args.reps} done", file=sys.stderr)
    if args.json:
        print(json.dumps([{"path": str(m.path), "ftype": m.ftype, "bytes": m.size, "candidate": m.candidate,
                           "tps": m.tps} for m in models], indent=2))
        return 0
    text = format_tables(models, pairs)
    print(text)
    if not args.no_doc:
        body = (f"`llama-bench -p {args.p} -n {args.n} -r 1` over all files, {args.reps} times "
                f"(pp{args.p}/tg{args.n}{'' if (args.p, args.n) == (512, 128) else ', smaller than pp512/tg128 to stay short'}); "
                f"each candidate against the stock file closest in size.\n\n```\n{text}\n```\n")
        doc = benchmd.update("e2e", "End to end: llama-bench of HIFI ftypes vs stock (bench/e2e.py)", body, machine_line)
        print(f"wrote the e2e section of {doc}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
