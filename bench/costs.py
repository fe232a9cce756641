#!/usr/bin/env python3
"""Predicted against measured llama-bench speed for GGUF files of one model (hifikit's cost model).

The costs come from ``hifikit costs`` (hifikit.costs_job) of the first file for every type the
files use: reused from the runs database, measured where missing. The constant comes from
llama-bench on ``--reference`` (default: the first file), fitted once and stored. Then every
repetition runs one ``llama-bench -r 1`` over all the files, so they are measured side by side
under the same load, and predicted / measured t/s is taken per repetition (min / median / max).

  bench/costs.py MODEL.gguf... [--reference FILE] [--p 64] [--n 32] [--reps 5] [--threads 2]
                 [--backend CPU] [--working-set MIB] [--no-repack] [--refit] [--quiet-below F]
                 [--json] [--no-doc]

On a shared machine, ``--quiet-below 0.3`` waits (up to --max-wait seconds) before the costs and
before each repetition until the CPUs were busy less than 30 % of one second; the busy fraction
seen before each repetition is reported either way.

Run it with the Python of the environment hifikit is installed in (it imports hifikit, whose
package holds llama-costs and llama-bench); HIFIKIT_HOME chooses the runs database. The table is
printed and written to the ``costs-BACKEND`` section of docs/benchmarks.md (unless --no-doc or
--json).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

# the installed hifikit, before benchmd puts the checkout on sys.path
from hifikit import costs, costs_job, parsers, runner  # noqa: E402

import benchmd  # noqa: E402


@dataclass
class File:
    path: Path
    ftype: str
    size: int
    predicted: costs.Prediction | None = None
    tps: dict[str, list[float]] = field(default_factory=dict)   # pp / tg -> one t/s per repetition


def busy(seconds: float = 1.0) -> float:
    """Fraction of all CPUs' time spent not idle over the next ``seconds`` (/proc/stat)."""
    def sample() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return sum(fields), idle

    total0, idle0 = sample()
    time.sleep(seconds)
    total1, idle1 = sample()
    return 1.0 - (idle1 - idle0) / max(1, total1 - total0)


def wait_quiet(limit: float | None, max_wait: float) -> float:
    """Wait until the machine is busy less than ``limit`` (or max_wait passed); return the last busy fraction."""
    start = time.monotonic()
    b = busy()
    while limit is not None and b >= limit and time.monotonic() - start < max_wait:
        print(f"waiting: CPUs {b:.0%} busy (limit {limit:.0%})", file=sys.stderr)
        time.sleep(10)
        b = busy()
    return b


def bench_once(files: list[File], p: int, n: int, machine: costs.Machine) -> None:
    args: list[str] = []
    for f in files:
        args += ["-m", str(f.path)]
    args += ["-p", str(p), "-n", str(n), "-r", "1", "-t", str(machine.threads), "-o", "json",
             *costs.bench_args(machine)]
    rows = parsers.parse_bench_json(runner.run_tool("llama-bench", args).stdout)
    by_path = {str(f.path): f for f in files}
    for r in rows:
        f = by_path[r.model]
        f.tps.setdefault("pp" if r.n_prompt else "tg", []).append(r.avg_ts)


def ratios(f: File, test: str) -> list[float]:
    pred = f.predicted.pp_tps if test == "pp" else f.predicted.tg_tps
    return [pred / m for m in f.tps[test]]


def side_by_side(f: File, base: File, test: str) -> list[float]:
    """The file's t/s over the first file's, repetition by repetition (both ran in the same one)."""
    return [a / b for a, b in zip(f.tps[test], base.tps[test])]


def fit_in_run(files: list[File], reference: Path, mc: costs.ModelCosts, k: costs.Constant, p: int) -> costs.Constant:
    """The constant from this run's own repetitions of the reference (its median t/s), not from the
    separate llama-bench run `hifikit costs` stored: on a machine whose speed drifts between runs the
    stored one carries that drift into every prediction."""
    ref = next(f for f in files if f.path == reference)
    summed = costs.predict_file(ref.path, mc, dataclasses.replace(k, pp_seconds=0.0, tg_seconds=0.0))
    pp = p / statistics.median(ref.tps["pp"])
    tg = 1.0 / statistics.median(ref.tps["tg"])
    return dataclasses.replace(k, pp_seconds=pp - summed.pp_seconds, tg_seconds=tg - summed.tg_seconds,
                               measured_pp_tps=p / pp, measured_tg_tps=1.0 / tg,
                               summed_pp_seconds=summed.pp_seconds, summed_tg_seconds=summed.tg_seconds)


def format_table(files: list[File], p: int, n: int, busy_before: list[float]) -> str:
    ratio = f"{'pred/meas min / med / max':>26}"
    head = (f"{'file':40} {'ftype':16} {'MiB':>7}  {'pp' + str(p) + ' pred':>9} {'meas':>8} {ratio}  "
            f"{'tg' + str(n) + ' pred':>9} {'meas':>8} {ratio}")
    lines = [head]
    for f in files:
        cells = []
        for test in ("pp", "tg"):
            pred = f.predicted.pp_tps if test == "pp" else f.predicted.tg_tps
            cells.append(f"{pred:9.1f} {statistics.median(f.tps[test]):8.1f} {benchmd.fmt_spread(ratios(f, test)):>26}")
        lines.append(f"{f.path.name[:40]:40} {f.ftype[:16]:16} {f.size / 2**20:7.1f}  {cells[0]}  {cells[1]}")
    lines.append("")
    lines.append(f"measured t/s over {files[0].path.name}'s in the same repetition (side by side): min / med / max")
    for f in files[1:]:
        lines.append(f"  {f.path.name[:40]:40} pp {benchmd.fmt_spread(side_by_side(f, files[0], 'pp'))}   "
                     f"tg {benchmd.fmt_spread(side_by_side(f, files[0], 'tg'))}")
    lines.append("")
    lines.append("measured t/s spread over the repetitions, (max - min) / median, per file: min / median / max")
    for test in ("pp", "tg"):
        spreads = [(max(f.tps[test]) - min(f.tps[test])) / statistics.median(f.tps[test]) for f in files]
        lines.append(f"  {test}: {benchmd.fmt_spread(spreads)}")
    lines.append("CPUs busy (other work) in the second before each repetition: "
                 f"{benchmd.fmt_spread(busy_before, '.0%')}")
    for test in ("pp", "tg"):
        med = [statistics.median(ratios(f, test)) for f in files]
        worst = max(med, key=lambda r: abs(r - 1))
        within = sum(1 for r in med if abs(r - 1) <= 0.10)
        lines.append(f"median predicted/measured {test}: {within} of {len(files)} files within ±10 %, "
                     f"worst {worst:.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models", type=Path, nargs="+")
    ap.add_argument("--reference", type=Path, default=None, help="file the constant is fitted on (default: the first)")
    ap.add_argument("--p", type=int, default=64, help="prompt tokens (default 64)")
    ap.add_argument("--n", type=int, default=32, help="generated tokens (default 32)")
    ap.add_argument("--reps", type=int, default=5, help="interleaved llama-bench repetitions (default 5)")
    ap.add_argument("--threads", type=int, default=None, help="threads (default: llama-bench's)")
    ap.add_argument("--backend", default="CPU")
    ap.add_argument("--working-set", type=int, default=costs.DEFAULT_WORKING_SET_MIB)
    ap.add_argument("--refit", action="store_true", help="fit the constant again")
    ap.add_argument("--fit-in-run", action="store_true",
                    help="take the constant from this run's repetitions of --reference instead of the stored fit")
    ap.add_argument("--no-repack", action="store_true", help="no extra CPU buffer types (llama-bench --repack 0)")
    ap.add_argument("--quiet-below", type=float, default=None, metavar="F",
                    help="wait before the costs and each repetition until the CPUs are busy less than F (0-1)")
    ap.add_argument("--max-wait", type=float, default=600, help="seconds to wait for a quiet machine (default 600)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--no-doc", action="store_true", help="do not write docs/benchmarks.md")
    args = ap.parse_args(argv)

    paths = [m.resolve() for m in args.models]
    reference = (args.reference or paths[0]).resolve()
    machine_line = benchmd.machine()
    load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    quantizable = {t.tensor for t in costs.tensor_ops(paths[0], args.p).tensors}
    used = sorted({ty for p in [*paths, reference] for name, ty in costs.file_types(p).items() if name in quantizable})
    opts = costs_job.CostsOptions(paths[0], args.backend, args.threads, used, args.p, args.n, reference,
                                  working_set_mib=args.working_set, refit=args.refit, repack=not args.no_repack)
    wait_quiet(args.quiet_below, args.max_wait)
    res = costs_job.start(opts, progress=False)
    print(f"costs: run {res.run_id}, machine {res.machine.fingerprint} ({res.machine.label}), "
          f"{res.measure.get('measured')} cases measured now, {res.measure.get('reused')} stored before; "
          f"constant from {reference.name} ({'fitted now' if res.constant_fitted else 'stored'})", file=sys.stderr)
    files = [File(p, benchmd.ftype_name(p), p.stat().st_size) for p in paths]
    for f in files:
        f.predicted = costs.predict_file(f.path, res.model_costs, res.constant)
    busy_before = []
    for rep in range(args.reps):
        busy_before.append(wait_quiet(args.quiet_below, args.max_wait))
        bench_once(files, args.p, args.n, res.machine)
        print(f"repetition {rep + 1}/{args.reps} done (CPUs {busy_before[-1]:.0%} busy before it)", file=sys.stderr)
    load_end = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    k = res.constant
    if args.fit_in_run:
        if reference not in paths:
            raise SystemExit("--fit-in-run: the --reference file must be one of the benchmarked files")
        k = fit_in_run(files, reference, res.model_costs, res.constant, args.p)
        for f in files:
            f.predicted = costs.predict_file(f.path, res.model_costs, k)

    if args.json:
        print(json.dumps({"machine": res.machine.fingerprint, "constant": dataclasses.asdict(k),
                          "files": [{"path": str(f.path), "ftype": f.ftype, "bytes": f.size,
                                     "predicted_pp_tps": f.predicted.pp_tps, "predicted_tg_tps": f.predicted.tg_tps,
                                     "measured": f.tps} for f in files], "busy_before": busy_before}, indent=2))
        return 0
    origin = " (from this run's repetitions of it)" if args.fit_in_run else ""
    text = format_table(files, args.p, args.n, busy_before)
    print(text)
    if not args.no_doc:
        body = (f"Costs: `hifikit costs` on machine `{res.machine.fingerprint}` ({res.machine.label}, working set "
                f"{args.working_set} MiB); constant fitted on `{reference.name}` with llama-bench "
                f"pp{args.p}/tg{args.n}: {k.pp_seconds * 1e3:.2f} ms per prompt and {k.tg_seconds * 1e3:.3f} ms per "
                f"token outside the weight ops{origin} (its weight ops: {k.summed_pp_seconds * 1e3:.2f} ms and "
                f"{k.summed_tg_seconds * 1e3:.3f} ms). "
                f"Measured: `llama-bench -p {args.p} -n {args.n} -r 1` over all files, {args.reps} times; "
                f"1-minute load average {load_start:.2f} at the start, {load_end:.2f} at the end.\n\n"
                f"```\n{text}\n```\n")
        doc = benchmd.update(f"costs-{args.backend}", f"Cost model: predicted vs measured llama-bench "
                             f"({args.backend}, bench/costs.py)", body, machine_line)
        print(f"wrote the costs-{args.backend} section of {doc}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
