"""`hifikit pr export` / `pr check` and tools/rebase-series.

The export is made once per module (about 20 s: a copy of the ~3700-file pristine
tree and one git commit per logical change); nothing here builds llama.cpp.
"""
from __future__ import annotations

import filecmp
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import run_hifikit
from hifikit import db, upstream
from hifikit.errors import HifikitError
from hifikit.pr import check as pr_check
from hifikit.pr import describe, editorconfig, evidence, export, gitrepo
from hifikit.pr import template as tmpl

REPO = Path(__file__).resolve().parent.parent
PATCHES, NATIVE = REPO / "patches", REPO / "native"


# ----------------------------------------------------------------- a runs database with known figures

def _run(conn, command: str, status: str, args: dict, patches: list[str]) -> int:
    versions = {"hifikit": "0.1.0", "llama_cpp_commit": upstream.LLAMA_CPP_COMMIT, "patches": patches,
                "build": {"GGML_CUDA": False}}
    cur = conn.execute("INSERT INTO runs (command, args, versions, status, run_dir, started, finished) "
                       "VALUES (?,?,?,?,?,?,?)", (command, json.dumps(args), json.dumps(versions), status, "/tmp",
                                                  time.time(), time.time() if status == "done" else None))
    return cur.lastrowid


def _step(conn, run_id: int, idx: int, kind: str, spec: dict, metrics: dict, ctx: int | None = 512,
          text_sha: str = "t" * 64) -> int:
    cur = conn.execute("INSERT INTO steps (run_id, idx, name, kind, spec, status) VALUES (?,?,?,?,?,?)",
                       (run_id, idx, f"{kind}-{idx}", kind, json.dumps(spec), "done"))
    model = spec.get("model") or spec.get("ref") or spec.get("input")
    db.add_measurements(conn, run_id, cur.lastrowid, [
        db.Measurement(metric, *(v if isinstance(v, tuple) else (v, None)), model=model,
                       model_sha256=Path(model).name, text="/data/eval.txt", text_sha256=text_sha,
                       ctx=ctx, chunks=8 if ctx else None)
        for metric, v in metrics.items()])
    return cur.lastrowid


@pytest.fixture(scope="module")
def runs_db(tmp_path_factory) -> tuple[Path, dict]:
    path = tmp_path_factory.mktemp("db") / "runs.db"
    conn = db.connect(path)
    series = upstream.read_series(PATCHES)
    ref = "/m/ref-f16.gguf"
    ids: dict = {}
    r1 = _run(conn, "compare", "done", {"ref": ref, "quant": ["Q4_K_M", "Q3_K_HIFI"]}, series)
    ids["ref"] = _step(conn, r1, 0, "kld-base", {"ref": ref}, {"ppl": (10.123456, 0.201234)})
    _step(conn, r1, 1, "quantize", {"input": ref}, {"size_mib": 111.0, "bpw": 9.99}, ctx=None)
    ids["old_a"] = _step(conn, r1, 2, "eval", {"model": "/m/a-Q4_K_M.gguf", "ref": ref},
                         {"size_mib": 100.125, "bpw": 4.87654, "ppl": (10.55555, 0.31111), "kld_mean": (0.0123456, 0.000321),
                          "kld_p99.0": 0.0987654, "same_top_p": (93.2109, 0.2511)})
    ids["b"] = _step(conn, r1, 3, "eval", {"model": "/m/b-Q3_K_HIFI.gguf", "ref": ref},
                     {"size_mib": 90.5, "bpw": 4.1234, "ppl": (11.7777, 0.4444), "kld_mean": (0.0456789, 0.0012345),
                      "kld_p99.0": 0.3456789, "same_top_p": (88.8888, 0.3333)})
    ids["pure"] = _step(conn, r1, 4, "eval", {"model": "/m/d-pure-Q4_K_HIFI.gguf", "ref": ref},
                        {"size_mib": 105.25, "bpw": 5.25, "ppl": (10.33333, 0.30001), "kld_mean": (0.0099999, 0.000222)})
    r2 = _run(conn, "eval", "done", {"model": "/m/a-Q4_K_M.gguf", "ref": ref}, series[:1])
    ids["a"] = _step(conn, r2, 0, "eval", {"model": "/m/a-Q4_K_M.gguf", "ref": ref},
                     {"size_mib": 100.125, "bpw": 4.87654, "ppl": (10.44444, 0.30303), "kld_mean": (0.0111111, 0.000299),
                      "kld_p99.0": 0.0876543, "same_top_p": (93.5555, 0.2422)})
    ids["other_setup"] = _step(conn, r2, 1, "eval", {"model": "/m/a-Q4_K_M.gguf"},
                               {"size_mib": 100.125, "ppl": (12.3456, 0.5678)}, ctx=256)
    r3 = _run(conn, "eval", "running", {"model": "/m/c-Q6_K.gguf", "ref": ref}, series)
    ids["running"] = _step(conn, r3, 0, "eval", {"model": "/m/c-Q6_K.gguf", "ref": ref},
                           {"size_mib": 150.75, "ppl": (10.2, 0.2), "kld_mean": (0.00321, 0.0001)})
    ids["runs"] = (r1, r2, r3)
    conn.close()
    return path, ids


@pytest.fixture(scope="module")
def exported(pristine, runs_db, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "pr"
    export.export(out, "all", db_path=runs_db[0], pristine=pristine)
    return out


# ----------------------------------------------------------------- the series as upstream commits

def _files(root: Path, skip: set[str]) -> set[str]:
    found = set()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != ".git"]
        for name in filenames:
            rel = os.path.relpath(os.path.join(dirpath, name), root)
            if rel not in skip:
                found.add(rel)
    return found


def test_git_am_of_the_export_reproduces_the_package_tree(exported, pristine, tmp_path):
    """pr check's `git am` on a fresh pristine copy gives, byte for byte, the tree the package builds."""
    report = pr_check.check(exported, tmp_path / "check", build=False)
    by_name = {c.name: c for c in report.checks}
    assert by_name["git-am"].status == "pass", by_name["git-am"].summary
    assert "= the exported repository's" in by_name["git-am"].summary
    assert by_name["diff-check"].status == "pass"
    assert by_name["editorconfig"].status == "pass", by_name["editorconfig"].summary
    assert by_name["build"].status == "skip" and report.ok
    applied = tmp_path / "check" / "llama.cpp"

    prepared = tmp_path / "prepared"
    upstream.build_patched_tree(prepared, PATCHES, NATIVE, pristine)
    template = tmpl.load()
    planned = tmpl.plan(template, "all")
    extra = {dst: src for c in planned for dst, src in c.files.items()}
    assert extra, "the template's docs commit adds an upstream-facing file"
    # the export folds each fragment into the upstream file that includes it, and leaves hifikit's own tools out
    folds = [rel for c in planned for rel in c.fold]
    assert "ggml/src/ggml-quants-hifi.inc" in folds
    for rel in folds:
        include = f'#include "{Path(rel).name}"\n'
        target = next(f for f in _files(prepared, set()) if f.endswith((".c", ".cpp", ".h"))
                      and include in (prepared / f).read_text(errors="replace"))
        (prepared / target).write_text((prepared / target).read_text().replace(include, (prepared / rel).read_text()))
        (prepared / rel).unlink()
    want = _files(prepared, {upstream.MANIFEST_NAME})
    got = _files(applied, set())
    assert got - want == set(extra)
    # the template's local native files are built by this project only, never exported
    local = set(tmpl.load().local)
    assert want - got == local
    for rel in sorted(want - local):
        a, b = prepared / rel, applied / rel
        if a.is_symlink() or b.is_symlink():
            assert os.readlink(a) == os.readlink(b), rel
        else:
            assert filecmp.cmp(a, b, shallow=False), f"{rel} differs from the package's prepared tree"
    for rel, src in extra.items():
        assert (applied / rel).read_bytes() == src.read_bytes()
    # and PR.md now carries the check results
    assert "| git-am | pass |" in (exported / "PR.md").read_text()


def test_export_commits_follow_the_template(exported):
    template = tmpl.load()
    manifest = json.loads((exported / "export.json").read_text())
    repo = exported / "llama.cpp"
    subjects = gitrepo.out(repo, "log", "--reverse", "--format=%s", f"{gitrepo.PRISTINE_TAG}..HEAD").splitlines()
    assert subjects == [c["subject"] for c in template.commits]
    authors = set(gitrepo.out(repo, "log", "--format=%an <%ae>").splitlines())
    assert authors == {f"{template.author_name} <{template.author_email}>"}
    # one format-patch file per commit, and each native file arrives in the commit that wires it in
    assert len(list((exported / "patches").glob("*.patch"))) == len(subjects) == len(manifest["commits"])
    for c in manifest["commits"]:
        added = gitrepo.out(repo, "show", "--name-only", "--diff-filter=A", "--format=", c["sha"]).split()
        assert sorted(added) == sorted(c["native"] + c["files"])
        assert c["files"] + c["native"] == [] or c["insertions"] > 0
        # a folded fragment is not a file of the export: its code is in the file that included it
        for rel in c["fold"]:
            assert not (repo / rel).exists()
            assert f'#include "{Path(rel).name}"' not in gitrepo.out(repo, "show", c["sha"])
    # upstream style: subjects are "area : change", no hifikit DEP-3 trailers in the messages
    bodies = gitrepo.out(repo, "log", "--format=%B", f"{gitrepo.PRISTINE_TAG}..HEAD")
    # upstream names one area, or several as "a, b : ..."
    assert all(re.match(r"^[a-zA-Z-]+(, [a-zA-Z-]+)* : \S", s) for s in subjects)
    assert "Origin: vendor" not in bodies and "Forwarded:" not in bodies


def test_topics_stack_and_apply_on_their_own(pristine, tmp_path):
    """Each PR of the split is its own commits on top of those of the PRs it needs; each applies strictly."""
    template = tmpl.load()
    series = upstream.load_series(PATCHES)
    assert list(template.topics) == ["cpu", "cuda", "gguf-py", "ftypes", "tools", "amx"]
    seen = {}
    for topic in template.topics:
        commits = tmpl.plan(template, topic)
        seen[topic] = commits
        patches = [p for c in commits for p in c.patches]
        # in series order, and exactly the patches of the topic and the topics it needs
        assert [p.name for p in patches] == [p.name for p in series if p in patches], topic
        tree = tmp_path / topic
        for fp in {f.path for p in patches for f in p.files}:
            (tree / fp).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(pristine / fp, tree / fp)
        for p in patches:
            upstream.apply_patch(tree, p)
    areas = {topic: {c.subject.split(" : ")[0] for c in commits if c.topic == topic}
             for topic, commits in seen.items()}
    assert areas["cpu"] == {"ggml", "ggml-cpu", "tests", "metal", "sycl"}
    assert areas["cuda"] == {"CUDA"} and areas["gguf-py"] == {"gguf-py"}
    assert areas["ftypes"] == {"llama", "quantize", "docs"} and areas["tools"] == {"perplexity, imatrix"}
    assert areas["amx"] == {"ggml-cpu"}
    # the CPU PR carries no CUDA, gguf-py or llama code; the tool fix none of the HIFI code
    cpu_files = {f.path for c in seen["cpu"] for p in c.patches for f in p.files}
    assert not any(f.startswith(("ggml/src/ggml-cuda/", "gguf-py/", "src/", "tools/")) for f in cpu_files)
    assert {c.topic for c in seen["tools"]} == {"tools"} and [c.topic for c in seen["amx"]] == ["amx"]
    assert {c.topic for c in seen["cuda"]} == {"cpu", "cuda"} and {c.topic for c in seen["ftypes"]} == {"cpu", "ftypes"}
    # hifikit's own tools are in no PR
    assert not any(rel.startswith("tools/sensitivity/") for c in tmpl.plan(template, "all") for rel in c.native + c.fold)


def _template_copy(tmp_path: Path, edit) -> Path:
    data = yaml.safe_load(tmpl.template_path().read_text())
    edit(data)
    path = tmp_path / "template.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_template_local_native_files_stay_out_of_the_pr(tmp_path):
    template = tmpl.load()
    assert "tools/costs/costs.cpp" in template.local
    assert not any(n in template.local for c in tmpl.plan(template, "all") for n in c.native)

    def unlist(d):  # a local file is still a native file: without the list it must be in a commit
        d["local"] = []
    with pytest.raises(HifikitError, match="tools/costs/costs.cpp"):
        tmpl.plan(tmpl.load(_template_copy(tmp_path, unlist)))

    def missing(d):
        d["local"].append("tools/nope/nope.cpp")
    with pytest.raises(HifikitError, match="local native/tools/nope/nope.cpp does not exist"):
        tmpl.plan(tmpl.load(_template_copy(tmp_path, missing)))


def test_template_must_place_every_patch_and_native_file(tmp_path):
    def drop_patch(d):
        d["commits"][2]["patches"] = []
        d["commits"][2]["files"] = {"docs/x.md": "pr/docs/hifi-quants.md"}
    with pytest.raises(HifikitError, match="does not place these patches"):
        tmpl.plan(tmpl.load(_template_copy(tmp_path, drop_patch)))

    def drop_native(d):
        d["commits"][0]["fold"] = []
    with pytest.raises(HifikitError, match="ggml-quants-hifi.inc"):
        tmpl.plan(tmpl.load(_template_copy(tmp_path, drop_native)))

    def drop_local(d):
        d["local"] = []
    with pytest.raises(HifikitError, match="sensitivity"):
        tmpl.plan(tmpl.load(_template_copy(tmp_path, drop_local)))

    def misplace_native(d):  # the CUDA file in the ggml commit: no patch of that commit mentions it
        d["commits"][0]["native"] = [d["commits"][5]["native"].pop()]
    with pytest.raises(HifikitError, match="mention dequantize-hifi.cuh"):
        tmpl.plan(tmpl.load(_template_copy(tmp_path, misplace_native)))

    def topic_out_of_order(d):  # a CPU commit after the CUDA ones
        d["commits"][4]["topic"] = "cuda"
        d["commits"][5]["topic"] = "cpu"
    with pytest.raises(HifikitError):
        tmpl.plan(tmpl.load(_template_copy(tmp_path, topic_out_of_order)))

    def swap(d):
        d["commits"][0], d["commits"][1] = d["commits"][1], d["commits"][0]
    with pytest.raises(HifikitError, match="series order"):
        tmpl.plan(tmpl.load(_template_copy(tmp_path, swap)))


# ----------------------------------------------------------------- the split: one export per PR

@pytest.fixture(scope="module")
def split(pristine, runs_db, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("split") / "prs"
    export.export(out, db_path=runs_db[0], pristine=pristine)   # the default: --topic split
    return out


def test_split_has_one_export_per_pr(split, exported, runs_db):
    template = tmpl.load()
    index = json.loads((split / "split.json").read_text())
    assert [e["topic"] for e in index["topics"]] == list(template.topics)
    assert [e["dir"] for e in index["topics"]] == [f"{n:02d}-{t}" for n, t in enumerate(template.topics, 1)]
    all_subjects = gitrepo.out(exported / "llama.cpp", "log", "--reverse", "--format=%s",
                               f"{gitrepo.PRISTINE_TAG}..HEAD").splitlines()
    own_total = []
    for e in index["topics"]:
        d, topic = split / e["dir"], template.topic(e["topic"])
        manifest = json.loads((d / "export.json").read_text())
        assert manifest["checks"] == topic.checks and manifest["build"] == topic.build
        assert manifest["needs"] == [t for t in template.closure(topic.name) if t != topic.name]
        subjects = gitrepo.out(d / "llama.cpp", "log", "--reverse", "--format=%s", f"{gitrepo.PRISTINE_TAG}..HEAD").splitlines()
        assert len(list((d / "patches").glob("*.patch"))) == len(subjects)
        # the same commits (ids) as in the whole-series export, for what the PR shares with it
        own = [c["subject"] for c in manifest["commits"] if c["topic"] == topic.name]
        assert own == e["commits"] and own
        own_total += own
        pr_md = (d / "PR.md").read_text()
        assert pr_md.startswith(f"# {topic.title}\n")
        assert "## What CONTRIBUTING.md asks of this PR" in pr_md and "## Known gaps" in pr_md
        for gap in topic.gaps:
            assert gap in pr_md
        for s in own:
            assert f"| {s} | this one |" in pr_md
    assert sorted(own_total) == sorted(all_subjects)
    cpu = (split / "01-cpu" / "PR.md").read_text()
    for needle in ("Metal", "Vulkan", "ARM", "Type ids 128-131 are provisional", "CPU support only in the first PR"):
        assert needle in cpu
    assert "rerun" in (split / "02-cuda" / "PR.md").read_text()
    # each PR shows its own evidence: the pure-type rows in the CPU PR, the ftype rows in the ftypes PR
    db_path, ids = runs_db
    assert _check_tables(cpu, db_path) == {ids["ref"], ids["pure"]}
    assert _check_tables((split / "04-ftypes" / "PR.md").read_text(), db_path) == \
        {ids["ref"], ids["b"], ids["a"], ids["other_setup"]}
    assert "No eval measurements" in (split / "05-tools" / "PR.md").read_text()


def test_pr_check_on_the_split(split, tmp_path):
    """Every PR of the split applies with `git am` on the base tree, the ones it needs first (--no-build)."""
    report = pr_check.check(split, tmp_path / "check", build=False)
    by_name = {c.name: c for c in report.checks}
    for topic in tmpl.load().topics:
        am = by_name[f"{topic}/git-am"]
        assert am.status == "pass" and "= the exported repository's" in am.summary, am.summary
        assert by_name[f"{topic}/editorconfig"].status == "pass"
    assert "kept from the topic before" in by_name["cuda/git-am"].summary
    assert by_name["cuda/test-backend-ops-cuda"].status == "skip"
    assert report.ok
    assert json.loads((split / "03-gguf-py" / "check.json").read_text())["ok"]


# ----------------------------------------------------------------- PR.md: only figures from the database

def _measurement_tables(pr_md: str) -> list[tuple[list[str], list[list[str]]]]:
    section = pr_md.split("## Measurements", 1)[1].split("\n## ", 1)[0]
    tables, current = [], None
    for line in section.splitlines():
        if line.startswith("| model |"):
            current = ([c.strip() for c in line.strip("|").split("|")], [])
            tables.append(current)
        elif line.startswith("|---"):
            continue
        elif line.startswith("| ") and current:
            current[1].append([c.strip() for c in line.strip("|").split("|")])
        else:
            current = None
    return tables


def _matches(text: str, value: float | None) -> bool:
    if value is None:
        return False
    decimals = len(text.split(".")[1]) if "." in text else 0
    return abs(float(text) - value) <= 0.5 * 10 ** -decimals + 1e-12


def _check_tables(pr_md: str, db_path: Path) -> set[int]:
    conn = sqlite3.connect(db_path)
    metric_of = {v: k for k, v in describe.HEADERS.items()}
    steps = set()
    tables = _measurement_tables(pr_md)
    assert tables
    for header, rows in tables:
        for row in rows:
            cells = dict(zip(header, row))
            run_id, step_id = map(int, cells["run/step"].split("/"))
            steps.add(step_id)
            stored = {m: (v, e) for m, v, e in conn.execute(
                "SELECT metric, value, error FROM measurements WHERE run_id=? AND step_id=?", (run_id, step_id))}
            assert stored, f"row {cells['model']} names run/step {run_id}/{step_id}, which has no measurements"
            for head, cell in cells.items():
                if head not in metric_of:
                    continue
                metric = metric_of[head]
                if cell == describe.MISSING:
                    assert metric not in stored or stored[metric][0] is None, (head, cells["model"])
                    continue
                numbers = re.findall(r"-?\d+(?:\.\d+)?", cell)
                assert metric in stored, f"{head} of {cells['model']} is not in the database"
                value, error = stored[metric]
                assert _matches(numbers[0], value), (head, cell, value)
                if len(numbers) > 1:
                    assert _matches(numbers[1], error), (head, cell, error)
                else:
                    assert error is None, (head, cell, error)
    return steps


def test_pr_md_shows_only_figures_from_the_database(exported, runs_db):
    db_path, ids = runs_db
    pr_md = (exported / "PR.md").read_text()
    shown = _check_tables(pr_md, db_path)
    # the latest finished eval per model and setup: not the superseded one, not the running run
    assert shown == {ids["ref"], ids["b"], ids["a"], ids["other_setup"], ids["pure"]}
    assert "c-Q6_K" not in pr_md
    # the commands and versions of the runs shown, and the runs measured with another series say so
    r1, r2, _ = ids["runs"]
    assert f"- run {r1}: `hifikit compare`" in pr_md and f"- run {r2}: `hifikit eval`" in pr_md
    assert "(not the exported series)" in pr_md.split(f"- run {r2}:", 1)[1]
    assert (exported / "pareto-1.png").is_file()


def test_explicit_runs_select_their_measurements(runs_db):
    db_path, ids = runs_db
    ev = evidence.load(db_path, [ids["runs"][2]])
    assert [r.step_id for r in ev.rows] == [ids["running"]]
    with pytest.raises(HifikitError, match="no run 999"):
        evidence.load(db_path, [999])


def test_pareto_front():
    def row(step, size, kld):
        return evidence.EvalRow(1, step, "eval", f"m{step}", None, None, None, 512, 8, None,
                                {"size_mib": (size, None), "kld_mean": (kld, None)}, step)
    rows = [row(1, 100, 0.1), row(2, 110, 0.05), row(3, 120, 0.06), row(4, 90, 0.2), row(5, 100, 0.1)]
    assert evidence.pareto(rows) == {1, 2, 4, 5}


# ----------------------------------------------------------------- pr check: failures are reported

def test_check_reports_a_patch_that_does_not_apply(exported, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(exported / "patches", broken / "patches")
    first = sorted((broken / "patches").glob("*.patch"))[0]
    first.write_text(first.read_text().replace("GGML_TYPE_COUNT   = 43", "GGML_TYPE_COUNT   = 44", 1))
    proc = run_hifikit("pr", "check", broken, "--no-build", "--json", check=False)
    assert proc.returncode == 1, proc.stderr
    report = json.loads(proc.stdout)
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["git-am"]["status"] == "fail" and "git am stopped" in checks["git-am"]["summary"]
    assert all(checks[n]["status"] == "skip" for n in ("diff-check", "build", "test-backend-ops"))


def test_editorconfig_rules(pristine, tmp_path):
    shutil.copyfile(pristine / ".editorconfig", tmp_path / ".editorconfig")
    shutil.copyfile(pristine / ".ecrc", tmp_path / ".ecrc")
    (tmp_path / "ok.c").write_text("int main(void) {\n    return 0;\n}\n")
    (tmp_path / "bad.c").write_bytes(b"int x; \r\n\tint y;\nint z;")
    (tmp_path / "Makefile").write_text("all:\n\techo ok\n")
    (tmp_path / "stb_image.h").write_text("excluded by .ecrc \n")
    found = editorconfig.check(tmp_path, ["ok.c", "bad.c", "Makefile", "stb_image.h"])
    rules = sorted((v.path, v.line, v.rule) for v in found)
    assert rules == [("bad.c", 1, "end_of_line"), ("bad.c", 1, "trim_trailing_whitespace"),
                     ("bad.c", 2, "indent_style"), ("bad.c", 3, "insert_final_newline")]


# ----------------------------------------------------------------- tools/rebase-series

def _rewrite(tree: Path, rel: str, old: str, new: str) -> None:
    path = tree / rel
    text = path.read_text()
    assert old in text, (rel, old)
    path.unlink()   # the tree is hard-linked to the pristine cache: never write through the link
    path.write_text(text.replace(old, new, 1))


def test_rebase_series_on_a_newer_tree(pristine, tmp_path):
    series = upstream.load_series(PATCHES)

    def touching(rel: str) -> upstream.Patch:
        return next(p for p in series if any(f.path == rel for f in p.files))

    shifted, conflicting, merged = (touching("tests/test-quantize-fns.cpp"), touching("gguf-py/gguf/gguf_reader.py"),
                                    touching("ggml/include/ggml.h"))
    newer = tmp_path / "newer"
    shutil.copytree(pristine, newer, copy_function=os.link)
    qfns = (newer / "tests/test-quantize-fns.cpp").read_text()
    _rewrite(newer, "tests/test-quantize-fns.cpp", qfns[:20], "// two new lines\n// upstream\n" + qfns[:20])
    # the same line our patch changes: a conflict
    _rewrite(newer, "gguf-py/gguf/gguf_reader.py", "from gguf.constants import (", "from gguf.constants import (  # x")
    # a context line 3 lines from our change: `git apply` refuses, a 3-way merge does not
    hunk = merged.files[0].hunks[0]
    _rewrite(newer, merged.files[0].path, hunk.old_lines[0].decode(), hunk.old_lines[0].decode().rstrip() + " // newer\n")

    work = tmp_path / "work"
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "rebase-series"), str(newer), str(work), "--json"],
                          capture_output=True, text=True)
    assert proc.returncode == 1, proc.stderr
    report = json.loads(proc.stdout)
    status = {p["name"]: p for p in report["patches"]}
    assert status[merged.name]["status"] == "applies with 3-way merge"
    assert status[shifted.name]["status"] == "applies with offset"
    assert "tests/test-quantize-fns.cpp hunk 1" in status[shifted.name]["detail"]
    assert "(+2)" in status[shifted.name]["detail"]
    assert status[conflicting.name]["status"] == "fails"
    assert status[conflicting.name]["files"] == ["gguf-py/gguf/gguf_reader.py"]
    stop = [p.name for p in series].index(conflicting.name)
    for p in series[:stop]:
        if p.name not in (merged.name, shifted.name):
            assert status[p.name]["status"] == "applies", p.name
    assert all(status[p.name]["status"] == "not tried" for p in series[stop + 1:])
    assert report["native"] is None and not report["ok"]
    # the work tree: the applied commits on the newer base, the failing cherry-pick stopped with conflict markers
    assert gitrepo.out(work, "rev-list", "--count", "pristine..HEAD").strip() == str(stop)
    assert (work / ".git" / "CHERRY_PICK_HEAD").is_file()
    assert "<<<<<<<" in (work / "gguf-py/gguf/gguf_reader.py").read_text()
    # the pristine cache was not touched through the hard links
    assert "# x" not in (pristine / "gguf-py/gguf/gguf_reader.py").read_text()
