"""`hifikit fetch` through huggingface_hub against a fake Hub on 127.0.0.1."""
from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
import pytest

from hifikit import gguf_io, hub
from fakehub import FakeHub

CONVERT_EXTRA_MISSING = "needs the convert extra ({}): pip install 'hifikit[convert]'"


@contextlib.contextmanager
def serve(repos, tmp_path, monkeypatch, gated=frozenset()):
    """A fake Hub on 127.0.0.1 that huggingface_hub (of this process and its children) talks to."""
    with FakeHub(repos, gated=gated) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
        monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.delenv("HF_TOKEN", raising=False)
        yield server


@pytest.fixture
def fake_hub(tiny_model, tmp_path, monkeypatch):
    repos = {"org/tiny-GGUF": {"tiny-f16.gguf": tiny_model.read_bytes(), "README.md": b"# tiny\n"},
             "org/tiny-hf": {"config.json": b'{"architectures": ["LlamaForCausalLM"]}',
                             "model.safetensors": b"\x08\x00\x00\x00\x00\x00\x00\x00{}      "},
             "org/docs-only": {"README.md": b"# nothing to run\n", "config.json": b"{}"},
             "org/gated": {"a.gguf": b"GGUF"}}
    with serve(repos, tmp_path, monkeypatch, gated={"org/gated"}) as server:
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


def test_fetch_repo_without_models(cli, fake_hub):
    proc = cli("fetch", "org/docs-only", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    (line,) = [l for l in proc.stderr.splitlines() if l.startswith("hifikit: error:")]
    assert "org/docs-only: neither GGUF nor safetensors files" in line and "README.md" in line


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


# --- safetensors -> GGUF with the pinned convert_hf_to_gguf.py, end to end -------------

@pytest.fixture
def hf_hub(tiny_text, tmp_path, monkeypatch):
    """A Hugging Face-format Llama repo (safetensors + SentencePiece) on the fake Hub."""
    missing = hub.missing_convert_modules()
    if missing:
        pytest.skip(CONVERT_EXTRA_MISSING.format(", ".join(missing)))
    from hfmodel import hf_llama_files

    files = hf_llama_files(tiny_text)
    with serve({"org/tiny-llama-hf": files}, tmp_path, monkeypatch) as server:
        yield server, files


def test_fetch_converts_safetensors_end_to_end(cli, hf_hub, tiny_text, tmp_path, hifikit_home):
    from safetensors.numpy import load

    server, files = hf_hub
    data = cli.json("fetch", "org/tiny-llama-hf")
    assert data["kind"] == "safetensors" and data["commit"] == server.commits["org/tiny-llama-hf"]
    assert sorted(data["files"]) == sorted(files)
    (model,) = map(Path, data["models"])
    assert model == hifikit_home / "models" / "org--tiny-llama-hf" / data["commit"] / "tiny-llama-hf-F16.gguf"
    assert not list(model.parent.glob(".*partial*"))

    # the converted file: llama architecture, every tensor under its GGUF name, weights as written
    info = cli.json("inspect", model)
    assert info["architecture"] == "llama" and info["n_tensors"] == 2 + 2 * 9 + 1
    assert info["types"] == {"f16": 2 + 2 * 7, "f32": 2 * 2 + 1}
    shapes = {t["name"]: t["shape"] for t in info["tensors"]}
    assert shapes["token_embd.weight"] == shapes["output.weight"] == [256, 384]
    assert shapes["blk.1.ffn_down.weight"] == [512, 256] and shapes["blk.0.attn_k.weight"] == [256, 128]
    import gguf
    reader = gguf.GGUFReader(model)
    source = load(files["model.safetensors"])
    got = {t.name: np.asarray(t.data) for t in reader.tensors}
    np.testing.assert_array_equal(got["blk.1.ffn_down.weight"], source["model.layers.1.mlp.down_proj.weight"])
    np.testing.assert_array_equal(got["token_embd.weight"], source["model.embed_tokens.weight"])
    tokens = reader.fields["tokenizer.ggml.tokens"]
    assert len(tokens.data) == 384 and bytes(reader.fields["tokenizer.ggml.model"].parts[-1]) == b"llama"

    # recorded as the fetch run's artifact
    shown = cli.json("runs", "show", data["run"])
    (art,) = [a for a in shown["artifacts"] if a["path"] == str(model)]
    assert art["size"] == model.stat().st_size and len(art["sha256"]) == 64

    # the llama.cpp tools load it: quantize to Q4_K_M, evaluate against the converted F16
    q4 = tmp_path / "tiny-llama-Q4_K_M.gguf"
    q = cli.json("quantize", model, q4, "--type", "Q4_K_M", "--threads", 2)
    assert q["ftype"] == "Q4_K_M" and cli.json("inspect", q4)["types"].get("q4_K", 0) > 0
    e = cli.json("eval", q4, "--ref", model, "--text", tiny_text, "--ctx", 128, "--chunks", 2, "--threads", 2)
    ref, quant = e["models"]
    assert np.isfinite(ref["ppl"]) and ref["ppl"] > 1 and quant["kld_mean"] > 0

    # a second fetch reuses the converted file (no second conversion)
    mtime = model.stat().st_mtime_ns
    again = cli.json("fetch", "org/tiny-llama-hf")
    assert again["models"] == [str(model)] and model.stat().st_mtime_ns == mtime


def test_download_leaves_the_progress_bars_as_they_were(fake_hub, tmp_path):
    """hub.download turns huggingface_hub's bars off for a quiet download, then back on for the caller."""
    import subprocess
    import sys

    code = """if True:
        from huggingface_hub.utils import are_progress_bars_disabled, enable_progress_bars
        from hifikit import hub
        enable_progress_bars()
        res = hub.download("org/tiny-GGUF", include=["*.gguf"], progress=False)
        print(res.files, are_progress_bars_disabled())
    """
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["['tiny-f16.gguf']", "False"]
