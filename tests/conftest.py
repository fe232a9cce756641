"""Shared fixtures: the built package, a private HIFIKIT_HOME, the pristine tree, a tiny model.

Tests exercise the *installed* hifikit (pip install '.[test]'), whose package holds the built
binaries and libraries. A developer may point HIFIKIT_BIN_DIR / HIFIKIT_LIB_DIR /
HIFIKIT_BUILD_INFO at a cmake build instead.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# `hifikit pr` works on this checkout's series, wherever pytest was started from (set before any
# fixture of any scope, and inherited by the CLI subprocesses)
os.environ.setdefault("HIFIKIT_SOURCE_DIR", str(REPO))


@pytest.fixture(autouse=True)
def hifikit_home(tmp_path, monkeypatch) -> Path:
    """Every test gets its own runs database and caches."""
    home = tmp_path / "hifikit-home"
    monkeypatch.setenv("HIFIKIT_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def built() -> Path:
    """The directory of the built binaries; a missing build fails the test (never skips it)."""
    from hifikit import paths
    from hifikit.errors import NotBuiltError

    if paths.PACKAGE_DIR.parent == REPO and not os.environ.get("HIFIKIT_BIN_DIR"):
        pytest.fail(f"tests imported hifikit from the source checkout {paths.PACKAGE_DIR}; "
                    "run pytest (not python -m pytest) after pip install '.[test]'")
    try:
        exe = paths.binary("llama-quantize")
        paths.build_info()
    except NotBuiltError as exc:
        pytest.fail(f"hifikit is not built: {exc}. Run: pip install '.[test]'")
    return exe.parent


@pytest.fixture(scope="session")
def pristine() -> Path:
    """The pinned pristine llama.cpp tree (the build left it in the cache)."""
    from hifikit import upstream

    return upstream.pristine_tree(download=False)


@pytest.fixture(scope="session")
def tiny_model(built, tmp_path_factory) -> Path:
    from synthetic import write_model
    return write_model(tmp_path_factory.mktemp("models") / "tiny-f16.gguf")


@pytest.fixture(scope="session")
def hifi_model(tiny_model, tmp_path_factory) -> Path:
    """The tiny model in Q4_K_HIFI (this build's llama-quantize): HIFI tensors for the runtimes to run."""
    from hifikit import gguf_io, paths

    out = tmp_path_factory.mktemp("hifi") / "tiny-Q4_K_HIFI.gguf"
    proc = subprocess.run([str(paths.binary("llama-quantize")), str(tiny_model), str(out), "Q4_K_HIFI", "2"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    hifi = {n.upper() for n in gguf_io.hifi_type_ids()}
    assert {t.upper() for _, _, t in gguf_io.tensor_types(out)} & hifi, "no HIFI tensor in the Q4_K_HIFI file"
    return out


@pytest.fixture(scope="session", params=["llama", "gemma3"])
def arch_model(request, built, tmp_path_factory) -> Path:
    """A small runnable F16 model of each architecture degrid supports, with GQA and its own head_dim."""
    from ftype_models import ARCH_SPECS, write_model

    out = tmp_path_factory.mktemp(f"arch-{request.param}") / f"{request.param}-f16.gguf"
    return write_model(out, ARCH_SPECS[request.param], sparse=False, tokenizer=True, seed=3)


@pytest.fixture(scope="session")
def tiny_text(tmp_path_factory) -> Path:
    from synthetic import write_text
    return write_text(tmp_path_factory.mktemp("text") / "text.txt")


def hifikit_command() -> list[str]:
    """The installed console script (not `python -m`, which would import the source checkout)."""
    script = Path(sys.executable).parent / "hifikit"
    if not script.exists():
        found = shutil.which("hifikit")
        if not found:
            raise AssertionError("the hifikit console script is not installed (pip install '.[test]')")
        script = Path(found)
    return [str(script)]


def run_hifikit(*args: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    """Run the installed `hifikit` command line in a subprocess."""
    proc = subprocess.run([*hifikit_command(), *map(str, args)], text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)
    if check and proc.returncode != 0:
        raise AssertionError(f"hifikit {' '.join(map(str, args))} exited {proc.returncode}\n{proc.stderr}")
    return proc


class CLI:
    """Run ``hifikit`` in a subprocess (exit code, stdout and stderr kept apart)."""

    def __call__(self, *args, check: bool = True, **kw) -> subprocess.CompletedProcess:
        return run_hifikit(*args, check=check, env=self.env(), **kw)

    @staticmethod
    def argv(*args) -> list[str]:
        return [*hifikit_command(), *map(str, args)]

    @staticmethod
    def env() -> dict[str, str]:
        return dict(os.environ)

    def json(self, *args) -> object:
        return json.loads(self(*args, "--json").stdout)


@pytest.fixture
def cli(built) -> CLI:
    return CLI()
