"""Resolving the pinned llama.cpp source: cache, hash check, atomic extraction."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hifikit import upstream

UPSTREAM_PY = Path(__file__).resolve().parent.parent / "hifikit" / "upstream.py"


def _resolve(cache: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "HIFIKIT_LLAMA_CPP_DIR"}
    environ.update(XDG_CACHE_HOME=str(cache), **env)
    return subprocess.run([sys.executable, str(UPSTREAM_PY), "pristine"], env=environ,
                          capture_output=True, text=True)


def test_wrong_hash_is_an_error_and_nothing_is_extracted(tmp_path):
    cache = tmp_path / "hifikit"
    cache.mkdir()
    (cache / upstream.SDIST_FILENAME).write_bytes(b"not the llama-cpp-python sdist" * 1000)
    proc = _resolve(tmp_path)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "has sha256" in lines[0] and f"expected {upstream.SDIST_SHA256}" in lines[0]
    assert "delete it" in lines[0]
    # nothing extracted, no half-written temporary tree
    assert sorted(p.name for p in cache.iterdir()) == [upstream.SDIST_FILENAME]


def test_cached_sdist_is_verified_and_extracted_once(tmp_path, pristine):
    real = upstream.cache_dir() / upstream.SDIST_FILENAME
    if not real.is_file():
        pytest.skip("the real sdist is not in this machine's cache (source came from HIFIKIT_LLAMA_CPP_DIR)")
    cache = tmp_path / "hifikit"
    cache.mkdir()
    (cache / upstream.SDIST_FILENAME).symlink_to(real)
    proc = _resolve(tmp_path)
    assert proc.returncode == 0, proc.stderr
    tree = Path(proc.stdout.strip())
    assert tree.parent == cache
    assert (tree / "ggml" / "include" / "ggml.h").read_bytes() == (pristine / "ggml" / "include" / "ggml.h").read_bytes()
    assert not (tree / ".git").exists()
    assert "downloading" not in proc.stderr
    # a second resolution uses the extracted tree: same path, nothing new in the cache
    before = sorted(p.name for p in cache.iterdir())
    again = _resolve(tmp_path)
    assert again.returncode == 0 and again.stdout == proc.stdout
    assert sorted(p.name for p in cache.iterdir()) == before


def test_explicit_directory_must_be_a_llama_cpp_tree(tmp_path):
    proc = _resolve(tmp_path, HIFIKIT_LLAMA_CPP_DIR=str(tmp_path))
    assert proc.returncode == 1
    assert "is not a llama.cpp source tree" in proc.stderr


def test_explicit_directory_is_used_as_is(tmp_path, pristine):
    proc = _resolve(tmp_path / "empty-cache", HIFIKIT_LLAMA_CPP_DIR=str(pristine))
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()) == pristine.resolve()
    assert not (tmp_path / "empty-cache").exists()
