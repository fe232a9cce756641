#!/usr/bin/env python3
"""Fresh-build wall time: `pip install` of this checkout into a new venv, empty build dir.

The checkout's tracked and untracked-but-not-ignored files are copied to a temporary
directory (so scikit-build-core's persistent `build/` starts empty), a new venv is made, and
`pip install --no-deps COPY` is timed. The pinned llama.cpp source comes from the user cache
(~/.cache/hifikit, as a second install on a machine would find it), so no source download is
timed. The build is CPU-bound for minutes: on a busy machine (1-minute load average above
--max-load × cores) the script does not build and its section says so, rather than
recording a figure inflated by the other work.

  bench/build.py [--max-load 0.5] [--force] [--no-doc]
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchmd

TITLE = "Build: fresh-build wall time (bench/build.py)"


def copy_checkout(dest: Path) -> None:
    files = subprocess.run(["git", "-C", str(benchmd.REPO), "ls-files", "-z", "--cached", "--others",
                            "--exclude-standard"], check=True, stdout=subprocess.PIPE).stdout.split(b"\0")
    for name in filter(None, files):
        src = benchmd.REPO / name.decode()
        if src.is_file() and not src.is_symlink():
            target = dest / name.decode()
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--max-load", type=float, default=0.5, help="skip above this 1-minute load per core")
    ap.add_argument("--force", action="store_true", help="build even on a busy machine")
    ap.add_argument("--no-doc", action="store_true")
    args = ap.parse_args(argv)

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
    with tempfile.TemporaryDirectory(prefix="hifikit-build-") as tmp:
        src, venv = Path(tmp) / "src", Path(tmp) / "venv"
        copy_checkout(src)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--no-deps", "--no-cache-dir", str(src)]
        log = Path(tmp) / "pip.log"
        start = time.monotonic()
        with open(log, "w") as f:
            proc = subprocess.run(pip, stdout=f, stderr=subprocess.STDOUT)
        seconds = time.monotonic() - start
        if proc.returncode != 0:
            sys.exit(f"bench/build.py: pip install failed ({proc.returncode}):\n{log.read_text()[-3000:]}")
    text = (f"fresh build and install: {seconds:.0f} s ({int(seconds // 60)}m{int(seconds % 60):02d}s), "
            f"1-minute load average {load:.2f} on {cores} cores at the start")
    print(text)
    if not args.no_doc:
        body = (f"`python {' '.join(pip[1:6])} COPY` into a new venv, from a copy "
                f"of the checkout (empty `build/`), pinned source from the user cache.\n\n```\n{text}\n```\n")
        benchmd.update("build", TITLE, body, machine_line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
