#!/usr/bin/env python3
"""CPU kernel throughput of each HIFI type relative to its base K-quant type.

Runs the built ``test-backend-ops perf -b CPU -o OP`` with a params filter that keeps the
HIFI types and their base types, so both run in the same process, interleaved, on the
same shapes. Repeats the run, pairs every HIFI case with the base case of identical
parameters, and prints the throughput ratio HIFI/base (= base time / HIFI time) as
min / median / max over the repetitions.

  bench/kernels.py [--bin-dir DIR] [--backend auto|CPU|CUDA0] [--reps 3] [--ops MUL_MAT] [--n 1,8]
                   [--json] [--no-doc]

The binary comes from --bin-dir, else $HIFIKIT_BIN_DIR. ``--backend auto`` (the default)
takes CUDA0 when the build has CUDA and nvidia-smi lists a GPU, else CPU. The table is
printed and written to the ``kernels-BACKEND`` section of docs/benchmarks.md (unless
--no-doc or --json). Goal: ratio >= 0.95. test-backend-ops has no GET_ROWS perf case for the HIFI
types (the series adds none), so --ops GET_ROWS finds no pair.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

PAIRS = {  # HIFI type -> base type, as ggml_type_name prints them
    "q3_K_hifi": "q3_K",
    "q4_K_hifi": "q4_K",
    "q5_K_hifi": "q5_K",
    "q6_K_hifi": "q6_K",
}
TYPE_KEYS = ("type_a", "type")  # MUL_MAT names its weight type type_a, GET_ROWS type

# "  MUL_MAT(type_a=q4_K,...):     1234 runs -   811.00 us/run - ..."
LINE = re.compile(r"^\s*(?P<op>[A-Z_]+)\((?P<params>.*)\):\s+(?P<runs>\d+) runs -\s+(?P<us>[\d.]+) us/run")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass
class Ratio:
    op: str
    hifi: str
    base: str
    params: str                     # the case's parameters with the type replaced by "*"
    base_us: list[float] = field(default_factory=list)
    hifi_us: list[float] = field(default_factory=list)

    @property
    def ratios(self) -> list[float]:
        return [b / h for b, h in zip(self.base_us, self.hifi_us) if h > 0]


def find_binary(bin_dir: str | None) -> Path:
    d = bin_dir or os.environ.get("HIFIKIT_BIN_DIR")
    if not d:
        sys.exit("bench/kernels.py: give --bin-dir or set HIFIKIT_BIN_DIR")
    exe = Path(d) / "test-backend-ops"
    if not exe.is_file():
        sys.exit(f"bench/kernels.py: {exe} not found (build the test-backend-ops target)")
    return exe


def split_type(params: str) -> tuple[str | None, str]:
    """Returns (weight type, params with that type replaced by '*')."""
    for key in TYPE_KEYS:
        m = re.search(rf"(^|,){key}=([A-Za-z0-9_]+)", params)
        if m:
            return m.group(2), params[:m.start(2)] + "*" + params[m.end(2):]
    return None, params


def pick_backend(requested: str) -> str:
    """CUDA0 when asked, or on auto when this build has CUDA and a GPU is visible; else CPU."""
    if requested != "auto":
        return requested
    info = os.environ.get("HIFIKIT_BUILD_INFO")
    cuda = False
    if info and Path(info).is_file():
        cuda = bool(json.loads(Path(info).read_text()).get("build", {}).get("GGML_CUDA"))
    if cuda and shutil.which("nvidia-smi"):
        probe = subprocess.run(["nvidia-smi", "-L"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        if probe.returncode == 0 and "GPU" in probe.stdout:
            return "CUDA0"
    return "CPU"


def run_once(exe: Path, op: str, params_filter: str, backend: str = "CPU") -> dict[tuple[str, str, str], float]:
    cmd = [str(exe), "perf", "-b", backend, "-o", op, "-p", params_filter]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        sys.exit(f"bench/kernels.py: {' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}")
    out: dict[tuple[str, str, str], float] = {}
    for line in proc.stdout.splitlines():
        m = LINE.match(ANSI.sub("", line))
        if not m:
            continue
        typ, rest = split_type(m.group("params"))
        if typ is not None:
            out[(m.group("op"), typ, rest)] = float(m.group("us"))
    return out


def params_filter(op: str, ns: list[int]) -> str:
    types = "|".join(sorted(set(PAIRS) | set(PAIRS.values())))
    key = "type_a" if op == "MUL_MAT" else "type"
    flt = rf"(^|,){key}=({types}),"
    if op == "MUL_MAT" and ns:
        flt += rf".*,n=({'|'.join(map(str, ns))}),"
    return flt


def collect(exe: Path, ops: list[str], reps: int, ns: list[int], backend: str = "CPU") -> list[Ratio]:
    results: dict[tuple[str, str, str], Ratio] = {}
    for rep in range(reps):
        for op in ops:
            times = run_once(exe, op, params_filter(op, ns), backend)
            for (o, typ, rest), us in times.items():
                base = PAIRS.get(typ)
                if base is None or (o, base, rest) not in times:
                    continue
                r = results.setdefault((o, typ, rest), Ratio(o, typ, base, rest))
                r.hifi_us.append(us)
                r.base_us.append(times[(o, base, rest)])
        print(f"repetition {rep + 1}/{reps} done", file=sys.stderr)
    return list(results.values())


def short(params: str) -> str:
    keep = [p for p in params.split(",") if p.split("=")[0] in ("m", "n", "k", "ne", "r", "b")]
    return ",".join(keep) or params[:40]


def format_table(rows: list[Ratio]) -> str:
    lines = [f"{'op':9} {'type':10} {'shape':28} {'base us':>9} {'hifi us':>9} {'min':>6} {'median':>6} {'max':>6}"]
    for r in sorted(rows, key=lambda r: (r.op, r.hifi, r.params)):
        q = r.ratios
        lines.append(f"{r.op:9} {r.hifi:10} {short(r.params):28} {statistics.median(r.base_us):9.1f} "
                     f"{statistics.median(r.hifi_us):9.1f} {min(q):6.3f} {statistics.median(q):6.3f} {max(q):6.3f}")
    lines += ["", "summary (all shapes and repetitions): HIFI/base throughput"]
    for op in sorted({r.op for r in rows}):
        for hifi in sorted(PAIRS):
            q = [x for r in rows if r.op == op and r.hifi == hifi for x in r.ratios]
            if q:
                lines.append(f"{op:9} {hifi:10} min {min(q):.3f}  median {statistics.median(q):.3f}  max {max(q):.3f}")
    return "\n".join(lines)


def print_table(rows: list[Ratio]) -> None:
    print(format_table(rows))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin-dir", help="directory with test-backend-ops (default: $HIFIKIT_BIN_DIR)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--ops", default="MUL_MAT")
    ap.add_argument("--n", default="1,8,512", help="MUL_MAT batch sizes to keep (test-backend-ops perf has 1-5,8,512)")
    ap.add_argument("--backend", default="auto", help="test-backend-ops backend: auto (default), CPU, CUDA0, ...")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--no-doc", action="store_true", help="do not write docs/benchmarks.md")
    args = ap.parse_args(argv)

    exe = find_binary(args.bin_dir)
    backend = pick_backend(args.backend)
    print(f"backend {backend}", file=sys.stderr)
    ns = [int(x) for x in args.n.split(",") if x]
    import benchmd  # bench/ is on sys.path when this file runs as a script
    machine_line = benchmd.machine()
    rows = collect(exe, [o for o in args.ops.split(",") if o], args.reps, ns, backend)
    if not rows:
        sys.exit("bench/kernels.py: no HIFI/base pair found in the perf output "
                 "(is test-backend-ops built with the HIFI types in its perf lists?)")
    if args.json:
        print(json.dumps([asdict(r) | {"ratios": r.ratios} for r in rows], indent=2))
    else:
        print_table(rows)
    if not args.json and not args.no_doc:
        body = (f"`test-backend-ops perf -b {backend}` for {args.ops.replace(',', ', ')} (MUL_MAT n = {args.n}), every HIFI type "
                f"against its base type in the same process on the same shapes; ratio = HIFI/base throughput "
                f"(base time / HIFI time), {args.reps} repetitions.\n\n```\n{format_table(rows)}\n```\n")
        doc = benchmd.update(f"kernels-{backend}", f"Kernels: HIFI vs base type ({backend}, bench/kernels.py)",
                             body, machine_line)
        print(f"wrote the kernels-{backend} section of {doc}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
