#!/usr/bin/env python3
"""Sweep time per tensor of `hifikit analyze`: proxy vs measured, read from a runs database.

Reads curve_points (see hifikit/curves.py: one row per run, mode, tensor and candidate type,
with the seconds that point took) and sweep_tensors; nothing is run. Per mode it prints the
seconds per tensor (sum over the tensor's candidate types) as min / median / max, and, for
tensors swept in both modes, the ratio measured / proxy per tensor.

  bench/analysis.py [--db PATH ...] [--run ID ...] [--json] [--no-doc]

--db defaults to $HIFIKIT_HOME/runs.db (the lab's default location otherwise); with several
databases (e.g. a proxy sweep and a measured one of the same model made apart) their
tensors are merged by mode.
"""
from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import sys
from pathlib import Path

import benchmd


def default_db() -> Path:
    from hifikit import db

    return db.db_path()


def per_tensor_seconds(conn: sqlite3.Connection, runs: list[int] | None) -> dict[str, dict[str, float]]:
    """mode -> tensor -> seconds (sum over the candidate types); points without a time are left out."""
    where, params = "", []
    if runs:
        where = f"WHERE run_id IN ({','.join('?' * len(runs))})"
        params = runs
    out: dict[str, dict[str, float]] = {}
    for mode, tensor, seconds, n in conn.execute(
            f"SELECT mode, tensor, SUM(seconds), COUNT(seconds) FROM curve_points {where} "
            f"GROUP BY mode, tensor", params):
        if n:
            out.setdefault(mode, {})[tensor] = float(seconds)
    return out


def per_point_seconds(conn: sqlite3.Connection, runs: list[int] | None) -> dict[str, dict[tuple[str, str], float]]:
    """mode -> (tensor, type) -> seconds of that one point."""
    where, params = "WHERE seconds IS NOT NULL", []
    if runs:
        where += f" AND run_id IN ({','.join('?' * len(runs))})"
        params = runs
    out: dict[str, dict[tuple[str, str], float]] = {}
    for mode, tensor, typ, seconds in conn.execute(
            f"SELECT mode, tensor, type, seconds FROM curve_points {where}", params):
        out.setdefault(mode, {})[(tensor, typ)] = float(seconds)
    return out


def types_per_tensor(conn: sqlite3.Connection, runs: list[int] | None) -> dict[str, float]:
    where, params = "", []
    if runs:
        where = f"WHERE run_id IN ({','.join('?' * len(runs))})"
        params = runs
    return {mode: float(avg) for mode, avg in conn.execute(
        f"SELECT mode, AVG(n) FROM (SELECT mode, tensor, COUNT(*) AS n FROM curve_points {where} "
        f"GROUP BY run_id, mode, tensor) GROUP BY mode", params)}


def format_tables(secs: dict[str, dict[str, float]], types: dict[str, float],
                  points: dict[str, dict[tuple[str, str], float]]) -> str:
    lines = [f"{'mode':9} {'tensors':>7} {'types/tensor':>12} {'total s':>10}  s per tensor: min / median / max"]
    for mode in sorted(secs):
        v = list(secs[mode].values())
        lines.append(f"{mode:9} {len(v):7d} {types.get(mode, 0):12.1f} {sum(v):10.1f}  {benchmd.fmt_spread(v, '.3f')}")
    lines.append("")
    lines.append(f"{'mode':9} {'points':>7}  s per point (one tensor, one type): min / median / max")
    for mode in sorted(points):
        v = list(points[mode].values())
        lines.append(f"{mode:9} {len(v):7d}  {benchmd.fmt_spread(v, '.3f')}")
    common = sorted(set(points.get("proxy", {})) & set(points.get("measured", {})))
    if common:
        q = [points["measured"][k] / points["proxy"][k] for k in common if points["proxy"][k] > 0]
        lines.append(f"measured / proxy seconds for the same (tensor, type), {len(q)} points: "
                     f"min / median / max {benchmd.fmt_spread(q, '.1f')}")
    both = sorted(set(secs.get("proxy", {})) & set(secs.get("measured", {})))
    lines.append("")
    if both:
        q = [secs["measured"][t] / secs["proxy"][t] for t in both if secs["proxy"][t] > 0]
        lines.append(f"measured / proxy seconds per tensor (all its types), {len(q)} tensors swept both ways: "
                     f"min / median / max {benchmd.fmt_spread(q, '.1f')}")
    else:
        lines.append("no tensor was swept in both modes: no per-tensor measured/proxy ratio")
        if "proxy" in secs and "measured" in secs:
            p = statistics.median(secs["proxy"].values())
            m = statistics.median(secs["measured"].values())
            lines.append(f"ratio of the medians (different tensors): measured / proxy = {m / p:.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--db", type=Path, action="append", default=None, help="runs database (repeatable)")
    ap.add_argument("--run", type=int, action="append", default=None, help="only these runs (repeatable)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--no-doc", action="store_true", help="do not write docs/benchmarks.md")
    args = ap.parse_args(argv)

    secs: dict[str, dict[str, float]] = {}
    points: dict[str, dict[tuple[str, str], float]] = {}
    types: dict[str, float] = {}
    described = []
    for path in args.db or [default_db()]:
        if not path.is_file():
            sys.exit(f"bench/analysis.py: {path}: no such runs database")
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            for mode, tensors in per_tensor_seconds(conn, args.run).items():
                secs.setdefault(mode, {}).update(tensors)
            types.update(types_per_tensor(conn, args.run))
            for mode, pts in per_point_seconds(conn, args.run).items():
                points.setdefault(mode, {}).update(pts)
            for r, m, n, a in conn.execute("SELECT c.run_id, c.mode, COUNT(DISTINCT c.tensor), r.args FROM curve_points c "
                                        "JOIN runs r ON r.id=c.run_id GROUP BY c.run_id, c.mode").fetchall():
                if not args.run or r in args.run:
                    described.append(f"`{path}` run {r}, {m}, {n} tensors, args `{a}`")
        except sqlite3.OperationalError as exc:
            sys.exit(f"bench/analysis.py: {path}: {exc} (a runs database without sweeps?)")
    if not secs:
        sys.exit("bench/analysis.py: no curve point with a time")
    if args.json:
        print(json.dumps({"seconds": secs, "types_per_tensor": types,
                          "points": {m: [[t, y, v] for (t, y), v in p.items()] for m, p in points.items()}}, indent=2))
        return 0
    text = format_tables(secs, types, points)
    print(text)
    if not args.no_doc:
        body = ("Read from:\n\n" + "\n".join(f"- {d}" for d in described) +
                "\n\nSeconds per tensor are the sum over the tensor's candidate types of `curve_points.seconds`."
                f"\n\n```\n{text}\n```\n")
        doc = benchmd.update("analysis", "Analysis: sweep time per tensor, proxy vs measured (bench/analysis.py)",
                             body)
        print(f"wrote the analysis section of {doc}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
