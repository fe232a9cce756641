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


def llama_cpp_lib_dir(dest: Path | None = None) -> Path:
    """A folder for llama-cpp-python's ``LLAMA_CPP_LIB_PATH``: a symbolic link to every library of lib_dir(),
    under its own name and its plain one (``libllama.so``, ``libggml.so``, ...). llama-cpp-python loads
    exactly ``libllama.so`` from that variable's folder, which ``hifikit/lib`` does not hold (it ships the
    versioned names the binaries link to; a wheel cannot carry the plain-name links). The links keep the
    libraries' own ``$ORIGIN`` lookups inside the folder. Default folder: ``$HIFIKIT_HOME/llama-cpp-lib``."""
    from .db import home

    src = lib_dir().resolve()
    if not any(src.glob("libllama.so*")):
        raise NotBuiltError(f"libllama not found in {src}: reinstall hifikit or set HIFIKIT_LIB_DIR")
    dest = Path(dest) if dest is not None else home() / "llama-cpp-lib"
    dest.mkdir(parents=True, exist_ok=True)
    wanted: dict[str, Path] = {}
    for lib in sorted(src.glob("lib*.so*")):
        wanted[lib.name] = lib
        plain = lib.name.split(".so", 1)[0] + ".so"
        # the plain name points at the SONAME file (libllama.so.0) when there is one, as a namelink would
        if plain not in wanted or lib.name.count(".") < wanted[plain].name.count("."):
            wanted[plain] = lib
    for name, target in wanted.items():
        link = dest / name
        if link.is_symlink() and Path(os.readlink(link)) == target:
            continue
        tmp = dest / f".{name}.tmp"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(target)
        tmp.replace(link)
    return dest
