"""Per-tensor activation statistics of a GGUF imatrix, computed from the file.

Same definitions as ``llama-imatrix --show-statistics`` at the pin (mean
squared activation per input column = in_sum2 / counts; Σ, min, max, μ, σ,
% active (> 1e-5), entropy of the normalised values, ZD = share with z > 1,
cosine similarity of the raw sums with the previous block's same tensor).
The tool's own printout is not used because at the pin it can be lost: the
asynchronous logger is not flushed when the tool returns.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from . import gguf_io
from .parsers import ImatrixStat

_BLK_RE = re.compile(r"blk\.(\d+)\.")


def _layer_and_name(name: str) -> tuple[str, str]:
    parts = name.split(".")
    layer = next((parts[i + 1] for i, p in enumerate(parts[:-1]) if p == "blk"), "-")
    tensor = next((parts[i - 1] for i, p in enumerate(parts) if p == "weight" and i > 0), name)
    return layer, tensor


def statistics(path: Path | str) -> list[ImatrixStat]:
    reader = gguf_io.open_reader(path)
    tensors = {t.name: t for t in reader.tensors}
    sums: dict[str, np.ndarray] = {}
    rows: dict[str, ImatrixStat] = {}
    for name in sorted(n[: -len(".in_sum2")] for n in tensors if n.endswith(".in_sum2")):
        values = np.asarray(tensors[name + ".in_sum2"].data, dtype=np.float32).reshape(-1)
        counts = np.asarray(tensors[name + ".counts"].data, dtype=np.float32).reshape(-1)
        if counts.size == 0 or values.size % counts.size:
            continue
        per = values.reshape(counts.size, -1)
        keep = counts > 0
        if not keep.any():
            continue
        act = (per[keep] / counts[keep, None]).reshape(-1).astype(np.float64)
        total = float(act.sum())
        mean = total / act.size
        std = float(np.sqrt(max(0.0, float((act * act).mean()) - mean * mean)))
        active = 1.0 - float(np.count_nonzero(np.abs(act) <= 1e-5)) / act.size
        entropy = 0.0
        if total > 0:
            p = act / total
            p = p[p > 0]
            entropy = float(-(p * np.log2(p)).sum())
        zd = float(np.count_nonzero((act - mean) / std > 1)) / act.size if std > 0 else 0.0
        layer, tensor = _layer_and_name(name)
        rows[name] = ImatrixStat(layer, tensor, total, float(act.min()), float(act.max()), mean, std,
                                 100.0 * active, int(act.size), entropy,
                                 100.0 * entropy / np.log2(act.size) if act.size > 1 else 0.0, 100.0 * zd, 0.0)
        sums[name] = values.astype(np.float64)
    for name, row in rows.items():
        m = _BLK_RE.search(name)
        if not m:
            continue
        prev = name[: m.start(1)] + str(int(m.group(1)) - 1) + name[m.end(1):]
        if prev in sums and sums[prev].size == sums[name].size:
            a, b = sums[name], sums[prev]
            row.cos_sim = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    # the tool's order: by tensor name, then by Σ(act²) descending
    return sorted(rows.values(), key=lambda r: (r.tensor, -r.sum_act2))
