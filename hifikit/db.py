"""The runs database: one sqlite3 file in $HIFIKIT_HOME, WAL mode, named migrations.

Tables: runs (one per CLI job), steps (the units of a long job, committed one
by one), measurements (model, text, ctx, chunks, metric, value, ±),
artifacts (path, sha256, size, kind), kld_refs (cached reference logits),
compositions (calibration mixes), file_hashes (sha256 by path/size/mtime), and
sweep_tensors + curve_points (per-tensor error curves, see curves.py), and cost_machines + costs +
cost_constants (the speed cost model, see costs.py).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any, Iterable

from .errors import HifikitError


def home() -> Path:
    base = os.environ.get("HIFIKIT_HOME")
    if base:
        return Path(base).expanduser()
    data = os.environ.get("XDG_DATA_HOME") or os.path.join(Path.home(), ".local", "share")
    return Path(data) / "hifikit"


def db_path() -> Path:
    return home() / "runs.db"


# ordered, named, applied once each; never edit one that has shipped: append a new one
MIGRATIONS: list[tuple[str, str]] = [
    ("0001_runs", """
        CREATE TABLE runs (
            id        INTEGER PRIMARY KEY,
            command   TEXT NOT NULL,
            args      TEXT NOT NULL,          -- JSON
            versions  TEXT NOT NULL,          -- JSON: hifikit, upstream pin, patch series
            status    TEXT NOT NULL,          -- running | done | failed
            error     TEXT,
            run_dir   TEXT NOT NULL,
            pid       INTEGER,
            started   REAL NOT NULL,
            finished  REAL
        );
        CREATE TABLE steps (
            id        INTEGER PRIMARY KEY,
            run_id    INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            idx       INTEGER NOT NULL,
            name      TEXT NOT NULL,
            kind      TEXT NOT NULL,
            spec      TEXT NOT NULL,          -- JSON
            status    TEXT NOT NULL DEFAULT 'pending',   -- pending | done
            result    TEXT,                   -- JSON
            attempts  INTEGER NOT NULL DEFAULT 0,
            completions INTEGER NOT NULL DEFAULT 0,
            started   REAL,
            finished  REAL,
            UNIQUE (run_id, idx)
        );
        CREATE TABLE measurements (
            id        INTEGER PRIMARY KEY,
            run_id    INTEGER REFERENCES runs(id) ON DELETE CASCADE,
            step_id   INTEGER REFERENCES steps(id) ON DELETE CASCADE,
            model     TEXT,
            model_sha256 TEXT,
            text      TEXT,
            text_sha256 TEXT,
            ctx       INTEGER,
            chunks    INTEGER,
            metric    TEXT NOT NULL,
            value     REAL,
            error     REAL,
            created   REAL NOT NULL
        );
        CREATE INDEX measurements_model ON measurements (model_sha256, metric);
        CREATE TABLE artifacts (
            id        INTEGER PRIMARY KEY,
            run_id    INTEGER REFERENCES runs(id) ON DELETE CASCADE,
            step_id   INTEGER REFERENCES steps(id) ON DELETE CASCADE,
            path      TEXT NOT NULL,
            sha256    TEXT NOT NULL,
            size      INTEGER NOT NULL,
            kind      TEXT NOT NULL,
            created   REAL NOT NULL
        );
    """),
    ("0002_kld_refs", """
        CREATE TABLE kld_refs (
            key       TEXT PRIMARY KEY,
            model_sha256 TEXT NOT NULL,
            text_sha256  TEXT NOT NULL,
            ctx       INTEGER NOT NULL,
            chunks    INTEGER NOT NULL,
            path      TEXT NOT NULL,
            size      INTEGER NOT NULL,
            ppl       TEXT,                   -- JSON of the reference's perplexity
            created   REAL NOT NULL,
            last_used REAL NOT NULL
        );
    """),
    ("0003_file_hashes", """
        CREATE TABLE file_hashes (
            path      TEXT PRIMARY KEY,
            size      INTEGER NOT NULL,
            mtime_ns  INTEGER NOT NULL,
            sha256    TEXT NOT NULL
        );
    """),
    ("0004_compositions", """
        CREATE TABLE compositions (
            id        INTEGER PRIMARY KEY,
            run_id    INTEGER REFERENCES runs(id) ON DELETE CASCADE,
            output    TEXT NOT NULL,
            output_sha256 TEXT NOT NULL,
            domain    TEXT NOT NULL,
            source    TEXT NOT NULL,
            weight    REAL NOT NULL,
            target_tokens INTEGER NOT NULL,
            tokens    INTEGER NOT NULL,
            pieces    INTEGER NOT NULL,
            chars     INTEGER NOT NULL,
            seed      INTEGER NOT NULL
        );
    """),
    # per-tensor error curves of `hifikit analyze`, read by `hifikit plan` (see curves.py)
    ("0005_curves", """
        CREATE TABLE sweep_tensors (
            run_id    INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            tensor    TEXT NOT NULL,
            shape     TEXT NOT NULL,          -- JSON, ggml order: ne[0] is the row length
            n_elements INTEGER NOT NULL,
            source_type TEXT NOT NULL,
            PRIMARY KEY (run_id, tensor)
        );
        CREATE TABLE curve_points (
            run_id    INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            mode      TEXT NOT NULL,          -- proxy | measured
            tensor    TEXT NOT NULL,
            type      TEXT NOT NULL,          -- ggml_type_name spelling: q4_K, q3_K_hifi, f16
            nbytes    INTEGER NOT NULL,       -- exact bytes of the tensor's data in this type
            error     REAL NOT NULL,
            error_pm  REAL,                   -- standard error where the mode has one
            seconds   REAL,                   -- time this point took to measure
            created   REAL NOT NULL,
            PRIMARY KEY (run_id, mode, tensor, type)
        );
    """),
    # the speed cost model of `hifikit costs` (see costs.py): one row per timed weight op, per machine
    ("0007_costs", """
        CREATE TABLE cost_machines (
            fingerprint TEXT PRIMARY KEY,     -- costs.fingerprint(description)
            backend   TEXT NOT NULL,          -- CPU, CUDA0, ...
            threads   INTEGER NOT NULL,
            description TEXT NOT NULL,        -- JSON: device, CPU and its ggml features, buffer types, build
            created   REAL NOT NULL
        );
        CREATE TABLE costs (
            fingerprint TEXT NOT NULL REFERENCES cost_machines(fingerprint) ON DELETE CASCADE,
            op        TEXT NOT NULL,          -- mul_mat | get_rows
            type      TEXT NOT NULL,          -- ggml_type_name spelling
            ne0       INTEGER NOT NULL,       -- row length
            ne1       INTEGER NOT NULL,       -- rows
            n         INTEGER NOT NULL,       -- activation columns (mul_mat) or rows fetched (get_rows)
            seconds   REAL NOT NULL,          -- median over the repetitions
            seconds_min REAL,
            seconds_max REAL,
            repetitions INTEGER,
            copies    INTEGER,                -- weight copies per repetition (the working set)
            buffer_type TEXT,                 -- where llama.cpp keeps the weight: CPU, CPU_REPACK, ...
            device    TEXT,
            run_id    INTEGER REFERENCES runs(id) ON DELETE SET NULL,
            created   REAL NOT NULL,
            PRIMARY KEY (fingerprint, op, type, ne0, ne1, n)
        );
        CREATE TABLE cost_constants (
            fingerprint TEXT NOT NULL REFERENCES cost_machines(fingerprint) ON DELETE CASCADE,
            signature TEXT NOT NULL,          -- the model's shape (costs.model_signature)
            n_prompt  INTEGER NOT NULL,
            n_gen     INTEGER NOT NULL,
            pp_seconds REAL NOT NULL,         -- per prompt, outside the weight ops
            tg_seconds REAL NOT NULL,         -- per generated token, outside the weight ops
            reference TEXT NOT NULL,
            reference_sha256 TEXT NOT NULL,
            measured_pp_tps REAL NOT NULL,
            measured_tg_tps REAL NOT NULL,
            summed_pp_seconds REAL NOT NULL,
            summed_tg_seconds REAL NOT NULL,
            repetitions INTEGER,
            run_id    INTEGER REFERENCES runs(id) ON DELETE SET NULL,
            created   REAL NOT NULL,
            PRIMARY KEY (fingerprint, signature, n_prompt, n_gen)
        );
    """),
]


def connect(path: Path | None = None, shared: bool = False) -> sqlite3.Connection:
    """Open (creating if needed) the database and apply pending migrations.

    shared: the connection may be used from other threads than the one that opened it, one at a time
    (the caller serialises its use, as the web UI's planner sessions do with a lock)."""
    path = path or db_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=not shared)
    except (OSError, sqlite3.Error) as exc:
        raise HifikitError(f"cannot open the runs database {path}: {exc}") from exc
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA synchronous=NORMAL")
    migrate(conn)
    return conn


def migrate(conn: sqlite3.Connection) -> list[str]:
    conn.execute("CREATE TABLE IF NOT EXISTS migrations (name TEXT PRIMARY KEY, applied REAL NOT NULL)")
    done = {r[0] for r in conn.execute("SELECT name FROM migrations")}
    applied = []
    for name, sql in MIGRATIONS:
        if name in done:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            # re-check under the write lock: another process may have applied it
            if conn.execute("SELECT 1 FROM migrations WHERE name=?", (name,)).fetchone():
                conn.execute("COMMIT")
                continue
            for statement in sql.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute("INSERT INTO migrations (name, applied) VALUES (?, ?)", (name, time.time()))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        applied.append(name)
    return applied


class transaction:
    """``with transaction(conn):`` BEGIN IMMEDIATE … COMMIT, ROLLBACK on error."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type, exc, tb) -> None:
        self.conn.execute("ROLLBACK" if exc_type else "COMMIT")


def sha256_file(path: Path | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_sha256(conn: sqlite3.Connection, path: Path | str) -> str:
    """sha256 of a file, cached by (absolute path, size, mtime)."""
    path = Path(path).resolve()
    st = path.stat()
    row = conn.execute("SELECT size, mtime_ns, sha256 FROM file_hashes WHERE path=?", (str(path),)).fetchone()
    if row and row["size"] == st.st_size and row["mtime_ns"] == st.st_mtime_ns:
        return row["sha256"]
    digest = sha256_file(path)
    conn.execute("INSERT OR REPLACE INTO file_hashes (path, size, mtime_ns, sha256) VALUES (?, ?, ?, ?)",
                 (str(path), st.st_size, st.st_mtime_ns, digest))
    return digest


@dataclasses.dataclass
class Measurement:
    metric: str
    value: float | None
    error: float | None = None
    model: str | None = None
    model_sha256: str | None = None
    text: str | None = None
    text_sha256: str | None = None
    ctx: int | None = None
    chunks: int | None = None


@dataclasses.dataclass
class Artifact:
    path: str
    kind: str
    sha256: str = ""
    size: int = 0


def add_measurements(conn: sqlite3.Connection, run_id: int | None, step_id: int | None,
                     items: Iterable[Measurement]) -> None:
    now = time.time()
    conn.executemany(
        "INSERT INTO measurements (run_id, step_id, model, model_sha256, text, text_sha256, ctx, chunks, "
        "metric, value, error, created) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
        [(run_id, step_id, m.model, m.model_sha256, m.text, m.text_sha256, m.ctx, m.chunks, m.metric,
          m.value, m.error, now) for m in items])


def add_artifacts(conn: sqlite3.Connection, run_id: int | None, step_id: int | None,
                  items: Iterable[Artifact]) -> None:
    now = time.time()
    rows = []
    for a in items:
        p = Path(a.path)
        rows.append((run_id, step_id, str(p.resolve()), a.sha256 or sha256_file(p), a.size or p.stat().st_size,
                     a.kind, now))
    conn.executemany("INSERT INTO artifacts (run_id, step_id, path, sha256, size, kind, created) "
                     "VALUES (?,?,?,?,?,?,?)", rows)


def row_dict(row: sqlite3.Row, json_fields: tuple[str, ...] = ("args", "versions", "spec", "result", "ppl")) -> dict[str, Any]:
    out = dict(row)
    for key in json_fields:
        if key in out and isinstance(out[key], str):
            try:
                out[key] = json.loads(out[key])
            except json.JSONDecodeError:
                pass
    return out
