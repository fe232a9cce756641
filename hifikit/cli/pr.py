"""``hifikit pr export | check``: the patch series as an upstream pull request."""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from ..errors import HifikitError
from ..pr import check as pr_check
from ..pr import export as pr_export
from ..pr.template import SPLIT
from .common import add_json
from ..tables import table
from .output import emit_json, note, say


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pr", help="export the series as upstream commits + PR.md, and check an export")
    ps = p.add_subparsers(dest="pr_command", required=True, metavar="ACTION")
    ep = ps.add_parser("export", help="git repository, format-patch files and PR.md in DIR")
    ep.add_argument("--out", type=Path, required=True, metavar="DIR")
    ep.add_argument("--topic", default=SPLIT,
                    help="split (default): one export per PR of pr/template.yaml's topics (cpu, cuda, gguf-py, "
                         "ftypes, tools, amx); a topic name: that PR alone (with the PRs it builds on); all: the series")
    ep.add_argument("--runs", type=int, nargs="+", metavar="ID",
                    help="runs whose eval measurements PR.md shows (default: the latest per model)")
    ep.add_argument("--db", type=Path, default=None, help="runs database to read (default: $HIFIKIT_HOME/runs.db)")
    ep.add_argument("--force", action="store_true", help="replace an earlier export in DIR")
    add_json(ep)
    ep.set_defaults(func=cmd_export)
    cp = ps.add_parser("check", help="git am on a fresh pristine tree, build, tests and the tree's own checks")
    cp.add_argument("dir", type=Path, metavar="DIR")
    cp.add_argument("--jobs", "-j", type=int, default=2, help="ninja jobs (default 2)")
    cp.add_argument("--workdir", type=Path, default=None, help="where to apply and build (default DIR/check)")
    cp.add_argument("--no-build", action="store_true", help="apply and lint only")
    add_json(cp)
    cp.set_defaults(func=cmd_check)


def cmd_export(args: argparse.Namespace) -> int:
    res = pr_export.export(args.out, args.topic, args.runs, args.db, force=args.force)
    if args.json:
        emit_json(res)
        return 0
    say(table(["#", "PR", "commit", "files", "+", "-", "patch"],
              [[n, c.topic, c.subject, c.files, c.insertions, c.deletions, c.patch_file]
               for n, c in enumerate(res.commits, 1)], right=[True, False, False, True, True, True, False]))
    say(f"\n{len(res.commits)} commits on llama.cpp {res.base[:12]} (topic {res.topic}) in {res.out}")
    say(f"{Path(res.pr_md).name}: {res.rows} measured rows from runs {', '.join(map(str, res.runs)) or '(none)'}; "
        f"plots: {', '.join(res.plots) or 'none'}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    if args.jobs <= 0:
        raise HifikitError(f"--jobs must be positive, got {args.jobs}")
    report = pr_check.check(args.dir, args.workdir, args.jobs, build=not args.no_build,
                            note=note if not args.json else (lambda s: None))
    if args.json:
        emit_json({**dataclasses.asdict(report), "ok": report.ok})
    else:
        say(table(["check", "result", "seconds", "summary"],
                  [[c.name, c.status.upper(), f"{c.seconds:.1f}", c.summary] for c in report.checks],
                  right=[False, False, True, False]))
        say(f"\n{'OK' if report.ok else 'FAILED'}: {sum(c.status == 'pass' for c in report.checks)} passed, "
            f"{sum(c.status == 'fail' for c in report.checks)} failed, "
            f"{sum(c.status == 'skip' for c in report.checks)} skipped; logs in {report.workdir}/logs")
    return 0 if report.ok else 1
