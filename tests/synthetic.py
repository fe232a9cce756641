"""A tiny, deterministic llama-architecture GGUF for tests.

The tokenizer comes from the pinned tree's ``models/ggml-vocab-llama-spm.gguf``
(its KV fields are copied as is), so llama-tokenize, llama-perplexity,
llama-imatrix and llama-quantize all accept the result. Every weight row is a
multiple of 256 long, so every K-quant (and HIFI type) can quantize it.

    from synthetic import write_model
    path = write_model(tmp_path / "tiny.gguf")            # F16 weights
    path = write_model(tmp_path / "tiny32.gguf", dtype="f32", seed=1)
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

VOCAB_FILE = "models/ggml-vocab-llama-spm.gguf"


@dataclasses.dataclass(frozen=True)
class TinyConfig:
    n_embd: int = 256
    n_ff: int = 512
    n_layer: int = 2
    n_head: int = 4
    n_head_kv: int = 4
    context_length: int = 2048
    rms_eps: float = 1e-5


def vocab_path() -> Path:
    """The llama SPM vocab GGUF of the pristine tree (no download)."""
    from hifikit.upstream import pristine_tree

    path = pristine_tree(download=False) / VOCAB_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the pristine llama.cpp tree")
    return path


def _copy_tokenizer(writer, vocab: Path) -> int:
    """Copy every tokenizer.* KV field; return the vocabulary size."""
    import gguf

    reader = gguf.GGUFReader(vocab)
    n_vocab = 0
    for name, field in reader.fields.items():
        if not name.startswith("tokenizer."):
            continue
        vtype = field.types[0]
        if vtype == gguf.GGUFValueType.ARRAY:
            sub = field.types[1]
            if sub == gguf.GGUFValueType.STRING:
                values = [bytes(field.parts[i]) for i in field.data]
            else:
                values = [field.parts[i][0].item() for i in field.data]
            if name == "tokenizer.ggml.tokens":
                n_vocab = len(values)
            writer.add_key_value(name, values, vtype, sub_type=sub)
        elif vtype == gguf.GGUFValueType.STRING:
            writer.add_key_value(name, bytes(field.parts[field.data[0]]).decode(), vtype)
        else:
            writer.add_key_value(name, field.parts[field.data[0]][0].item(), vtype)
    if not n_vocab:
        raise ValueError(f"{vocab} has no tokenizer.ggml.tokens")
    return n_vocab


def write_model(path: Path | str, *, config: TinyConfig = TinyConfig(), seed: int = 0,
                dtype: str = "f16", vocab: Path | None = None) -> Path:
    """Write the synthetic model to path (atomically) and return path."""
    import gguf

    path = Path(path)
    np_dtype = {"f16": np.float16, "f32": np.float32}[dtype]
    c = config
    rng = np.random.default_rng(seed)
    tmp = path.with_name(path.name + ".tmp")
    writer = gguf.GGUFWriter(tmp, "llama")
    writer.add_name(f"hifikit-synthetic-{seed}")
    writer.add_block_count(c.n_layer)
    writer.add_context_length(c.context_length)
    writer.add_embedding_length(c.n_embd)
    writer.add_feed_forward_length(c.n_ff)
    writer.add_head_count(c.n_head)
    writer.add_head_count_kv(c.n_head_kv)
    writer.add_layer_norm_rms_eps(c.rms_eps)
    writer.add_rope_dimension_count(c.n_embd // c.n_head)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if dtype == "f16" else gguf.LlamaFileType.ALL_F32)
    n_vocab = _copy_tokenizer(writer, vocab or vocab_path())
    writer.add_vocab_size(n_vocab)

    def weight(rows: int, cols: int, scale: float) -> np.ndarray:
        w = rng.standard_normal((rows, cols), dtype=np.float32) * scale
        # a few large weights per row, as real models have: K-quants and HIFI outliers care
        idx = rng.integers(0, cols, size=(rows, 2))
        np.put_along_axis(w, idx, scale * 12.0 * rng.choice([-1.0, 1.0], size=(rows, 2)), axis=1)
        return w.astype(np_dtype)

    def norm(n: int) -> np.ndarray:
        # norms stay F32, as the converters write them
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    writer.add_tensor("token_embd.weight", weight(n_vocab, c.n_embd, 1.0))
    for i in range(c.n_layer):
        p = f"blk.{i}."
        writer.add_tensor(p + "attn_norm.weight", norm(c.n_embd))
        writer.add_tensor(p + "attn_q.weight", weight(c.n_embd, c.n_embd, 0.08))
        writer.add_tensor(p + "attn_k.weight", weight(c.n_embd, c.n_embd, 0.08))
        writer.add_tensor(p + "attn_v.weight", weight(c.n_embd, c.n_embd, 0.08))
        writer.add_tensor(p + "attn_output.weight", weight(c.n_embd, c.n_embd, 0.05))
        writer.add_tensor(p + "ffn_norm.weight", norm(c.n_embd))
        writer.add_tensor(p + "ffn_gate.weight", weight(c.n_ff, c.n_embd, 0.08))
        writer.add_tensor(p + "ffn_up.weight", weight(c.n_ff, c.n_embd, 0.08))
        writer.add_tensor(p + "ffn_down.weight", weight(c.n_embd, c.n_ff, 0.05))
    writer.add_tensor("output_norm.weight", norm(c.n_embd))
    writer.add_tensor("output.weight", weight(n_vocab, c.n_embd, 0.04))
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    tmp.replace(path)
    return path


def write_text(path: Path | str, n_words: int = 4000, seed: int = 0) -> Path:
    """Plain English-ish text (deterministic), enough tokens for a few small-ctx chunks."""
    words = ("the of and to in is was for on that with as by at from it an be this which or are "
             "model weight layer token quantize block scale error value mean large small river house "
             "garden morning letter window music number city water light story people").split()
    rng = np.random.default_rng(seed)
    out, sentence = [], []
    for i in range(n_words):
        sentence.append(words[int(rng.integers(len(words)))])
        if len(sentence) >= 6 + int(rng.integers(10)):
            out.append(" ".join(sentence).capitalize() + ".")
            sentence = []
            if rng.random() < 0.15:
                out.append("\n\n")
    path = Path(path)
    path.write_text(" ".join(out) + "\n")
    return path


if __name__ == "__main__":  # python tests/synthetic.py OUT.gguf
    import sys

    print(write_model(sys.argv[1] if len(sys.argv) > 1 else "tiny.gguf"))
