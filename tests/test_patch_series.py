"""The patch series applies strictly to the pristine tree, and only strictly."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hifikit import upstream

REPO = Path(__file__).resolve().parent.parent
PATCHES = REPO / "patches"
NATIVE = REPO / "native"


def test_tools_check_passes_on_the_committed_series(pristine):
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "patches"), "check"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    names = upstream.read_series(PATCHES)
    assert f"series applies cleanly: {len(names)} patches" in proc.stdout
    for name in names:
        assert f"ok  {name}" in proc.stdout


def test_every_patch_has_a_dep3_header():
    for patch in upstream.load_series(PATCHES):
        assert patch.description, patch.name
        assert patch.header.get("Origin"), patch.name
        assert patch.header.get("Forwarded"), patch.name
        assert patch.header.get("Last-Update"), patch.name


@pytest.fixture
def series_copy(tmp_path) -> Path:
    """A copy of patches/ with one small patch of our own appended."""
    copy = tmp_path / "patches"
    shutil.copytree(PATCHES, copy)
    return copy


def _add_patch(patches: Path, name: str, body: str) -> None:
    (patches / name).write_text("Description: test patch\nOrigin: vendor\nForwarded: no\n---\n" + body)
    with open(patches / "series", "a") as f:
        f.write(name + "\n")


def _readme_hunk(pristine: Path, start: int, context_delta: int = 0, mangle: bool = False) -> str:
    lines = (pristine / "README.md").read_text().splitlines()
    ctx = lines[start - 1:start + 2]
    if mangle:
        ctx[0] = ctx[0] + " (changed context)"
    header_start = start + context_delta
    body = "".join(f" {l}\n" for l in ctx)
    return (f"--- a/README.md\n+++ b/README.md\n@@ -{header_start},3 +{header_start},4 @@\n"
            f"{body}+added by a test\n")


def test_exact_patch_applies(series_copy, pristine, tmp_path):
    _add_patch(series_copy, "9000-exact.patch", _readme_hunk(pristine, 5))
    upstream.check_series(series_copy, NATIVE, pristine)


def test_offset_is_refused(series_copy, pristine):
    _add_patch(series_copy, "9000-offset.patch", _readme_hunk(pristine, 5, context_delta=2))
    with pytest.raises(upstream.UpstreamError, match="does not apply exactly"):
        upstream.check_series(series_copy, NATIVE, pristine)


def test_fuzz_is_refused(series_copy, pristine):
    _add_patch(series_copy, "9000-fuzz.patch", _readme_hunk(pristine, 5, mangle=True))
    with pytest.raises(upstream.UpstreamError, match="does not apply exactly"):
        upstream.check_series(series_copy, NATIVE, pristine)


def test_missing_patch_file_is_refused(series_copy, pristine):
    with open(series_copy / "series", "a") as f:
        f.write("9999-missing.patch\n")
    with pytest.raises(upstream.UpstreamError, match="9999-missing.patch, which does not exist"):
        upstream.check_series(series_copy, NATIVE, pristine)


def test_patch_not_in_series_is_refused(series_copy, pristine):
    (series_copy / "9998-stray.patch").write_text("Description: x\n---\n")
    with pytest.raises(upstream.UpstreamError, match="not in patches/series: 9998-stray.patch"):
        upstream.check_series(series_copy, NATIVE, pristine)


def test_native_file_may_not_replace_upstream(tmp_path, pristine):
    native = tmp_path / "native"
    (native / "ggml" / "src").mkdir(parents=True)
    (native / "ggml" / "src" / "ggml.c").write_text("/* not allowed */\n")
    with pytest.raises(upstream.UpstreamError, match="would replace an upstream file"):
        upstream.check_series(PATCHES, native, pristine)


def test_unpack_refresh_round_trip(tmp_path, pristine):
    """tools/patches unpack + refresh reproduces the committed series byte for byte."""
    work = tmp_path / "work"
    repo_copy = tmp_path / "repo"
    for part in ("patches", "native", "tools", "hifikit"):
        if (REPO / part).exists():
            shutil.copytree(REPO / part, repo_copy / part, ignore=shutil.ignore_patterns("__pycache__", "bin", "lib"))
    tool = repo_copy / "tools" / "patches"
    subprocess.run([sys.executable, str(tool), "unpack", str(work)], check=True, capture_output=True)
    subprocess.run([sys.executable, str(tool), "refresh", str(work)], check=True, capture_output=True)
    for name in upstream.read_series(PATCHES) + ["series"]:
        assert (repo_copy / "patches" / name).read_bytes() == (PATCHES / name).read_bytes(), name
    assert upstream.native_files(repo_copy / "native") == upstream.native_files(NATIVE)


# ---------------------------------------------------------------- what the series may contain (review findings)

def _template() -> dict:
    import yaml
    return yaml.safe_load((REPO / "pr" / "template.yaml").read_text())


def _series_code() -> dict[str, list[str]]:
    """Every line the upstream series adds: '+' lines of the patches (per patch file) and every line of the
    native files that go upstream (hifikit's own local tools excepted)."""
    local = set(_template().get("local") or [])
    code: dict[str, list[str]] = {}
    for patch in upstream.load_series(PATCHES):
        body = patch.path.read_text().split("\n---\n", 1)[1]
        code[patch.name] = [l[1:] for l in body.splitlines() if l.startswith("+") and not l.startswith("+++")]
    for rel in upstream.native_files(NATIVE):
        if rel not in local:
            code[f"native/{rel}"] = (NATIVE / rel).read_text().splitlines()
    return code


def test_series_adds_no_ggml_ftype():
    # GGML_FTYPE_MOSTLY_* is legacy ggml API; the HIFI types need no entry there
    assert not [(w, l) for w, lines in _series_code().items() for l in lines if "GGML_FTYPE_" in l]


def test_series_adds_no_perf_cases_of_its_own():
    # test-backend-ops gets the types in its type lists, not a perf-only GET_ROWS case
    lines = _series_code()["0004-tests-add-hifi-types-to-test-quantize-fns-and-test-backend-o.patch"]
    assert not [l for l in lines if "test_get_rows" in l or "emplace_back" in l]


def test_series_sources_cite_no_hifikit_docs_or_seeds():
    cites = re.compile(r"docs/|\bseeds?\b|hifikit|results\.md|Gemma", re.IGNORECASE)
    found = [(w, l.strip()) for w, lines in _series_code().items() for l in lines if cites.search(l)]
    assert not found, found[:5]


def test_hifi_types_carry_no_simd_kernels():
    """The HIFI vec_dot runs the base types' kernels: no intrinsics or per-architecture code in the series."""
    simd = re.compile(r"_mm(256|512)?_|__m(128|256|512)|immintrin|__AVX|__ARM_NEON|vld1q|vdotq|__riscv_v")
    found = [(w, l.strip()) for w, lines in _series_code().items() for l in lines if simd.search(l)]
    assert not found, found[:5]
    cpu = (NATIVE / "ggml/src/ggml-cpu/quants-hifi.inc").read_text()
    for bt in ("q3_K", "q4_K", "q5_K", "q6_K"):
        assert f"ggml_vec_dot_{bt}_hifi_q8_K,         ggml_vec_dot_{bt}_q8_K)" in cpu
        assert f"ggml_vec_dot_{bt}_hifi_q8_K_generic, ggml_vec_dot_{bt}_q8_K_generic)" in cpu


def test_folded_fragments_are_included_once_by_their_upstream_file():
    """A native fragment (.inc) has one #include hook in the series; `pr export` inlines it there."""
    hooks = {rel: [w for w, lines in _series_code().items() if f'#include "{Path(rel).name}"' in lines]
             for rel in upstream.native_files(NATIVE) if rel.endswith(".inc")}
    assert set(hooks) == {"ggml/src/ggml-quants-hifi.inc", "ggml/src/ggml-cpu/quants-hifi.inc"}
    assert all(len(w) == 1 and not w[0].startswith("native/") for w in hooks.values()), hooks
    folded = {rel for c in _template()["commits"] for rel in c.get("fold") or []}
    assert folded == set(hooks)


def test_tools_on_internal_api_stay_out_of_the_series():
    """A tool that uses llama's internal API (not LLAMA_API, missing from Windows DLLs) is hifikit's own:
    local in pr/template.yaml, built by hifikit's CMakeLists.txt, wired in by no patch."""
    local = set(_template().get("local") or [])
    for rel in upstream.native_files(NATIVE):
        text = (NATIVE / rel).read_text()
        if "llama_internal_" in text or '"../../src/' in text:
            assert rel in local, rel
    assert not [(w, l) for w, lines in _series_code().items() for l in lines if "sensitivity" in l]
    cmake = (REPO / "CMakeLists.txt").read_text()
    assert 'add_subdirectory("${HIFIKIT_SRC_DIR}/tools/sensitivity"' in cmake


def test_native_sources_use_no_posix_only_string_functions():
    # upstream builds on MSVC: strcasecmp/strncasecmp are POSIX (upstream wraps them in _MSC_VER checks)
    posix = re.compile(r"\bstrn?casecmp\s*\(")
    found = [rel for rel in upstream.native_files(NATIVE) if posix.search((NATIVE / rel).read_text())]
    assert not found
