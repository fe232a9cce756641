#!/usr/bin/env python3
"""Fresh-build wall time: `pip install` of this checkout into a new venv, empty build dir.

The checkout's tracked and untracked-but-not-ignored files are copied to a temporary
directory (so scikit-build-core's persistent `build/` starts empty), a new venv is made, and
`pip install --no-deps COPY` is timed. The pinned llama.cpp source comes from the user cache
(~/.cache/hifikit, as a second install on a machine would find it), so no source download is
timed. The build is CPU-bound for minutes: on a busy machine (1-minute load average above
--max-load × cores) the script does not build and its section says so, rather than
recording a figure inflated by the other work.

  bench/build.py [--max-load 0.5] [--force] [--variant NAME=CMAKE_ARGS ...] [--no-doc]

With --variant the default build is followed by one build per variant (CMAKE_ARGS added), one after the
other, and a table gives each one's wall and CPU time and its wall time over the default's.
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchmd

TITLE = "Build: fresh-build wall time (bench/build.py)"
PIP_ARGS = ["-m", "pip", "install", "--no-deps", "--no-cache-dir"]


def copy_checkout(dest: Path) -> None:
    files = subprocess.run(["git", "-C", str(benchmd.REPO), "ls-files", "-z", "--cached", "--others",
                            "--exclude-standard"], check=True, stdout=subprocess.PIPE).stdout.split(b"\0")
    for name in filter(None, files):
        src = benchmd.REPO / name.decode()
        if src.is_file() and not src.is_symlink():
            target = dest / name.decode()
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)


def build_once(cmake_args: str) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one fresh `pip install` of a copy of the checkout, CMAKE_ARGS added."""
    with tempfile.TemporaryDirectory(prefix="hifikit-build-") as tmp:
        src, venv = Path(tmp) / "src", Path(tmp) / "venv"
        copy_checkout(src)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "python"), *PIP_ARGS, str(src)]
        env = dict(os.environ)
        if cmake_args:
            env["CMAKE_ARGS"] = f"{env['CMAKE_ARGS']} {cmake_args}" if env.get("CMAKE_ARGS") else cmake_args
        log = Path(tmp) / "pip.log"
        start, usage = time.monotonic(), resource.getrusage(resource.RUSAGE_CHILDREN)
        with open(log, "w") as f:
            proc = subprocess.run(pip, stdout=f, stderr=subprocess.STDOUT, env=env)
        seconds = time.monotonic() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if proc.returncode != 0:
            sys.exit(f"bench/build.py: pip install failed ({proc.returncode}):\n{log.read_text()[-3000:]}")
    # CPU time of the build's processes: unlike the wall time, it hardly moves when other work shares the cores
    return seconds, (after.ru_utime - usage.ru_utime) + (after.ru_stime - usage.ru_stime)


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--max-load", type=float, default=0.5, help="skip above this 1-minute load per core")
    ap.add_argument("--force", action="store_true", help="build even on a busy machine")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=CMAKE_ARGS",
                    help="also build with these CMake arguments, one after the other in this run (repeatable); "
                         "the first build is always the default one")
    ap.add_argument("--no-doc", action="store_true")
    args = ap.parse_args(argv)
    variants = [("default", "")]
    for v in args.variant:
        name, sep, cmake_args = v.partition("=")
        if not sep or not name:
            ap.error(f"--variant: expected NAME=CMAKE_ARGS, got {v!r}")
        variants.append((name, cmake_args))

    machine_line = benchmd.machine()
    cores = os.cpu_count() or 1
    load = os.getloadavg()[0]
    if load > args.max_load * cores and not args.force:
        msg = (f"Not run this time: the 1-minute load average was {load:.2f} on {cores} cores "
               f"(limit {args.max_load} × cores), so a wall time would measure the other work. "
               f"Run `bench/build.py` on a quiet machine.")
        print(msg)
        if not args.no_doc:
            benchmd.update("build", TITLE, msg + "\n", machine_line)
        return 0
    results = []
    for name, cmake_args in variants:
        wall, cpu = build_once(cmake_args)
        results.append((name, cmake_args, wall, cpu))
        print(f"{name}: {wall:.0f} s wall, {cpu:.0f} s CPU", file=sys.stderr, flush=True)
    lines = [f"fresh build and install: {results[0][2]:.0f} s ({_minutes(results[0][2])}), CPU time "
             f"{results[0][3]:.0f} s (user + system), 1-minute load average {load:.2f} on {cores} cores at the start"]
    if len(results) > 1:
        lines += ["", f"{'build':<16}{'CMAKE_ARGS':<32}{'wall s':>8}{'CPU s':>8}{'wall / default':>16}"]
        for name, cmake_args, wall, cpu in results:
            lines.append(f"{name:<16}{cmake_args or '-':<32}{wall:>8.0f}{cpu:>8.0f}{wall / results[0][2]:>16.3f}")
    text = "\n".join(lines)
    print(text)
    if not args.no_doc:
        body = (f"`python {' '.join(PIP_ARGS[:5])} COPY` into a new venv, from a copy of the checkout (empty "
                f"`build/`), pinned source from the user cache"
                + (", each build one after the other in this run" if len(results) > 1 else "")
                + f".\n\n```\n{text}\n```\n")
        benchmd.update("build", TITLE, body, machine_line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
