"""`hifikit fetch` through huggingface_hub against a fake Hub on 127.0.0.1."""
from __future__ import annotations

import json

import pytest

from hifikit import gguf_io, hub
from fakehub import FakeHub


@pytest.fixture
def fake_hub(tiny_model, tmp_path, monkeypatch):
    repos = {"org/tiny-GGUF": {"tiny-f16.gguf": tiny_model.read_bytes(), "README.md": b"# tiny\n"},
             "org/tiny-hf": {"config.json": b'{"architectures": ["LlamaForCausalLM"]}',
                             "model.safetensors": b"\x08\x00\x00\x00\x00\x00\x00\x00{}      "},
             "org/gated": {"a.gguf": b"GGUF"}}
    with FakeHub(repos, gated={"org/gated"}) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
        monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.delenv("HF_TOKEN", raising=False)
        yield server


def test_fetch_gguf_repo(cli, fake_hub, tiny_model):
    data = json.loads(cli("fetch", "org/tiny-GGUF", "--include", "*.gguf", "--json").stdout)
    assert data["kind"] == "gguf" and data["files"] == ["tiny-f16.gguf"]
    assert data["commit"] == fake_hub.commits["org/tiny-GGUF"]
    (model,) = data["models"]
    assert gguf_io.read_info(model).n_tensors == gguf_io.read_info(tiny_model).n_tensors
    assert not any("README" in r for r in fake_hub.requests if r.startswith("GET /org"))  # --include applied


def test_fetch_gated_and_missing(cli, fake_hub):
    gated = cli("fetch", "org/gated", check=False)
    assert gated.returncode == 1 and "is gated" in gated.stderr and "Traceback" not in gated.stderr
    missing = cli("fetch", "org/nothing-here", check=False)
    assert missing.returncode == 1 and "no such repository" in missing.stderr


def test_fetch_safetensors_needs_convert_extra(cli, fake_hub):
    if not hub.missing_convert_modules():
        pytest.skip("the convert extra is installed")
    proc = cli("fetch", "org/tiny-hf", check=False)
    assert proc.returncode == 1
    assert "pip install 'hifikit[convert]'" in proc.stderr.splitlines()[-1] or \
        any("hifikit[convert]" in l for l in proc.stderr.splitlines() if l.startswith("hifikit: error"))


def test_convert_script_is_the_pinned_one():
    script = hub.convert_script()
    assert script.name == "convert_hf_to_gguf.py"
    assert (script.parent / "conversion" / "__init__.py").is_file()
