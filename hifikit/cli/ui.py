"""``hifikit ui [--host 127.0.0.1] [--port 8765] [--root DIR]... [--open] [--allow-remote]``."""
from __future__ import annotations

import argparse
import webbrowser
from pathlib import Path

from ..ui.server import DEFAULT_PORT, UIOptions, serve
from .output import note


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ui", help="the strategy workbench in the browser (a local server)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, loopback only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0: any free one)")
    p.add_argument("--root", type=Path, action="append", default=None, metavar="DIR",
                   help="a folder the UI may read models and texts from and write files to (repeatable; "
                        "default: the working folder)")
    p.add_argument("--open", action="store_true", help="open the URL in the default browser")
    p.add_argument("--allow-remote", action="store_true",
                   help="allow binding an address other machines can reach (they still need the token)")
    p.add_argument("--stop-after", type=float, default=None, metavar="SECONDS", help="stop by itself after SECONDS")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    def announce(url: str) -> None:
        note(f"hifikit ui: serving on {url}\n  (the token in the URL is needed by every request; Ctrl-C stops)")
        if args.open:
            webbrowser.open(url)
    serve(UIOptions(args.host, args.port, args.root or (), args.allow_remote, args.stop_after), announce)
    return 0
