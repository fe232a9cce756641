"""Numpy reference for HIFI blocks, used by the tests to check the C code.

Written from the format description (docs/hifi-types.md), not from the C
source it checks. Only the base K-quant dequantization is borrowed, from
gguf-py's numpy code (upstream checks it against ggml bit for bit).

    block_qX_K_hifi = | base block_qX_K | res: fp16 x 8 | idx: u8 x 8 |
    weight[idx[i]] = dequant(base)[idx[i]] + res[i]    for i in 0..7, in order
"""
from __future__ import annotations

import dataclasses

import numpy as np

from hifikit.errors import HifikitError
from hifikit.gguf_io import require_gguf

QK_K = 256
HIFI_OUTLIERS = 8


@dataclasses.dataclass(frozen=True)
class HifiLayout:
    name: str                  # gguf-py spelling, e.g. "Q4_K_HIFI"
    base: str                  # the base K-quant, e.g. "Q4_K"
    base_size: int             # bytes of the base block
    half_offsets: tuple[int, ...]  # byte offsets of the base block's fp16 fields (d, dmin)

    @property
    def res_offset(self) -> int:
        return self.base_size

    @property
    def idx_offset(self) -> int:
        return self.base_size + 2 * HIFI_OUTLIERS

    @property
    def type_size(self) -> int:
        return self.base_size + 2 * HIFI_OUTLIERS + HIFI_OUTLIERS


# base block sizes and fp16 field offsets from the block_q*_K structs in ggml-common.h
LAYOUTS: dict[str, HifiLayout] = {
    lay.name: lay for lay in (
        # hmask[32] qs[64] scales[12] d
        HifiLayout("Q3_K_HIFI", "Q3_K", QK_K // 8 + QK_K // 4 + 12 + 2, (QK_K // 8 + QK_K // 4 + 12,)),
        # d dmin scales[12] qs[128]
        HifiLayout("Q4_K_HIFI", "Q4_K", 2 + 2 + 12 + QK_K // 2, (0, 2)),
        # d dmin scales[12] qh[32] qs[128]
        HifiLayout("Q5_K_HIFI", "Q5_K", 2 + 2 + 12 + QK_K // 8 + QK_K // 2, (0, 2)),
        # ql[128] qh[64] scales[16] d
        HifiLayout("Q6_K_HIFI", "Q6_K", QK_K // 2 + QK_K // 4 + QK_K // 16 + 2, (QK_K // 2 + QK_K // 4 + QK_K // 16,)),
    )
}


def layout(name: str) -> HifiLayout:
    try:
        return LAYOUTS[name.upper()]
    except KeyError:
        raise HifikitError(f"'{name}' is not a HIFI type ({', '.join(LAYOUTS)})") from None


def split_blocks(blob: bytes | np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(base bytes (n, base_size) u8, res (n, 8) fp16, idx (n, 8) u8), copies."""
    lay = layout(name)
    raw = np.frombuffer(bytes(blob), dtype=np.uint8) if not isinstance(blob, np.ndarray) else blob.view(np.uint8).ravel()
    if raw.size % lay.type_size:
        raise HifikitError(f"{raw.size} bytes is not a whole number of {lay.type_size}-byte {lay.name} blocks")
    blocks = raw.reshape(-1, lay.type_size)
    base = blocks[:, :lay.res_offset].copy()
    res = blocks[:, lay.res_offset:lay.idx_offset].copy().view(np.float16)
    idx = blocks[:, lay.idx_offset:].copy()
    return base, res, idx


def join_blocks(base: np.ndarray, res: np.ndarray, idx: np.ndarray) -> bytes:
    """Inverse of split_blocks: pack the three fields back into HIFI blocks."""
    res = np.ascontiguousarray(res, dtype=np.float16).view(np.uint8)
    return np.concatenate([np.asarray(base, dtype=np.uint8), res, np.asarray(idx, dtype=np.uint8)], axis=1).tobytes()


def dequantize_base(base: np.ndarray, base_name: str) -> np.ndarray:
    """(n, base_size) base blocks -> (n, 256) float32 with gguf-py's numpy dequantizer."""
    g = require_gguf()
    qtype = g.GGMLQuantizationType[base_name]
    return g.quants.dequantize(np.ascontiguousarray(base), qtype).reshape(-1, QK_K)


def dequantize(blob: bytes | np.ndarray, name: str) -> np.ndarray:
    """HIFI blocks -> flat float32 weights (n_blocks * 256)."""
    lay = layout(name)
    base, res, idx = split_blocks(blob, name)
    y = dequantize_base(base, lay.base)
    rows = np.arange(y.shape[0])
    res32 = res.astype(np.float32)
    # slot by slot, in order: within one slot each block has one index, so the
    # fancy-indexed add is exact; across slots equal indices accumulate
    for i in range(HIFI_OUTLIERS):
        y[rows, idx[:, i]] += res32[:, i]
    return y.reshape(-1)
