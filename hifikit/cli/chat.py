"""``hifikit chat MODEL [-p PROMPT] [-n N] [--threads N] [--ctx N] [-- ARGS...]``: llama-cli on the terminal."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..serve import DEFAULT_CTX, ChatOptions, chat


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("chat", help="chat with a GGUF in the terminal (the bundled llama-cli)",
                       description="Chat with MODEL in the bundled llama-cli (/exit or Ctrl-C twice ends). "
                                   "Arguments after `--` go to llama-cli as they are.")
    p.add_argument("model", type=Path, help="the GGUF to chat with")
    p.add_argument("-p", "--prompt", default=None,
                   help="answer this one prompt and exit (default: interactive)")
    p.add_argument("-n", "--n-predict", type=int, default=None, metavar="N",
                   help="tokens per answer at most (default: until the model stops)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: every CPU hifikit may use)")
    p.add_argument("--ctx", type=int, default=None,
                   help=f"context size in tokens (default {DEFAULT_CTX}, or the model's trained context if shorter)")
    p.set_defaults(func=run, extra_args=[])


def run(args: argparse.Namespace) -> int:
    return chat(ChatOptions(args.model, args.prompt, args.n_predict, args.threads, args.ctx, args.extra_args))
