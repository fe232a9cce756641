"""Files that appear complete or not at all: write to a hidden temporary name, then rename."""
from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import Iterator

from .errors import HifikitError

PARTIAL_TAG = ".partial-"


def partial_name(target: Path) -> Path:
    """A sibling temporary name that keeps the suffix (tools pick formats by it)."""
    return target.with_name(f".{target.stem}{PARTIAL_TAG}{os.getpid()}{target.suffix}")


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (it may belong to another user)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_stale_partial(path: Path) -> bool:
    """A temporary file of ours whose writer process is gone."""
    m = re.search(rf"{re.escape(PARTIAL_TAG)}(\d+)", path.name)
    return bool(m) and (int(m.group(1)) == os.getpid() or not pid_alive(int(m.group(1))))


def stale_partials(target: Path) -> list[Path]:
    """Temporary files for target left by processes that are gone (live writers are left alone)."""
    out = []
    prefix = f".{target.stem}{PARTIAL_TAG}"
    for path in target.parent.glob(f"{prefix}*{target.suffix}"):
        pid = path.name[len(prefix):len(path.name) - len(target.suffix)]
        if not pid.isdigit() or int(pid) == os.getpid() or not pid_alive(int(pid)):
            out.append(path)
    return sorted(out)


def check_writable(target: Path) -> Path:
    """Fail early, in one line, if target cannot be created."""
    target = Path(target)
    if target.is_dir():
        raise HifikitError(f"{target}: is a directory, expected a file name")
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise HifikitError(f"{target}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise HifikitError(f"{target}: directory {parent} is not writable")
    if target.exists() and not os.access(target, os.W_OK):
        raise HifikitError(f"{target}: exists and is not writable")
    return target


@contextlib.contextmanager
def output_file(target: Path) -> Iterator[Path]:
    """Yield a temporary path; on success rename it to target, otherwise remove it.

    Leftovers of killed processes (same target, other pids) are removed first.
    """
    target = check_writable(Path(target))
    for stale in stale_partials(target):
        stale.unlink(missing_ok=True)
    tmp = partial_name(target)
    try:
        yield tmp
        if not tmp.is_file():
            raise HifikitError(f"{target}: the tool exited without writing it")
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(target: Path, text: str) -> None:
    with output_file(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
