"""`hifikit pr export`: the series as upstream-style commits, format-patch files and PR.md.

Layout of the output directory:
  llama.cpp/      git repository: tag `pristine` (the pinned tree), then one commit per logical change
  patches/        `git format-patch` of those commits
  PR.md           the pull request description; pareto-N.png its plots
  export.json     what was exported (topic, commits, per-commit size)
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from pathlib import Path

from .. import atomic, upstream
from ..errors import HifikitError
from . import check, describe, evidence, gitrepo, template as tmpl

log = logging.getLogger(__name__)
MANIFEST = "export.json"


@dataclasses.dataclass
class ExportResult:
    out: str
    topic: str
    base: str
    commits: list[describe.CommitStats]
    pr_md: str
    plots: list[str]
    rows: int
    runs: list[int]


def _stats(repo: Path, sha: str) -> tuple[int, int, int]:
    files = ins = dels = 0
    for line in gitrepo.out(repo, "show", "--numstat", "--format=", sha).splitlines():
        a, d, _ = line.split("\t", 2)
        files += 1
        ins += int(a) if a != "-" else 0
        dels += int(d) if d != "-" else 0
    return files, ins, dels


def _add_new_file(repo: Path, rel: str, src: Path, pristine: Path) -> None:
    if (pristine / rel).exists() or (repo / rel).exists():
        raise HifikitError(f"{rel} already exists in the tree; a new file must not replace an upstream one")
    (repo / rel).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, repo / rel)


def build_repo(repo: Path, commits: list[tmpl.PlannedCommit], template: tmpl.Template,
               pristine: Path, native_dir: Path | None = None) -> list[str]:
    """Create the repository; return the commit ids after `pristine`."""
    author = (template.author_name, template.author_email)
    gitrepo.init_pristine(repo, pristine, author=author, date=template.date)
    shas = []
    for c in commits:
        touched: list[str] = []
        for patch in c.patches:
            upstream.apply_patch(repo, patch)
            touched += [fp.path for fp in patch.files]
        for rel in c.native:
            _add_new_file(repo, rel, (native_dir or tmpl.source_root() / "native") / rel, pristine)
            touched.append(rel)
        for rel, src in c.files.items():
            _add_new_file(repo, rel, src, pristine)
            touched.append(rel)
        gitrepo.git(repo, "add", "-f", "--", *sorted(set(touched)))
        msg = repo / ".git" / "HIFIKIT_MSG"
        msg.write_text(c.message)
        gitrepo.git(repo, "commit", "-q", "--cleanup=verbatim", "-F", str(msg), author=author, date=c.date)
        msg.unlink()
        shas.append(gitrepo.out(repo, "rev-parse", "HEAD").strip())
    return shas


def export(out: Path, topic: str = "all", run_ids: list[int] | None = None, db_path: Path | None = None,
           force: bool = False, template_path: Path | None = None, pristine: Path | None = None) -> ExportResult:
    out = out.resolve()
    if out.exists() and any(out.iterdir()):
        if not force:
            raise HifikitError(f"{out} exists and is not empty (use --force to replace an earlier export)")
        if not (out / MANIFEST).is_file():
            raise HifikitError(f"{out} is not an earlier export (no {MANIFEST}); not removing it")
    template = tmpl.load(template_path)
    commits = tmpl.plan(template, topic)
    ev = evidence.load(db_path, run_ids)
    pristine = pristine or upstream.pristine_tree()
    series_names = upstream.read_series(tmpl.source_root() / "patches")

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}{atomic.PARTIAL_TAG}{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        repo = staging / "llama.cpp"
        shas = build_repo(repo, commits, template, pristine)
        (staging / "patches").mkdir()
        names = gitrepo.out(repo, "format-patch", "--no-signature", "-o", str(staging / "patches"),
                            f"{gitrepo.PRISTINE_TAG}..HEAD").split()
        names = [Path(n).name for n in names]
        if len(names) != len(commits):
            raise HifikitError(f"git format-patch wrote {len(names)} files for {len(commits)} commits")
        stats = []
        for c, sha, name in zip(commits, shas, names):
            files, ins, dels = _stats(repo, sha)
            stats.append(describe.CommitStats(c.subject, sha, name, files, ins, dels))
        plots: list[str | None] = []
        for n, rows in enumerate(ev.setups(), 1):
            name = f"pareto-{n}.png"
            plots.append(name if evidence.plot(rows, staging / name, f"setup {n}: size vs mean KLD") else None)
        pr_md = describe.render(template, topic, commits, stats, ev, plots, series_names, check.planned_checks())
        (staging / "PR.md").write_text(pr_md)
        manifest = {"topic": topic, "base": upstream.LLAMA_CPP_COMMIT, "template": str(template.path),
                    "db": ev.db_path, "runs": sorted(ev.runs), "rows": [(r.run_id, r.step_id) for r in ev.rows],
                    "commits": [dataclasses.asdict(s) | {
                        "patches": [p.name for p in c.patches], "native": c.native, "files": sorted(c.files)}
                        for s, c in zip(stats, commits)]}
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.debug("exported %d commits to %s", len(commits), out)
    return ExportResult(out=str(out), topic=topic, base=upstream.LLAMA_CPP_COMMIT, commits=stats,
                        pr_md=str(out / "PR.md"), plots=[p for p in plots if p], rows=len(ev.rows),
                        runs=sorted(ev.runs))
