"""What was built, from what, and the GGML type table of the build in use (``hifikit info``)."""
from __future__ import annotations

import dataclasses
import platform
from typing import Any

from . import __version__, ggml, paths
from .upstream import LLAMA_CPP_COMMIT, SDIST_SHA256


@dataclasses.dataclass
class BuildReport:
    version: str
    llama_cpp_commit: str
    source_sha256: str
    patches: list[dict[str, Any]]          # name, description, sha256 of each patch of the series
    native: list[str]                      # the native/ files overlaid on the tree
    binaries: dict[str, str | None]        # bundled tool -> its path (None: missing)
    library_dir: str
    build: dict[str, Any]                  # CMake options (GGML_CUDA, GGML_NATIVE, compiler, ...)
    cpu_features: dict[str, bool]          # the features libggml-cpu was built for and this machine has
    platform: str
    types: list[dict[str, Any]]            # id, name, block_size, type_size, bits_per_weight, quantized


def build_report() -> BuildReport:
    """The build recorded by CMake, its binaries, and the type table read from the built libggml-base."""
    build = paths.build_info()
    lib = ggml.load()
    binaries = {}
    for name in paths.BINARIES:
        path = paths.bin_dir() / name
        binaries[name] = str(path) if path.is_file() else None
    return BuildReport(
        version=__version__,
        llama_cpp_commit=build.get("llama_cpp_commit", LLAMA_CPP_COMMIT),
        source_sha256=build.get("sdist_sha256", SDIST_SHA256),
        patches=build.get("patches", []),
        native=build.get("native", []),
        binaries=binaries,
        library_dir=str(paths.lib_dir()),
        build=build.get("build", {}),
        cpu_features={k: v for k, v in ggml.cpu_features().items() if v},
        platform=platform.platform(),
        types=[{"id": t.id, "name": t.name, "block_size": t.block_size, "type_size": t.type_size,
                "bits_per_weight": round(t.bits_per_weight, 4), "quantized": t.is_quantized} for t in lib.types()])
