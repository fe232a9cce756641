"""``hifikit runs list | show ID | resume ID | gc``: the runs database."""
from __future__ import annotations

import argparse
import datetime as dt
import importlib

from .. import db, jobs, kld
from ..errors import HifikitError
from .common import add_json, progress_mode
from .output import emit_json, note, say, table

# which module renders a run's result, by the command that created it
RENDERERS = {"quantize": "quantize", "imatrix": "imatrix", "eval": "eval", "compare": "compare",
             "bench": "bench", "calib": "calib", "fetch": "fetch",
             "analyze": "analyze", "demo": "demo", "costs": "costs"}


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
    conn = db.connect()
    rows = conn.execute(
        "SELECT r.*, (SELECT COUNT(*) FROM steps s WHERE s.run_id=r.id) AS n_steps, "
        "(SELECT COUNT(*) FROM steps s WHERE s.run_id=r.id AND s.status='done') AS n_done "
        "FROM runs r ORDER BY r.id DESC LIMIT ?", (args.limit,)).fetchall()
    records = [db.row_dict(r) for r in rows]
    if args.json:
        emit_json(records)
        return 0
    say(table(["id", "command", "status", "steps", "started", "error"],
              [[r["id"], r["command"], r["status"], f"{r['n_done']}/{r['n_steps']}", _time(r["started"]),
                (r["error"] or "")[:60]] for r in records], right=[True, False, False, True, False, False]))
    return 0


def _full(conn, run_id: int) -> dict:
    run = jobs.get_run(conn, run_id)
    run["measurements"] = [dict(r) for r in conn.execute(
        "SELECT model, text, ctx, chunks, metric, value, error FROM measurements WHERE run_id=? ORDER BY id",
        (run_id,))]
    run["artifacts"] = [dict(r) for r in conn.execute(
        "SELECT path, sha256, size, kind FROM artifacts WHERE run_id=? ORDER BY id", (run_id,))]
    run["compositions"] = [dict(r) for r in conn.execute(
        "SELECT * FROM compositions WHERE run_id=? ORDER BY id", (run_id,))]
    return run


def cmd_show(args: argparse.Namespace) -> int:
    conn = db.connect()
    run = _full(conn, args.id)
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
        _render(run, False)
    return 0


def _render(run: dict, as_json: bool) -> None:
    module = importlib.import_module(f"hifikit.cli.{RENDERERS[run['command']]}")
    module.render(run, as_json)


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
        _render(run, args.json)
    elif args.json:
        emit_json(run)
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    conn = db.connect()
    if args.older_than is not None and args.older_than < 0:
        raise HifikitError("--older-than must be >= 0")
    removed, freed = kld.gc(conn, args.older_than * 86400 if args.older_than is not None else None)
    if args.json:
        emit_json({"removed": removed, "freed_bytes": freed})
    else:
        say(f"removed {removed} cached file(s), freed {freed / 2**20:.1f} MiB")
    return 0
