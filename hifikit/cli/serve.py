"""``hifikit serve MODEL [--host 127.0.0.1] [--port 8080] [--threads N] [--ctx N] [--allow-remote] [-- ARGS...]``."""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from ..serve import DEFAULT_CTX, DEFAULT_PORT, ServeOptions, ServerInfo, serve
from .common import add_json
from .output import note, say, to_jsonable


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve a GGUF with the bundled llama-server (OpenAI-compatible API)",
                       description="Serve MODEL with the bundled llama-server until Ctrl-C. Arguments after `--` "
                                   "go to llama-server as they are.")
    p.add_argument("model", type=Path, help="the GGUF to serve")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, loopback only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0: any free one)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: every CPU hifikit may use)")
    p.add_argument("--ctx", type=int, default=None,
                   help=f"context size in tokens (default {DEFAULT_CTX}, or the model's trained context if shorter)")
    p.add_argument("--allow-remote", action="store_true",
                   help="allow binding an address other machines can reach (llama-server has no authentication "
                        "unless given -- --api-key KEY)")
    p.add_argument("--stop-after", type=float, default=None, metavar="SECONDS", help="stop by itself after SECONDS")
    add_json(p)
    p.set_defaults(func=run, extra_args=[])


def _json_line(record: dict) -> None:
    sys.stdout.write(json.dumps(to_jsonable(record)) + "\n")
    sys.stdout.flush()


def run(args: argparse.Namespace) -> int:
    # --json: JSON lines, one when the server is ready (a script reads the URL from it), one when it stopped
    def announce(info: ServerInfo) -> None:
        if args.json:
            _json_line({"event": "ready", **dataclasses.asdict(info)})
            return
        say(info.url)
        sys.stdout.flush()
        note(f"hifikit serve: llama-server on {info.url} ({Path(info.model).name}, {info.threads} threads, "
             f"context {info.ctx}); OpenAI API at {info.url}/v1; Ctrl-C stops")

    res = serve(ServeOptions(args.model, args.host, args.port, args.threads, args.ctx, args.allow_remote,
                             args.extra_args, stop_after=args.stop_after), announce)
    if args.json:
        _json_line({"event": "stopped", "stopped_by": res.stopped_by, "seconds": res.seconds,
                    "returncode": res.returncode})
    else:
        note(f"hifikit serve: stopped ({res.stopped_by}) after {res.seconds:.1f} s")
    return 0
