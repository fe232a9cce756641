"""The one copy of llama-quantize's per-tensor rules (hifikit/quant_rules.py), read against the pinned C++."""
from __future__ import annotations

import re
from pathlib import Path

import gguf
import numpy as np
import pytest

from hifikit import quant_rules
from hifikit.planner import filesize, strategy
from hifikit.quant_rules import allows_quantization, n_dims, requires_imatrix


def _function(source: str, signature: str) -> str:
    """The body of the C++ function whose definition starts with `signature` (braces balanced)."""
    start = source.index(signature)
    i = source.index("{", start)
    depth = 0
    for j in range(i, len(source)):
        depth += {"{": 1, "}": -1}.get(source[j], 0)
        if depth == 0:
            return source[i + 1:j]
    raise AssertionError(f"unbalanced braces after {signature}")


def test_allows_quantization_lists_the_pinned_rules(pristine):
    src = (pristine / "src" / "llama-quant.cpp").read_text()
    body = _function(src, "static bool tensor_allows_quantization(")
    arch_blocks = {}
    for m in re.finditer(r"if \(arch == LLM_ARCH_(\w+)\) \{(.*?)\n    \}", body, re.S):
        arch_blocks[m.group(1)] = m.group(2)
    general = body
    for block in arch_blocks.values():
        general = general.replace(block, "")
    fragment = re.compile(r'quantize &= name\.find\("([^"]+)"\)\s*== std::string::npos;')
    exact = re.compile(r'quantize &= name != LLM_TN\(arch\)\(LLM_TENSOR_(\w+),\s*"weight"\);')
    # every `quantize &=` statement is one of the kinds read here, or the output-tensor switch (default: on)
    for stmt in re.findall(r"quantize &=[^;]*;", body):
        assert fragment.fullmatch(stmt) or exact.fullmatch(stmt) or "quantize_output_tensor" in stmt, stmt
    assert set(fragment.findall(general)) == set(quant_rules.NEVER_FRAGMENTS)
    arch_names = dict(re.findall(r'\{\s*LLM_ARCH_(\w+),\s*"([^"]+)"\s*\}',
                                 (pristine / "src" / "llama-arch.cpp").read_text()))
    assert {arch_names[a]: set(fragment.findall(b)) for a, b in arch_blocks.items()} == \
        {a: set(f) for a, f in quant_rules.NEVER_BY_ARCH.items()}
    tensor_names = dict(re.findall(r'\{\s*LLM_TENSOR_(\w+),\s*"([^"]+)"\s*\}',
                                   (pristine / "src" / "llama-arch.cpp").read_text()))
    assert {f"{tensor_names[t]}.weight" for t in exact.findall(body)} == set(quant_rules.NEVER_NAMES)
    # the shape rule and the name ending
    assert "if (ggml_n_dims(tensor) < 2) return false;" in body
    assert 'name.rfind("weight") == name.size() - 6' in body


def test_requires_imatrix_lists_the_pinned_types(pristine):
    src = (pristine / "src" / "llama-quant.cpp").read_text()
    body = _function(src, "static bool tensor_requires_imatrix(")
    always = body[:body.index("return true;")]
    assert {t.lower() for t in re.findall(r"case GGML_TYPE_(\w+):", always)} == set(quant_rules.IMATRIX_TYPES)
    assert "case GGML_TYPE_Q2_K:" in body and "LLAMA_FTYPE_MOSTLY_Q2_K_S" in body
    names = set(re.findall(r'"([^"]+\.weight)"', _function(src, "static bool tensor_name_match_token_embd(")))
    names |= set(re.findall(r'"([^"]+\.weight)"', _function(src, "static bool tensor_name_match_output_weight(")))
    assert names == set(quant_rules.IMATRIX_EXEMPT)


def test_rules_on_names_and_shapes():
    assert allows_quantization("blk.0.ffn_up.weight", (640, 2048))
    assert allows_quantization("blk.3.ffn_down_exps.weight", (512, 256, 8))
    assert allows_quantization("output.weight", (640, 1024))
    assert not allows_quantization("blk.0.attn_norm.weight", (640,))
    assert not allows_quantization("blk.0.attn_k_norm.weight", (256, 1))
    assert not allows_quantization("blk.0.ffn_gate_inp.weight", (640, 8))
    assert not allows_quantization("blk.0.attn_q.bias", (640, 2))
    assert not allows_quantization("position_embd.weight", (640, 512))
    assert not allows_quantization("rope_freqs.weight", (64,))
    # the rules the planner's copy lacked: RWKV, T5, multimodal
    assert not allows_quantization("blk.0.time_mix_w1.weight", (2048, 160))
    assert not allows_quantization("enc.blk.0.attn_rel_b.weight", (32, 8))
    assert not allows_quantization("v.patch_embd.weight", (14, 14, 3, 1024))
    # architecture-specific: only in glm5-next
    assert allows_quantization("blk.0.attn_k_b.weight", (512, 128))
    assert not allows_quantization("blk.0.attn_k_b.weight", (512, 128), "glm5-next")
    # size_t arithmetic upstream: a 5-character name counts as ending in "weight"
    assert allows_quantization("abcde", (64, 64)) and not allows_quantization("abcd", (64, 64))
    assert n_dims((640, 1, 1, 1)) == 1 and n_dims((640, 8, 1, 1)) == 2
    assert requires_imatrix("blk.0.ffn_up.weight", "IQ2_XS") and not requires_imatrix("token_embd.weight", "iq2_xs")
    assert requires_imatrix("blk.0.ffn_up.weight", "q2_K", "Q2_K_S")
    assert not requires_imatrix("blk.0.ffn_up.weight", "q2_K", "Q2_K")


@pytest.fixture
def rwkv_like(tmp_path) -> Path:
    """A GGUF whose 2-D time_mix_w1 matrix llama-quantize keeps as it is (no model: the header is what is read)."""
    path = tmp_path / "rwkv-like.gguf"
    w = gguf.GGUFWriter(str(path), "rwkv7")
    w.add_tensor("token_embd.weight", np.zeros((16, 256), dtype=np.float16))
    w.add_tensor("blk.0.time_mix_w1.weight", np.zeros((64, 256), dtype=np.float32))
    w.add_tensor("blk.0.ffn_key.weight", np.zeros((512, 256), dtype=np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_planner_and_strategy_check_follow_the_rule(built, rwkv_like):
    layout = filesize.FileLayout.read(rwkv_like)
    assert {t.name: t.quantizable for t in layout.tensors} == {
        "token_embd.weight": True, "blk.0.time_mix_w1.weight": False, "blk.0.ffn_key.weight": True}
    # `plan --check` refuses a new type on it (llama-quantize would ignore the override)
    s = strategy.Strategy(str(rwkv_like.with_suffix(".yaml")), str(rwkv_like), None, "Q8_0", None,
                          {"token_embd.weight": "q8_0", "blk.0.time_mix_w1.weight": "q8_0",
                           "blk.0.ffn_key.weight": "q8_0"}, {}, {})
    res = strategy.check(s, layout)
    assert [e for e in res.errors if "time_mix_w1" in e] == [
        "blk.0.time_mix_w1.weight: llama-quantize does not quantize this tensor (norms, 1-D and a few named "
        "tensors keep their type); it stays f32, not q8_0"]
