"""Launching the UI: the checks of a launch, the bound socket, and uvicorn serving the app on it.

``serve(UIOptions(...))`` blocks until the server stops (Ctrl-C, or
``stop_after`` seconds); ``start(UIOptions(...))`` runs it in a thread and
returns a handle (the tests' and a notebook's way).
"""
from __future__ import annotations

import dataclasses
import logging
import socket
import threading
import time
from pathlib import Path
from typing import Sequence

from ..errors import HifikitError
from ..net import is_loopback
from .security import Policy

log = logging.getLogger(__name__)

DEFAULT_PORT = 8765


@dataclasses.dataclass
class UIOptions:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT           # 0: any free port
    roots: Sequence[Path] = ()         # folders the UI may read and write under (default: the working folder)
    allow_remote: bool = False         # needed to bind an address other hosts can reach
    stop_after: float | None = None    # stop by itself after this many seconds
    token: str | None = None           # default: a new random one


@dataclasses.dataclass
class RunningUI:
    """A server started by start(): its URL (with the token), policy and a way to stop it."""
    url: str
    policy: Policy
    thread: threading.Thread
    server: object
    launcher: object                   # tasks.Launcher: the jobs it started

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)


def _require_extra() -> None:
    try:
        import jinja2  # noqa: F401
        import plotly  # noqa: F401
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise HifikitError(f"hifikit ui needs its extra ({exc.name} is missing): pip install 'hifikit[ui]'") from exc


def bind(opts: UIOptions) -> tuple[socket.socket, Policy]:
    """The listening socket and the policy of this launch (the port is known only once bound)."""
    _require_extra()
    if not is_loopback(opts.host) and not opts.allow_remote:
        raise HifikitError(f"--host {opts.host} is not a loopback address: other machines could reach a server "
                           "that starts jobs and writes files; add --allow-remote to bind it anyway")
    if not 0 <= opts.port < 65536:
        raise HifikitError(f"--port {opts.port}: not a port number")
    try:
        family = socket.getaddrinfo(opts.host, opts.port, type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror as exc:
        raise HifikitError(f"--host {opts.host}: {exc}") from exc
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((opts.host, opts.port))
    except OSError as exc:
        sock.close()
        raise HifikitError(f"cannot listen on {opts.host}:{opts.port}: {exc.strerror}") from exc
    sock.listen(64)
    policy = Policy.make(opts.host, sock.getsockname()[1], opts.roots or [Path.cwd()], opts.token)
    if not is_loopback(opts.host):
        log.warning("serving on %s, which other machines can reach: anyone with the token can start jobs and "
                    "write files under %s", opts.host, ", ".join(map(str, policy.roots)))
    return sock, policy


def _server(sock: socket.socket, policy: Policy, stop_after: float | None, launcher=None):
    import uvicorn

    from .app import create_app
    config = uvicorn.Config(create_app(policy, launcher), log_level="warning", lifespan="off", access_log=False)
    server = uvicorn.Server(config)
    if stop_after is not None:
        def stop_later() -> None:
            deadline = time.monotonic() + stop_after
            while not server.should_exit and time.monotonic() < deadline:
                time.sleep(0.2)
            server.should_exit = True
        threading.Thread(target=stop_later, daemon=True).start()
    return server


def serve(opts: UIOptions, announce=None) -> None:
    """Serve until stopped; announce(url) is called once the socket is bound."""
    sock, policy = bind(opts)
    server = _server(sock, policy, opts.stop_after)
    if announce is not None:
        announce(policy.url())
    server.run(sockets=[sock])


def start(opts: UIOptions) -> RunningUI:
    """Serve in a thread (uvicorn takes signals only in the main thread) and return once it accepts connections."""
    from .tasks import Launcher
    sock, policy = bind(opts)
    launcher = Launcher()
    server = _server(sock, policy, opts.stop_after, launcher)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    if not server.started:
        raise HifikitError("the UI server did not start")
    return RunningUI(policy.url(), policy, thread, server, launcher)
