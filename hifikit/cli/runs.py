"""``hifikit runs list | show ID | resume ID | gc``: the runs database."""
from __future__ import annotations

import argparse
import datetime as dt
from typing import Callable

from .. import db, jobs, kld
from ..tables import table
from . import analyze, bench, calib, compare, costs, demo, fetch, imatrix, plan, publish, quantize, recipes
from . import eval as eval_
from .common import add_json, progress_mode
from .output import emit_json, note, say

# how a run's result is shown, by the command that created it (each reads the run back through the
# library's Result.from_run and renders it as its own command does)
RENDERERS: dict[str, Callable[[dict, bool], None]] = {
    "quantize": quantize.show, "imatrix": imatrix.show, "eval": eval_.show, "compare": compare.show,
    "bench": bench.show, "calib": calib.show, "fetch": fetch.show, "analyze": analyze.show, "demo": demo.show,
    "plan-verify": plan.show, "recipes-verify": recipes.show, "costs": costs.show,
    "quantize-verify": quantize.show_verify, "publish": publish.show,
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("runs", help="list, show, resume and clean up tracked runs")
    rs = p.add_subparsers(dest="runs_command", required=True, metavar="ACTION")
    lp = rs.add_parser("list", help="recent runs")
    lp.add_argument("-n", "--limit", type=int, default=20)
    add_json(lp)
    lp.set_defaults(func=cmd_list)
    sp = rs.add_parser("show", help="one run: arguments, versions, steps, measurements, artifacts")
    sp.add_argument("id", type=int)
    add_json(sp)
    sp.set_defaults(func=cmd_show)
    rp = rs.add_parser("resume", help="finish a run: redo only the steps that are not done")
    rp.add_argument("id", type=int)
    add_json(rp)
    rp.set_defaults(func=cmd_resume)
    gp = rs.add_parser("gc", help="remove cached KLD reference logits and partial files")
    gp.add_argument("--older-than", type=float, default=None, metavar="DAYS",
                    help="only references unused for DAYS days")
    add_json(gp)
    gp.set_defaults(func=cmd_gc)


def _time(t: float | None) -> str:
    return dt.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S") if t else ""


def cmd_list(args: argparse.Namespace) -> int:
    records = jobs.list_runs(db.connect(), args.limit)
    if args.json:
        emit_json(records)
        return 0
    say(table(["id", "command", "status", "steps", "started", "error"],
              [[r["id"], r["command"], r["status"], f"{r['n_done']}/{r['n_steps']}", _time(r["started"]),
                (r["error"] or "")[:60]] for r in records], right=[True, False, False, True, False, False]))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    run = jobs.run_record(db.connect(), args.id)
    if args.json:
        emit_json(run)
        return 0
    say(f"run {run['id']}: {run['command']}  status {run['status']}  started {_time(run['started'])}  "
        f"finished {_time(run['finished'])}")
    v = run["versions"]
    say(f"hifikit {v.get('hifikit')}  llama.cpp {str(v.get('llama_cpp_commit'))[:12]}  "
        f"patches {len(v.get('patches', []))}")
    if run["error"]:
        say(f"error: {run['error']}")
    say(f"directory {run['run_dir']}\n")
    say(table(["#", "step", "kind", "status", "attempts", "seconds"],
              [[s["idx"], s["name"], s["kind"], s["status"], s["attempts"],
                f"{s['finished'] - s['started']:.1f}" if s["finished"] and s["started"] else ""]
               for s in run["steps"]], right=[True, False, False, False, True, True]))
    if run["artifacts"]:
        say("")
        say(table(["artifact", "kind", "bytes", "sha256"],
                  [[a["path"], a["kind"], a["size"], a["sha256"][:16]] for a in run["artifacts"]]))
    if run["status"] == "done" and run["command"] in RENDERERS:
        say("")
        RENDERERS[run["command"]](run, False)
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    conn = db.connect()
    before = jobs.get_run(conn, args.id)
    pending = [s["name"] for s in before["steps"] if s["status"] != "done"]
    if not pending:
        note(f"run {args.id}: every step is already done")
    else:
        note(f"run {args.id}: resuming {len(pending)} of {len(before['steps'])} steps ({', '.join(pending)})")
    run = jobs.resume(args.id, progress=progress_mode(args), conn=conn)
    if run["command"] in RENDERERS:
        RENDERERS[run["command"]](run, args.json)
    elif args.json:
        emit_json(run)
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    removed, freed = kld.gc(db.connect(), args.older_than * 86400 if args.older_than is not None else None)
    if args.json:
        emit_json({"removed": removed, "freed_bytes": freed})
    else:
        say(f"removed {removed} cached file(s), freed {freed / 2**20:.1f} MiB")
    return 0
