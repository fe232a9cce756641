"""docs/benchmarks.md: one section per bench script, written by the script itself.

Each section sits between ``<!-- bench:NAME begin -->`` and ``<!-- bench:NAME end -->``;
a script replaces only its own section (under a lock), so scripts never clobber
each other. The section records the date, the machine and the exact command.
"""
from __future__ import annotations

import datetime as dt
import fcntl
import os
import platform
import shlex
import statistics
import sys
from pathlib import Path
from typing import Sequence

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "benchmarks.md"
HEADER = """# Benchmarks

Every section below is written by the script it names (`bench/*.py`), from
figures measured side by side in one run: do not edit by hand, re-run the
script. Ratios are given as min / median / max over the repetitions.
"""


def spread(values: Sequence[float]) -> tuple[float, float, float]:
    return min(values), statistics.median(values), max(values)


def fmt_spread(values: Sequence[float], fmt: str = ".3f") -> str:
    lo, mid, hi = spread(values)
    return f"{lo:{fmt}} / {mid:{fmt}} / {hi:{fmt}}"


def machine() -> str:
    """CPU model, cores, memory, OS (hifikit.report.machine, the report's own facts) and the load: one line."""
    sys.path.insert(0, str(REPO))
    from hifikit.report import machine as machine_facts

    facts = machine_facts()
    mem = f", {facts['memory_bytes'] / 2**30:.0f} GiB" if facts["memory_bytes"] else ""
    load = ""
    if hasattr(os, "getloadavg"):
        load = f", load average {os.getloadavg()[0]:.2f} at the start"
    return f"{facts['cpu']}, {facts['cores']} cores{mem}, {platform.system()} {platform.release()}{load}"


def command_line(argv: Sequence[str] | None = None) -> str:
    argv = list(sys.argv if argv is None else argv)
    script = Path(argv[0])
    try:
        argv[0] = str(script.resolve().relative_to(REPO))
    except ValueError:
        pass
    return " ".join(shlex.quote(a) for a in argv)


def section(name: str, title: str, body: str, machine_line: str, command: str) -> str:
    date = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (f"<!-- bench:{name} begin -->\n## {title}\n\n"
            f"- date: {date}\n- machine: {machine_line}\n- command: `{command}`\n\n{body.rstrip()}\n"
            f"<!-- bench:{name} end -->\n")


def update(name: str, title: str, body: str, machine_line: str | None = None, command: str | None = None,
           doc: Path = DOC) -> Path:
    """Replace (or append) this script's section of docs/benchmarks.md, atomically and under a lock."""
    text = section(name, title, body, machine_line or machine(), command or command_line())
    doc.parent.mkdir(parents=True, exist_ok=True)
    lock = os.open(doc.parent, os.O_RDONLY)  # the directory itself is the lock: no stray file
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        old = doc.read_text(encoding="utf-8") if doc.exists() else HEADER
        begin, end = f"<!-- bench:{name} begin -->", f"<!-- bench:{name} end -->"
        i, j = old.find(begin), old.find(end)
        if i >= 0 and j > i:
            new = old[:i] + text + old[j + len(end):].lstrip("\n")
        else:
            new = old.rstrip("\n") + "\n\n" + text
        tmp = doc.with_name(f".{doc.name}.partial-{os.getpid()}")
        tmp.write_text(new, encoding="utf-8")
        os.replace(tmp, doc)
    finally:
        os.close(lock)
    return doc


def ftype_name(path: Path) -> str:
    """The GGUF's general.file_type as llama.cpp names it (without MOSTLY_), or the raw value."""
    from hifikit import gguf_io  # the installed package, imported where a benchmark needs it

    info = gguf_io.read_info(path)
    try:
        return gguf_io.gguf.LlamaFileType(int(info.file_type)).name.removeprefix("MOSTLY_")
    except (TypeError, ValueError):
        return str(info.file_type)
