"""The library reads the environment when it is called, not once per process.

A notebook or a second front end may point HIFIKIT_BIN_DIR / HIFIKIT_LIB_DIR /
HIFIKIT_BUILD_INFO at another build after hifikit was first used; what it gets
must follow.
"""
from __future__ import annotations

import json
import os

import pytest

from hifikit import ggml, paths, quant_rules
from hifikit.errors import NotBuiltError


def test_build_info_follows_its_variable(tmp_path, monkeypatch):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps({"build": "a"}))
    b.write_text(json.dumps({"build": "b"}))
    monkeypatch.setenv("HIFIKIT_BUILD_INFO", str(a))
    assert paths.build_info()["build"] == "a"
    monkeypatch.setenv("HIFIKIT_BUILD_INFO", str(b))
    assert paths.build_info()["build"] == "b"
    b.write_text(json.dumps({"build": "b2"}))
    os.utime(b, ns=(b.stat().st_atime_ns, b.stat().st_mtime_ns + 10**9))
    assert paths.build_info()["build"] == "b2"   # a rebuilt tree is read again


def test_ggml_follows_the_library_directory(built, tmp_path, monkeypatch):
    assert ggml.load().type_by_name("q4_K").block_size == 256
    monkeypatch.setenv("HIFIKIT_LIB_DIR", str(tmp_path))       # no library there
    with pytest.raises(NotBuiltError, match=str(tmp_path)):
        ggml.load()


def test_quant_options_follow_the_binary_directory(built, tmp_path, monkeypatch):
    real = quant_rules.quant_options()
    assert "Q4_K_M" in real
    fake = tmp_path / "llama-quantize"
    fake.write_text("#!/bin/sh\necho ' allowed quantization types'\necho '   2  or  Q4_0    :  4.34G, +0.4685 ppl'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("HIFIKIT_BIN_DIR", str(tmp_path))
    assert list(quant_rules.quant_options()) == ["Q4_0"]
    monkeypatch.undo()
    assert quant_rules.quant_options() == real
