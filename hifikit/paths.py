"""Where the bundled llama.cpp binaries, libraries and build facts live.

The package installs them under ``hifikit/bin`` and ``hifikit/lib``.
``HIFIKIT_BIN_DIR`` and ``HIFIKIT_LIB_DIR`` point at another build (a
developer's cmake tree keeps both in ``build/bin``).
"""
from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path

from .errors import NotBuiltError

PACKAGE_DIR = Path(__file__).resolve().parent

BINARIES = (
    "llama-quantize", "llama-imatrix", "llama-perplexity", "llama-bench",
    "llama-tokenize", "llama-server", "llama-cli", "llama-gguf-split", "llama-sensitivity", "llama-costs",
    "test-quantize-fns", "test-backend-ops",
)


def bin_dir() -> Path:
    return Path(os.environ.get("HIFIKIT_BIN_DIR") or PACKAGE_DIR / "bin")


def lib_dir() -> Path:
    return Path(os.environ.get("HIFIKIT_LIB_DIR") or PACKAGE_DIR / "lib")


def binary(name: str) -> Path:
    if name not in BINARIES:
        raise NotBuiltError(f"unknown tool '{name}'; bundled tools: {', '.join(BINARIES)}")
    path = bin_dir() / name
    if not path.is_file():
        raise NotBuiltError(f"{path} is missing: reinstall hifikit with 'pip install .' or set HIFIKIT_BIN_DIR")
    return path


def library(stem: str) -> Path:
    """Path of lib<stem>.so (or .dylib / .dll) in the library directory."""
    for pattern in (f"lib{stem}.so", f"lib{stem}.dylib", f"{stem}.dll", f"lib{stem}.so.*"):
        found = sorted(lib_dir().glob(pattern))
        if found:
            return found[0]
    raise NotBuiltError(f"lib{stem} not found in {lib_dir()}: reinstall hifikit or set HIFIKIT_LIB_DIR")


def build_info_path() -> Path:
    return Path(os.environ.get("HIFIKIT_BUILD_INFO") or PACKAGE_DIR / "build-info.json")


def build_info() -> dict:
    """Pin, patch series and build options recorded by the CMake build (read again when the file changes)."""
    path = build_info_path()
    if not path.is_file():
        raise NotBuiltError(f"{path} is missing: hifikit was not installed with its build (pip install .)")
    return _read_json(str(path.resolve()), path.stat().st_mtime_ns)


@lru_cache(maxsize=8)
def _read_json(path: str, mtime_ns: int) -> dict:
    return json.loads(Path(path).read_text())

