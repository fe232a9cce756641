"""Shared fixtures: the built package, a private HIFIKIT_HOME, the pristine tree."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def built() -> Path:
    """The directory of the bundled binaries; the package must have been built (pip install .)."""
    from hifikit import paths
    from hifikit.errors import NotBuiltError

    try:
        exe = paths.binary("llama-quantize")
        paths.build_info()
    except NotBuiltError as exc:
        pytest.fail(f"hifikit is not built: {exc}. Run: pip install '.[test]'")
    return exe.parent


@pytest.fixture(autouse=True)
def hifikit_home(tmp_path_factory, monkeypatch) -> Path:
    home = tmp_path_factory.mktemp("hifikit-home")
    monkeypatch.setenv("HIFIKIT_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def pristine() -> Path:
    """The pinned pristine llama.cpp tree (the build left it in the cache)."""
    from hifikit import upstream

    return upstream.pristine_tree(download=False)


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
    proc = subprocess.run([*hifikit_command(), *args], text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **kwargs.pop("env", {})},
                          **kwargs)
    if check and proc.returncode != 0:
        raise AssertionError(f"hifikit {' '.join(args)} exited {proc.returncode}\n{proc.stderr}")
    return proc
