"""Serve a GGUF with the bundled llama-server (``hifikit serve``) or chat with it in llama-cli (``hifikit chat``).

The server is llama.cpp's own, built from the patched tree, so it runs HIFI
types: an OpenAI-compatible API (``/v1/chat/completions``, ``/v1/models``, ...)
and ``/health``. hifikit checks what it can before starting it (the model is a
GGUF, the port is free, the host is loopback unless allowed), starts it in its
own process group, waits until ``/health`` answers, and stops the whole group
when done: SIGTERM, then SIGKILL after a bounded wait.

    from hifikit.serve import ServeOptions, Server
    with Server(ServeOptions("model.gguf", port=0)) as srv:
        print(srv.info.url)           # http://127.0.0.1:PORT, ready for requests
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Sequence

from . import gguf_io, net, paths, runner
from .errors import HifikitError

log = logging.getLogger(__name__)

DEFAULT_PORT = 8080            # llama-server's own default
DEFAULT_CTX = 4096             # tokens of context, or the model's trained length if shorter
# the flags hifikit sets itself; given again after `--` they would contradict what hifikit checked
OWN_FLAGS = ("-m", "--model", "--host", "--port")


def default_threads() -> int:
    """The CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def model_context(path: Path) -> int | None:
    """The model's trained context length (``<arch>.context_length``), None when it does not say."""
    reader = gguf_io.open_reader(path)
    arch = reader.get_field("general.architecture")
    if arch is None:
        return None
    field = reader.get_field(f"{arch.contents()}.context_length")
    return int(field.contents()) if field is not None else None


def _context(model: Path, ctx: int | None) -> int:
    if ctx is not None:
        if ctx < 1:
            raise HifikitError(f"--ctx {ctx}: must be at least 1")
        return ctx
    trained = model_context(model)
    return min(DEFAULT_CTX, trained) if trained else DEFAULT_CTX


def _check_extra(extra: Sequence[str]) -> list[str]:
    for arg in extra:
        if arg.split("=", 1)[0] in OWN_FLAGS:
            raise HifikitError(f"{arg.split('=', 1)[0]} after --: give the model, --host and --port to hifikit "
                               "itself, which checks them before starting the server")
    return list(extra)


@dataclasses.dataclass
class ServeOptions:
    model: Path
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT           # 0: any free port
    threads: int | None = None         # default: every CPU this process may use
    ctx: int | None = None             # default: DEFAULT_CTX, or the model's trained context if shorter
    allow_remote: bool = False         # needed to bind an address other machines can reach
    extra_args: Sequence[str] = ()     # passed to llama-server as they are (after hifikit's own)
    startup_timeout: float = 300.0     # seconds to wait for /health (loading a large model takes a while)
    stop_timeout: float = 10.0         # seconds between SIGTERM and SIGKILL
    stop_after: float | None = None    # serve(): stop by itself after this many seconds


@dataclasses.dataclass
class ServerInfo:
    url: str                           # what a client on this machine connects to
    host: str
    port: int
    pid: int
    model: str
    threads: int
    ctx: int
    argv: list[str]
    startup_seconds: float


@dataclasses.dataclass
class ServeResult:
    info: ServerInfo
    seconds: float                     # from ready to stopped
    stopped_by: str                    # "interrupt", "stop_after", or "exit" (the server exited by itself)
    returncode: int | None             # the server's exit status


class Server:
    """A running llama-server: started by start() (or ``with``), stopped by stop(); never left running."""

    def __init__(self, opts: ServeOptions):
        self.opts = opts
        self.info: ServerInfo | None = None
        self._proc: subprocess.Popen | None = None
        self._lines: collections.deque[str] = collections.deque(maxlen=200)
        self._reader: threading.Thread | None = None

    # -- checks and start -------------------------------------------------------------------------------------
    def _argv(self) -> tuple[list[str], int, int, int]:
        o = self.opts
        model = gguf_io.check_model(o.model)
        if not net.is_loopback(o.host) and not o.allow_remote:
            raise HifikitError(f"--host {o.host} is not a loopback address: other machines could reach the server "
                               "(llama-server has no authentication unless given --api-key); add --allow-remote "
                               "to bind it anyway")
        extra = _check_extra(o.extra_args)
        threads = o.threads if o.threads is not None else default_threads()
        if threads < 1:
            raise HifikitError(f"--threads {threads}: must be at least 1")
        ctx = _context(model, o.ctx)
        exe = paths.binary("llama-server")
        port = net.check_listen(o.host, o.port)
        argv = [str(exe), "-m", str(model), "--host", o.host.strip("[]"), "--port", str(port),
                "-t", str(threads), "-c", str(ctx), *extra]
        return argv, port, threads, ctx

    def start(self) -> ServerInfo:
        if self._proc is not None:
            raise HifikitError("this server is already started")
        argv, port, threads, ctx = self._argv()
        if not net.is_loopback(self.opts.host):
            log.warning("llama-server will listen on %s, which other machines can reach", self.opts.host)
        t0 = time.monotonic()
        log.debug("starting %s", " ".join(argv))
        # its own process group (a terminal's Ctrl-C reaches hifikit only, which stops the group); and
        # SIGTERM when the thread that started it dies, so a killed hifikit leaves no server behind
        parent = os.getpid()
        self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, env=runner.tool_env(), start_new_session=True,
                                      preexec_fn=lambda: runner.die_with_parent(signal.SIGTERM, parent))
        self._reader = threading.Thread(target=self._read, name="llama-server-log", daemon=True)
        self._reader.start()
        url = net.url(net.connect_host(self.opts.host), port)
        try:
            self._wait_ready(url)
        except BaseException:
            self.stop()
            raise
        self.info = ServerInfo(url, self.opts.host, port, self._proc.pid, argv[2], threads, ctx, argv,
                               round(time.monotonic() - t0, 3))
        log.debug("llama-server ready at %s after %.1f s", url, self.info.startup_seconds)
        return self.info

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for raw in self._proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip()
            if line:
                self._lines.append(line)
                log.debug("llama-server: %s", line)

    def _wait_ready(self, url: str) -> None:
        """Poll /health until it answers 200 (503 while the model loads); the server exiting first, or the
        startup timeout passing, is an error with the server's last error line."""
        assert self._proc is not None
        deadline = time.monotonic() + self.opts.startup_timeout
        while True:
            if self._proc.poll() is not None:
                self._drain()
                raise HifikitError(f"llama-server exited with status {self._proc.returncode} before it was ready: "
                                   f"{self.last_error()}")
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            if time.monotonic() > deadline:
                raise HifikitError(f"llama-server did not answer {url}/health within {self.opts.startup_timeout:g} s: "
                                   f"{self.last_error()}")
            time.sleep(0.1)

    def _drain(self) -> None:
        if self._reader is not None:
            self._reader.join(timeout=5)

    def last_error(self) -> str:
        """The server's most telling output line so far (the last one that reads like an error)."""
        return runner._error_line("", "\n".join(self._lines))

    @property
    def output(self) -> list[str]:
        """The server's last output lines (up to 200)."""
        return list(self._lines)

    # -- running and stopping ---------------------------------------------------------------------------------
    def poll(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    def wait(self, timeout: float | None = None) -> int | None:
        """Block until the server exits (its status) or timeout seconds pass (None)."""
        assert self._proc is not None
        try:
            return self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self) -> int | None:
        """Stop the server's process group: SIGTERM, then SIGKILL after stop_timeout seconds. Its status."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                proc.wait(self.opts.stop_timeout)
            except subprocess.TimeoutExpired:
                log.warning("llama-server did not stop within %g s of SIGTERM; killing it", self.opts.stop_timeout)
        # whatever of the group is left (the server itself, or anything it started)
        self._signal(signal.SIGKILL)
        proc.wait()
        self._drain()
        if proc.stdout is not None:
            proc.stdout.close()
        return proc.returncode

    def _signal(self, sig: int) -> None:
        assert self._proc is not None
        try:
            os.killpg(self._proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def __enter__(self) -> "Server":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


@contextlib.contextmanager
def _signals_interrupt():
    """While serving, SIGINT and SIGTERM raise KeyboardInterrupt in the main thread, whatever this process
    inherited (a background job of a shell starts with SIGINT ignored; SIGTERM would end it without stopping
    the server in order). The previous handlers come back afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt
    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def serve(opts: ServeOptions, announce: Callable[[ServerInfo], None] | None = None) -> ServeResult:
    """Serve until Ctrl-C (SIGINT or SIGTERM), opts.stop_after seconds, or the server exiting by itself;
    announce(info) is called once it is ready. The server is stopped in every case; a signal while it starts
    stops it and propagates; its exiting by itself with an error status is an error."""
    with _signals_interrupt(), Server(opts) as srv:
        assert srv.info is not None
        t0 = time.monotonic()
        stopped_by = "stop_after"
        try:
            # a signal once the server is ready is a stop, also while it is being announced
            if announce is not None:
                announce(srv.info)
            code = srv.wait(opts.stop_after)
        except KeyboardInterrupt:
            code, stopped_by = None, "interrupt"
        if code is not None:
            stopped_by = "exit"
            if code != 0:
                raise HifikitError(f"llama-server exited with status {code}: {srv.last_error()}")
        code = srv.stop()
        return ServeResult(srv.info, round(time.monotonic() - t0, 3), stopped_by, code)


# -- chat ---------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class ChatOptions:
    model: Path
    prompt: str | None = None          # one turn with this prompt, then exit; None: interactive
    n_predict: int | None = None       # tokens per answer at most (llama-cli's -n; default: until it stops)
    threads: int | None = None
    ctx: int | None = None
    extra_args: Sequence[str] = ()     # passed to llama-cli as they are


def chat_argv(opts: ChatOptions) -> list[str]:
    """llama-cli's command line for opts, after checking the model."""
    model = gguf_io.check_model(opts.model)
    for arg in opts.extra_args:
        if arg.split("=", 1)[0] in ("-m", "--model"):
            raise HifikitError(f"{arg} after --: give the model to hifikit itself")
    threads = opts.threads if opts.threads is not None else default_threads()
    if threads < 1:
        raise HifikitError(f"--threads {threads}: must be at least 1")
    argv = [str(paths.binary("llama-cli")), "-m", str(model), "-t", str(threads), "-c", str(_context(model, opts.ctx))]
    if opts.n_predict is not None:
        argv += ["-n", str(opts.n_predict)]
    if opts.prompt is not None:
        argv += ["-p", opts.prompt, "--single-turn"]
    return argv + list(opts.extra_args)


def chat(opts: ChatOptions) -> int:
    """Run llama-cli on the terminal (its input and output are this process's) and return its exit status.
    Ctrl-C belongs to llama-cli (the first stops an answer, the next one exits), not to this process."""
    argv = chat_argv(opts)
    log.debug("running %s", " ".join(argv))
    parent = os.getpid()
    proc = subprocess.Popen(argv, env=runner.tool_env(),
                            preexec_fn=lambda: runner.die_with_parent(signal.SIGTERM, parent))
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if in_main else None
    try:
        return proc.wait()
    finally:
        if in_main:
            signal.signal(signal.SIGINT, previous)
        if proc.poll() is None:
            proc.terminate()
            proc.wait()
