"""Reading GGUF files: the one module that imports gguf-py.

The build installs the patched gguf-py as ``hifikit._gguf`` so that HIFI type
ids are known; a plain ``gguf`` install is the fallback (stock types only).
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from . import ggml
from .errors import HifikitError

try:  # the patched private copy installed with the build
    from hifikit import _gguf as gguf  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - depends on the install
    try:
        import gguf  # type: ignore[no-redef]
    except ImportError:
        gguf = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

GGUF_MAGIC = b"GGUF"

# llama-quantize writes this key in every file with HIFI tensors (native/src/llama-hifi-format.h); a file
# with another version, or with HIFI tensors and no key, is refused here as by the build's model loader
HIFI_FORMAT_KEY = "hifi.format_version"
HIFI_FORMAT_VERSION = 1
_GGUF_UINT32 = 4
_GGUF_TYPE_NAMES = {0: "u8", 1: "i8", 2: "u16", 3: "i16", 4: "u32", 5: "i32", 6: "f32", 7: "bool", 8: "str",
                    9: "arr", 10: "u64", 11: "i64", 12: "f64"}


@dataclasses.dataclass
class TensorInfo:
    name: str
    shape: list[int]          # ggml order: ne[0] is the row length
    type: str                 # ggml_type_name spelling, e.g. "q4_K"
    type_id: int
    n_elements: int
    n_bytes: int

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.n_bytes / self.n_elements if self.n_elements else 0.0


@dataclasses.dataclass
class ModelInfo:
    path: str
    size: int
    architecture: str | None
    name: str | None
    file_type: int | None
    n_tensors: int
    n_elements: int
    tensor_bytes: int
    tensors: list[TensorInfo]
    types: dict[str, int]     # type name -> tensor count
    metadata: dict[str, Any]
    hifi_format: int | None = None  # the file's HIFI format version; None: no HIFI tensors and no key

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.tensor_bytes / self.n_elements if self.n_elements else 0.0

    @property
    def size_mib(self) -> float:
        return self.tensor_bytes / (1024 * 1024)

    def to_json(self, metadata: bool = True) -> dict[str, Any]:
        """What `hifikit inspect --json` prints: the fields, MiB and BPW (the KV metadata when asked)."""
        data = dataclasses.asdict(self)
        data["size_mib"] = self.size_mib
        data["bits_per_weight"] = self.bits_per_weight
        if not metadata:
            data.pop("metadata")
        return data


def require_gguf():
    """The gguf-py module in use (the patched hifikit._gguf, else gguf), or one line saying it is missing."""
    if gguf is None:
        raise HifikitError("the gguf package is missing: pip install gguf (or reinstall hifikit)")
    return gguf


def type_names() -> dict[int, str]:
    """Type names as the built ggml spells them; gguf-py's enum if the library is absent."""
    try:
        return {t.id: t.name for t in ggml.load().types()}
    except HifikitError:
        return {int(t): t.name for t in require_gguf().GGMLQuantizationType}


def _hifi_type_ids() -> set[int]:
    return {type_id for type_id, name in type_names().items() if ggml.is_hifi_type(name)}


def check_hifi_format(path: Path | str, value: Any, value_type: int | None,
                      tensors: list[tuple[str, int]]) -> int | None:
    """The HIFI format version of a file from its HIFI_FORMAT_KEY (value and GGUF value type, None if absent)
    and its (tensor name, type id) pairs; None for a file without HIFI tensors or key. A version this hifikit
    does not read, a key that is not a u32 and HIFI tensors without the key are one-line errors."""
    if value_type is not None:
        if value_type != _GGUF_UINT32:
            raise HifikitError(f"{path}: {HIFI_FORMAT_KEY} is a {_GGUF_TYPE_NAMES.get(value_type, value_type)}, "
                               "expected a u32: not a HIFI file this hifikit can read")
        if value != HIFI_FORMAT_VERSION:
            raise HifikitError(f"{path}: HIFI format version {value} is unknown to this hifikit, which reads "
                               f"version {HIFI_FORMAT_VERSION}: the file needs a hifikit (HIFI-enabled "
                               "llama.cpp) that knows that version")
        return int(value)
    hifi = _hifi_type_ids()
    names = type_names()
    for name, type_id in tensors:
        if type_id in hifi:
            raise HifikitError(f"{path}: tensor {name} has the HIFI type {names[type_id]} (id {type_id}) but the "
                               f"file has no {HIFI_FORMAT_KEY} key: it was not written by a HIFI-enabled "
                               "llama.cpp, refusing to read it as HIFI")
    return None


def hifi_format(reader, path: Path | str) -> int | None:
    """check_hifi_format of a GGUFReader of path."""
    field = reader.fields.get(HIFI_FORMAT_KEY)
    value_type = int(field.types[0]) if field is not None and field.types else None
    value = _field_value(field) if field is not None else None
    return check_hifi_format(path, value, value_type, [(t.name, int(t.tensor_type)) for t in reader.tensors])


def check_file(path: Path | str) -> Path:
    """A readable file that starts with the GGUF magic, or one clear error."""
    path = Path(path)
    if not path.exists():
        raise HifikitError(f"{path}: no such file")
    if not path.is_file():
        raise HifikitError(f"{path}: not a regular file")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise HifikitError(f"{path}: not a GGUF file (magic {magic!r}, expected {GGUF_MAGIC!r})")
    return path


def check_model(path: Path | str) -> Path:
    """A GGUF a job is to read, checked before the job starts (magic, header, tensor types, no truncation);
    its resolved path."""
    open_reader(path)
    return Path(path).resolve()


def open_reader(path: Path | str):
    """A GGUFReader, with truncated and malformed files turned into one line."""
    g = require_gguf()
    path = check_file(path)
    try:
        reader = g.GGUFReader(path)
    except (ValueError, IndexError, KeyError, OSError, TypeError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "type" in msg.lower() and ("not" in msg.lower() or "unknown" in msg.lower()) and "valid" in msg.lower():
            if g.__name__ == "hifikit._gguf":
                raise HifikitError(f"{path}: uses a tensor type this hifikit does not know ({msg}): a type of a "
                                   "newer llama.cpp, or a file of another fork") from exc
            raise HifikitError(f"{path}: uses a tensor type this gguf-py does not know ({msg}); "
                               "install hifikit with its build so the patched gguf-py is used") from exc
        raise HifikitError(f"{path}: truncated or malformed GGUF ({msg})") from exc
    size = path.stat().st_size
    end = max((t.data_offset + t.n_bytes for t in reader.tensors), default=0)
    if end > size:
        raise HifikitError(f"{path}: truncated GGUF (tensor data ends at byte {end}, file has {size})")
    hifi_format(reader, path)
    return reader


def _field_value(field) -> Any:
    try:
        value = field.contents()
    except Exception:  # noqa: BLE001 - odd fields are skipped, not fatal
        return None
    if isinstance(value, list) and len(value) > 16:
        return f"[{len(value)} items]"
    return value


def read_info(path: Path | str) -> ModelInfo:
    reader = open_reader(path)
    names = type_names()
    tensors = []
    for t in reader.tensors:
        type_id = int(t.tensor_type)
        tensors.append(TensorInfo(
            name=t.name, shape=[int(n) for n in t.shape], type=names.get(type_id, str(type_id)),
            type_id=type_id, n_elements=int(t.n_elements), n_bytes=int(t.n_bytes)))
    metadata = {k: _field_value(f) for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    counts: dict[str, int] = {}
    for t in tensors:
        counts[t.type] = counts.get(t.type, 0) + 1
    arch = metadata.get("general.architecture")
    ftype = metadata.get("general.file_type")
    return ModelInfo(
        path=str(path), size=Path(path).stat().st_size,
        architecture=arch if isinstance(arch, str) else None,
        name=metadata.get("general.name") if isinstance(metadata.get("general.name"), str) else None,
        file_type=int(ftype) if isinstance(ftype, int) else None,
        n_tensors=len(tensors), n_elements=sum(t.n_elements for t in tensors),
        tensor_bytes=sum(t.n_bytes for t in tensors), tensors=tensors, types=counts,
        # open_reader checked the key: absent, or the u32 version this hifikit reads
        metadata=metadata, hifi_format=metadata.get(HIFI_FORMAT_KEY))


def tensor_types(path: Path | str) -> list[tuple[str, list[int], str]]:
    """(name, shape, type name) of every tensor, from the header alone (tensor_index)."""
    names = type_names()
    return [(t.name, list(t.shape), names.get(t.type_id, str(t.type_id))) for t in tensor_index(path).tensors]


def general_type(path: Path | str) -> str | None:
    """The general.type KV ("model", "imatrix", ...), None if absent."""
    reader = open_reader(path)
    field = reader.fields.get("general.type")
    return _field_value(field) if field is not None else None


def imatrix_summary(path: Path | str) -> dict[str, Any]:
    """Chunks, chunk size, datasets and entry count of a GGUF imatrix file."""
    reader = open_reader(path)
    fields = {k: _field_value(f) for k, f in reader.fields.items()}
    entries = [t.name[:-len(".in_sum2")] for t in reader.tensors if t.name.endswith(".in_sum2")]
    return {
        "chunks": fields.get("imatrix.chunk_count"),
        "chunk_size": fields.get("imatrix.chunk_size"),
        "datasets": fields.get("imatrix.datasets") or [],
        "entries": len(entries),
    }


HIFI_SUFFIX = "_HIFI"


def hifi_type_ids() -> dict[str, int]:
    """HIFI type name -> ggml type id, as the gguf-py in use knows them."""
    g = require_gguf()
    ids = {t.name: int(t) for t in g.GGMLQuantizationType if t.name.endswith(HIFI_SUFFIX)}
    if not ids:
        raise HifikitError(f"the gguf-py in use ({g.__name__} from {g.__file__}) has no HIFI types: "
                           "install hifikit with its build so the patched copy hifikit._gguf is used")
    return ids


# ---- a fast tensor table: the header only, no gguf-py (its reader decodes every KV array) ----------

_SCALAR_FMT = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q",
               12: "<d"}
_STRING, _ARRAY = 8, 9
SMALL_ARRAY = 4096


@dataclasses.dataclass(frozen=True)
class IndexEntry:
    name: str
    shape: tuple[int, ...]    # ggml order
    type_id: int
    offset: int               # absolute file offset of the data

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclasses.dataclass(frozen=True)
class TensorIndex:
    path: str
    architecture: str | None
    tensors: list[IndexEntry]
    # where the header's parts end (byte offsets), for tools that rewrite a header (degrid.py)
    version: int = 3
    n_kv: int = 0
    kv_end: int = 0           # end of the KV pairs = start of the tensor infos
    info_end: int = 0         # end of the tensor infos
    alignment: int = 32
    data_start: int = 0       # info_end padded to the alignment: tensor offsets are relative to it
    keys: tuple[str, ...] = ()
    # scalar and string values, and scalar arrays of up to SMALL_ARRAY items (per-layer hparams)
    values: dict[str, Any] = dataclasses.field(default_factory=dict)
    # key -> bytes of the whole serialized KV pair (key, value type, value): what a copy of it costs
    kv_sizes: dict[str, int] = dataclasses.field(default_factory=dict)

    def value(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)


def _row_sizes(type_ids: set[int]) -> dict[int, tuple[int, int]]:
    """(block size, type size) per type id, from the built ggml (gguf-py's table without it)."""
    try:
        return {t.id: (t.block_size, t.type_size) for t in ggml.load().types() if t.id in type_ids}
    except HifikitError:
        g = require_gguf()
        return {int(t): g.GGML_QUANT_SIZES[t] for t in g.GGMLQuantizationType if int(t) in type_ids}


def tensor_index(path: Path | str) -> TensorIndex:
    """Tensor names, shapes, type ids and data offsets from the GGUF header (seconds faster than
    GGUFReader on a 262k-token vocabulary); malformed or truncated files give one clear error."""
    import mmap
    import struct

    path = check_file(path)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        pos = 0

        def take(fmt: str):
            nonlocal pos
            (value,) = struct.unpack_from(fmt, data, pos)
            pos += struct.calcsize(fmt)
            return value

        def string() -> str:
            nonlocal pos
            n = take("<Q")
            if pos + n > len(data):
                raise struct.error("string past the end of the file")
            pos += n
            return bytes(data[pos - n:pos]).decode("utf-8", errors="replace")

        def skip(vtype: int) -> None:
            nonlocal pos
            if vtype == _STRING:
                n = take("<Q")  # not `pos += take(...)`: that adds to pos as read before take moved it
                pos += n
            elif vtype == _ARRAY:
                sub, n = take("<I"), take("<Q")
                if sub in _SCALAR_FMT:
                    pos += n * struct.calcsize(_SCALAR_FMT[sub])
                else:
                    for _ in range(n):
                        skip(sub)
            elif vtype in _SCALAR_FMT:
                pos += struct.calcsize(_SCALAR_FMT[vtype])
            else:
                raise struct.error(f"unknown value type {vtype}")

        try:
            pos = 4
            version = take("<I")
            if version < 2:
                raise HifikitError(f"{path}: GGUF version {version} is not supported")
            n_tensors, n_kv = take("<Q"), take("<Q")
            keys: list[str] = []
            values: dict[str, Any] = {}
            kv_sizes: dict[str, int] = {}
            hifi_vtype = None
            for _ in range(n_kv):
                kv_start = pos
                key, vtype = string(), take("<I")
                keys.append(key)
                if key == HIFI_FORMAT_KEY:
                    hifi_vtype = vtype
                if vtype == _STRING:
                    values[key] = string()
                elif vtype in _SCALAR_FMT:
                    values[key] = take(_SCALAR_FMT[vtype])
                elif vtype == _ARRAY:
                    sub, n = struct.unpack_from("<IQ", data, pos)
                    if sub in _SCALAR_FMT and n <= SMALL_ARRAY:
                        pos += 12
                        values[key] = tuple(take(_SCALAR_FMT[sub]) for _ in range(n))
                    else:
                        skip(vtype)
                else:
                    skip(vtype)
                if pos > len(data):
                    raise struct.error(f"KV {key} runs past the end of the file")
                kv_sizes[key] = pos - kv_start
            arch = values.get("general.architecture")
            arch = arch if isinstance(arch, str) else None
            alignment = values.get("general.alignment", 32)
            if not isinstance(alignment, int) or isinstance(alignment, bool):
                alignment = 32
            kv_end = pos
            infos = []
            for _ in range(n_tensors):
                name, n_dims = string(), take("<I")
                shape = tuple(take("<Q") for _ in range(n_dims))
                infos.append((name, shape, take("<I"), take("<Q")))
        except struct.error as exc:
            raise HifikitError(f"{path}: truncated or malformed GGUF header ({exc})") from exc
        info_end = pos
        if alignment <= 0 or alignment & (alignment - 1):
            raise HifikitError(f"{path}: general.alignment {alignment} is not a power of two")
        start = (pos + alignment - 1) // alignment * alignment
        size = len(data)
    tensors = [IndexEntry(name, shape, type_id, start + off) for name, shape, type_id, off in infos]
    lib_sizes = _row_sizes({t.type_id for t in tensors})
    for t in tensors:
        if t.type_id not in lib_sizes:
            raise HifikitError(f"{path}: tensor {t.name} has type id {t.type_id}, which this hifikit does not "
                               "know: a type of a newer llama.cpp, or a file of another fork")
        block, type_size = lib_sizes[t.type_id]
        end = t.offset + t.n_elements // block * type_size
        if end > size:
            raise HifikitError(f"{path}: truncated GGUF (tensor {t.name} ends at byte {end}, file has {size})")
    check_hifi_format(path, values.get(HIFI_FORMAT_KEY), hifi_vtype, [(t.name, t.type_id) for t in tensors])
    return TensorIndex(str(path), arch, tensors, version, n_kv, kv_end, info_end, alignment, start, tuple(keys),
                       values, kv_sizes)


def read_rows(path: Path | str, offset: int, type_id: int, n_per_row: int, row0: int, n_rows: int
              ) -> Any:
    """Rows [row0, row0 + n_rows) of the tensor whose data start at byte offset, as a float32 numpy array
    (n_rows, n_per_row): F32/F16/BF16 read as they are, quantized types dequantized by the built ggml."""
    import numpy as np

    lib = ggml.load()
    name = lib.type_name(type_id)  # first: refuses an id without traits before ggml divides by its block size
    row_bytes = lib.base.ggml_row_size(type_id, n_per_row)
    start = offset + row0 * row_bytes
    if name in ("f32", "f16"):
        dtype = np.float32 if name == "f32" else np.float16
        raw = np.memmap(path, dtype=dtype, mode="r", offset=start, shape=(n_rows, n_per_row))
        return np.asarray(raw, dtype=np.float32)
    if name == "bf16":
        raw = np.memmap(path, dtype=np.uint16, mode="r", offset=start, shape=(n_rows, n_per_row))
        return (np.asarray(raw, dtype=np.uint32) << 16).view(np.float32)
    with open(path, "rb") as f:
        f.seek(start)
        blob = f.read(row_bytes * n_rows)
    return lib.dequantize(type_id, blob, n_per_row)
