"""`hifikit pr export`: the series as upstream-style commits, format-patch files and PR.md.

Layout of the output directory of one topic:
  llama.cpp/      git repository: tag `pristine` (the pinned tree), then one commit per logical change
                  (the commits of the topics it needs first)
  patches/        `git format-patch` of those commits
  PR.md           the pull request description; pareto-N.png its plots
  export.json     what was exported (topic, commits, per-commit size, the checks `pr check` runs)

The split (the default): one such directory per topic, `NN-topic/`, and `split.json` / `SPLIT.md`
listing them in order.
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
SPLIT_MANIFEST = "split.json"


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


def fold(repo: Path, rel: str, src: Path, candidates: list[str]) -> str:
    """Inline the native fragment src at the one line of the candidate files that includes it.

    The series keeps a fragment's code in a file of its own and includes it from the upstream file
    it belongs to (a one-line hook); upstream gets the code in that file. Returns the file changed.
    """
    line = f'#include "{Path(rel).name}"\n'
    hits = [(c, (repo / c).read_text()) for c in dict.fromkeys(candidates) if (repo / c).is_file()]
    hits = [(c, text) for c, text in hits if line in text]
    if len(hits) != 1 or hits[0][1].count(line) != 1:
        raise HifikitError(f"native/{rel} is to be folded, but {len(hits)} files of its commit include it "
                           f"(one line `{line.strip()}` in one file is required)")
    target, text = hits[0]
    (repo / target).write_text(text.replace(line, src.read_text(), 1))
    return target


def build_repo(repo: Path, commits: list[tmpl.PlannedCommit], template: tmpl.Template,
               pristine: Path, native_dir: Path | None = None) -> list[str]:
    """Create the repository; return the commit ids after `pristine`."""
    author = (template.author_name, template.author_email)
    native_dir = native_dir or tmpl.source_root() / "native"
    gitrepo.init_pristine(repo, pristine, author=author, date=template.date)
    shas = []
    for c in commits:
        touched: list[str] = []
        for patch in c.patches:
            upstream.apply_patch(repo, patch)
            touched += [fp.path for fp in patch.files]
        for rel in c.native:
            _add_new_file(repo, rel, native_dir / rel, pristine)
            touched.append(rel)
        for rel in c.fold:
            fold(repo, rel, native_dir / rel, touched)
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


def _prepare_out(out: Path, force: bool) -> None:
    if out.exists() and any(out.iterdir()):
        if not force:
            raise HifikitError(f"{out} exists and is not empty (use --force to replace an earlier export)")
        if not ((out / MANIFEST).is_file() or (out / SPLIT_MANIFEST).is_file()):
            raise HifikitError(f"{out} is not an earlier export (no {MANIFEST} or {SPLIT_MANIFEST}); not removing it")


def _export_topic(staging: Path, template: tmpl.Template, topic: str, ev: evidence.Evidence,
                  pristine: Path, series_names: list[str]) -> tuple[list[describe.CommitStats], list[str | None]]:
    commits = tmpl.plan(template, topic)
    spec = template.all_topic() if topic == tmpl.ALL else template.topic(topic)
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
        stats.append(describe.CommitStats(c.subject, sha, name, files, ins, dels, c.topic))
    shown = evidence.select(ev, spec.measurements)
    plots: list[str | None] = []
    for n, rows in enumerate(shown.setups(), 1):
        name = f"pareto-{n}.png"
        plots.append(name if evidence.plot(rows, staging / name, f"setup {n}: size vs mean KLD") else None)
    pr_md = describe.render(template, spec, commits, stats, shown, plots, series_names,
                            check.planned_checks(spec.checks, spec.build))
    (staging / "PR.md").write_text(pr_md)
    manifest = {"topic": topic, "needs": [t for t in template.closure(topic) if t != topic] if topic != tmpl.ALL else [],
                "base": upstream.LLAMA_CPP_COMMIT, "template": str(template.path),
                "db": ev.db_path, "runs": sorted(shown.runs), "rows": [(r.run_id, r.step_id) for r in shown.rows],
                "build": spec.build, "checks": spec.checks,
                "commits": [dataclasses.asdict(s) | {
                    "patches": [p.name for p in c.patches], "native": c.native, "fold": c.fold,
                    "files": sorted(c.files)} for s, c in zip(stats, commits)]}
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return stats, plots


def export(out: Path, topic: str = tmpl.SPLIT, run_ids: list[int] | None = None, db_path: Path | None = None,
           force: bool = False, template_path: Path | None = None, pristine: Path | None = None) -> ExportResult:
    """Export one topic (its commits on top of those of the topics it needs), the whole series (`all`),
    or every topic into its own directory (`split`, the default)."""
    out = out.resolve()
    _prepare_out(out, force)
    template = tmpl.load(template_path)
    topics = list(template.topics) if topic == tmpl.SPLIT else [topic]
    if topic not in (tmpl.SPLIT, tmpl.ALL):
        template.topic(topic)
    tmpl.plan(template, tmpl.ALL)   # the template covers the whole series, whatever is exported
    ev = evidence.load(db_path, run_ids)
    pristine = pristine or upstream.pristine_tree()
    series_names = upstream.read_series(tmpl.source_root() / "patches")

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}{atomic.PARTIAL_TAG}{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        all_stats: list[describe.CommitStats] = []
        plots: list[str] = []
        rows = 0
        runs: set[int] = set()
        if topic == tmpl.SPLIT:
            entries = []
            for n, name in enumerate(topics, 1):
                sub = f"{n:02d}-{name}"
                (staging / sub).mkdir()
                stats, topic_plots = _export_topic(staging / sub, template, name, ev, pristine, series_names)
                manifest = json.loads((staging / sub / MANIFEST).read_text())
                entries.append({"topic": name, "dir": sub, "needs": manifest["needs"],
                                "title": template.topic(name).title,
                                "commits": [s.subject for s in stats if s.topic == name]})
                all_stats += [s for s in stats if s.topic == name]
                plots += [f"{sub}/{p}" for p in topic_plots if p]
                rows += len(manifest["rows"])
                runs |= set(manifest["runs"])
            (staging / SPLIT_MANIFEST).write_text(json.dumps({"base": upstream.LLAMA_CPP_COMMIT,
                                                               "topics": entries}, indent=2) + "\n")
            (staging / "SPLIT.md").write_text(describe.render_split(entries))
            pr_md = str(out / "SPLIT.md")
        else:
            all_stats, topic_plots = _export_topic(staging, template, topic, ev, pristine, series_names)
            manifest = json.loads((staging / MANIFEST).read_text())
            plots = [p for p in topic_plots if p]
            rows, runs = len(manifest["rows"]), set(manifest["runs"])
            pr_md = str(out / "PR.md")
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.debug("exported %s to %s", topic, out)
    return ExportResult(out=str(out), topic=topic, base=upstream.LLAMA_CPP_COMMIT, commits=all_stats,
                        pr_md=pr_md, plots=plots, rows=rows, runs=sorted(runs))
