"""`hifikit pr check`: apply an export to a fresh pristine tree, build it, test it, lint it.

Every check yields pass / fail / skip with a one-line summary and a log under
WORKDIR/logs. A check whose prerequisite failed is skipped and says why. An export
names its checks and build targets (export.json, from its topic in pr/template.yaml).

A split (`split.json`) is checked topic by topic in one work tree: each topic's
patches go on a fresh pristine tree, except that the commits it shares with the
topic checked before it are kept (`git reset --hard` to the last shared one, which
leaves unchanged files alone), so the build directory only rebuilds what changed.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from .. import atomic, ggml, upstream
from ..errors import HifikitError
from . import describe, editorconfig, gitrepo
from . import template as tmpl

TARGETS = ("test-quantize-fns", "test-backend-ops", "llama-quantize")   # an export that names none
CHECKS = ("git-am", "diff-check", "editorconfig", "flake8", "build", "test-quantize-fns", "test-backend-ops",
          "gguf-py-test-quants")                                             # an export that names none
BACKEND_OPS = ("MUL_MAT", "MUL_MAT_ID", "GET_ROWS", "CPY", "SET_ROWS")
CMAKE_OPTIONS = ("-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_SERVER=OFF",
                 "-DLLAMA_BUILD_EXAMPLES=OFF")
MARKER = ".hifikit-pr-check"
RESULT = "check.json"


@dataclasses.dataclass
class CheckResult:
    name: str
    status: str          # pass | fail | skip
    summary: str
    seconds: float
    log: str | None = None


@dataclasses.dataclass
class CheckReport:
    export: str
    workdir: str
    checks: list[CheckResult]

    @property
    def ok(self) -> bool:
        return all(c.status != "fail" for c in self.checks)


class _Skip(Exception):
    pass


_DESCRIPTIONS = {
    "git-am": "`git am` of `patches/*.patch` on a fresh copy of the base tree, and the resulting tree "
              "equal to the exported repository's",
    "diff-check": "`git diff --check` over the whole series",
    "editorconfig": "the tree's `.editorconfig` rules (and `.ecrc` excludes) on every added or modified file",
    "flake8": "`flake8` with the tree's `.flake8` on the changed Python files (as upstream's python-lint, "
              "with flake8-no-print)",
    "build": "a CMake + Ninja build of {targets}",
    "test-quantize-fns": "`test-quantize-fns`",
    "test-backend-ops": f"`test-backend-ops test -b CPU -o OP -p hifi` for OP in {', '.join(BACKEND_OPS)} "
                        "(the CPU backend against its reference implementation)",
    "gguf-py-test-quants": "`gguf-py/tests/test_quants.py --type T` for the HIFI types (numpy dequantization "
                           "against the C library)",
    "cuda-compile": "hifikit's `tools/check-cuda`: `nvcc -c` of every CUDA source the series touches (no GPU)",
    "test-backend-ops-cuda": f"`test-backend-ops test -b CUDA0 -o OP -p hifi` for OP in {', '.join(BACKEND_OPS)} "
                             "(CUDA against the CPU), where the machine has a CUDA device",
    "quantize-ftypes": "`llama-quantize --help` lists the HIFI ftypes",
}


def planned_checks(checks: list[str] | tuple[str, ...] = CHECKS,
                   targets: list[str] | tuple[str, ...] = TARGETS) -> list[str]:
    unknown = [c for c in checks if c not in _DESCRIPTIONS]
    if unknown:
        raise HifikitError(f"unknown pr check(s): {', '.join(unknown)} (known: {', '.join(_DESCRIPTIONS)})")
    return [_DESCRIPTIONS[c].format(targets=", ".join(f"`{t}`" for t in targets) or "nothing") for c in checks]


def _run(cmd: list[str], log: Path, cwd: Path | None = None, env: dict | None = None,
         timeout: float | None = None) -> tuple[int, str]:
    """Run cmd with its output streamed into log (appended); return the exit status and that output."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as f:
        f.write(f"$ {' '.join(map(str, cmd))}\n".encode())
        f.flush()
        offset = f.tell()
        try:
            proc = subprocess.Popen(list(map(str, cmd)), cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT)
        except FileNotFoundError as exc:
            f.write(f"{exc}\n".encode())
            return 127, str(exc)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            rc = 124
    with open(log, "rb") as f:
        f.seek(offset)
        text = f.read().decode(errors="replace")
    with open(log, "a") as f:
        f.write(f"(exit {rc}{', timed out after %s s' % timeout if rc == 124 else ''})\n")
    return rc, text


def _nice() -> list[str]:
    return ["nice"] if shutil.which("nice") else []


def _tool(*names: str) -> list[str] | None:
    """An executable by name: next to this interpreter, then on PATH."""
    for name in names:
        beside = Path(sys.executable).parent / name
        if beside.is_file():
            return [str(beside)]
        found = shutil.which(name)
        if found:
            return [found]
    return None


class _Checker:
    def __init__(self, export_dir: Path, workdir: Path, jobs: int, build: bool,
                 note: Callable[[str], None], targets: tuple[str, ...] = TARGETS,
                 logs: Path | None = None) -> None:
        self.export_dir, self.workdir, self.jobs, self.build, self.note = export_dir, workdir, jobs, build, note
        self.targets = tuple(targets)
        self.tree = workdir / "llama.cpp"
        self.build_dir = workdir / "build"
        self.logs = logs or workdir / "logs"
        self.results: list[CheckResult] = []
        self.failed: set[str] = set()   # checks that did not pass (failed or skipped)
        self.applied: list[tuple[str, str]] = []   # (patch file's From line, commit) applied to self.tree

    def step(self, name: str, needs: tuple[str, ...], fn: Callable[[Path], tuple[str, str]]) -> None:
        log = self.logs / f"{name}.log"
        start = time.monotonic()
        blocked = [n for n in needs if n in self.failed]
        if blocked:
            status, summary, log_s = "skip", f"not run: {', '.join(blocked)} did not pass", None
        else:
            self.note(f"pr check: {name} ...")
            try:
                status, summary = fn(log)
            except _Skip as exc:
                status, summary = "skip", str(exc)
            except (HifikitError, upstream.UpstreamError, OSError) as exc:
                status, summary = "fail", str(exc)
            log_s = str(log) if log.exists() else None
        if status != "pass":
            self.failed.add(name)
        result = CheckResult(name, status, summary, round(time.monotonic() - start, 1), log_s)
        self.results.append(result)
        self.note(f"pr check: {name}: {status.upper()}  {summary}")

    # ------------------------------------------------------------------ the checks

    def am(self, log: Path) -> tuple[str, str]:
        patches = sorted((self.export_dir / "patches").glob("*.patch"))
        if not patches:
            raise HifikitError(f"no patches in {self.export_dir / 'patches'}")
        # a format-patch file names its commit on its first line ("From <sha> ..."); the "[PATCH n/m]" of its
        # subject depends on the export, so equal commits are recognised by that line
        texts = [p.read_text().split("\n", 1)[0] for p in patches]
        keep = 0
        if self.tree.is_dir():   # a tree left by the topic checked before: keep the commits both share
            if (self.tree / ".git" / "rebase-apply").exists():
                gitrepo.git(self.tree, "am", "--abort", check=False)
            while keep < min(len(texts), len(self.applied)) and self.applied[keep][0] == texts[keep]:
                keep += 1
            base = self.applied[keep - 1][1] if keep else gitrepo.PRISTINE_TAG
            gitrepo.git(self.tree, "reset", "-q", "--hard", base)
            self.applied = self.applied[:keep]
        else:
            gitrepo.init_pristine(self.tree)
        rc, text = (0, "")
        if patches[keep:]:
            rc, text = _run(["git", "-C", self.tree, "-c", "core.hooksPath=/dev/null", "-c", "commit.gpgsign=false",
                             "-c", "user.name=hifikit", "-c", "user.email=hifikit@localhost", "am", "--quiet",
                             *patches[keep:]], log)
        if rc != 0:
            return "fail", f"git am stopped: {_last_line(text)} (see {self.tree}, `git am --show-current-patch`)"
        shas = gitrepo.out(self.tree, "rev-list", "--reverse", f"{gitrepo.PRISTINE_TAG}..HEAD").split()
        self.applied = list(zip(texts, shas))
        n = len(shas)
        summary = f"{n} of {len(patches)} patches applied" + (f" ({keep} kept from the topic before)" if keep else "")
        exported = self.export_dir / "llama.cpp"
        if exported.is_dir():
            mine = gitrepo.out(self.tree, "rev-parse", "HEAD^{tree}").strip()
            theirs = gitrepo.out(exported, "rev-parse", "HEAD^{tree}").strip()
            if mine != theirs:
                return "fail", summary + f"; tree {mine[:12]} differs from the exported repository's {theirs[:12]}"
            summary += f"; tree {mine[:12]} = the exported repository's"
        return ("pass" if n == len(patches) else "fail"), summary

    def changed(self, *filters: str) -> list[str]:
        return gitrepo.out(self.tree, "diff", "--name-only", "--diff-filter=AM", gitrepo.PRISTINE_TAG, "HEAD",
                           "--", *filters).split()

    def diff_check(self, log: Path) -> tuple[str, str]:
        rc, text = _run(["git", "-C", self.tree, "diff", "--check", gitrepo.PRISTINE_TAG, "HEAD"], log)
        problems = [l for l in text.splitlines() if re.match(r"^\S+:\d+: ", l)]
        if rc == 0:
            return "pass", f"no whitespace errors in {len(self.changed())} changed files"
        return "fail", f"{len(problems)} whitespace errors, first: {problems[0] if problems else _last_line(text)}"

    def editorconfig(self, log: Path) -> tuple[str, str]:
        files = self.changed()
        found = editorconfig.check(self.tree, files)
        log.write_text("".join(f"{v}\n" for v in found) or "no violations\n")
        if found:
            return "fail", f"{len(found)} violations in {len({v.path for v in found})} files, first: {found[0]}"
        return "pass", f"{len(files)} files follow .editorconfig (built-in checker; editorconfig-checker " \
                       "itself downloads its binary at install time)"

    def flake8(self, log: Path) -> tuple[str, str]:
        files = self.changed("*.py")
        if not files:
            raise _Skip("no Python files changed")
        exe = _tool("flake8")
        if exe is None:
            raise _Skip("flake8 is not installed (pip install flake8 flake8-no-print); "
                        f"{len(files)} Python files not linted")
        rc, text = _run([*exe, "--config", ".flake8", *files], log, cwd=self.tree)
        plugins = "with flake8-no-print" if "flake8-no-print" in _run([*exe, "--version"], log)[1] \
            else "without flake8-no-print"
        if rc != 0:
            issues = [l for l in text.splitlines() if re.match(r"^\S+:\d+:\d+: ", l)]
            return "fail", f"{len(issues)} issues, first: {issues[0] if issues else _last_line(text)}"
        return "pass", f"{len(files)} Python files clean ({plugins})"

    def cmake_build(self, log: Path) -> tuple[str, str]:
        if not self.build:
            raise _Skip("--no-build")
        for tool in ("cmake", "ninja"):
            if shutil.which(tool) is None:
                raise HifikitError(f"{tool} is not installed")
        rc, text = _run(["cmake", "-S", self.tree, "-B", self.build_dir, "-G", "Ninja", *CMAKE_OPTIONS], log)
        if rc != 0:
            return "fail", f"cmake configure failed: {_last_line(text)}"
        if not self.targets:
            raise _Skip("this topic builds nothing")
        rc, text = _run([*_nice(), "ninja", "-C", self.build_dir, "-j", str(self.jobs), *self.targets], log)
        if rc != 0:
            errors = [l for l in text.splitlines() if "error" in l.lower()]
            return "fail", f"ninja failed: {(errors or [_last_line(text)])[0]}"
        return "pass", f"built {', '.join(self.targets)} (-j {self.jobs})"

    def binary(self, name: str) -> Path:
        exe = self.build_dir / "bin" / name
        if not exe.is_file():
            raise _Skip(f"{exe} was not built")
        return exe

    def quantize_fns(self, log: Path) -> tuple[str, str]:
        rc, text = _run([*_nice(), self.binary("test-quantize-fns")], log, timeout=1800)
        failed = [l.strip() for l in text.splitlines() if "FAILED" in l]
        if rc != 0 or failed:
            return "fail", f"exit {rc}; {len(failed)} failures, first: {failed[0] if failed else _last_line(text)}"
        hifi = sum(1 for l in text.splitlines() if "hifi" in l.lower())
        return "pass", f"all types pass ({hifi} lines of output name a HIFI type)"

    def backend_ops(self, log: Path) -> tuple[str, str]:
        exe = self.binary("test-backend-ops")
        parts, bad = [], []
        for op in BACKEND_OPS:
            rc, text = _run([*_nice(), exe, "test", "-b", "CPU", "-o", op, "-p", "hifi"], log, timeout=1800)
            m = re.findall(r"(\d+)/(\d+) tests passed", text)
            passed, total = (int(m[-1][0]), int(m[-1][1])) if m else (0, 0)
            parts.append(f"{op} {passed}/{total}")
            if rc != 0 or not m or passed != total:
                bad.append(op)
        summary = ", ".join(parts)
        if bad:
            return "fail", f"{summary}; failing: {', '.join(bad)}"
        return "pass", summary

    def gguf_py(self, log: Path) -> tuple[str, str]:
        lib = self.build_dir / "bin" / "libggml.so"
        if not lib.is_file():
            raise _Skip(f"{lib} was not built (BUILD_SHARED_LIBS off?)")
        script = self.tree / "gguf-py" / "tests" / "test_quants.py"
        env = dict(os.environ, PYTHONPATH=str(self.tree / "gguf-py"))
        matched, bad = 0, []
        for t in ggml.HIFI_TYPES:
            rc, text = _run([sys.executable, script, "--libggml", lib, "--type", t.lower()], log, env=env,
                            timeout=1800)
            matched += text.count("matches exactly")
            if rc != 0 or "does not match" in text or "matches exactly" not in text:
                bad.append(t)
        if bad:
            return "fail", f"mismatch or error for {', '.join(bad)}"
        return "pass", f"{matched} numpy/C comparisons match exactly over {len(ggml.HIFI_TYPES)} types"

    def cuda_compile(self, log: Path) -> tuple[str, str]:
        if not self.build:
            raise _Skip("--no-build")
        if shutil.which("nvcc") is None:
            raise _Skip("nvcc is not installed: the CUDA sources were not compiled")
        tool = tmpl.source_root() / "tools" / "check-cuda"
        if not tool.is_file():
            raise _Skip(f"{tool} not found (pr check runs from a hifikit checkout)")
        rc, text = _run([sys.executable, tool, "--tree", self.tree, "-j", str(self.jobs)], log, timeout=3600)
        if rc != 0:
            return "fail", f"nvcc failed: {_last_line(text)}"
        return "pass", _last_line(text)

    def backend_ops_cuda(self, log: Path) -> tuple[str, str]:
        raise _Skip("needs a CUDA build and device; rerun `test-backend-ops test -b CUDA0 -p hifi` on a machine "
                    "with an NVIDIA GPU")

    def quantize_ftypes(self, log: Path) -> tuple[str, str]:
        rc, text = _run([self.binary("llama-quantize"), "--help"], log, timeout=60)
        names = re.findall(r"^\s*\d+\s+or\s+(\S+)\s+:", text, re.M)
        hifi = [n for n in names if "HIFI" in n or n == "Q4_K_XM"]
        if not hifi:
            return "fail", "llama-quantize --help lists no HIFI ftype"
        return "pass", f"llama-quantize lists {', '.join(hifi)}"


def _last_line(text: str) -> str:
    lines = [l.strip() for l in text.strip().splitlines() if l.strip()]
    return lines[-1][:200] if lines else "(no output)"


def _prepare_workdir(workdir: Path) -> None:
    if workdir.exists():
        if not (workdir / MARKER).is_file():
            raise HifikitError(f"{workdir} exists and is not a pr check work directory; pass another --workdir")
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    (workdir / MARKER).write_text("")


def results_markdown(report: CheckReport) -> str:
    lines = ["| check | result | summary |", "|---|---|---|"]
    for c in report.checks:
        lines.append(f"| {c.name} | {c.status} | {c.summary.replace('|', '/')} |")
    verdict = "all checks passed" if report.ok and all(c.status == "pass" for c in report.checks) else \
        ("no check failed (some skipped)" if report.ok else "SOME CHECKS FAILED")
    return f"`hifikit pr check` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}): {verdict}.\n\n" + \
        "\n".join(lines)


_STEPS = {
    "git-am": ((), "am"), "diff-check": (("git-am",), "diff_check"), "editorconfig": (("git-am",), "editorconfig"),
    "flake8": (("git-am",), "flake8"), "build": (("git-am",), "cmake_build"),
    "test-quantize-fns": (("build",), "quantize_fns"), "test-backend-ops": (("build",), "backend_ops"),
    "gguf-py-test-quants": (("build",), "gguf_py"), "cuda-compile": (("git-am",), "cuda_compile"),
    "test-backend-ops-cuda": (("git-am",), "backend_ops_cuda"), "quantize-ftypes": (("build",), "quantize_ftypes"),
}


def _run_checks(c: _Checker, checks: list[str]) -> None:
    planned_checks(checks)   # refuses unknown names
    for name in ["git-am", *[n for n in checks if n != "git-am"]]:
        needs, method = _STEPS[name]
        c.step(name, needs, getattr(c, method))


def _finish(export_dir: Path, workdir: Path, results: list[CheckResult]) -> CheckReport:
    report = CheckReport(str(export_dir), str(workdir), results)
    atomic.write_text(export_dir / RESULT, json.dumps(dataclasses.asdict(report) | {"ok": report.ok},
                                                       indent=2) + "\n")
    pr_md = export_dir / "PR.md"
    if pr_md.is_file():
        atomic.write_text(pr_md, describe.with_check_results(pr_md.read_text(), results_markdown(report)))
    return report


def _manifest(export_dir: Path) -> dict:
    path = export_dir / "export.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def check(export_dir: Path, workdir: Path | None = None, jobs: int = 2, build: bool = True,
          note: Callable[[str], None] = lambda s: None) -> CheckReport:
    """Check one export, or every topic of a split (then the report lists each check as `topic/check`)."""
    export_dir = export_dir.resolve()
    split = export_dir / "split.json"
    if split.is_file():
        return _check_split(export_dir, json.loads(split.read_text()), workdir, jobs, build, note)
    if not (export_dir / "patches").is_dir():
        raise HifikitError(f"{export_dir} is not a `hifikit pr export` directory (no patches/ or split.json)")
    workdir = (workdir or export_dir / "check").resolve()
    _prepare_workdir(workdir)
    manifest = _manifest(export_dir)
    c = _Checker(export_dir, workdir, jobs, build, note, tuple(manifest.get("build", TARGETS)))
    _run_checks(c, list(manifest.get("checks", CHECKS)))
    return _finish(export_dir, workdir, c.results)


def _check_split(split_dir: Path, split: dict, workdir: Path | None, jobs: int, build: bool,
                 note: Callable[[str], None]) -> CheckReport:
    workdir = (workdir or split_dir / "check").resolve()
    _prepare_workdir(workdir)
    results: list[CheckResult] = []
    previous: _Checker | None = None
    for entry in split["topics"]:
        export_dir = split_dir / entry["dir"]
        manifest = _manifest(export_dir)
        c = _Checker(export_dir, workdir, jobs, build, lambda s, t=entry["topic"]: note(f"[{t}] {s}"),
                     tuple(manifest.get("build", TARGETS)), logs=workdir / "logs" / entry["topic"])
        if previous is not None:
            c.applied = previous.applied
        _run_checks(c, list(manifest.get("checks", CHECKS)))
        _finish(export_dir, workdir, c.results)
        results += [dataclasses.replace(r, name=f"{entry['topic']}/{r.name}") for r in c.results]
        previous = c
    report = CheckReport(str(split_dir), str(workdir), results)
    atomic.write_text(split_dir / RESULT, json.dumps(dataclasses.asdict(report) | {"ok": report.ok},
                                                      indent=2) + "\n")
    return report
