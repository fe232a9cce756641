"""The installed package: binaries run, test-quantize-fns passes, `hifikit info` tells the truth."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from hifikit import paths, upstream

from conftest import REPO, run_hifikit

# exit status of `--help` as upstream implements it at the pin
HELP_EXIT = {
    "llama-quantize": 1, "llama-imatrix": 0, "llama-perplexity": 0, "llama-bench": 0,
    "llama-tokenize": 0, "llama-sensitivity": 0, "llama-costs": 0, "test-backend-ops": 1,
    "llama-server": 0, "llama-cli": 0, "llama-gguf-split": 0,
}


@pytest.mark.parametrize("name", sorted(HELP_EXIT))
def test_binary_runs_from_installed_location(built, name):
    proc = subprocess.run([str(paths.binary(name)), "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == HELP_EXIT[name], proc.stderr[-2000:]
    assert "usage" in (proc.stdout + proc.stderr).lower()


def test_libraries_resolve_through_rpath(built):
    ldd = subprocess.run(["ldd", str(paths.binary("llama-quantize"))], capture_output=True, text=True)
    if ldd.returncode != 0:
        pytest.skip("ldd not available")
    for lib in ("libllama", "libggml-base", "libggml-cpu"):
        line = next(l for l in ldd.stdout.splitlines() if lib in l)
        assert "not found" not in line
        assert str(paths.lib_dir().resolve()) in str(Path(line.split("=>")[1].split()[0]).resolve())


def test_quantize_fns_passes(built):
    proc = subprocess.run([str(paths.binary("test-quantize-fns"))], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]


def test_tool_passes_exit_code_through(built):
    ok = run_hifikit("tool", "llama-bench", "--help")
    assert "usage" in ok.stdout.lower()
    bad = run_hifikit("tool", "llama-quantize", "--help", check=False)
    assert bad.returncode == HELP_EXIT["llama-quantize"]
    unknown = run_hifikit("tool", "no-such-tool", check=False)
    assert unknown.returncode == 2 and "unknown tool 'no-such-tool'" in unknown.stderr


def test_info_reports_pin_and_series(built):
    info = json.loads(run_hifikit("info", "--json").stdout)
    assert info["llama_cpp_commit"] == upstream.LLAMA_CPP_COMMIT
    assert info["source_sha256"] == upstream.SDIST_SHA256
    series = upstream.read_series(REPO / "patches")
    assert [p["name"] for p in info["patches"]] == series
    for patch in info["patches"]:
        assert patch["sha256"] == upstream.sha256_file(REPO / "patches" / patch["name"])
    assert info["native"] == upstream.native_files(REPO / "native")
    for name, path in info["binaries"].items():
        assert path and Path(path).is_file(), name
    assert info["build"]["GGML_CUDA"] in (True, False)


def test_type_table_matches_gguf(built):
    """Every type of the built library agrees with the pinned tree's gguf-py, in both directions.

    (PyPI's gguf is not the reference: gguf 0.19.0 still gives Q8_1 40 bytes where ggml uses 36.)
    """
    from hifikit import _gguf as pinned_gguf

    info = json.loads(run_hifikit("info", "--json").stdout)
    by_id = {t["id"]: t for t in info["types"]}
    for qtype in pinned_gguf.GGMLQuantizationType:
        block, size = pinned_gguf.GGML_QUANT_SIZES[qtype]
        t = by_id.get(int(qtype))
        assert t is not None, f"{qtype.name} ({int(qtype)}) missing from the built library"
        assert t["name"].upper() == qtype.name.upper()
        assert (t["block_size"], t["type_size"]) == (block, size), qtype.name
    assert set(by_id) == {int(q) for q in pinned_gguf.GGMLQuantizationType}


def test_info_text_lists_types(built):
    text = run_hifikit("info").stdout
    assert upstream.LLAMA_CPP_COMMIT in text
    assert "q4_K" in text and "q8_0" in text


def _compile_commands() -> tuple[Path, list[dict]]:
    """The compile database of the persistent build directory of this checkout (newest wheel tag)."""
    found = sorted(REPO.glob("build/*/compile_commands.json"), key=lambda p: p.stat().st_mtime)
    if not found:
        pytest.skip("no build directory with compile_commands.json in this checkout")
    return found[-1].parent, json.loads(found[-1].read_text())


def test_series_compiles_with_warnings_as_errors(built):
    """Upstream's CPU, Apple and Android CI jobs build with LLAMA_FATAL_WARNINGS=ON: every translation unit the
    series adds or patches compiles with the build's own flags (upstream's warning set) and -Werror.

    -fsyntax-only: warnings that need the optimizer are left to the CI build, which sets the option
    (.ci/run)."""
    import re
    import shlex
    from concurrent.futures import ThreadPoolExecutor

    build_dir, commands = _compile_commands()
    src = build_dir / "llama.cpp-src"
    ours = {f.path for p in upstream.load_series(REPO / "patches") for f in p.files}
    ours |= set(upstream.native_files(REPO / "native"))
    units = [e for e in commands if Path(e["file"]).is_relative_to(src)
             and str(Path(e["file"]).relative_to(src)) in ours]
    assert {"src/llama-quant-hifi.cpp", "ggml/src/ggml-quants.c", "ggml/src/ggml-cpu/quants.c",
            "tools/quantize/quantize-hifi.cpp", "tools/sensitivity/sensitivity.cpp"} <= \
        {str(Path(e["file"]).relative_to(src)) for e in units}

    def syntax(e: dict) -> tuple[str, int, str]:
        args = shlex.split(e["command"])
        i = args.index("-o")
        del args[i:i + 2]
        args = [a for a in args if a != "-c"] + ["-fsyntax-only", "-Werror"]
        proc = subprocess.run(args, cwd=e["directory"], capture_output=True, text=True, timeout=900)
        return str(Path(e["file"]).relative_to(src)), proc.returncode, proc.stderr

    with ThreadPoolExecutor(max_workers=2) as pool:
        failed = [(f, err) for f, rc, err in pool.map(syntax, units) if rc != 0]
    assert not failed, "\n".join(f"{f}:\n" + "\n".join(re.findall(r".*error:.*", err)[:5]) for f, err in failed)


def test_ci_build_has_fatal_warnings(built):
    """.ci/run builds with LLAMA_FATAL_WARNINGS=ON (on upstream's portable x86 flags: GCC 12 stops in upstream's
    own tiled-kernel.cpp under -march=native), and the build records it."""
    ci = (REPO / ".ci" / "run").read_text()
    assert "-DLLAMA_FATAL_WARNINGS=ON" in ci and "-DGGML_NATIVE=OFF" in ci
    info = json.loads(run_hifikit("info", "--json").stdout)
    assert info["build"]["LLAMA_FATAL_WARNINGS"] in (True, False)
    if os.environ.get("HIFIKIT_CI") == "1":
        assert info["build"]["LLAMA_FATAL_WARNINGS"] is True and info["build"]["GGML_NATIVE"] is False
