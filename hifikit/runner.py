"""Run a bundled llama.cpp binary: stream its output to a log, follow its progress.

Both streams are read as they come (the tools print progress without
newlines), written to the log file with a ``[stderr]``-free interleaving, and
kept apart in memory: results are parsed from stdout, errors from both.
"""
from __future__ import annotations

import codecs
import concurrent.futures as cf
import dataclasses
import functools
import logging
import multiprocessing
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Sequence

from . import paths
from .errors import ToolFailedError
from .progress import Progress

log = logging.getLogger(__name__)

# "0.00.094.628 I " prefixes written by common_log when timestamps are on
LOG_PREFIX_RE = re.compile(r"^\d+\.\d+\.\d+\.\d+ [IWEDC] ?", re.MULTILINE)

# a watcher sees all output so far and returns (done, total) or None
Watcher = Callable[[str], "tuple[int, int] | None"]
# called, in the caller's thread, with each complete stdout line (without its newline) as it arrives
LineHandler = Callable[[str], None]


@dataclasses.dataclass
class ToolResult:
    tool: str
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str
    log_path: str | None
    seconds: float

    @property
    def text(self) -> str:
        """stdout then stderr, without log prefixes: what the parsers read."""
        return strip_prefixes(self.stdout) + "\n" + strip_prefixes(self.stderr)


def strip_prefixes(text: str) -> str:
    return LOG_PREFIX_RE.sub("", text)


def tool_env() -> dict[str, str]:
    env = dict(os.environ)
    lib = str(paths.lib_dir())
    env["LD_LIBRARY_PATH"] = lib + (os.pathsep + env["LD_LIBRARY_PATH"] if env.get("LD_LIBRARY_PATH") else "")
    env.setdefault("LLAMA_LOG_COLORS", "off")
    return env


def _tail(text: str, n: int = 15) -> str:
    lines = [l for l in strip_prefixes(text).splitlines() if l.strip()]
    return "\n".join(lines[-n:])


_ERROR_HINT_RE = re.compile(r"(error|failed|cannot|unable|not enough|need at least|invalid|unknown)", re.I)


def _error_line(out: str, err: str) -> str:
    """The most telling line of a failed run: the last one that reads like an error."""
    lines = [l.strip() for l in strip_prefixes(err + "\n" + out).splitlines() if l.strip()]
    for line in reversed(lines):
        if _ERROR_HINT_RE.search(line):
            return line
    return lines[-1] if lines else "no output"


def die_with_parent(sig: int = signal.SIGKILL, parent: int | None = None) -> None:  # pragma: no cover - child
    """Linux: this process is sent `sig` when its parent dies (prctl PR_SET_PDEATHSIG), so nothing a
    killed hifikit started keeps working. `parent`: the parent's pid; if the parent is gone already
    (it died before the prctl), exit at once. For a tool's preexec_fn (SIGKILL: a tool must not keep
    writing) and a pool's initializer (worker_pool: SIGTERM)."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, int(sig))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux
        return
    if parent is not None and os.getppid() != parent:
        os._exit(1)


def worker_pool(workers: int) -> "cf.ProcessPoolExecutor":
    """A process pool whose workers die with this process (a killed sweep leaves no worker computing)."""
    ctx = multiprocessing.get_context()
    # a forked worker's parent is this process; with forkserver or spawn it is the server, not checked
    parent = os.getpid() if ctx.get_start_method() == "fork" else None
    return cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=die_with_parent,
                                  initargs=(int(signal.SIGTERM), parent))


def run_tool(tool: str, args: Sequence[str | os.PathLike], *, log_path: Path | None = None,
             progress: Progress | None = None, watcher: Watcher | None = None,
             cwd: Path | None = None, check: bool = True, on_line: LineHandler | None = None) -> ToolResult:
    """Run ``tool`` with ``args``; raise ToolFailedError (one line + log tail) when it fails.

    ``on_line`` is called in this thread with each stdout line as soon as it is complete
    (so it may use this thread's database connection); if it raises, the tool is killed
    and the exception propagates.
    """
    exe = paths.binary(tool)
    argv = [str(exe), *map(str, args)]
    log.debug("running %s", " ".join(argv))
    logf = None
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        logf = open(log_path, "a", encoding="utf-8", errors="replace")
        logf.write(f"$ {' '.join(argv)}\n")
        logf.flush()
    start = time.monotonic()
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                env=tool_env(), cwd=cwd,
                                preexec_fn=functools.partial(die_with_parent, int(signal.SIGKILL), os.getpid())
                                if sys.platform.startswith("linux") else None)
    except OSError as exc:
        if logf:
            logf.close()
        raise ToolFailedError(f"{tool}: cannot start ({exc})") from exc
    bufs = {"out": [], "err": []}
    lock = threading.Lock()
    seen = [""]
    lines: queue.Queue[str | None] = queue.Queue()
    partial = [""]

    def pump(stream, key: str) -> None:
        fd = stream.fileno()
        # a read can end inside a multi-byte character (the tools print "±"): decode incrementally
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                if on_line is not None and key == "out":
                    if partial[0]:
                        lines.put(partial[0])
                    lines.put(None)
                break
            text = decoder.decode(chunk)
            with lock:
                bufs[key].append(text)
                if logf:
                    logf.write(text)
                    logf.flush()
                if on_line is not None and key == "out":
                    *complete, partial[0] = (partial[0] + text).split("\n")
                    for line in complete:
                        lines.put(line)
                if watcher and progress:
                    seen[0] += text
                    if len(seen[0]) > 1 << 18:  # keep the head (chunk totals) and the tail (latest lines)
                        seen[0] = seen[0][: 1 << 17] + seen[0][-(1 << 17):]
                    state = watcher(seen[0])
                    if state:
                        progress.update(*state)

    threads = [threading.Thread(target=pump, args=(proc.stdout, "out"), daemon=True),
               threading.Thread(target=pump, args=(proc.stderr, "err"), daemon=True)]
    for t in threads:
        t.start()
    try:
        if on_line is not None:
            # None marks the end of stdout; an exception here kills the tool below
            for line in iter(lines.get, None):
                on_line(line)
        rc = proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        for t in threads:
            t.join()
        if progress:
            progress.close()
        if logf:
            logf.write(f"\n# exit {proc.returncode}\n")
            logf.close()
    out, err = "".join(bufs["out"]), "".join(bufs["err"])
    result = ToolResult(tool, argv, rc, out, err, str(log_path) if log_path else None,
                        time.monotonic() - start)
    if check and rc != 0:
        where = f" (log: {log_path})" if log_path else ""
        raise ToolFailedError(f"{tool} failed with exit code {rc}: {_error_line(out, err)}{where}\n"
                              f"{_tail(err + out)}")
    return result


# progress watchers -------------------------------------------------------------

_QUANT_RE = re.compile(r"\[\s*(\d+)/\s*(\d+)\]")
_CHUNKS_RE = re.compile(r"(?:calculating perplexity|computing) over (\d+) chunks")
_PPL_CHUNK_RE = re.compile(r"\[(\d+)\][-\d.naninf]+,")
_KLD_CHUNK_RE = re.compile(r"^\s*(\d+)\s+[-\d.naninf]+ ±", re.MULTILINE)


def watch_quantize(text: str) -> tuple[int, int] | None:
    found = _QUANT_RE.findall(text[-4096:])
    if not found:
        return None
    done, total = found[-1]
    return int(done), int(total)


def watch_chunks(text: str) -> tuple[int, int] | None:
    m = _CHUNKS_RE.search(text)
    if not m:
        return None
    total = int(m.group(1))
    tail = text[-8192:]
    nums = [int(n) for n in _PPL_CHUNK_RE.findall(tail)] + [int(n) for n in _KLD_CHUNK_RE.findall(tail)]
    return (max(nums) if nums else 0), total
