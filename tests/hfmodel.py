"""A tiny Hugging Face-format Llama repo (config, safetensors, SentencePiece tokenizer), made offline.

The tokenizer is a SentencePiece unigram model trained here on the synthetic
text (byte fallback on, so any text encodes); the weights are random, F16,
written with ``safetensors.numpy`` (no torch). Every row is a multiple of 256
long, so the converted GGUF takes every K-quant. Needs the ``convert`` extra
(sentencepiece, safetensors).

    from hfmodel import hf_llama_files
    files = hf_llama_files(text_path)     # {"config.json": b"...", "model.safetensors": b"...", ...}
"""
from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import numpy as np


@dataclasses.dataclass(frozen=True)
class HFConfig:
    hidden: int = 256
    intermediate: int = 512
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    vocab: int = 384
    context: int = 2048


def train_tokenizer(text: Path, vocab: int) -> bytes:
    """A SentencePiece unigram model (the tokenizer.model bytes) of exactly `vocab` pieces."""
    import sentencepiece as spm

    sentences = [s.strip() for s in Path(text).read_text().replace("\n", " ").split(". ") if s.strip()]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_writer=buf, vocab_size=vocab, model_type="unigram",
        byte_fallback=True, character_coverage=1.0, num_threads=1, minloglevel=2,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1)
    return buf.getvalue()


def weights(c: HFConfig, seed: int) -> dict[str, np.ndarray]:
    """LlamaForCausalLM's tensors, under their Hugging Face names."""
    rng = np.random.default_rng(seed)
    head_dim = c.hidden // c.heads

    def w(rows: int, cols: int, scale: float) -> np.ndarray:
        return (rng.standard_normal((rows, cols), dtype=np.float32) * scale).astype(np.float16)

    def norm(n: int) -> np.ndarray:
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float16)

    out = {"model.embed_tokens.weight": w(c.vocab, c.hidden, 1.0)}
    for i in range(c.layers):
        p = f"model.layers.{i}."
        out |= {
            p + "input_layernorm.weight": norm(c.hidden),
            p + "self_attn.q_proj.weight": w(c.heads * head_dim, c.hidden, 0.08),
            p + "self_attn.k_proj.weight": w(c.kv_heads * head_dim, c.hidden, 0.08),
            p + "self_attn.v_proj.weight": w(c.kv_heads * head_dim, c.hidden, 0.08),
            p + "self_attn.o_proj.weight": w(c.hidden, c.heads * head_dim, 0.05),
            p + "post_attention_layernorm.weight": norm(c.hidden),
            p + "mlp.gate_proj.weight": w(c.intermediate, c.hidden, 0.08),
            p + "mlp.up_proj.weight": w(c.intermediate, c.hidden, 0.08),
            p + "mlp.down_proj.weight": w(c.hidden, c.intermediate, 0.05),
        }
    out["model.norm.weight"] = norm(c.hidden)
    out["lm_head.weight"] = w(c.vocab, c.hidden, 0.04)
    return out


def config_json(c: HFConfig) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "torch_dtype": "float16",
        "hidden_size": c.hidden, "intermediate_size": c.intermediate, "num_hidden_layers": c.layers,
        "num_attention_heads": c.heads, "num_key_value_heads": c.kv_heads, "vocab_size": c.vocab,
        "max_position_embeddings": c.context, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "hidden_act": "silu", "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2,
    }


def hf_llama_files(text: Path, config: HFConfig = HFConfig(), seed: int = 0) -> dict[str, bytes]:
    """The files of the repo, name -> bytes."""
    from safetensors.numpy import save

    tokenizer_config = {"tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False,
                        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    return {
        "config.json": json.dumps(config_json(config), indent=1).encode(),
        "model.safetensors": save(weights(config, seed), metadata={"format": "pt"}),
        "tokenizer.model": train_tokenizer(text, config.vocab),
        "tokenizer_config.json": json.dumps(tokenizer_config).encode(),
        "README.md": b"# tiny llama (random weights)\n",
    }
