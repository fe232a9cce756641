"""``hifikit publish DIR --repo-id ORG/NAME [--runs IDS] [--private] [--dry-run]``: GGUF files to the Hub."""
from __future__ import annotations

import argparse
from pathlib import Path

from .. import publish
from ..errors import HifikitError
from .common import add_json, progress_mode
from .output import emit_json, note, say


def _ids(text: str) -> list[int]:
    try:
        return [int(x) for x in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected run ids such as 3,5,8, got {text!r}") from None


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("publish", help="write a model card for a folder of GGUF files and upload it to the Hub")
    p.add_argument("directory", type=Path, metavar="DIR")
    p.add_argument("--repo-id", required=True, metavar="ORG/NAME", help="the model repository to create or update")
    p.add_argument("--runs", type=_ids, default=None, metavar="IDS",
                   help="read figures from these runs only (comma-separated; default: every run)")
    p.add_argument("--private", action="store_true", help="create the repository private")
    p.add_argument("--dry-run", action="store_true", help="write DIR/README.md only; upload nothing")
    p.add_argument("--base-model", default=None, metavar="ORG/NAME",
                   help="the card's base_model (default: the fetch run of the source, or the GGUF's metadata)")
    p.add_argument("--license", default=None, help="the card's license (default: the GGUF's general.license)")
    p.add_argument("--quantized-by", default=None, metavar="NAME", help="the card's quantized_by (default: ORG)")
    add_json(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not args.runs and args.runs is not None:
        raise HifikitError("--runs: no run ids given")
    res = publish.publish(publish.PublishOptions(args.directory, args.repo_id, args.runs, args.private, args.dry_run,
                                                 args.base_model, args.license, args.quantized_by),
                          progress=progress_mode(args))
    render(res, args.json)
    return 0


def render(res: publish.PublishResult, as_json: bool) -> None:
    if as_json:
        emit_json(res.to_json())
        return
    for line in res.notes:
        note(line)
    measured = sum(f.measured for f in res.files)
    say(f"{res.card}: {len(res.files)} GGUF file(s), {measured} measured")
    if res.dry_run:
        say("dry run: nothing uploaded")
    else:
        say(f"run {res.run_id}: uploaded {len(res.uploaded)} file(s) to {res.url or res.repo_id}")


def show(run: dict, as_json: bool) -> None:
    """For `hifikit runs show/resume` of a publish run."""
    render(publish.PublishResult.from_run(run), as_json)
