"""The one place Python calls ggml: a ctypes binding to the built libggml-base.

Measurements in hifikit quantize with this library, so Python sees exactly
the bytes that ``llama-quantize`` writes.
"""
from __future__ import annotations

import ctypes
import dataclasses
from functools import lru_cache

import numpy as np

from . import paths
from .errors import HifikitError

# the ggml types the patch series adds (patch 0001), ggml_type_name spelling
HIFI_TYPES = ("q3_K_hifi", "q4_K_hifi", "q5_K_hifi", "q6_K_hifi")
_HIFI_LOWER = frozenset(n.lower() for n in HIFI_TYPES)


def is_hifi_type(type_name: str) -> bool:
    """Whether a type name (any case: ggml's q3_K_hifi, gguf-py's Q3_K_HIFI) is one of HIFI_TYPES."""
    return type_name.lower() in _HIFI_LOWER


_TO_FLOAT = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.POINTER(ctypes.c_float), ctypes.c_int64)


class _TypeTraits(ctypes.Structure):
    # mirrors struct ggml_type_traits in ggml.h at the pinned commit
    _fields_ = [
        ("type_name", ctypes.c_char_p),
        ("blck_size", ctypes.c_int64),
        ("blck_size_interleave", ctypes.c_int64),
        ("type_size", ctypes.c_size_t),
        ("is_quantized", ctypes.c_bool),
        ("to_float", ctypes.c_void_p),
        ("from_float_ref", ctypes.c_void_p),
    ]


@dataclasses.dataclass(frozen=True)
class GGMLType:
    id: int
    name: str
    block_size: int
    type_size: int
    is_quantized: bool
    can_dequantize: bool

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.type_size / self.block_size

    def row_size(self, n_per_row: int) -> int:
        return self.type_size * (n_per_row // self.block_size)


class GGML:
    """Loaded libggml-base (and libggml-cpu for CPU feature queries)."""

    def __init__(self) -> None:
        try:
            self.base = ctypes.CDLL(str(paths.library("ggml-base")))
        except OSError as exc:
            raise HifikitError(f"cannot load libggml-base: {exc}") from exc
        b = self.base
        b.ggml_get_type_traits.restype = ctypes.POINTER(_TypeTraits)
        b.ggml_get_type_traits.argtypes = [ctypes.c_int]
        b.ggml_row_size.restype = ctypes.c_size_t
        b.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
        b.ggml_quantize_requires_imatrix.restype = ctypes.c_bool
        b.ggml_quantize_requires_imatrix.argtypes = [ctypes.c_int]
        b.ggml_quantize_chunk.restype = ctypes.c_size_t
        b.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_float), ctypes.c_void_p,
                                          ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                                          ctypes.POINTER(ctypes.c_float)]
        b.ggml_validate_row_data.restype = ctypes.c_bool
        b.ggml_validate_row_data.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t]
        # GGML_TYPE_COUNT is not exported; the build records it from ggml.h
        self.type_count = int(paths.build_info()["ggml_type_count"])

    def _traits(self, type_id: int) -> _TypeTraits:
        if not 0 <= type_id < self.type_count:
            raise HifikitError(f"unknown ggml type id {type_id}")
        traits = self.base.ggml_get_type_traits(type_id).contents
        # ids in the gaps of the enum (removed types, ids left free for upstream's next types) have no traits
        if not traits.type_name or traits.blck_size == 0:
            raise HifikitError(f"ggml type id {type_id} is not a type of this build")
        return traits

    def type_name(self, type_id: int) -> str:
        """ggml_type_name of a type id (an error for an id the library does not have)."""
        return self._traits(type_id).type_name.decode()

    def types(self) -> list[GGMLType]:
        """Every type the library knows, removed ids skipped."""
        out = []
        for type_id in range(self.type_count):
            traits = self.base.ggml_get_type_traits(type_id).contents
            if not traits.type_name or traits.blck_size == 0:
                continue
            out.append(GGMLType(type_id, traits.type_name.decode(), int(traits.blck_size),
                                int(traits.type_size), bool(traits.is_quantized), bool(traits.to_float)))
        return out

    def type_by_name(self, name: str) -> GGMLType:
        wanted = name.lower()
        for t in self.types():
            if t.name.lower() == wanted:
                return t
        raise HifikitError(f"unknown ggml type '{name}'")

    def requires_imatrix(self, type_id: int) -> bool:
        return bool(self.base.ggml_quantize_requires_imatrix(type_id))

    def quantize(self, type_id: int, data: np.ndarray, imatrix: np.ndarray | None = None) -> bytes:
        """Quantize a 2-D float32 array (rows × n_per_row) with ggml_quantize_chunk."""
        data = np.ascontiguousarray(data, dtype=np.float32)
        if data.ndim != 2:
            raise HifikitError("quantize expects a 2-D array (rows, n_per_row)")
        nrows, n_per_row = data.shape
        t = self._traits(type_id)
        if n_per_row % t.blck_size:
            raise HifikitError(f"row length {n_per_row} is not a multiple of "
                               f"{t.type_name.decode()}'s block size {t.blck_size}")
        if imatrix is not None:
            imatrix = np.ascontiguousarray(imatrix, dtype=np.float32)
            if imatrix.shape != (n_per_row,):
                raise HifikitError(f"importance has shape {imatrix.shape}, expected ({n_per_row},)")
        elif self.requires_imatrix(type_id):
            raise HifikitError(f"{t.type_name.decode()} requires an importance matrix")
        out = ctypes.create_string_buffer(self.base.ggml_row_size(type_id, n_per_row) * nrows)
        imatrix_ptr = imatrix.ctypes.data_as(ctypes.POINTER(ctypes.c_float)) if imatrix is not None else None
        written = self.base.ggml_quantize_chunk(type_id, data.ctypes.data_as(ctypes.POINTER(ctypes.c_float)),
                                                out, 0, nrows, n_per_row, imatrix_ptr)
        return out.raw[:written]

    def dequantize(self, type_id: int, blob: bytes, n_per_row: int) -> np.ndarray:
        """Dequantize rows with the type's to_float trait; returns (rows, n_per_row) float32."""
        t = self._traits(type_id)
        if not t.to_float:
            raise HifikitError(f"{t.type_name.decode()} has no to_float")
        row_bytes = self.base.ggml_row_size(type_id, n_per_row)
        if len(blob) % row_bytes:
            raise HifikitError(f"{len(blob)} bytes is not a whole number of {row_bytes}-byte rows")
        nrows = len(blob) // row_bytes
        out = np.empty((nrows, n_per_row), dtype=np.float32)
        src = ctypes.create_string_buffer(bytes(blob), len(blob))
        _TO_FLOAT(t.to_float)(src, out.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), nrows * n_per_row)
        return out

    def validate(self, type_id: int, blob: bytes) -> bool:
        """ggml_validate_row_data: False for non-finite scales or malformed data."""
        self._traits(type_id)  # a gap id has type size 0: ggml would divide by it
        buf = ctypes.create_string_buffer(bytes(blob), len(blob))
        return bool(self.base.ggml_validate_row_data(type_id, buf, len(blob)))


def load() -> GGML:
    """The library of the build HIFIKIT_LIB_DIR / HIFIKIT_BUILD_INFO point at now (each loaded once)."""
    return _load(str(paths.library("ggml-base").resolve()), str(paths.build_info_path().resolve()))


@lru_cache(maxsize=4)
def _load(library: str, build_info: str) -> GGML:
    return GGML()


def cpu_features() -> dict[str, bool]:
    """The CPU features libggml-cpu was built for and the machine has (ggml_cpu_has_*)."""
    try:
        cpu = ctypes.CDLL(str(paths.library("ggml-cpu")))
    except OSError as exc:
        raise HifikitError(f"cannot load libggml-cpu: {exc}") from exc
    features = {}
    for name in ("sse3", "ssse3", "avx", "avx_vnni", "avx2", "f16c", "fma", "bmi2", "avx512",
                 "avx512_vbmi", "avx512_vnni", "avx512_bf16", "amx_int8", "neon", "arm_fma",
                 "fp16_va", "dotprod", "matmul_int8", "sve", "sme", "riscv_v", "vsx", "wasm_simd"):
        fn = getattr(cpu, f"ggml_cpu_has_{name}", None)
        if fn is None:
            continue
        fn.restype = ctypes.c_int
        features[name] = bool(fn())
    return features
