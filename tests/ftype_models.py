"""Synthetic llama-architecture GGUFs for the ftype tests.

Two kinds of file:
  * ``sparse=True``: only the header is written and the file is extended to
    its full size with a hole, so a "12B" model costs no disk and no time.
    ``llama-quantize --dry-run`` reads headers only, so it sees a real model.
  * ``sparse=False``: random F16 weights (small models only), with the
    tokenizer of the pristine tree's llama SPM vocab, for real quantization
    and llama-perplexity.

Shapes follow the llama graph (wq: n_embd -> n_head*head_dim, ...), with an
optional head_dim (written as attention.key_length/value_length), MoE expert
tensors and tied embeddings (no output.weight), so a Gemma-3-270M-like layout
(hidden 640, head_dim 256, ffn 2048) can be described.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Iterator

import numpy as np

# the tokenizer fields come from the same vocab GGUF as the lab's synthetic model
from synthetic import _copy_tokenizer, vocab_path
ALIGNMENT = 32  # GGUF default


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    n_layer: int = 4
    n_embd: int = 256
    n_ff: int = 512
    n_head: int = 4
    n_head_kv: int = 4
    head_dim: int | None = None   # default n_embd // n_head
    n_vocab: int = 512            # ignored when a tokenizer is copied (its size wins)
    n_expert: int = 0             # > 0: MoE FFN with 3-D expert tensors
    n_expert_used: int = 2
    tied: bool = False            # no output.weight: the token embeddings are the output
    extra_params: int = 0         # length of a 1-D F32 rope_freqs tensor, to tune the parameter count
    context_length: int = 2048
    arch: str = "llama"           # or "gemma3": post-norms, q/k norms and a sliding window;
                                  # or "falcon": fused attn_qkv, no ffn_gate, LayerNorm with biases

    @property
    def hd(self) -> int:
        return self.head_dim or self.n_embd // self.n_head


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]   # numpy order: (..., rows, cols); GGUF ne0 = cols
    dtype: type

    @property
    def n_per_row(self) -> int:
        return self.shape[-1]

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape))

    @property
    def nbytes(self) -> int:
        return self.n_elements * np.dtype(self.dtype).itemsize


# runnable models of each architecture `hifikit degrid` supports: GQA (2 q heads per kv head) and a
# head_dim of its own, so the value-head permutation is exercised
ARCH_SPECS = {
    "llama": ModelSpec(n_layer=2, n_embd=256, n_ff=512, n_head=4, n_head_kv=2, head_dim=64),
    "gemma3": ModelSpec(n_layer=2, n_embd=256, n_ff=512, n_head=4, n_head_kv=2, head_dim=64, tied=True,
                        arch="gemma3"),
}


def tensors(spec: ModelSpec) -> Iterator[TensorSpec]:
    """The model's tensors in file order."""
    s, f16, f32 = spec, np.float16, np.float32
    q_dim, kv_dim = s.n_head * s.hd, s.n_head_kv * s.hd
    if s.arch == "falcon":
        yield from _falcon_tensors(s)
        return
    yield TensorSpec("token_embd.weight", (s.n_vocab, s.n_embd), f16)
    if s.extra_params:
        yield TensorSpec("rope_freqs.weight", (s.extra_params,), f32)
    for i in range(s.n_layer):
        p = f"blk.{i}."
        yield TensorSpec(p + "attn_norm.weight", (s.n_embd,), f32)
        yield TensorSpec(p + "attn_q.weight", (q_dim, s.n_embd), f16)
        yield TensorSpec(p + "attn_k.weight", (kv_dim, s.n_embd), f16)
        yield TensorSpec(p + "attn_v.weight", (kv_dim, s.n_embd), f16)
        yield TensorSpec(p + "attn_output.weight", (s.n_embd, q_dim), f16)
        if s.arch == "gemma3":
            yield TensorSpec(p + "attn_q_norm.weight", (s.hd,), f32)
            yield TensorSpec(p + "attn_k_norm.weight", (s.hd,), f32)
            yield TensorSpec(p + "post_attention_norm.weight", (s.n_embd,), f32)
        yield TensorSpec(p + "ffn_norm.weight", (s.n_embd,), f32)
        if s.n_expert:
            yield TensorSpec(p + "ffn_gate_inp.weight", (s.n_expert, s.n_embd), f32)
            yield TensorSpec(p + "ffn_gate_exps.weight", (s.n_expert, s.n_ff, s.n_embd), f16)
            yield TensorSpec(p + "ffn_up_exps.weight", (s.n_expert, s.n_ff, s.n_embd), f16)
            yield TensorSpec(p + "ffn_down_exps.weight", (s.n_expert, s.n_embd, s.n_ff), f16)
        else:
            yield TensorSpec(p + "ffn_gate.weight", (s.n_ff, s.n_embd), f16)
            yield TensorSpec(p + "ffn_up.weight", (s.n_ff, s.n_embd), f16)
            yield TensorSpec(p + "ffn_down.weight", (s.n_embd, s.n_ff), f16)
        if s.arch == "gemma3":
            yield TensorSpec(p + "post_ffw_norm.weight", (s.n_embd,), f32)
    yield TensorSpec("output_norm.weight", (s.n_embd,), f32)
    if not s.tied:
        yield TensorSpec("output.weight", (s.n_vocab, s.n_embd), f16)


def _falcon_tensors(s: ModelSpec) -> Iterator[TensorSpec]:
    """Falcon's layout (llama.cpp's src/models/falcon.cpp): one fused attn_qkv, an ffn without gate."""
    f16, f32 = np.float16, np.float32
    kv_dim = s.n_head_kv * s.hd
    yield TensorSpec("token_embd.weight", (s.n_vocab, s.n_embd), f16)
    for i in range(s.n_layer):
        p = f"blk.{i}."
        yield TensorSpec(p + "attn_norm.weight", (s.n_embd,), f32)
        yield TensorSpec(p + "attn_norm.bias", (s.n_embd,), f32)
        yield TensorSpec(p + "attn_qkv.weight", (s.n_embd + 2 * kv_dim, s.n_embd), f16)
        yield TensorSpec(p + "attn_output.weight", (s.n_embd, s.n_embd), f16)
        yield TensorSpec(p + "ffn_up.weight", (s.n_ff, s.n_embd), f16)
        yield TensorSpec(p + "ffn_down.weight", (s.n_embd, s.n_ff), f16)
    yield TensorSpec("output_norm.weight", (s.n_embd,), f32)
    yield TensorSpec("output_norm.bias", (s.n_embd,), f32)
    if not s.tied:
        yield TensorSpec("output.weight", (s.n_vocab, s.n_embd), f16)


def n_params(spec: ModelSpec) -> int:
    """Parameter count as llama-quantize --hifi counts it: elements summed over all tensors."""
    return sum(t.n_elements for t in tensors(spec))


def _pad(n: int) -> int:
    return (n + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT


def write_model(path: Path | str, spec: ModelSpec, *, sparse: bool = True,
                tokenizer: bool = False, seed: int = 0, split_max_tensors: int = 0,
                extra_u32: dict[str, int] | None = None) -> Path:
    """Write spec as a GGUF at path (atomically) and return path.

    tokenizer=True copies the llama SPM tokenizer and sets n_vocab from it.
    extra_u32 adds KV fields of type u32 (e.g. a malformed split.count).
    split_max_tensors > 0 writes a split model (random weights only, not atomic) named
    like llama.cpp's splits (STEM-00001-of-0000N.gguf) and returns its first file.
    """
    import gguf

    path = Path(path)
    if split_max_tensors and sparse:
        raise ValueError("a split model is written with its weights (sparse=False)")
    tmp = path if split_max_tensors else path.with_name(path.name + ".tmp")
    writer = gguf.GGUFWriter(tmp, spec.arch, split_max_tensors=split_max_tensors)
    if tokenizer:
        n_vocab = _copy_tokenizer(writer, vocab_path())
        spec = dataclasses.replace(spec, n_vocab=n_vocab)
    s = spec
    writer.add_name(f"hifikit-ftype-test-{s.n_layer}x{s.n_embd}")
    writer.add_block_count(s.n_layer)
    writer.add_context_length(s.context_length)
    writer.add_embedding_length(s.n_embd)
    writer.add_feed_forward_length(s.n_ff)
    writer.add_head_count(s.n_head)
    writer.add_head_count_kv(s.n_head_kv)
    writer.add_key_length(s.hd)
    writer.add_value_length(s.hd)
    writer.add_rope_dimension_count(s.hd)
    if s.arch == "falcon":
        writer.add_layer_norm_eps(1e-5)
    else:
        writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(s.n_vocab)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    if s.arch == "gemma3":
        writer.add_sliding_window(64)
    if s.n_expert:
        writer.add_expert_count(s.n_expert)
        writer.add_expert_used_count(s.n_expert_used)
    for key, value in (extra_u32 or {}).items():
        writer.add_uint32(key, value)

    specs = list(tensors(s))
    try:
        if sparse:
            for t in specs:
                writer.add_tensor_info(t.name, t.shape, np.dtype(t.dtype), t.nbytes)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
        else:
            rng = np.random.default_rng(seed)
            for t in specs:
                writer.add_tensor(t.name, _random_tensor(rng, t))
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
    finally:
        writer.close()
    if split_max_tensors:
        first = writer.format_shard_names(path)[0]
        return first
    if sparse:
        # the data region is a hole: header, padding, then every tensor padded to the alignment
        data_start = _pad(tmp.stat().st_size)
        os.truncate(tmp, data_start + sum(_pad(t.nbytes) for t in specs))
    tmp.replace(path)
    return path


def _random_tensor(rng: np.random.Generator, t: TensorSpec) -> np.ndarray:
    if len(t.shape) == 1:
        return (1.0 + 0.1 * rng.standard_normal(t.shape)).astype(t.dtype)
    scale = 1.0 / np.sqrt(t.n_per_row)
    w = rng.standard_normal(t.shape, dtype=np.float32) * scale
    # a few large weights per row, as real models have (K-quants and HIFI outliers care)
    flat = w.reshape(-1, t.n_per_row)
    idx = rng.integers(0, t.n_per_row, size=(flat.shape[0], 2))
    np.put_along_axis(flat, idx, 12.0 * scale * rng.choice([-1.0, 1.0], size=idx.shape), axis=1)
    return w.astype(t.dtype)


# --------------------------------------------------------------------------
# reading a GGUF's tensor table without gguf-py (whose type tables may not know the HIFI ids)

_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


@dataclasses.dataclass(frozen=True)
class TensorEntry:
    name: str
    ne: tuple[int, ...]
    type_id: int
    offset: int   # absolute file offset of the data


@dataclasses.dataclass(frozen=True)
class GGUFIndex:
    tensors: dict[str, TensorEntry]
    scalars: dict[str, int | float | bool]   # the scalar KV fields (strings and arrays left out)


def read_index(path: Path | str) -> GGUFIndex:
    """Tensor table (names, shapes, ggml type ids, data offsets) and scalar KVs of a GGUF file."""
    import struct

    data = Path(path).read_bytes()
    pos = 0

    def take(fmt: str):
        nonlocal pos
        (value,) = struct.unpack_from(fmt, data, pos)
        pos += struct.calcsize(fmt)
        return value

    def string() -> str:
        nonlocal pos
        n = take("<Q")
        pos += n
        return data[pos - n:pos].decode()

    def skip_value(vtype: int) -> None:
        if vtype == 8:
            string()
        elif vtype == 9:
            sub, n = take("<I"), take("<Q")
            for _ in range(n):
                skip_value(sub)
        else:
            take(_SCALAR[vtype])

    if data[:4] != b"GGUF":
        raise ValueError(f"{path} is not a GGUF file")
    pos = 4
    take("<I")  # version
    n_tensors, n_kv = take("<Q"), take("<Q")
    scalars: dict[str, int | float | bool] = {}
    for _ in range(n_kv):
        key, vtype = string(), take("<I")
        if vtype in _SCALAR:
            scalars[key] = take(_SCALAR[vtype])
        else:
            skip_value(vtype)
    alignment = int(scalars.get("general.alignment", ALIGNMENT))
    infos = []
    for _ in range(n_tensors):
        name, n_dims = string(), take("<I")
        ne = tuple(take("<Q") for _ in range(n_dims))
        infos.append((name, ne, take("<I"), take("<Q")))
    start = (pos + alignment - 1) // alignment * alignment
    tensors = {name: TensorEntry(name, ne, type_id, start + off) for name, ne, type_id, off in infos}
    return GGUFIndex(tensors, scalars)


def tensor_bytes(path: Path | str, entry: TensorEntry, n: int) -> bytes:
    """The first n bytes of a tensor's data."""
    with open(path, "rb") as f:
        f.seek(entry.offset)
        return f.read(n)


def write_imatrix(path: Path | str, spec: ModelSpec, *, seed: int = 0, n_vocab: int | None = None) -> Path:
    """An importance matrix GGUF (in_sum2 / counts per 2-D weight) for a model of this spec.

    A few columns per tensor get a much larger importance, so an importance-aware
    quantizer chooses differently than without it.
    """
    import gguf

    path = Path(path)
    rng = np.random.default_rng(seed)
    tmp = path.with_name(path.name + ".tmp")
    writer = gguf.GGUFWriter(tmp, "llama")
    writer.add_string("general.type", "imatrix")
    writer.add_array("imatrix.datasets", ["synthetic"])
    writer.add_uint32("imatrix.chunk_count", 10)
    writer.add_uint32("imatrix.chunk_size", 512)
    for t in tensors(spec):
        if len(t.shape) < 2 or t.name.startswith(("token_embd", "output")) or "_norm" in t.name:
            continue
        n_mat = t.shape[0] if len(t.shape) == 3 else 1
        sums = rng.uniform(0.5, 1.5, size=(n_mat, t.n_per_row)).astype(np.float32)
        hot = rng.integers(0, t.n_per_row, size=(n_mat, max(1, t.n_per_row // 64)))
        np.put_along_axis(sums, hot, 400.0, axis=1)
        counts = np.full(n_mat, 5120.0, dtype=np.float32)
        writer.add_tensor(t.name + ".in_sum2", (sums * counts[:, None]).reshape(-1))
        writer.add_tensor(t.name + ".counts", counts)
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    tmp.replace(path)
    return path
