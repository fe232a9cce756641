"""Measured figures for PR.md, read (never written) from the runs database."""
from __future__ import annotations

import dataclasses
import json
import sqlite3
from pathlib import Path
from typing import Any

from .. import db
from ..plots import figure
from ..errors import HifikitError
from ..frontier import on_front

# the metrics of an eval step that PR.md shows, in column order
METRICS = ("size_mib", "bpw", "ppl", "kld_mean", "kld_p99.0", "same_top_p")
EVAL_KINDS = ("eval", "kld-base")


@dataclasses.dataclass
class EvalRow:
    run_id: int
    step_id: int
    kind: str
    model: str
    model_sha256: str | None
    text: str | None
    text_sha256: str | None
    ctx: int
    chunks: int | None
    ref: str | None
    metrics: dict[str, tuple[float | None, float | None]]   # metric -> (value, ±)
    last_id: int

    @property
    def label(self) -> str:
        return Path(self.model).name.removesuffix(".gguf")

    @property
    def setup(self) -> tuple:
        return (self.text_sha256 or self.text, self.ctx, self.chunks)


@dataclasses.dataclass
class RunInfo:
    id: int
    command: str
    args: dict[str, Any]
    versions: dict[str, Any]
    status: str
    started: float
    finished: float | None


@dataclasses.dataclass
class Evidence:
    db_path: str
    rows: list[EvalRow]
    runs: dict[int, RunInfo]

    def setups(self) -> list[list[EvalRow]]:
        """Rows grouped by evaluation setup (text, ctx, chunks), in first-seen order."""
        groups: dict[tuple, list[EvalRow]] = {}
        for row in self.rows:
            groups.setdefault(row.setup, []).append(row)
        return list(groups.values())


def select(ev: Evidence, pattern: str | None) -> Evidence:
    """The rows of models whose name matches pattern (re.search), and the references of their setups;
    none when pattern is None."""
    import re

    if pattern is None:
        return Evidence(db_path=ev.db_path, rows=[], runs={})
    try:
        rx = re.compile(pattern)
    except re.error as exc:
        raise HifikitError(f"bad measurements pattern {pattern!r} in the PR template: {exc}") from exc
    kept = [r for r in ev.rows if r.kind != "kld-base" and rx.search(r.label)]
    setups = {r.setup for r in kept}
    rows = [r for r in ev.rows if r in kept or (r.kind == "kld-base" and r.setup in setups)]
    return Evidence(db_path=ev.db_path, rows=rows, runs={i: ev.runs[i] for i in sorted({r.run_id for r in rows})})


def open_readonly(path: Path) -> sqlite3.Connection:
    if not path.is_file():
        raise HifikitError(f"no runs database at {path} (run `hifikit eval`/`compare` first, or pass --db)")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30.0)
        conn.row_factory = sqlite3.Row
        conn.execute("SELECT 1 FROM measurements LIMIT 1")
    except sqlite3.Error as exc:
        raise HifikitError(f"cannot read the runs database {path}: {exc}") from exc
    return conn


def _rows(conn: sqlite3.Connection, run_ids: list[int] | None) -> list[EvalRow]:
    where = f"s.kind IN ({','.join('?' * len(EVAL_KINDS))}) AND m.ctx IS NOT NULL"
    params: list[Any] = list(EVAL_KINDS)
    if run_ids:
        where += f" AND m.run_id IN ({','.join('?' * len(run_ids))})"
        params += run_ids
    else:  # by default only finished runs: a running one may still change its figures
        where += " AND m.run_id IN (SELECT id FROM runs WHERE status = 'done')"
    found: dict[int, EvalRow] = {}
    for r in conn.execute(
            "SELECT m.*, s.kind AS kind, s.spec AS spec FROM measurements m JOIN steps s ON s.id = m.step_id "
            f"WHERE {where} ORDER BY m.id", params):
        row = found.get(r["step_id"])
        if row is None:
            spec = json.loads(r["spec"] or "{}")
            row = found[r["step_id"]] = EvalRow(
                run_id=r["run_id"], step_id=r["step_id"], kind=r["kind"], model=r["model"] or spec.get("model", ""),
                model_sha256=r["model_sha256"], text=r["text"], text_sha256=r["text_sha256"], ctx=r["ctx"],
                chunks=r["chunks"], ref=spec.get("ref") if r["kind"] == "eval" else None, metrics={}, last_id=0)
        row.metrics[r["metric"]] = (r["value"], r["error"])
        row.last_id = max(row.last_id, r["id"])
    return [r for r in found.values() if "ppl" in r.metrics or "kld_mean" in r.metrics]


def _latest_per_model(rows: list[EvalRow]) -> list[EvalRow]:
    latest: dict[tuple, EvalRow] = {}
    for row in rows:
        key = (row.setup, row.model_sha256 or row.model, row.kind)
        if key not in latest or row.last_id > latest[key].last_id:
            latest[key] = row
    return sorted(latest.values(), key=lambda r: r.last_id)


def load(path: Path | None = None, run_ids: list[int] | None = None) -> Evidence:
    """Eval measurements of the given runs, or the latest per model and setup."""
    path = path or db.db_path()
    conn = open_readonly(path)
    try:
        if run_ids:
            known = {r[0] for r in conn.execute(
                f"SELECT id FROM runs WHERE id IN ({','.join('?' * len(run_ids))})", run_ids)}
            missing = [i for i in run_ids if i not in known]
            if missing:
                raise HifikitError(f"no run {', '.join(map(str, missing))} in {path}")
        rows = _rows(conn, run_ids)
        if run_ids:
            empty = [i for i in run_ids if not any(r.run_id == i for r in rows)]
            if empty:
                raise HifikitError(f"run {', '.join(map(str, empty))} has no eval measurements (ppl/KLD)")
        else:
            rows = _latest_per_model(rows)
        runs = {}
        for rid in sorted({r.run_id for r in rows}):
            r = conn.execute("SELECT * FROM runs WHERE id=?", (rid,)).fetchone()
            d = db.row_dict(r)
            runs[rid] = RunInfo(id=d["id"], command=d["command"], args=d["args"], versions=d["versions"],
                                status=d["status"], started=d["started"], finished=d["finished"])
    finally:
        conn.close()
    return Evidence(db_path=str(path), rows=rows, runs=runs)


def pareto(rows: list[EvalRow], x: str = "size_mib", y: str = "kld_mean") -> set[int]:
    """step ids of the rows no other row beats on both x and y (smaller is better)."""
    pts = [r for r in rows if r.metrics.get(x, (None,))[0] is not None and r.metrics.get(y, (None,))[0] is not None]
    kept = on_front([r.metrics[x][0] for r in pts], [r.metrics[y][0] for r in pts])
    return {r.step_id for r, keep in zip(pts, kept) if keep}


def plot(rows: list[EvalRow], out: Path, title: str) -> bool:
    """A size vs KLD scatter with the Pareto front; False when fewer than 2 rows have both."""
    pts = [r for r in rows if r.metrics.get("size_mib", (None,))[0] is not None
           and r.metrics.get("kld_mean", (None,))[0] is not None]
    if len(pts) < 2:
        return False
    front = pareto(pts)
    fig = figure(figsize=(7, 4.5), dpi=110)
    ax = fig.subplots()
    for r in pts:
        hifi = "hifi" in r.label.lower()
        x, y = r.metrics["size_mib"][0], r.metrics["kld_mean"][0]
        ax.scatter([x], [y], color="tab:red" if hifi else "tab:blue", zorder=3,
                   marker="o" if r.step_id in front else "x")
        ax.annotate(r.label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    line = sorted((r.metrics["size_mib"][0], r.metrics["kld_mean"][0]) for r in pts if r.step_id in front)
    ax.plot([p[0] for p in line], [p[1] for p in line], color="gray", linewidth=0.8, zorder=1)
    from matplotlib.lines import Line2D
    ax.legend(handles=[Line2D([], [], color="tab:red", marker="o", linestyle="", label="HIFI (name contains hifi)"),
                       Line2D([], [], color="tab:blue", marker="o", linestyle="", label="other"),
                       Line2D([], [], color="gray", marker="x", linestyle="", label="not on the Pareto front")],
              fontsize=7, loc="upper right")
    ax.margins(x=0.12)
    ax.set_yscale("log")
    ax.set_xlabel("file size (MiB)")
    ax.set_ylabel("mean KL divergence vs reference")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", linewidth=0.3)
    fig.tight_layout()
    tmp = out.with_name(f".{out.name}.partial")
    fig.savefig(tmp, format="png", metadata={"Software": None})
    tmp.replace(out)
    return True
