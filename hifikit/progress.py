"""A small progress bar on stderr, off when stderr is not a terminal."""
from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """``update(done, total)`` redraws one line; ``close()`` ends it."""

    def __init__(self, label: str, enabled: bool | None = None, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.label = label
        self.done = 0
        self.total = 0
        self._start = time.monotonic()
        self._drawn = False

    def update(self, done: int, total: int | None = None) -> None:
        if total:
            self.total = total
        if done == self.done and self._drawn:
            return
        self.done = done
        if self.enabled:
            self._draw()

    def _draw(self, width: int = 30) -> None:
        elapsed = time.monotonic() - self._start
        if self.total:
            frac = min(1.0, self.done / self.total)
            bar = "#" * int(frac * width)
            line = f"\r{self.label} [{bar:<{width}}] {self.done}/{self.total} {elapsed:5.1f}s"
        else:
            line = f"\r{self.label} {self.done} {elapsed:5.1f}s"
        self.stream.write(line)
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        if self.enabled and self._drawn:
            self.stream.write("\n")
            self.stream.flush()
        self._drawn = False


def enabled_for(args) -> bool | None:
    """Progress for a CLI invocation: never with --json; otherwise a TTY decides."""
    if getattr(args, "json", False) or getattr(args, "no_progress", False):
        return False
    return None
