"""Shared fixtures: a private HIFIKIT_HOME, the built binaries, a tiny model and text."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # tests.synthetic and a source-checkout hifikit


@pytest.fixture(autouse=True)
def hifikit_home(tmp_path, monkeypatch) -> Path:
    """Every test gets its own runs database and caches."""
    home = tmp_path / "hifikit-home"
    monkeypatch.setenv("HIFIKIT_HOME", str(home))
    return home


def _type_count_from_source() -> int:
    from hifikit.upstream import pristine_tree
    text = (pristine_tree(download=False) / "ggml/include/ggml.h").read_text()
    return int(re.search(r"GGML_TYPE_COUNT\s*=\s*(\d+)", text).group(1))


@pytest.fixture(scope="session")
def built(tmp_path_factory) -> Path:
    """Point hifikit at built binaries (only where the environment does not already)."""
    from hifikit import paths

    if not os.environ.get("HIFIKIT_BIN_DIR") and not (paths.PACKAGE_DIR / "bin").is_dir():
        pytest.skip("no built llama.cpp binaries: install hifikit or set HIFIKIT_BIN_DIR/HIFIKIT_LIB_DIR")
    if not os.environ.get("HIFIKIT_LIB_DIR") and os.environ.get("HIFIKIT_BIN_DIR"):
        os.environ["HIFIKIT_LIB_DIR"] = os.environ["HIFIKIT_BIN_DIR"]
    if not os.environ.get("HIFIKIT_BUILD_INFO") and not (paths.PACKAGE_DIR / "build-info.json").is_file():
        info = tmp_path_factory.mktemp("build") / "build-info.json"
        info.write_text(json.dumps({"ggml_type_count": _type_count_from_source(), "patches": [], "native": [],
                                    "build": {}}))
        os.environ["HIFIKIT_BUILD_INFO"] = str(info)
    paths.build_info.cache_clear()
    return paths.bin_dir()


@pytest.fixture(scope="session")
def tiny_model(built, tmp_path_factory) -> Path:
    from tests.synthetic import write_model
    return write_model(tmp_path_factory.mktemp("models") / "tiny-f16.gguf")


@pytest.fixture(scope="session")
def tiny_text(tmp_path_factory) -> Path:
    from tests.synthetic import write_text
    return write_text(tmp_path_factory.mktemp("text") / "text.txt")


class CLI:
    """Run ``hifikit`` in a subprocess (exit code, stdout and stderr kept apart)."""

    def __call__(self, *args, check: bool = True, **kw) -> subprocess.CompletedProcess:
        proc = subprocess.run(self.argv(*args), capture_output=True, text=True, env=self.env(), **kw)
        if check and proc.returncode != 0:
            raise AssertionError(f"hifikit {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr}")
        return proc

    @staticmethod
    def argv(*args) -> list[str]:
        return [sys.executable, "-m", "hifikit.cli.main", *map(str, args)]

    @staticmethod
    def env() -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        return env

    def json(self, *args) -> object:
        return json.loads(self(*args, "--json").stdout)


@pytest.fixture
def cli(built) -> CLI:
    return CLI()
