"""``hifikit degrid``: the same model with its weights off every quantization grid.

A model published quantized (Gemma 3 270M as Q4_K_M, SmolLM2 as Q4_1) and
dequantized to F16 still has every block of every row on the published grid:
re-quantizing a tensor to its published type is nearly lossless, so any method
that measures per-tensor errors "finds" the published types and looks better
than it is on a model that was never quantized.

The twin written here computes the same function with every row's block
membership scrambled. Three kinds of permutation, applied to whole channels
(values are moved, never changed):

- ``P``, the residual stream (n_embd): the input columns (ne0) of every matrix
  that reads the residual stream (token_embd, output, attn_q/k/v, ffn_gate/up),
  the output rows (ne1) of every matrix that writes it (attn_output, ffn_down)
  and every residual-space norm (attn_norm, ffn_norm, the Gemma post-norms,
  output_norm);
- ``F_l``, the FFN hidden units of layer l: rows of ffn_gate and ffn_up,
  columns of ffn_down (the gated activation is element-wise);
- ``V_l``, the value-head dimensions of layer l, one permutation per kv head:
  rows of attn_v, and the same columns of attn_output for every q head that
  reads that kv head (q head h reads kv head h // (n_head / n_head_kv), ggml's
  broadcast in the attention product).

q and k rows are left alone: RoPE rotates pairs of them and the q/k norms
(Gemma 3, Qwen 3) act per head dimension. Every tensor of a supported
architecture has a rule (``TENSOR_RULES``); any other tensor is an error
before anything is written, so a file is never half de-gridded.

The output has the input's header with ``hifikit.degrid.*`` keys added (the
seed and the source file's name), so later files quantized from it say where
they came from; tensor data keep their relative offsets.
"""
from __future__ import annotations

import dataclasses
import logging
import re
import struct
import time
from pathlib import Path
from typing import Callable

import numpy as np

from . import atomic, ggml, gguf_io, grid
from .errors import HifikitError
from .grid import KEY_SEED, KEY_SOURCE

log = logging.getLogger(__name__)

ARCHITECTURES = ("llama", "gemma3")
FLOAT_TYPES = {0: np.float32, 1: np.float16, 30: np.uint16}   # F32, F16, BF16 (moved as raw 16-bit values)

# what each tensor kind permutes: (rows = ne1, columns = ne0); "P" residual, "F" FFN hidden, "V" value dims,
# "Vo" the value dims of every q head (attn_output's columns), None: untouched
_BLOCK = re.compile(r"^blk\.(\d+)\.(.+)$")
TENSOR_RULES: dict[str, tuple[str | None, str | None]] = {
    "token_embd.weight": (None, "P"),
    "output.weight": (None, "P"),
    "output_norm.weight": (None, "P"),
    "rope_freqs.weight": (None, None),
    "attn_norm.weight": (None, "P"),
    "attn_q.weight": (None, "P"),
    "attn_k.weight": (None, "P"),
    "attn_v.weight": ("V", "P"),
    "attn_output.weight": ("P", "Vo"),
    "attn_q_norm.weight": (None, None),
    "attn_k_norm.weight": (None, None),
    "post_attention_norm.weight": (None, "P"),
    "ffn_norm.weight": (None, "P"),
    "ffn_gate.weight": ("F", "P"),
    "ffn_up.weight": ("F", "P"),
    "ffn_down.weight": ("P", "F"),
    "post_ffw_norm.weight": (None, "P"),
}


GLOBAL_TENSORS = ("token_embd.weight", "output.weight", "output_norm.weight", "rope_freqs.weight")


@dataclasses.dataclass
class DegridResult:
    input: str
    output: str
    seed: int
    architecture: str
    permuted: int            # tensors whose values moved
    unchanged: int           # tensors kept as they are (q/k norms, rope_freqs)
    file_bytes: int
    seconds: float
    grid_before: dict | None = None   # with check: grid.detect of the input and of the twin (GridReport.to_json)
    grid_after: dict | None = None


@dataclasses.dataclass(frozen=True)
class _Heads:
    n_head: int
    n_head_kv: int
    head_dim_v: int


def _per_layer(value, layer: int, key: str) -> int:
    if isinstance(value, tuple):
        if layer >= len(value):
            raise HifikitError(f"{key} has {len(value)} entries, the model has a layer {layer}")
        value = value[layer]
    if not isinstance(value, int) or value <= 0:
        raise HifikitError(f"{key} is missing or not a positive integer")
    return int(value)


def _heads(index: gguf_io.TensorIndex, layer: int, n_embd: int) -> _Heads:
    arch = index.architecture
    n_head = _per_layer(index.value(f"{arch}.attention.head_count"), layer, f"{arch}.attention.head_count")
    kv_key = f"{arch}.attention.head_count_kv"
    n_head_kv = _per_layer(index.value(kv_key, index.value(f"{arch}.attention.head_count")), layer, kv_key)
    hd = index.value(f"{arch}.attention.value_length", n_embd // n_head)
    if n_head % n_head_kv:
        raise HifikitError(f"layer {layer}: {n_head} heads do not split into {n_head_kv} kv heads")
    return _Heads(n_head, n_head_kv, int(hd))


class _Permutations:
    """The permutations of one model: each drawn from its own generator seeded by (seed, kind, layer),
    so a permutation does not depend on the order tensors come in."""

    def __init__(self, seed: int, n_embd: int) -> None:
        self.seed = seed
        self.residual = np.random.default_rng([seed, 0]).permutation(n_embd)
        self._ffn: dict[int, np.ndarray] = {}
        self._value: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def ffn(self, layer: int, n_ff: int) -> np.ndarray:
        if layer not in self._ffn:
            self._ffn[layer] = np.random.default_rng([self.seed, 1, layer]).permutation(n_ff)
        perm = self._ffn[layer]
        if perm.size != n_ff:
            raise HifikitError(f"layer {layer}: FFN tensors disagree on the hidden size ({perm.size} vs {n_ff})")
        return perm

    def value(self, layer: int, heads: _Heads) -> tuple[np.ndarray, np.ndarray]:
        """(rows of attn_v, columns of attn_output) for this layer."""
        if layer not in self._value:
            rng = np.random.default_rng([self.seed, 2, layer])
            hd = heads.head_dim_v
            per_kv = [rng.permutation(hd) for _ in range(heads.n_head_kv)]
            v_rows = np.concatenate([g * hd + p for g, p in enumerate(per_kv)])
            group = heads.n_head // heads.n_head_kv
            o_cols = np.concatenate([h * hd + per_kv[h // group] for h in range(heads.n_head)])
            self._value[layer] = (v_rows, o_cols)
        return self._value[layer]


def _rule(name: str) -> tuple[int | None, str, tuple[str | None, str | None]]:
    m = _BLOCK.match(name)
    layer, kind = (int(m.group(1)), m.group(2)) if m else (None, name)
    if kind not in TENSOR_RULES or (m is None) != (kind in GLOBAL_TENSORS):
        raise HifikitError(f"{name}: no de-grid rule for this tensor (known: {', '.join(sorted(TENSOR_RULES))}); "
                           "nothing was written")
    return layer, kind, TENSOR_RULES[kind]


def plan_tensors(index: gguf_io.TensorIndex) -> list[tuple[gguf_io.IndexEntry, int | None, str,
                                                           tuple[str | None, str | None]]]:
    """Every tensor with its rule; one clear error for anything this module cannot move exactly."""
    if index.architecture not in ARCHITECTURES:
        raise HifikitError(f"{index.path}: architecture {index.architecture!r} is not supported by degrid "
                           f"(supported: {', '.join(ARCHITECTURES)})")
    if index.value(KEY_SEED) is not None:
        raise HifikitError(f"{index.path}: already a de-gridded twin (seed {index.value(KEY_SEED)}); "
                           "de-grid its source instead")
    out = []
    for t in index.tensors:
        layer, kind, rule = _rule(t.name)
        if rule != (None, None) and t.type_id not in FLOAT_TYPES:
            raise HifikitError(f"{t.name} is stored as ggml type {t.type_id}, not F32/F16/BF16: dequantize the "
                               "model first (hifikit quantize IN OUT --type F16 after --allow-requantize, or "
                               "llama-quantize --allow-requantize IN OUT F16); nothing was written")
        if len([d for d in t.shape if d > 1]) > 2:
            raise HifikitError(f"{t.name}: {len(t.shape)}-D tensors (experts) have no de-grid rule")
        out.append((t, layer, kind, rule))
    return out


def _kv_string(key: str, value: str) -> bytes:
    k, v = key.encode(), value.encode()
    return struct.pack("<Q", len(k)) + k + struct.pack("<I", 8) + struct.pack("<Q", len(v)) + v


def _kv_u32(key: str, value: int) -> bytes:
    k = key.encode()
    return struct.pack("<Q", len(k)) + k + struct.pack("<II", 4, value)


def degrid(src: Path | str, dst: Path | str, seed: int = 0,
           progress: Callable[[int, int], None] | None = None, check: bool = False) -> DegridResult:
    """Write the permuted twin of src to dst (atomically: no partial file on any error); with check, the grid
    check (grid.detect) of both files."""
    t0 = time.perf_counter()
    src, dst = Path(src), Path(dst)
    if not 0 <= seed < 2**32:
        raise HifikitError(f"--seed must be in [0, 2^32), got {seed}")
    index = gguf_io.tensor_index(src)
    if dst.resolve() == src.resolve():
        raise HifikitError(f"{dst}: output would overwrite the input")
    planned = plan_tensors(index)
    n_embd = index.value(f"{index.architecture}.embedding_length")
    if not isinstance(n_embd, int) or n_embd <= 0:
        raise HifikitError(f"{src}: {index.architecture}.embedding_length is missing")
    perms = _Permutations(seed, n_embd)

    with open(src, "rb") as f:
        head = f.read(index.info_end)
    extra = _kv_u32(KEY_SEED, seed) + _kv_string(KEY_SOURCE, src.name)
    # n_kv is at bytes 16..24: two more pairs, inserted after the last one
    header = head[:16] + struct.pack("<Q", index.n_kv + 2) + head[24:index.kv_end] + extra + \
        head[index.kv_end:index.info_end]
    align = index.alignment
    data_start = (len(header) + align - 1) // align * align
    permuted = unchanged = 0
    src_map = np.memmap(src, dtype=np.uint8, mode="r")
    with atomic.output_file(dst) as tmp:
        with open(tmp, "wb") as out:
            out.write(header)
            out.write(b"\0" * (data_start - len(header)))
            for i, (t, layer, kind, (rows_rule, cols_rule)) in enumerate(planned):
                rel = t.offset - index.data_start
                if out.tell() != data_start + rel:  # the input's padding between tensors, kept as is
                    out.write(bytes(src_map[index.data_start + out.tell() - data_start:t.offset]))
                n_bytes = _n_bytes(t)
                raw = src_map[t.offset:t.offset + n_bytes]
                if (rows_rule, cols_rule) == (None, None):
                    out.write(raw.tobytes())
                    unchanged += 1
                else:
                    arr = raw.view(FLOAT_TYPES[t.type_id]).reshape(-1, t.shape[0])
                    arr = _apply(arr, t, layer, rows_rule, cols_rule, perms, index, n_embd)
                    out.write(np.ascontiguousarray(arr).tobytes())
                    permuted += 1
                if progress:
                    progress(i + 1, len(planned))
            end = index.data_start + out.tell() - data_start
            if end < src_map.size:  # trailing padding of the input
                out.write(bytes(src_map[end:]))
    del src_map
    log.info("degrid %s -> %s: %d tensors permuted, %d kept (seed %d)", src, dst, permuted, unchanged, seed)
    res = DegridResult(str(src.resolve()), str(dst.resolve()), seed, index.architecture, permuted, unchanged,
                       dst.stat().st_size, time.perf_counter() - t0)
    if check:
        res.grid_before, res.grid_after = grid.detect(src).to_json(), grid.detect(dst).to_json()
    return res


def _n_bytes(t: gguf_io.IndexEntry) -> int:
    size = {0: 4, 1: 2, 30: 2}.get(t.type_id)
    if size is not None:
        return t.n_elements * size
    lib = ggml.load()
    return int(lib.base.ggml_row_size(t.type_id, t.shape[0])) * (t.n_elements // t.shape[0])


def _apply(arr: np.ndarray, t: gguf_io.IndexEntry, layer: int | None, rows_rule: str | None,
           cols_rule: str | None, perms: _Permutations, index: gguf_io.TensorIndex, n_embd: int) -> np.ndarray:
    """arr is (ne1, ne0); returns it with rows and columns moved by the tensor's rule."""
    def perm(rule: str, size: int, axis: str) -> np.ndarray:
        if rule == "P":
            p = perms.residual
        elif rule == "F":
            p = perms.ffn(layer, size)
        else:
            heads = _heads(index, layer, n_embd)
            v_rows, o_cols = perms.value(layer, heads)
            p = v_rows if rule == "V" else o_cols
        if p.size != size:
            raise HifikitError(f"{t.name}: its {axis} ({size}) do not match the model's "
                               f"{'embedding length' if rule == 'P' else 'head layout'} ({p.size})")
        return p

    if t.shape[0] != arr.shape[1] or (len(t.shape) == 1 and rows_rule):
        raise HifikitError(f"{t.name}: unexpected shape {t.shape}")
    if rows_rule:
        arr = arr[perm(rows_rule, arr.shape[0], "rows"), :]
    if cols_rule:
        arr = arr[:, perm(cols_rule, arr.shape[1], "columns")]
    return arr
