"""``hifikit report RUN_ID... -o report.html``: one self-contained HTML report from tracked runs."""
from __future__ import annotations

import argparse
from pathlib import Path

from .. import db, report
from .common import add_json
from .output import emit_json, say


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="an HTML report (table, plots, commands, versions, machine) from runs")
    p.add_argument("run_ids", type=int, nargs="+", metavar="RUN_ID")
    p.add_argument("-o", "--output", type=Path, default=Path("report.html"), help="HTML file (default report.html)")
    p.add_argument("--title", default="hifikit report")
    add_json(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    res = report.write(db.connect(), args.run_ids, args.output, args.title)
    if args.json:
        emit_json({"report": res.path, "runs": res.run_ids, "models": res.rows})
    else:
        say(report.format_table(res.rows))
        say(f"\nreport: {res.path}")
    return 0
