"""The exact byte size of the GGUF that ``llama-quantize`` writes for a per-tensor type assignment.

Mirrors ``llama_model_quantize_impl`` (src/llama-quant.cpp) and ``gguf_write_out``
(ggml/src/gguf.cpp) at the pinned commit:

- header: magic, version (u32), tensor count (u64), KV count (u64): 24 bytes;
- the KV pairs of the input, as ``gguf_set_kv`` copies them, with
  ``general.quantization_version`` and ``general.file_type`` set (u32),
  ``split.*`` removed and, with an imatrix, the ``quantize.imatrix.*`` keys
  that tools/quantize/quantize.cpp adds (file and dataset strings cut at 127
  bytes, entry and chunk counts as u32);
- one tensor info per tensor: name, ``ggml_n_dims`` dims, type, offset;
- the metadata padded to 32 bytes, then each tensor's data padded to 32.

The output context starts from ``gguf_init_empty()``, so its alignment is
GGUF_DEFAULT_ALIGNMENT (32) even when the input carries ``general.alignment``
(the key is copied, the context's alignment is not); llama-quant.cpp pads the
data with GGUF_DEFAULT_ALIGNMENT too. Tensor data bytes are row-size
arithmetic, as ``ggml_row_size`` computes them.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Iterable, Mapping

from .. import ggml, gguf_io
from ..quant_rules import allows_quantization, n_dims
from ..errors import HifikitError

log = logging.getLogger(__name__)

ALIGNMENT = 32                      # GGUF_DEFAULT_ALIGNMENT
HEADER_BYTES = 4 + 4 + 8 + 8        # magic, version, n_tensors, n_kv
IMATRIX_STR_MAX = 127               # strncpy(kvo.val_str, ..., 127) in quantize.cpp
SET_U32_KEYS = ("general.quantization_version", "general.file_type")
REMOVED_KEYS = ("split.no", "split.count", "split.tensors.count")
KEY_IMATRIX_FILE = "quantize.imatrix.file"
KEY_IMATRIX_DATASET = "quantize.imatrix.dataset"
KEY_IMATRIX_ENTRIES = "quantize.imatrix.entries_count"
KEY_IMATRIX_CHUNKS = "quantize.imatrix.chunks_count"


def pad(n: int, align: int = ALIGNMENT) -> int:
    return (n + align - 1) // align * align


def kv_u32_bytes(key: str) -> int:
    return 8 + len(key.encode()) + 4 + 4


def kv_str_bytes(key: str, value: str) -> int:
    return 8 + len(key.encode()) + 4 + 8 + len(value.encode())


@dataclasses.dataclass(frozen=True)
class TensorSlot:
    name: str
    shape: tuple[int, ...]      # ggml order: shape[0] is the row length
    source_type: str
    n_elements: int
    quantizable: bool           # llama-quantize may change its type (quant_rules.allows_quantization)

    @property
    def row_length(self) -> int:
        return self.shape[0]

    @property
    def n_rows(self) -> int:
        return self.n_elements // self.shape[0]

    @property
    def info_bytes(self) -> int:
        """Its tensor info: name (u64 length + bytes), n_dims (u32), ne (i64 each), type (u32), offset (u64)."""
        return 8 + len(self.name.encode()) + 4 + 8 * n_dims(self.shape) + 4 + 8


@dataclasses.dataclass(frozen=True)
class ImatrixKeys:
    """What quantize.cpp writes for --imatrix FILE: the path as given on its command line."""
    file: str
    dataset: str | None
    has_chunks: bool

    @classmethod
    def from_file(cls, path: Path | str, as_given: str | None = None) -> "ImatrixKeys":
        summary = gguf_io.imatrix_summary(path)
        datasets = summary.get("datasets") or []
        chunks = summary.get("chunks")
        return cls(as_given if as_given is not None else str(path), datasets[0] if datasets else None,
                   bool(chunks) and int(chunks) > 0)


def _cut(value: str, limit: int = IMATRIX_STR_MAX) -> str:
    raw = value.encode()[:limit]
    return raw.decode(errors="ignore") if len(raw) == limit else value


@dataclasses.dataclass
class FileLayout:
    """The input model's metadata and tensors: everything the output size depends on besides the types."""
    path: str
    kv: dict[str, int]          # key -> serialized bytes of that KV pair in the input
    tensors: list[TensorSlot]

    @classmethod
    def read(cls, path: Path | str) -> "FileLayout":
        """From the header alone (gguf_io.tensor_index: 0.08 s on Gemma 3 270M, where gguf-py's reader
        builds a numpy view of each of its 262k vocabulary strings)."""
        index = gguf_io.tensor_index(path)
        names = gguf_io.type_names()
        tensors = [TensorSlot(t.name, t.shape, names.get(t.type_id, str(t.type_id)), t.n_elements,
                              allows_quantization(t.name, t.shape, index.architecture))
                   for t in index.tensors]
        return cls(str(path), dict(index.kv_sizes), tensors)

    def tensor(self, name: str) -> TensorSlot:
        for t in self.tensors:
            if t.name == name:
                return t
        raise HifikitError(f"{self.path}: no tensor '{name}'")

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tensors]

    def kv_bytes(self, imatrix: ImatrixKeys | None = None, hifi: bool = False) -> int:
        """The output's KV pairs; hifi: whether it has HIFI tensors (llama-quantize then writes the format
        version key, and drops one the input had when it has none)."""
        kv = {k: v for k, v in self.kv.items() if k not in REMOVED_KEYS and k != gguf_io.HIFI_FORMAT_KEY}
        for key in SET_U32_KEYS:
            kv[key] = kv_u32_bytes(key)
        if hifi:
            kv[gguf_io.HIFI_FORMAT_KEY] = kv_u32_bytes(gguf_io.HIFI_FORMAT_KEY)
        if imatrix is not None:
            kv[KEY_IMATRIX_FILE] = kv_str_bytes(KEY_IMATRIX_FILE, _cut(imatrix.file))
            if imatrix.dataset is not None:
                kv[KEY_IMATRIX_DATASET] = kv_str_bytes(KEY_IMATRIX_DATASET, _cut(imatrix.dataset))
            kv[KEY_IMATRIX_ENTRIES] = kv_u32_bytes(KEY_IMATRIX_ENTRIES)
            if imatrix.has_chunks:
                kv[KEY_IMATRIX_CHUNKS] = kv_u32_bytes(KEY_IMATRIX_CHUNKS)
        return sum(kv.values())

    def meta_bytes(self, imatrix: ImatrixKeys | None = None, hifi: bool = False) -> int:
        """Header, KV pairs and tensor infos, padded: where the tensor data starts."""
        return pad(HEADER_BYTES + self.kv_bytes(imatrix, hifi) + sum(t.info_bytes for t in self.tensors))


def tensor_bytes(slot: TensorSlot, type_name: str) -> int:
    """Bytes of this tensor's data in type_name (unpadded); an error if the type cannot hold its rows."""
    t = ggml.load().type_by_name(type_name)
    if slot.row_length % t.block_size:
        raise HifikitError(f"{slot.name}: row length {slot.row_length} is not a multiple of "
                           f"{t.name}'s block size {t.block_size}")
    return t.row_size(slot.row_length) * slot.n_rows


def padded_bytes(slot: TensorSlot, type_name: str) -> int:
    """What this tensor costs in the file: its data padded to the alignment."""
    return pad(tensor_bytes(slot, type_name))


def file_size(layout: FileLayout, types: Mapping[str, str], imatrix: ImatrixKeys | None = None) -> int:
    """Exact size of llama-quantize's output when tensor name -> type is `types` (every tensor named)."""
    missing = [t.name for t in layout.tensors if t.name not in types]
    if missing:
        raise HifikitError(f"no type for {len(missing)} tensor(s): {', '.join(missing[:5])}")
    return (layout.meta_bytes(imatrix, has_hifi(types.values()))
            + sum(padded_bytes(t, types[t.name]) for t in layout.tensors))


def has_hifi(type_names: Iterable[str]) -> bool:
    """Whether any of the types is a HIFI type (the file then carries the HIFI format version key)."""
    return any(ggml.is_hifi_type(n) for n in type_names)


def tensor_types(path: Path | str) -> dict[str, str]:
    """Tensor name -> type name of a GGUF, read from its header only."""
    return {name: type_name for name, _, type_name in gguf_io.tensor_types(path)}
