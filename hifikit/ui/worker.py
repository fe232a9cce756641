"""``python -m hifikit.ui.worker SPEC``: one job the web UI started, run through the library.

SPEC is a JSON file ``{"kind": ..., "payload": {...}}`` written by tasks.py.
SIGTERM (the page's Cancel) becomes KeyboardInterrupt, so the run is left
'interrupted' by jobs.execute and resumes like any other.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable

from .. import db, jobs
from ..errors import HifikitError

log = logging.getLogger("hifikit.ui.worker")


def _optional_path(value: Any) -> Path | None:
    return Path(value) if value else None


def run_analyze(p: dict[str, Any]) -> int:
    from ..sweep.analyze import AnalyzeOptions, analyze
    res = analyze(AnalyzeOptions(Path(p["model"]), mode=p.get("mode", "proxy"), types=p.get("types") or None,
                                 tensors=p.get("tensors"),
                                 imatrix=_optional_path(p.get("imatrix")), text=_optional_path(p.get("text")),
                                 ctx=int(p.get("ctx") or 512), chunks=p.get("chunks"), threads=p.get("threads")),
                  progress=False)
    return res.run_id


def run_quantize_verify(p: dict[str, Any]) -> int:
    from ..quantize import QuantizeVerifyOptions, quantize_verify
    res = quantize_verify(QuantizeVerifyOptions(Path(p["model"]), Path(p["output"]), Path(p["strategy"]),
                                                Path(p["text"]), imatrix=_optional_path(p.get("imatrix")),
                                                ctx=int(p.get("ctx") or 512), chunks=p.get("chunks"),
                                                threads=p.get("threads"), bench=bool(p.get("bench"))),
                          progress=False)
    return res.run_id


def run_resume(p: dict[str, Any]) -> int:
    return int(jobs.resume(int(p["run"]), progress=False)["id"])


JOBS: dict[str, Callable[[dict[str, Any]], int]] = {
    "analyze": run_analyze, "quantize-verify": run_quantize_verify, "resume": run_resume}


STOPPED: list[int] = []   # the signal that stopped the job, once one has


def _interrupt(signum: int, frame: Any) -> None:
    STOPPED.append(signum)
    raise KeyboardInterrupt(f"signal {signum}")


def _mark_interrupted(started: float) -> None:
    """The page's Cancel also stops the job's tools (its process group): when a tool's death reached the
    step before the signal reached Python, the step failed; the run was stopped, not broken."""
    conn = db.connect()
    conn.execute("UPDATE runs SET status='interrupted' WHERE pid=? AND started>=? AND status='failed'",
                 (os.getpid(), started - 1.0))


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    signal.signal(signal.SIGTERM, _interrupt)
    spec = json.loads(Path(argv[0]).read_text())
    started = time.time()
    try:
        run_id = JOBS[spec["kind"]](spec["payload"])
    except KeyboardInterrupt:
        log.info("stopped")
        return 130
    except Exception as exc:
        if STOPPED:
            _mark_interrupted(started)
            log.info("stopped (signal %d): %s", STOPPED[0], str(exc).splitlines()[0] if str(exc) else exc)
            return 130
        if not isinstance(exc, HifikitError):
            raise
        log.error("%s", str(exc).splitlines()[0])
        return 1
    log.info("done: run %d", run_id)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
