"""Long jobs as ordered steps in the runs database; resumable after any kill.

A run is created with all its steps up front. ``execute`` walks the steps in
order and skips those already done; each finished step commits its result,
measurements and artifacts in one transaction. A step that was in flight
when the process died is simply run again: steps write their files under a
temporary name and rename them only when complete.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import sqlite3
import time
from pathlib import Path
from typing import Any, Callable

from . import __version__, atomic, db, paths
from .errors import HifikitError
from .upstream import LLAMA_CPP_COMMIT

log = logging.getLogger(__name__)


@dataclasses.dataclass
class StepOutput:
    result: dict[str, Any]
    measurements: list[db.Measurement] = dataclasses.field(default_factory=list)
    artifacts: list[db.Artifact] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class StepContext:
    conn: sqlite3.Connection
    run_id: int
    step_id: int
    run_dir: Path
    name: str
    progress: bool | None          # None: decide by TTY; False: never
    previous: dict[str, Any]       # results of earlier steps, by step name

    @property
    def log_path(self) -> Path:
        return self.run_dir / f"{self.name}.log"


StepFn = Callable[[StepContext, dict[str, Any]], StepOutput]


def step_kinds() -> dict[str, StepFn]:
    """Every step kind by name: the explicit list in kinds.py.

    The registry sits above this module (it imports every module that defines a kind, and those
    import this one for StepContext), so it is read when a run is created or executed, not on import.
    """
    from .kinds import STEP_KINDS

    return STEP_KINDS


@dataclasses.dataclass
class StepSpec:
    name: str
    kind: str
    spec: dict[str, Any]


def versions() -> dict[str, Any]:
    """hifikit version, upstream pin and patch series of the build that runs the job."""
    out: dict[str, Any] = {"hifikit": __version__, "llama_cpp_commit": LLAMA_CPP_COMMIT}
    try:
        info = paths.build_info()
    except HifikitError:
        return out
    out["llama_cpp_commit"] = info.get("llama_cpp_commit", LLAMA_CPP_COMMIT)
    out["patches"] = [p.get("name", p) if isinstance(p, dict) else p for p in info.get("patches", [])]
    out["native"] = len(info.get("native", []))
    out["build"] = info.get("build", {})
    return out


def runs_dir() -> Path:
    return db.home() / "runs"


def create_run(conn: sqlite3.Connection, command: str, args: dict[str, Any], steps: list[StepSpec]) -> int:
    names = [s.name for s in steps]
    if len(set(names)) != len(names):
        raise HifikitError(f"duplicate step names in job: {names}")
    kinds = step_kinds()
    for s in steps:
        if s.kind not in kinds:
            raise HifikitError(f"unknown step kind '{s.kind}'")
    with db.transaction(conn):
        cur = conn.execute(
            "INSERT INTO runs (command, args, versions, status, run_dir, pid, started) VALUES (?,?,?,?,?,?,?)",
            (command, json.dumps(args, default=str), json.dumps(versions()), "pending", "", os.getpid(),
             time.time()))
        run_id = int(cur.lastrowid)
        run_dir = runs_dir() / str(run_id)
        conn.execute("UPDATE runs SET run_dir=? WHERE id=?", (str(run_dir), run_id))
        conn.executemany("INSERT INTO steps (run_id, idx, name, kind, spec) VALUES (?,?,?,?,?)",
                         [(run_id, i, s.name, s.kind, json.dumps(s.spec, default=str)) for i, s in enumerate(steps)])
    return run_id


def check_positive(**values: int | float | None) -> None:
    """One error line for the first option given as zero or less (None: not given)."""
    for name, value in values.items():
        if value is not None and value <= 0:
            raise HifikitError(f"--{name.replace('_', '-')} must be positive, got {value}")


def step_result(run: dict[str, Any], name: str) -> dict[str, Any]:
    """The stored result of the run's step of that name ({} while it is not done)."""
    for step in run["steps"]:
        if step["name"] == name:
            return step["result"] or {}
    raise HifikitError(f"run {run['id']} has no step {name}")


def latest_run(conn: sqlite3.Connection, command: str, match: Callable[[dict[str, Any]], bool],
               usable: Callable[[int], bool] | None = None) -> int | None:
    """The newest run of this command whose arguments match (and that `usable` accepts, by id)."""
    for row in conn.execute("SELECT id, args FROM runs WHERE command=? ORDER BY id DESC", (command,)):
        try:
            args = json.loads(row["args"])
        except json.JSONDecodeError:
            continue
        if isinstance(args, dict) and match(args) and (usable is None or usable(int(row["id"]))):
            return int(row["id"])
    return None


def list_runs(conn: sqlite3.Connection, limit: int = 20) -> list[dict[str, Any]]:
    """The newest runs, each with n_steps and n_done (steps finished)."""
    rows = conn.execute(
        "SELECT r.*, (SELECT COUNT(*) FROM steps s WHERE s.run_id=r.id) AS n_steps, "
        "(SELECT COUNT(*) FROM steps s WHERE s.run_id=r.id AND s.status='done') AS n_done "
        "FROM runs r ORDER BY r.id DESC LIMIT ?", (limit,)).fetchall()
    return [db.row_dict(r) for r in rows]


def run_record(conn: sqlite3.Connection, run_id: int) -> dict[str, Any]:
    """A run with its steps, measurements, artifacts and calibration compositions: all the database holds."""
    run = get_run(conn, run_id)
    run["measurements"] = [dict(r) for r in conn.execute(
        "SELECT model, text, ctx, chunks, metric, value, error FROM measurements WHERE run_id=? ORDER BY id",
        (run_id,))]
    run["artifacts"] = [dict(r) for r in conn.execute(
        "SELECT path, sha256, size, kind FROM artifacts WHERE run_id=? ORDER BY id", (run_id,))]
    run["compositions"] = [dict(r) for r in conn.execute(
        "SELECT * FROM compositions WHERE run_id=? ORDER BY id", (run_id,))]
    return run


def get_run(conn: sqlite3.Connection, run_id: int) -> dict[str, Any]:
    row = conn.execute("SELECT * FROM runs WHERE id=?", (run_id,)).fetchone()
    if row is None:
        raise HifikitError(f"no run with id {run_id} (see 'hifikit runs list')")
    run = db.row_dict(row)
    run["steps"] = [db.row_dict(r) for r in conn.execute(
        "SELECT * FROM steps WHERE run_id=? ORDER BY idx", (run_id,))]
    return run


StepHook = Callable[[int, int, dict[str, Any]], None]


def execute(conn: sqlite3.Connection, run_id: int, progress: bool | None = None,
            on_step: StepHook | None = None) -> dict[str, Any]:
    """Run every step that is not done yet, in order; return the run with its steps.

    on_step(index, count, step) is called before each step that runs (e.g. to show where a long job is).
    """
    kinds = step_kinds()
    run = get_run(conn, run_id)
    run_dir = Path(run["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    conn.execute("UPDATE runs SET status='running', pid=?, error=NULL WHERE id=?", (os.getpid(), run_id))
    previous = {s["name"]: s["result"] for s in run["steps"] if s["status"] == "done"}
    for step in run["steps"]:
        if step["status"] == "done":
            log.debug("step %s already done", step["name"])
            continue
        if on_step is not None:
            on_step(step["idx"], len(run["steps"]), step)
        conn.execute("UPDATE steps SET attempts=attempts+1, started=? WHERE id=?", (time.time(), step["id"]))
        ctx = StepContext(conn, run_id, step["id"], run_dir, f"{step['idx']:02d}-{step['name']}", progress,
                          previous)
        try:
            fn = kinds.get(step["kind"])
            if fn is None:
                raise HifikitError(f"kind '{step['kind']}' is not known to hifikit "
                                   f"{__version__} (the run was made by another version?)")
            out = fn(ctx, step["spec"])
        except BaseException as exc:
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            conn.execute("UPDATE runs SET status=?, error=?, finished=? WHERE id=?",
                         (status, f"step {step['name']}: {message}", time.time(), run_id))
            raise
        with db.transaction(conn):
            db.add_measurements(conn, run_id, step["id"], out.measurements)
            db.add_artifacts(conn, run_id, step["id"], out.artifacts)
            conn.execute("UPDATE steps SET status='done', completions=completions+1, result=?, finished=? "
                         "WHERE id=?", (json.dumps(out.result, default=str), time.time(), step["id"]))
        previous[step["name"]] = out.result
    conn.execute("UPDATE runs SET status='done', finished=? WHERE id=?", (time.time(), run_id))
    return get_run(conn, run_id)


def start(command: str, args: dict[str, Any], steps: list[StepSpec], progress: bool | None = None,
          conn: sqlite3.Connection | None = None, on_step: StepHook | None = None) -> dict[str, Any]:
    """Create a run and execute it; a failure leaves the run resumable."""
    conn = conn or db.connect()
    run_id = create_run(conn, command, args, steps)
    log.info("run %d: %s (%d steps)", run_id, command, len(steps))
    try:
        return execute(conn, run_id, progress, on_step)
    except HifikitError as exc:
        raise HifikitError(f"{str(exc).splitlines()[0]} [run {run_id}: fix the cause, then "
                           f"'hifikit runs resume {run_id}']\n" + "\n".join(str(exc).splitlines()[1:])) from exc


def resume(run_id: int, progress: bool | None = None, conn: sqlite3.Connection | None = None,
           on_step: StepHook | None = None) -> dict[str, Any]:
    conn = conn or db.connect()
    run = get_run(conn, run_id)
    if run["status"] == "done" and all(s["status"] == "done" for s in run["steps"]):
        return run
    if run["status"] == "running" and run["pid"] and run["pid"] != os.getpid() and atomic.pid_alive(run["pid"]) \
            and same_command(run["pid"]):
        raise HifikitError(f"run {run_id} is still running (pid {run['pid']}); wait for it or stop it first")
    return execute(conn, run_id, progress, on_step)


def same_command(pid: int) -> bool:
    """Whether pid still looks like a hifikit process (pids are reused)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc: trust the pid
    return b"hifikit" in cmdline
