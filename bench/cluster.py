#!/usr/bin/env python3
"""Pairs per second of the Ray measured sweep (hifikit.sweep.cluster) with 1 and with 2 workers, side by side.

Starts a local Ray node in this process (ray.init with --cpus CPUs, no dashboard), then measures the same
pairs three ways, each into a fresh run of a private runs database: the single-process sweep
(measured.run_sweep, one thread), the Ray sweep with 1 worker and with 2 workers (one thread and one CPU
each). The three are repeated --reps times, interleaved, so that a change in the machine's speed during the
benchmark falls on all of them; the ratio 2 workers / 1 worker is taken within each repetition and printed as
min / median / max. Wall time includes starting the actors and their tools (one long-lived llama-sensitivity
per actor, which loads the model once); "steady" is the sum of the tool's own per-pair seconds divided by the
workers, i.e. the wall time without start-up and model loads.

The machine is shared: "others" is how many CPUs other processes kept busy in the 3 s before the runs
(from /proc/stat), "busy" how many were busy during each row (this benchmark's included).

  bench/cluster.py [--model GGUF --text TXT] [--pairs 24] [--batch 12] [--ctx 128] [--chunks 4] [--reps 3]
                   [--json] [--no-doc]

It writes its section of docs/benchmarks.md (bench/benchmd.py) unless --no-doc or --json: one for the synthetic
model, one per --model.

Without --model it writes the synthetic model of the tests (tests/synthetic.py) into a temp dir.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _cpu_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot (Linux /proc/stat; idle and iowait are not busy)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:9]]
    return sum(fields) - fields[3] - fields[4], sum(fields)


def _cpus_busy(since: tuple[int, int]) -> float:
    """CPUs busy on average since `since` (a _cpu_ticks reading)."""
    busy, total = _cpu_ticks()
    return (busy - since[0]) / max(1, total - since[1]) * (os.cpu_count() or 1)


def _new_run(conn, model: Path) -> int:
    from hifikit import db, gguf_io, jobs
    from hifikit.sweep import curves

    run_id = jobs.create_run(conn, "analyze", {"model": str(model), "mode": "measured", "bench": "cluster"}, [])
    with db.transaction(conn):
        for t in gguf_io.read_info(model).tensors:
            curves.store_tensor(conn, run_id, t.name, t.shape, t.n_elements, t.type)
    return run_id


def _pairs(model: Path, n: int) -> list[tuple[str, str]]:
    from hifikit.sweep import proxy

    cands = proxy.candidates(model, ["q2_K", "q3_K", "q4_K", "q5_K", "q6_K", "q8_0"])
    return proxy.sweep_pairs(cands)[:n]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path)
    ap.add_argument("--text", type=Path)
    ap.add_argument("--pairs", type=int, default=24)
    ap.add_argument("--batch", type=int, default=12)
    ap.add_argument("--ctx", type=int, default=128)
    ap.add_argument("--chunks", type=int, default=4)
    ap.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray node (default 2)")
    ap.add_argument("--reps", type=int, default=3, help="interleaved repetitions of the three sweeps (default 3)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--no-doc", action="store_true", help="do not write docs/benchmarks.md")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    import secrets

    # a token of this run's own for the local node (Ray would otherwise write ~/.ray/auth_token)
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
    import ray

    from hifikit import db
    from hifikit.sweep import cluster, measured

    tmp = Path(tempfile.mkdtemp(prefix="hk-bench-cluster-"))
    model, text = args.model, args.text
    if model is None:
        sys.path.insert(0, str(REPO / "tests"))
        from synthetic import write_model, write_text

        model, text = write_model(tmp / "tiny-f16.gguf"), write_text(tmp / "text.txt")
    if text is None:
        ap.error("--text is needed with --model")
    pairs = _pairs(model, args.pairs)
    conn = db.connect(tmp / "runs.db")
    kw = dict(ctx=args.ctx, chunks=args.chunks, imatrix=None, threads=1, progress=False)

    def steady(run_id: int, workers: int) -> float:
        s = conn.execute("SELECT SUM(seconds) FROM curve_points WHERE run_id=?", (run_id,)).fetchone()[0]
        return s / workers

    quiet = _cpu_ticks()
    time.sleep(3.0)
    others = _cpus_busy(quiet)
    rows = []   # one per sweep and repetition

    def single_process(rep: int) -> None:
        run_id = _new_run(conn, model)
        t0, ticks = time.monotonic(), _cpu_ticks()
        measured.run_sweep(conn, run_id, model, text, pairs, log_path=tmp / f"local-{rep}.log", **kw)
        wall = time.monotonic() - t0
        rows.append({"rep": rep, "sweep": "single process", "workers": 1, "pairs": len(pairs), "wall_s": wall,
                     "pairs_per_s": len(pairs) / wall, "steady_pairs_per_s": len(pairs) / steady(run_id, 1),
                     "tools": 1, "cpus_busy": _cpus_busy(ticks)})

    def on_ray(rep: int, workers: int) -> None:
        run_id = _new_run(conn, model)
        ticks = _cpu_ticks()
        stats = cluster.run_sweep(conn, run_id, model, text, pairs, log_path=tmp / f"ray-{workers}-{rep}.log",
                                  address="auto", batch=args.batch, workers=workers, **kw)
        rows.append({"rep": rep, "sweep": "ray", "workers": workers, "pairs": stats.pairs, "wall_s": stats.seconds,
                     "pairs_per_s": stats.pairs / stats.seconds,
                     "steady_pairs_per_s": stats.pairs / steady(run_id, workers), "tools": stats.tool_starts,
                     "cpus_busy": _cpus_busy(ticks)})

    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING,
             _temp_dir=str(tmp / "ray"))
    try:
        for rep in range(args.reps):
            single_process(rep)
            on_ray(rep, 1)
            on_ray(rep, 2)
    finally:
        ray.shutdown()
    for r in rows:
        one = next(o for o in rows if o["rep"] == r["rep"] and o["sweep"] == "ray" and o["workers"] == 1)
        r["speedup_vs_1_worker"] = r["pairs_per_s"] / one["pairs_per_s"]
        r["steady_speedup_vs_1_worker"] = r["steady_pairs_per_s"] / one["steady_pairs_per_s"]
    setup = {"model": str(model), "pairs": len(pairs), "batch": args.batch, "ctx": args.ctx, "chunks": args.chunks,
             "cpus": args.cpus, "reps": args.reps, "cpus_busy_by_others_before": others, "machine_cpus": os.cpu_count()}
    if args.json:
        print(json.dumps({"setup": setup, "rows": rows}, indent=2))
        return 0
    lines = [f"{len(pairs)} pairs of {model.name}, ctx {args.ctx}, {args.chunks} chunks, batch {args.batch}, "
             f"one thread per worker, local Ray node of {args.cpus} CPUs, {args.reps} interleaved repetitions; "
             f"machine: {os.cpu_count()} CPUs, {others:.2f} busy with other work before the runs",
             f"{'sweep':<16}{'workers':>8}{'tools':>6}{'wall s':>9}{'pairs/s':>9}{'steady pairs/s':>16}"
             f"{'× 1 worker (min / median / max)':>34}{'steady ×':>10}{'CPUs busy':>11}   (medians)"]
    for sweep, workers in (("single process", 1), ("ray", 1), ("ray", 2)):
        mine = [r for r in rows if r["sweep"] == sweep and r["workers"] == workers]

        def med(key: str) -> float:
            return statistics.median(r[key] for r in mine)

        ratios = sorted(r["speedup_vs_1_worker"] for r in mine)
        spread = f"{ratios[0]:.2f} / {statistics.median(ratios):.2f} / {ratios[-1]:.2f}"
        lines.append(f"{sweep:<16}{workers:>8}{max(r['tools'] for r in mine):>6}{med('wall_s'):>9.2f}"
                     f"{med('pairs_per_s'):>9.2f}{med('steady_pairs_per_s'):>16.2f}{spread:>34}"
                     f"{med('steady_speedup_vs_1_worker'):>10.2f}{med('cpus_busy'):>11.2f}")
    text = "\n".join(lines)
    print(text)
    if not args.no_doc:
        import benchmd

        body = ("The same pairs measured by the single-process sweep and by the Ray sweep with 1 and 2 workers "
                "(docs/scale.md), repeated and interleaved; × 1 worker is the ratio to the 1-worker Ray sweep of the "
                "same repetition. Wall time includes the actors' start-up and one model load + reference pass per "
                "actor (one long-lived llama-sensitivity each: `tools`); steady = the tool's per-pair seconds "
                "summed over the workers. The CPUs other work kept busy are in the first line, those busy during "
                "each row in the last column; a worker with no free core of its own gains nothing."
                f"\n\n```\n{text}\n```\n")
        # the synthetic model's section and one per real model: a run on one does not replace the other's
        key, title = ("cluster", "") if args.model is None else (f"cluster-{model.stem}", f", {model.name}")
        doc = benchmd.update(key, f"Cluster: measured-sweep pairs per second, 1 vs 2 Ray workers{title} "
                             "(bench/cluster.py)", body)
        print(f"wrote the {key} section of {doc}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
