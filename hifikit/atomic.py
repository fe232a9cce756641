"""Files that appear complete or not at all: write to a hidden temporary name, then rename."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

from .errors import HifikitError

PARTIAL_TAG = ".partial-"


def partial_name(target: Path) -> Path:
    """A sibling temporary name that keeps the suffix (tools pick formats by it)."""
    return target.with_name(f".{target.stem}{PARTIAL_TAG}{os.getpid()}{target.suffix}")


def stale_partials(target: Path) -> list[Path]:
    return sorted(target.parent.glob(f".{target.stem}{PARTIAL_TAG}*{target.suffix}"))


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
