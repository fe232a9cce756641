#!/usr/bin/env python3
"""Sweep time per tensor of `hifikit analyze`: proxy vs measured, read from runs databases.

Reads curve_points (see hifikit/sweep/curves.py: one row per run, mode, tensor and candidate type,
with the seconds that point took); nothing is run. For every sweep (database, run, mode) it
prints the seconds per tensor (sum over the tensor's candidate types) and per point as
min / median / max, and for every measured sweep against every proxy sweep of the same model,
the ratio measured / proxy seconds of the same (tensor, type) points.

  bench/analysis.py [--db PATH ...] [--run ID ...] [--json] [--no-doc]

--db defaults to $HIFIKIT_HOME/runs.db (the lab's default location otherwise) and may be
repeated (e.g. a proxy sweep and a measured one of the same model made apart).
"""
from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from dataclasses import dataclass, field
from pathlib import Path

import benchmd


@dataclass
class Sweep:
    db: str
    run: int
    mode: str
    model: str
    args: str
    points: dict[tuple[str, str], float] = field(default_factory=dict)   # (tensor, type) -> seconds

    @property
    def per_tensor(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for (tensor, _), s in self.points.items():
            out[tensor] = out.get(tensor, 0.0) + s
        return out

    @property
    def name(self) -> str:
        return f"{Path(self.db).parent.parent.name}/run {self.run} {self.mode}"


def default_db() -> Path:
    from hifikit import db

    return db.db_path()


def load(path: Path, runs: list[int] | None) -> list[Sweep]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    sweeps: dict[tuple[int, str], Sweep] = {}
    for run, mode, tensor, typ, seconds, args in conn.execute(
            "SELECT c.run_id, c.mode, c.tensor, c.type, c.seconds, r.args FROM curve_points c "
            "JOIN runs r ON r.id = c.run_id WHERE c.seconds IS NOT NULL ORDER BY c.run_id"):
        if runs and run not in runs:
            continue
        sw = sweeps.get((run, mode))
        if sw is None:
            try:
                model = json.loads(args).get("model", "?")
            except (json.JSONDecodeError, AttributeError):
                model = "?"
            sw = sweeps[(run, mode)] = Sweep(str(path), run, mode, model, args)
        sw.points[(tensor, typ)] = float(seconds)
    return list(sweeps.values())


def format_tables(sweeps: list[Sweep]) -> str:
    w = max(len(s.name) for s in sweeps)
    lines = [f"{'sweep':{w}} {'tensors':>7} {'points':>6} {'total s':>9}  s per tensor: min / median / max"
             f"   s per point: min / median / max"]
    for s in sweeps:
        t = list(s.per_tensor.values())
        lines.append(f"{s.name:{w}} {len(t):7d} {len(s.points):6d} {sum(t):9.1f}  {benchmd.fmt_spread(t, '.3f'):>30}"
                     f"   {benchmd.fmt_spread(list(s.points.values()), '.3f'):>30}")
    lines += ["", "measured / proxy seconds of the same (tensor, type) points, same model: min / median / max"]
    pairs = 0
    for m in (s for s in sweeps if s.mode == "measured"):
        for p in (s for s in sweeps if s.mode == "proxy" and s.model == m.model):
            common = [k for k in m.points if k in p.points and p.points[k] > 0]
            if common:
                q = [m.points[k] / p.points[k] for k in common]
                lines.append(f"{m.name} / {p.name}: {len(common)} points, {benchmd.fmt_spread(q, '.1f')}")
                pairs += 1
    if not pairs:
        lines.append("(no measured and proxy sweep of the same model share a point)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--db", type=Path, action="append", default=None, help="runs database (repeatable)")
    ap.add_argument("--run", type=int, action="append", default=None, help="only these runs (repeatable)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--no-doc", action="store_true", help="do not write docs/benchmarks.md")
    args = ap.parse_args(argv)

    sweeps: list[Sweep] = []
    for path in args.db or [default_db()]:
        if not path.is_file():
            sys.exit(f"bench/analysis.py: {path}: no such runs database")
        try:
            sweeps += load(path, args.run)
        except sqlite3.OperationalError as exc:
            sys.exit(f"bench/analysis.py: {path}: {exc} (a runs database without sweeps?)")
    if not sweeps:
        sys.exit("bench/analysis.py: no curve point with a time")
    if args.json:
        print(json.dumps([{"db": s.db, "run": s.run, "mode": s.mode, "model": s.model,
                           "per_tensor_seconds": s.per_tensor} for s in sweeps], indent=2))
        return 0
    text = format_tables(sweeps)
    print(text)
    if not args.no_doc:
        body = ("Sweeps read (nothing run):\n\n" +
                "\n".join(f"- {s.name}: `{s.db}` run {s.run}, {s.mode}, args `{s.args}`" for s in sweeps) +
                "\n\nSeconds per tensor are the sum over the tensor's candidate types of `curve_points.seconds`; "
                "the sweeps ran on the shared machine, so their times include its load."
                f"\n\n```\n{text}\n```\n")
        doc = benchmd.update("analysis", "Analysis: sweep time per tensor, proxy vs measured (bench/analysis.py)",
                             body)
        print(f"wrote the analysis section of {doc}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
