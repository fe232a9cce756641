"""pr/template.yaml: authorship, messages and the patch/native -> commit mapping."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import yaml

from .. import upstream
from ..errors import HifikitError


def source_root() -> Path:
    """The hifikit checkout the PR is made from (its patches/, native/, pr/ and docs/).

    An installed hifikit has no series of its own: HIFIKIT_SOURCE_DIR, the package's
    own checkout (an editable or in-tree run), or the checkout the command runs in.
    """
    explicit = os.environ.get("HIFIKIT_SOURCE_DIR")
    here = Path.cwd().resolve()
    for candidate in ([Path(explicit)] if explicit else [upstream.REPO_ROOT, here, *here.parents]):
        if (candidate / "patches" / "series").is_file() and (candidate / "pr" / "template.yaml").is_file():
            return candidate.resolve()
    where = f"HIFIKIT_SOURCE_DIR={explicit}" if explicit else f"{here} (or a folder above it)"
    raise HifikitError(f"{where} is not a hifikit source checkout (patches/series, pr/template.yaml): "
                       "run hifikit pr inside one, or set HIFIKIT_SOURCE_DIR")


def template_path() -> Path:
    return source_root() / "pr" / "template.yaml"


# the whole series in one export; every other topic name comes from the template
ALL = "all"
# one export per topic, in the template's order (the default of `pr export`)
SPLIT = "split"


@dataclasses.dataclass
class Topic:
    """One pull request of the split: its commits, the topics it builds on and what PR.md shows for it."""
    name: str
    title: str
    needs: list[str]
    summary: str
    measurements: str | None          # regex on model names: the eval rows this PR shows (None: none)
    docs: list[dict[str, str]]        # documents / sections quoted as evidence
    contributing: list[dict[str, str]]  # CONTRIBUTING.md's asks for this PR and where they stand
    gaps: list[str]
    build: list[str]                  # targets `pr check` builds
    checks: list[str]                 # the checks `pr check` runs


@dataclasses.dataclass
class PlannedCommit:
    subject: str
    body: str
    topic: str
    patches: list[upstream.Patch]
    native: list[str]                 # paths relative to native/ (= upstream paths), added as new files
    fold: list[str]                   # native fragments inlined at the line that #includes them
    files: dict[str, Path]            # export-only new files: upstream path -> source in this repo
    date: str

    @property
    def message(self) -> str:
        return f"{self.subject}\n\n{self.body.strip()}\n" if self.body.strip() else f"{self.subject}\n"


@dataclasses.dataclass
class Template:
    author_name: str
    author_email: str
    date: str
    motivation: str
    commits: list[dict[str, Any]]
    topics: dict[str, Topic]          # in stacking order
    local: list[str]                  # native files hifikit builds itself: never exported
    path: Path

    def topic(self, name: str) -> Topic:
        if name not in self.topics:
            raise HifikitError(f"unknown topic '{name}'; the template has {', '.join(self.topics)}, "
                               f"{ALL} and {SPLIT}")
        return self.topics[name]

    def closure(self, name: str) -> list[str]:
        """The topic and every topic it needs, in template order."""
        if name == ALL:
            return list(self.topics)
        wanted: set[str] = set()
        todo = [name]
        while todo:
            t = self.topic(todo.pop())
            if t.name not in wanted:
                wanted.add(t.name)
                todo += t.needs
        return [t for t in self.topics if t in wanted]

    def all_topic(self) -> Topic:
        """The whole series as one topic: every target and check of the others."""
        ts = list(self.topics.values())

        def merge(key: str) -> list:
            out: list = []
            for t in ts:
                out += [x for x in getattr(t, key) if x not in out]
            return out

        return Topic(name=ALL, title=ts[0].title, needs=[], summary="The whole series in one export.",
                     measurements=".", docs=merge("docs"), contributing=[], gaps=merge("gaps"),
                     build=merge("build"), checks=merge("checks"))


def _topic(name: str, data: dict[str, Any]) -> Topic:
    return Topic(name=name, title=data["title"], needs=list(data.get("needs") or []),
                 summary=data.get("summary", ""), measurements=data.get("measurements"),
                 docs=list(data.get("docs") or []), contributing=list(data.get("contributing") or []),
                 gaps=list(data.get("gaps") or []), build=list(data.get("build") or []),
                 checks=list(data.get("checks") or []))


def load(path: Path | None = None) -> Template:
    path = path or template_path()
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise HifikitError(f"cannot read the PR template {path}: {exc}") from exc
    try:
        topics = {name: _topic(name, spec) for name, spec in data["topics"].items()}
        template = Template(author_name=data["author"]["name"], author_email=data["author"]["email"],
                            date=str(data["date"]), motivation=data["motivation"], commits=list(data["commits"]),
                            topics=topics, local=list(data.get("local") or []), path=path)
    except (KeyError, TypeError, AttributeError) as exc:
        raise HifikitError(f"{path}: missing or malformed field {exc}") from exc
    for t in topics.values():
        if t.name in (ALL, SPLIT):
            raise HifikitError(f"{path}: '{t.name}' is reserved, not a topic name")
        earlier = list(topics)[:list(topics).index(t.name)]
        for need in t.needs:
            if need not in earlier:
                raise HifikitError(f"{path}: topic '{t.name}' needs '{need}', which is not a topic before it")
    return template


def _default_body(patches: list[upstream.Patch]) -> str:
    """The DEP-3 descriptions of the patches, without their summary lines."""
    parts = []
    for p in patches:
        body = "\n".join(p.header.get("Description", "").split("\n")[1:]).strip()
        if body:
            parts.append(body)
    return "\n\n".join(parts)


def _date(patches: list[upstream.Patch], default: str) -> str:
    days = sorted(p.header["Last-Update"] for p in patches if p.header.get("Last-Update"))
    return f"{days[-1]}T12:00:00+00:00" if days else default


def plan(template: Template, topic: str = ALL, patches_dir: Path | None = None,
         native_dir: Path | None = None) -> list[PlannedCommit]:
    """The commits of a topic and of the topics it needs, in series order; every patch and every native
    file that is not local is accounted for."""
    patches_dir = patches_dir or source_root() / "patches"
    native_dir = native_dir or source_root() / "native"
    wanted = set(template.closure(topic))
    series = upstream.load_series(patches_dir)
    by_subject = {p.description: p for p in series}
    if len(by_subject) != len(series):
        raise HifikitError("two patches of the series have the same Description summary line")
    natives = set(upstream.native_files(native_dir))
    for rel in template.local:
        if rel not in natives:
            raise HifikitError(f"{template.path}: local native/{rel} does not exist")
    used_patches: list[str] = []
    used_native: list[str] = list(template.local)
    planned: list[PlannedCommit] = []
    for spec in template.commits:
        subject = spec.get("subject")
        if not subject:
            raise HifikitError(f"{template.path}: a commit has no subject")
        if spec.get("topic") not in template.topics:
            raise HifikitError(f"{template.path}: commit '{subject}' has no topic of the template "
                               f"({', '.join(template.topics)})")
        patches = []
        for name in spec.get("patches") or []:
            if name not in by_subject:
                raise HifikitError(f"{template.path}: commit '{subject}' names patch '{name}', "
                                   "which is not in patches/series")
            patches.append(by_subject[name])
        native = list(spec.get("native") or [])
        fold = list(spec.get("fold") or [])
        for rel in native + fold:
            if rel not in natives:
                raise HifikitError(f"{template.path}: commit '{subject}' names native/{rel}, which does not exist")
        # a native file must be wired in by this commit (a patch or a sibling native file names it)
        sources = [(None, p.path.read_text()) for p in patches] + \
            [(r, (native_dir / r).read_text()) for r in native + fold]
        for rel in native + fold:
            base = Path(rel).name
            if not any(base in text for owner, text in sources if owner != rel):
                raise HifikitError(f"{template.path}: native/{rel} is in commit '{subject}', "
                                   f"but none of its patches or other files mention {base}")
        files = {dst: source_root() / src for dst, src in (spec.get("files") or {}).items()}
        for dst, src in files.items():
            if not src.is_file():
                raise HifikitError(f"{template.path}: commit '{subject}' adds {dst} from {src}, which does not exist")
        used_patches += [p.name for p in patches]
        used_native += native + fold
        if not (patches or native or fold or files):
            raise HifikitError(f"{template.path}: commit '{subject}' changes nothing")
        planned.append(PlannedCommit(subject=subject, body=spec.get("body") or _default_body(patches),
                                     topic=spec["topic"], patches=patches, native=native, fold=fold,
                                     files=files, date=_date(patches, template.date)))
    order = [p.name for p in series]
    if used_patches != order:
        missing = [n for n in order if n not in used_patches]
        if missing:
            raise HifikitError(f"{template.path} does not place these patches in a commit: {', '.join(missing)}")
        raise HifikitError(f"{template.path}: the commits must take the patches once each, in series order")
    if sorted(used_native) != sorted(natives):
        missing = sorted(natives - set(used_native))
        twice = sorted({n for n in used_native if used_native.count(n) > 1})
        raise HifikitError(f"{template.path}: native files not in exactly one commit (or local): "
                           f"{', '.join(missing + twice)}")
    # the topics stack: a topic's commits come after those of the topics before it
    ranks = [list(template.topics).index(c.topic) for c in planned]
    if ranks != sorted(ranks):
        raise HifikitError(f"{template.path}: the commits of a topic must follow those of the topics before it")
    return [c for c in planned if c.topic in wanted]
