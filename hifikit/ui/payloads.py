"""The JSON the pages draw: runs with their progress, a model's tensors, sweep curves, plans, measured rows.

Pure functions of library results (no request, no server): the app calls the
library, then one of these, and returns what it gives.
"""
from __future__ import annotations

import dataclasses
import json
import re
import sqlite3
from pathlib import Path
from typing import Any

from .. import atomic, gguf_io, grid, jobs, report
from ..planner.plan import Plan
from ..planner.session import Assessment
from ..sweep import curves, knee

BLOCK = re.compile(r"^blk\.(\d+)\.(.+?)(\.weight)?$")


def layer_kind(name: str) -> tuple[int | None, str]:
    """blk.12.attn_q.weight -> (12, "attn_q"); token_embd.weight -> (None, "token_embd")."""
    m = BLOCK.match(name)
    if m:
        return int(m.group(1)), m.group(2)
    return None, name[:-len(".weight")] if name.endswith(".weight") else name


def progress_of(conn: sqlite3.Connection, run: dict[str, Any], n_done: int, n_steps: int) -> float:
    """Share of the run's work done: sweep points measured (a sweep step's work is its points), else steps."""
    if not n_steps:
        return 0.0
    if run["status"] == "done":
        return 1.0
    args = run.get("args") if isinstance(run.get("args"), dict) else {}
    if run["command"] == "analyze" and args.get("points"):
        # one sweep step does nearly all the work: count its points as they land
        measured = conn.execute("SELECT COUNT(*) FROM curve_points WHERE run_id=?", (run["id"],)).fetchone()[0]
        total = int(args["points"]) * (2 if args.get("mode") == curves.CALIBRATED else 1)
        return min(0.99, max(n_done / n_steps, measured / max(1, total)))
    return n_done / n_steps


def run_summary(conn: sqlite3.Connection, run: dict[str, Any]) -> dict[str, Any]:
    """A run as the lists show it: a run of jobs.get_run (with its steps) or a row of jobs.list_runs (with
    n_steps and n_done, read by the one query of the list)."""
    args = run["args"] if isinstance(run["args"], dict) else {}
    model = args.get("model") or args.get("input") or args.get("ref") or ""
    pid = run.get("pid")
    running = run["status"] == "running" and bool(pid) and atomic.pid_alive(pid) and jobs.same_command(pid)
    steps = run.get("steps")
    if steps is None:
        n_steps, n_done = int(run["n_steps"]), int(run["n_done"])
    else:
        n_steps, n_done = len(steps), sum(1 for s in steps if s["status"] == "done")
    out = {"id": run["id"], "command": run["command"], "status": "running" if running else
           ("interrupted" if run["status"] == "running" else run["status"]),
           "error": run.get("error"), "started": run["started"], "finished": run.get("finished"),
           "model": model, "model_name": Path(model).name if model else "",
           "n_steps": n_steps, "n_done": n_done, "progress": progress_of(conn, run, n_done, n_steps),
           "can_cancel": running, "can_resume": not running and run["status"] != "done"}
    if steps is not None:
        out["steps"] = [{"name": s["name"], "kind": s["kind"], "status": s["status"]} for s in steps]
    return out


def row_json(row: report.Row) -> dict[str, Any]:
    out = dataclasses.asdict(row)
    out["tps"] = {k: list(v) for k, v in row.tps.items()}
    return out


def run_detail(conn: sqlite3.Connection, run_id: int) -> dict[str, Any]:
    run = jobs.run_record(conn, run_id)
    out = run_summary(conn, run)
    out.update({"args": run["args"], "versions": run["versions"], "measurements": run["measurements"],
                "artifacts": [{"index": i, **a} for i, a in enumerate(run["artifacts"])],
                "results": {s["name"]: s["result"] for s in run["steps"] if s["result"]},
                "rows": [row_json(r) for r in report.rows([run])],
                "has_curves": conn.execute("SELECT 1 FROM curve_points WHERE run_id=? LIMIT 1",
                                           (run_id,)).fetchone() is not None})
    return json.loads(json.dumps(out, default=str))


def model_json(path: Path) -> dict[str, Any]:
    """A model's tensors (type, shape, bytes) and whether it sits on a quantization grid."""
    info = gguf_io.read_info(path)
    report_ = grid.detect(path)
    on_grid = {t.tensor: t.type for t in report_.on_grid}
    return {"path": str(Path(path).resolve()), "size": info.size, "architecture": info.architecture,
            "name": info.name, "n_tensors": info.n_tensors, "n_elements": info.n_elements,
            "bpw": info.bits_per_weight, "types": info.types, "grid": report_.to_json(),
            "tensors": [{"name": t.name, "type": t.type, "shape": t.shape, "n_elements": t.n_elements,
                         "bytes": t.n_bytes, "bpw": t.bits_per_weight, "on_grid": on_grid.get(t.name)}
                        for t in info.tensors]}


def curves_json(sweep: curves.Sweep, chosen: dict[str, str] | None = None) -> dict[str, Any]:
    """Per tensor its error against bits per weight, the knee and (given a plan) the chosen type."""
    out = []
    for c in sweep.curves:
        pts = sorted(c.points, key=lambda p: p.nbytes)
        out.append({"tensor": c.tensor, "shape": list(c.shape), "n_elements": c.n_elements,
                    "knee": knee.knee_type(c) if len(pts) >= 3 else None,
                    "chosen": (chosen or {}).get(c.tensor),
                    "points": [{"type": p.type, "bpw": c.bpw(p), "bytes": p.nbytes, "error": p.error,
                                "error_pm": p.error_pm} for p in pts]})
    return {"run": sweep.run_id, "mode": sweep.mode, "tensors": out}


def plan_json(plan: Plan) -> dict[str, Any]:
    """A plan as the editor shows it: summary figures, per tensor its type and candidates, layer x kind bpw."""
    tensors = []
    for t in plan.tensors:
        layer, kind = layer_kind(t.name)
        chosen = t.option(t.type)
        tensors.append({"name": t.name, "layer": layer, "kind": kind, "shape": list(t.shape),
                        "n_elements": t.n_elements, "type": t.type, "bytes": chosen.cost,
                        "bpw": 8.0 * chosen.nbytes / t.n_elements, "error": chosen.weighted,
                        "reason": t.reason, "knee": t.knee,
                        "candidates": [{"type": o.type, "bytes": o.cost, "bpw": 8.0 * o.nbytes / t.n_elements,
                                        "error": o.weighted,
                                        "seconds": list(o.seconds) if o.seconds else None} for o in t.options]})
    return {"model": plan.model, "run": plan.run_id, "mode": plan.mode,
            "error_label": "predicted mean KLD" if plan.mode == curves.CALIBRATED else f"predicted error ({plan.mode})",
            "target": dataclasses.asdict(plan.target), "budget": plan.budget,
            "predicted_bytes": plan.predicted_bytes, "predicted_mib": plan.predicted_bytes / 2**20,
            "slack": plan.budget - plan.predicted_bytes, "bpw": plan.bpw, "predicted_error": plan.predicted_error,
            "lower_bound": plan.lower_bound, "speed": plan.speed, "n_fixed": len(plan.fixed),
            "fixed_bytes": plan.fixed_bytes, "meta_bytes": plan.meta_bytes, "tensors": tensors}


def assessment_json(a: Assessment) -> dict[str, Any]:
    """A hand-edited assignment as it stands: exact bytes, predicted error and speed, plan --check's verdict."""
    return {"predicted_bytes": a.bytes, "budget": a.budget, "error": a.error, "speed": a.speed,
            "errors": a.errors, "warnings": a.warnings, "ok": a.ok}
