"""Grid detection: tensors of a float model that re-quantize almost losslessly to some type.

A model that was published quantized and dequantized to F16/BF16 keeps every
block of every row on the published grid, so re-quantizing a tensor to that
type gives back the same values: a relative squared error at the level of the
F16 rounding (1e-8), where continuous weights give 1e-5 and more even at Q8_0
(8 bits per weight: step = max|x| / 127 over 32 weights). A per-tensor
measurement then "finds" the published types, and gains over stock ftypes
measured on such a model are overstated. ``hifikit degrid`` writes a twin
of the model without the grid (degrid.py).

The check quantizes a sample of rows of every quantizable tensor to each
probe type through the built ggml (the code llama-quantize runs) and reports,
per tensor, the cheapest type whose relative error is below GRID_ERROR.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from . import ggml, gguf_io
from .errors import HifikitError
from .quant_rules import allows_quantization

log = logging.getLogger(__name__)

# what a de-gridded twin (degrid.py) carries in its header, and every file quantized from it after it
KEY_SEED = "hifikit.degrid.seed"
KEY_SOURCE = "hifikit.degrid.source"

# relative squared error below which a re-quantization counts as lossless: F16 rounding of values on
# the grid gives ~1e-8; Q8_0 of continuous weights gives ~2e-5 (its step is max|x|/127 of 32 weights)
GRID_ERROR = 1e-6
# the types published GGUFs are made of (the K-quants, the legacy 32-blocks, the non-linear 4-bit ones)
PROBE_TYPES = ("q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q2_K", "q3_K", "q4_K", "q5_K", "q6_K", "iq4_nl", "iq4_xs")
SAMPLE_ROWS = 32


@dataclasses.dataclass(frozen=True)
class GridTensor:
    tensor: str
    type: str          # the cheapest probe type that rebuilds the sampled rows
    error: float       # its relative squared error


@dataclasses.dataclass
class GridReport:
    model: str
    checked: int                     # quantizable float tensors checked
    on_grid: list[GridTensor]
    degrid_seed: int | None          # the model is a `hifikit degrid` twin with this seed
    degrid_source: str | None

    @property
    def detected(self) -> bool:
        return bool(self.on_grid)

    @property
    def by_type(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for t in self.on_grid:
            counts[t.type] = counts.get(t.type, 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: -kv[1]))

    def message(self) -> str | None:
        """One paragraph for people, None when there is nothing to say."""
        if not self.detected:
            if self.degrid_seed is not None:
                return (f"de-gridded twin of {self.degrid_source} (seed {self.degrid_seed}): no tensor re-quantizes "
                        "losslessly, a fair benchmark")
            return None
        kinds = ", ".join(f"{t} on {n}" for t, n in self.by_type.items())
        return (f"grid detected: {len(self.on_grid)} of {self.checked} tensors re-quantize almost losslessly "
                f"(relative error < {GRID_ERROR:g}): {kinds}. The model was most likely published quantized and "
                "dequantized; gains over stock ftypes measured on it are overstated, because per-tensor "
                f"measurements re-find the published types. 'hifikit degrid {Path(self.model).name} OUT.gguf' "
                "writes an equivalent twin without the grid for a fair benchmark.")

    def to_json(self) -> dict:
        return {"model": self.model, "detected": self.detected, "checked": self.checked,
                "threshold": GRID_ERROR, "by_type": self.by_type,
                "tensors": [dataclasses.asdict(t) for t in self.on_grid],
                "degrid_seed": self.degrid_seed, "degrid_source": self.degrid_source, "message": self.message()}


def _sample_rows(n_rows: int, k: int) -> list[tuple[int, int]]:
    """Up to k rows as (start, count) runs spread over the tensor (4 runs, contiguous reads)."""
    if n_rows <= k:
        return [(0, n_rows)]
    runs = 4
    per = k // runs
    return [(int(i * (n_rows - per) / (runs - 1)), per) for i in range(runs)]


def relative_error(lib: ggml.GGML, type_id: int, x: np.ndarray) -> float:
    q = lib.dequantize(type_id, lib.quantize(type_id, x), x.shape[1])
    den = float(np.einsum("ij,ij->", x, x, dtype=np.float64))
    diff = q - x
    num = float(np.einsum("ij,ij->", diff, diff, dtype=np.float64))
    return num / den if den > 0 else 0.0


def detect(model: Path | str, types: Sequence[str] = PROBE_TYPES, sample_rows: int = SAMPLE_ROWS) -> GridReport:
    """Check every quantizable F32/F16/BF16 tensor of the model (a sample of its rows)."""

    index = gguf_io.tensor_index(model)
    lib = ggml.load()
    probes = []
    for name in types:
        t = lib.type_by_name(name)
        if lib.requires_imatrix(t.id):
            raise HifikitError(f"grid probe type {name} needs an importance matrix")
        probes.append(t)
    probes.sort(key=lambda t: t.bits_per_weight)
    float_ids = {lib.type_by_name(n).id for n in ("f32", "f16", "bf16")}
    on_grid = []
    checked = 0
    for t in index.tensors:
        if t.type_id not in float_ids or not allows_quantization(t.name, t.shape, index.architecture):
            continue
        checked += 1
        n_rows = t.n_elements // t.shape[0]
        x = np.concatenate([gguf_io.read_rows(index.path, t.offset, t.type_id, t.shape[0], r0, n)
                            for r0, n in _sample_rows(n_rows, sample_rows)])
        if not np.isfinite(x).all():
            raise HifikitError(f"{model}: {t.name} has non-finite weights")
        for p in probes:
            if t.shape[0] % p.block_size:
                continue
            err = relative_error(lib, p.id, x)
            if err < GRID_ERROR:
                on_grid.append(GridTensor(t.name, p.name, err))
                break
    seed = index.value(KEY_SEED)
    report = GridReport(str(Path(model).resolve()), checked, on_grid, seed if isinstance(seed, int) else None,
                        index.value(KEY_SOURCE))
    log.info("grid check of %s: %d of %d tensors on a grid %s", model, len(on_grid), checked, report.by_type)
    return report
