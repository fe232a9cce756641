"""`hifikit pr check`: apply an export to a fresh pristine tree, build it, test it, lint it.

Every check yields pass / fail / skip with a one-line summary and a log under
WORKDIR/logs. A check whose prerequisite failed is skipped and says why.
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

TARGETS = ("test-quantize-fns", "test-backend-ops", "llama-quantize")
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


def planned_checks() -> list[str]:
    return [
        "`git am` of `patches/*.patch` on a fresh copy of the base tree, and the resulting tree "
        "equal to the exported repository's",
        "`git diff --check` over the whole series",
        "the tree's `.editorconfig` rules (and `.ecrc` excludes) on every added or modified file",
        "`flake8` with the tree's `.flake8` on the changed Python files (as upstream's python-lint, "
        "with flake8-no-print)",
        f"a CMake + Ninja build of {', '.join(f'`{t}`' for t in TARGETS)}",
        "`test-quantize-fns`",
        f"`test-backend-ops test -b CPU -o OP -p hifi` for OP in {', '.join(BACKEND_OPS)} "
        "(the CPU backend against its reference implementation)",
        "`gguf-py/tests/test_quants.py --type T` for the HIFI types (numpy dequantization against the C library)",
    ]


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
                 note: Callable[[str], None]) -> None:
        self.export_dir, self.workdir, self.jobs, self.build, self.note = export_dir, workdir, jobs, build, note
        self.tree = workdir / "llama.cpp"
        self.build_dir = workdir / "build"
        self.logs = workdir / "logs"
        self.results: list[CheckResult] = []
        self.failed: set[str] = set()   # checks that did not pass (failed or skipped)

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
        gitrepo.init_pristine(self.tree)
        rc, text = _run(["git", "-C", self.tree, "-c", "core.hooksPath=/dev/null", "-c", "commit.gpgsign=false",
                         "-c", "user.name=hifikit", "-c", "user.email=hifikit@localhost", "am", "--quiet",
                         *patches], log)
        if rc != 0:
            return "fail", f"git am stopped: {_last_line(text)} (see {self.tree}, `git am --show-current-patch`)"
        n = int(gitrepo.out(self.tree, "rev-list", "--count", f"{gitrepo.PRISTINE_TAG}..HEAD").strip())
        summary = f"{n} of {len(patches)} patches applied"
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
        rc, text = _run([*_nice(), "ninja", "-C", self.build_dir, "-j", str(self.jobs), *TARGETS], log)
        if rc != 0:
            errors = [l for l in text.splitlines() if "error" in l.lower()]
            return "fail", f"ninja failed: {(errors or [_last_line(text)])[0]}"
        return "pass", f"built {', '.join(TARGETS)} (-j {self.jobs})"

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


def check(export_dir: Path, workdir: Path | None = None, jobs: int = 2, build: bool = True,
          note: Callable[[str], None] = lambda s: None) -> CheckReport:
    export_dir = export_dir.resolve()
    if not (export_dir / "patches").is_dir():
        raise HifikitError(f"{export_dir} is not a `hifikit pr export` directory (no patches/)")
    workdir = (workdir or export_dir / "check").resolve()
    _prepare_workdir(workdir)
    c = _Checker(export_dir, workdir, jobs, build, note)
    c.step("git-am", (), c.am)
    c.step("diff-check", ("git-am",), c.diff_check)
    c.step("editorconfig", ("git-am",), c.editorconfig)
    c.step("flake8", ("git-am",), c.flake8)
    c.step("build", ("git-am",), c.cmake_build)
    c.step("test-quantize-fns", ("build",), c.quantize_fns)
    c.step("test-backend-ops", ("build",), c.backend_ops)
    c.step("gguf-py-test-quants", ("build",), c.gguf_py)
    report = CheckReport(str(export_dir), str(workdir), c.results)
    atomic.write_text(export_dir / RESULT, json.dumps(dataclasses.asdict(report) | {"ok": report.ok},
                                                       indent=2) + "\n")
    pr_md = export_dir / "PR.md"
    if pr_md.is_file():
        atomic.write_text(pr_md, describe.with_check_results(pr_md.read_text(), results_markdown(report)))
    return report
