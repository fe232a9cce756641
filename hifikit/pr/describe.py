"""PR.md: the pull request description, built from the template, the series and the runs database."""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
from pathlib import Path

from .. import upstream
from .evidence import METRICS, Evidence, EvalRow, pareto
from . import template as tmpl
from .template import PlannedCommit, Template, Topic

CHECK_BEGIN = "<!-- pr-check:begin -->"
CHECK_END = "<!-- pr-check:end -->"

# decimals per metric; a value and its ± use the same
DECIMALS = {"size_mib": 2, "bpw": 3, "ppl": 4, "kld_mean": 6, "kld_p99.0": 6, "same_top_p": 3}
HEADERS = {"size_mib": "size MiB", "bpw": "bpw", "ppl": "PPL", "kld_mean": "KLD mean", "kld_p99.0": "KLD p99",
           "same_top_p": "same top p %"}
MISSING = "—"


@dataclasses.dataclass
class CommitStats:
    subject: str
    sha: str
    patch_file: str
    files: int
    insertions: int
    deletions: int
    topic: str = ""


def fmt(metric: str, value: float | None, error: float | None = None) -> str:
    if value is None:
        return MISSING
    d = DECIMALS.get(metric, 4)
    text = f"{value:.{d}f}"
    return f"{text} ± {error:.{d}f}" if error is not None else text


def section(path: Path, heading: str | None) -> str | None:
    """The text under a heading that starts with `heading` (up to the next heading of its level or above)."""
    if not path.is_file():
        return None
    lines = path.read_text().splitlines()
    if heading is None:
        body = [l for l in lines if not l.startswith("# ")]
        return "\n".join(body).strip()
    for i, line in enumerate(lines):
        if line.startswith(heading):
            level = len(line) - len(line.lstrip("#"))
            end = next((j for j in range(i + 1, len(lines))
                        if re.match(r"^#{1,%d} " % level, lines[j])), len(lines))
            return "\n".join(lines[i:end]).strip()
    return None


def _demote(text: str, levels: int) -> str:
    return re.sub(r"^(#+) ", lambda m: "#" * min(6, len(m.group(1)) + levels) + " ", text, flags=re.MULTILINE)


def block_layouts() -> str:
    text = section(tmpl.source_root() / "docs" / "hifi-types.md", "## Block layout")
    if not text:
        return "(docs/hifi-types.md has no block layout section)"
    # only the layout itself: stop before the first subsection
    body = text.split("\n", 1)[1].split("\n### ", 1)[0]
    # hifikit's patch numbers mean nothing upstream
    return re.sub(r",? (?:\(?patch \d{4}\)?)", "", body).strip()


def quoted(docs: list[dict[str, str]]) -> str:
    """The documents / sections a topic quotes; each one that is missing is said to be."""
    parts = []
    for src in docs:
        text = section(tmpl.source_root() / src["doc"], src.get("section"))
        where = f"`{src['doc']}`" + (f", section `{src['section'].lstrip('# ')}`" if src.get("section") else "")
        parts.append(f"From hifikit's {where}:\n\n{_demote(text, 1)}" if text else f"{where}: not found.")
    return "\n\n".join(parts) if parts else "None quoted."


def _when(t: float | None) -> str:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC") if t else "unfinished"


def _table(rows: list[EvalRow]) -> str:
    front = pareto(rows)
    refs = sorted({r.ref for r in rows if r.ref})
    head = ["model", "run/step", *[HEADERS[m] for m in METRICS], "Pareto"]
    if len(refs) > 1:
        head.insert(2, "KLD reference")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [f"`{r.label}`" + (" (reference)" if r.kind == "kld-base" else ""), f"{r.run_id}/{r.step_id}",
                 *[fmt(m, *r.metrics.get(m, (None, None))) for m in METRICS],
                 "yes" if r.step_id in front else ""]
        if len(refs) > 1:
            cells.insert(2, f"`{Path(r.ref).name}`" if r.ref else MISSING)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def measurements(ev: Evidence, plots: list[str | None], series_names: list[str]) -> str:
    if not ev.rows:
        return f"No eval measurements in the runs database (`{ev.db_path}`): nothing is claimed here."
    out = ["All figures below are read from the hifikit runs database; `run/step` names the run and step "
           "that measured them. KLD is the mean KL divergence of the token distributions against the "
           "reference model's, over the same text (llama-perplexity `--kl-divergence`); "
           "a Pareto row is not beaten on both size and mean KLD by another row of its table."]
    for n, (rows, plot) in enumerate(zip(ev.setups(), plots), 1):
        first = rows[0]
        refs = sorted({Path(r.ref).name for r in rows if r.ref})
        out.append(f"### Setup {n}: `{Path(first.text or '?').name}`, ctx {first.ctx}, "
                   f"{first.chunks if first.chunks is not None else 'all'} chunks"
                   + (f", KLD against `{refs[0]}`" if len(refs) == 1 else ""))
        out.append(_table(rows))
        if plot:
            out.append(f"![size vs mean KLD, setup {n}]({plot})")
    out.append("### Commands and versions")
    for run in ev.runs.values():
        v = run.versions or {}
        patches = v.get("patches") or []
        same = "the exported series" if list(patches) == series_names else \
            f"{len(patches)} patches: {', '.join(patches) or 'none'} (not the exported series)"
        out.append(f"- run {run.id}: `hifikit {run.command}` ({run.status}, {_when(run.finished)}), "
                   f"hifikit {v.get('hifikit', '?')}, llama.cpp {str(v.get('llama_cpp_commit', '?'))[:12]}, "
                   f"patches: {same}; build: `{json.dumps(v.get('build', {}), sort_keys=True)}`\n"
                   f"  ```json\n  {json.dumps(run.args, sort_keys=True)}\n  ```")
    return "\n\n".join(out)


def series_table(stats: list[CommitStats], topic: str | None = None) -> str:
    """The commits; with a topic, those of the topics it needs are marked and left out of the total."""
    lines = ["| # | commit | PR | files | + | - |", "|---:|---|---|---:|---:|---:|"]
    own = [s for s in stats if topic in (None, tmpl.ALL) or s.topic == topic]
    for n, s in enumerate(stats, 1):
        pr = "this one" if s in own else f"`{s.topic}` (needed)"
        lines.append(f"| {n} | {s.subject} | {pr} | {s.files} | {s.insertions} | {s.deletions} |")
    lines.append(f"| | total of this PR | | {sum(s.files for s in own)} | {sum(s.insertions for s in own)} | "
                 f"{sum(s.deletions for s in own)} |")
    return "\n".join(lines)


def contributing(spec: Topic, ev: Evidence) -> str:
    """CONTRIBUTING.md's asks for this PR, each with where it stands (the template's words), and the
    measured rows this export holds."""
    if not spec.contributing:
        return "Nothing beyond the general asks (tests, CI) applies to this PR."
    models = sorted({r.label for r in ev.rows if r.kind != "kld-base"})
    lines = ["| CONTRIBUTING.md asks | here |", "|---|---|"]
    for item in spec.contributing:
        lines.append(f"| {item['ask']} | {item['status'].strip()} |")
    counted = (f"The runs database holds {len(ev.rows)} rows for this PR ({len(models)} quantized models, "
               f"{len(ev.setups())} evaluation setups)." if ev.rows else
               "The runs database holds no rows for this PR: nothing is claimed in its Measurements section.")
    return "\n".join(lines) + "\n\n" + counted


def tests_planned(checks: list[str]) -> str:
    """The checks `hifikit pr check` runs (check.planned_checks), and the place their results go."""
    names = "\n".join(f"- {c}" for c in checks)
    return (f"`hifikit pr check` applies this series with `git am` to a fresh tree at the base commit, "
            f"builds it and runs:\n\n{names}\n\n{CHECK_BEGIN}\nNot run yet for this export.\n{CHECK_END}")


def render(template: Template, spec: Topic, commits: list[PlannedCommit], stats: list[CommitStats],
           ev: Evidence, plots: list[str | None], series_names: list[str], checks: list[str]) -> str:
    gaps = "\n".join(f"- {g}" for g in spec.gaps) or "- none listed"
    needs = [t for t in template.closure(spec.name) if t != spec.name] if spec.name != tmpl.ALL else []
    own = [c for c in commits if spec.name == tmpl.ALL or c.topic == spec.name]
    stack = (f"Builds on: {', '.join(f'`{t}`' for t in needs)} (the PRs before it; their commits come first "
             "in the series below and in `patches/`)." if needs else "Builds on: the base commit only.")
    layouts = f"\n## Block layouts\n\n{block_layouts()}\n" if any(c.topic == "cpu" for c in own) else ""
    return f"""# {spec.title}

Base: llama.cpp `{upstream.LLAMA_CPP_COMMIT}`; topic `{spec.name}`: {len(own)} commits. {stack}

{spec.summary.strip()}

## Motivation

{template.motivation.strip()}
{layouts}
## Commits

{series_table(stats, spec.name)}

## What CONTRIBUTING.md asks of this PR

{contributing(spec, ev)}

## Measurements

{measurements(ev, plots, series_names)}

## Other evidence

{quoted(spec.docs)}

## Tests

{tests_planned(checks)}

## Known gaps

{gaps}
"""


def render_split(entries: list[dict]) -> str:
    """SPLIT.md: the pull requests of the split, in the order they are sent."""
    lines = ["# The HIFI series as pull requests", "",
             f"Base: llama.cpp `{upstream.LLAMA_CPP_COMMIT}`. One directory per PR, each a complete export "
             "(`llama.cpp/`, `patches/`, `PR.md`); a PR's `patches/` start with those of the PRs it builds on.",
             "", "| # | topic | directory | builds on | its commits |", "|---:|---|---|---|---|"]
    for n, e in enumerate(entries, 1):
        lines.append(f"| {n} | `{e['topic']}` | `{e['dir']}/` | {', '.join(e['needs']) or 'the base commit'} | "
                     f"{'; '.join(e['commits'])} |")
    return "\n".join(lines) + "\n"


def with_check_results(pr_md: str, results_md: str) -> str:
    """PR.md with the block between the pr-check markers replaced."""
    start, end = pr_md.find(CHECK_BEGIN), pr_md.find(CHECK_END)
    if start < 0 or end < start:
        return pr_md.rstrip("\n") + f"\n\n## Check results\n\n{CHECK_BEGIN}\n{results_md}\n{CHECK_END}\n"
    return pr_md[:start + len(CHECK_BEGIN)] + "\n" + results_md.strip() + "\n" + pr_md[end:]
