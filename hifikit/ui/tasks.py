"""Jobs the web UI starts: each one a process of its own that calls the library, tracked in the runs database.

A job runs as ``python -m hifikit.ui.worker SPEC`` (an argument list, no
shell) in a session of its own, so it outlives the browser tab that started it
and the server itself; what it does is a run of the runs database like any CLI
run (its pid is the run's pid), so the pages show it the same way, and
``hifikit runs resume`` finishes it if it is stopped.

The same job (the same kind and the same options) cannot be started twice
while it is alive: its key is the hash of both, and a key file written with
O_EXCL under ``$HIFIKIT_HOME/ui/jobs`` holds the live process's pid, so two
tabs, or two servers, get the one job.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from .. import atomic, db, jobs
from ..errors import HifikitError

log = logging.getLogger(__name__)

KINDS = ("analyze", "quantize-verify", "resume")


class AlreadyRunning(HifikitError):
    """The same job is alive: its pid and run (when it has made one so far)."""

    def __init__(self, job: "Job") -> None:
        super().__init__(f"this job is already running (pid {job.pid}"
                         + (f", run {job.run_id})" if job.run_id else ")"))
        self.job = job


@dataclasses.dataclass
class Job:
    key: str
    kind: str
    payload: dict[str, Any]
    pid: int
    started: float
    log: str
    run_id: int | None = None
    alive: bool = True
    returncode: int | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def job_key(kind: str, payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps([kind, payload], sort_keys=True, default=str).encode()).hexdigest()[:24]


def _is_worker(pid: int) -> bool:
    try:
        return b"hifikit.ui.worker" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return atomic.pid_alive(pid)


class Launcher:
    """Starts, finds and stops the UI's jobs (one per server, shared by its requests)."""

    def __init__(self, home: Path | None = None) -> None:
        self.dir = ((home or db.home()) / "ui" / "jobs").resolve()
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._procs: dict[int, subprocess.Popen] = {}

    def _alive(self, pid: int) -> bool:
        proc = self._procs.get(pid)
        if proc is not None:
            return proc.poll() is None   # reaps our own children: no zombie looks alive
        return atomic.pid_alive(pid) and _is_worker(pid)

    def _read(self, path: Path) -> Job | None:
        try:
            return Job(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def start(self, kind: str, payload: dict[str, Any], conn: sqlite3.Connection) -> Job:
        """Start a job, or raise AlreadyRunning with the live one of the same key."""
        if kind not in KINDS:
            raise HifikitError(f"unknown job kind '{kind}' (expected one of {', '.join(KINDS)})")
        key = job_key(kind, payload)
        marker = self.dir / f"{key}.json"
        with self._lock:
            existing = self._read(marker) if marker.exists() else None
            if existing is not None and self._alive(existing.pid):
                raise AlreadyRunning(self._with_run(existing, conn))
            marker.unlink(missing_ok=True)
            log_path = self.dir / f"{key}.log"
            spec = self.dir / f"{key}.spec.json"
            atomic.write_text(spec, json.dumps({"kind": kind, "payload": payload}))
            try:
                fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError as exc:   # another server took it between our check and now
                raise HifikitError("this job is being started by another page; reload") from exc
            with open(log_path, "ab") as out:
                # run in the jobs folder: `python -m` puts its working folder first on the import path, and
                # a hifikit source checkout there would shadow the installed package (which has the binaries)
                proc = subprocess.Popen([sys.executable, "-m", "hifikit.ui.worker", str(spec)],
                                        stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                        cwd=self.dir, start_new_session=True,
                                        env={**os.environ, "HIFIKIT_HOME": str(db.home())})
            self._procs[proc.pid] = proc
            job = Job(key, kind, payload, proc.pid, time.time(), str(log_path))
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(job.to_json()))
            log.info("started %s job %s (pid %d)", kind, key, proc.pid)
            return job

    def _with_run(self, job: Job, conn: sqlite3.Connection) -> Job:
        if job.kind == "resume":
            run_id: int | None = int(job.payload["run"])
        else:   # the run the job's process created (pids are reused: not one from before the job)
            row = conn.execute("SELECT id FROM runs WHERE pid=? AND started>=? ORDER BY id DESC LIMIT 1",
                               (job.pid, job.started - 1.0)).fetchone()
            run_id = int(row["id"]) if row else None
        alive = self._alive(job.pid)
        proc = self._procs.get(job.pid)
        return dataclasses.replace(job, run_id=run_id, alive=alive,
                                   returncode=proc.returncode if proc is not None and not alive else None)

    def list(self, conn: sqlite3.Connection) -> list[Job]:
        """The jobs started from the UI (newest first), each with its run once it has one."""
        found = [j for j in (self._read(p) for p in self.dir.glob("*.json") if not p.name.endswith(".spec.json"))
                 if j is not None]
        return [self._with_run(j, conn) for j in sorted(found, key=lambda j: -j.started)]

    def get(self, key: str, conn: sqlite3.Connection) -> Job:
        if not key.isalnum():
            raise HifikitError(f"no job {key!r}")
        job = self._read(self.dir / f"{key}.json")
        if job is None:
            raise HifikitError(f"no job {key!r}")
        return self._with_run(job, conn)

    def cancel(self, run_id: int, conn: sqlite3.Connection) -> dict[str, Any]:
        """Stop a running run (the UI's or the CLI's): SIGTERM to its process group when it leads one.

        The run is left 'interrupted' by its own process and can be resumed."""
        run = jobs.get_run(conn, run_id)
        pid = run["pid"]
        if run["status"] != "running" or not pid or not atomic.pid_alive(pid) or not jobs.same_command(pid):
            raise HifikitError(f"run {run_id} is not running (status {run['status']})")
        try:
            if os.getpgid(pid) == pid:
                os.killpg(pid, signal.SIGTERM)   # its tools and worker processes too
            else:
                os.kill(pid, signal.SIGTERM)
        except ProcessLookupError as exc:
            raise HifikitError(f"run {run_id} is not running (its process has ended)") from exc
        log.info("sent SIGTERM to run %d (pid %d)", run_id, pid)
        return {"run": run_id, "pid": pid, "signal": "SIGTERM"}

    def stop_all(self, timeout: float = 10.0) -> None:
        """Stop the jobs this launcher started (the tests' teardown; a server does not call it)."""
        for pid, proc in list(self._procs.items()):
            if proc.poll() is None:
                try:
                    os.killpg(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.time() + timeout
        for proc in self._procs.values():
            try:
                proc.wait(max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
