"""HIFI types: C library (through hifikit.ggml) against the numpy reference and the format.

These tests need the patched build: HIFIKIT_LIB_DIR / HIFIKIT_BUILD_INFO point at
it (a cmake dev tree) or hifikit is installed with its build. Without HIFI types
in the library they fail, they do not skip.
"""
from __future__ import annotations

import ctypes

import numpy as np
import pytest

import hifi_ref
from hifikit import ggml, gguf_io
from hifikit.errors import HifikitError

HIFI_NAMES = ("Q3_K_HIFI", "Q4_K_HIFI", "Q5_K_HIFI", "Q6_K_HIFI")
QK_K = hifi_ref.QK_K
NSLOT = hifi_ref.HIFI_OUTLIERS

ROWS, N_PER_ROW = 64, 2048


@pytest.fixture(scope="module")
def ggml_lib() -> ggml.GGML:
    try:
        lib = ggml.load()
        names = {t.name.upper() for t in lib.types()}
    except HifikitError as exc:
        pytest.fail(f"the HIFI tests need the patched libggml-base: {exc}")
    missing = [n for n in HIFI_NAMES if n not in names]
    if missing:
        pytest.fail(f"libggml-base in {ggml.paths.lib_dir()} lacks {', '.join(missing)}: "
                    "it is not a hifikit build (point HIFIKIT_LIB_DIR at one)")
    return lib


@pytest.fixture(scope="module")
def patched_gguf():
    try:
        gguf_io.hifi_type_ids()
    except HifikitError as exc:
        pytest.fail(str(exc))
    return gguf_io.gguf


def type_id(lib: ggml.GGML, name: str) -> int:
    return lib.type_by_name(name).id


def bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


def student_t(seed: int, df: float = 3.0) -> np.ndarray:
    return np.random.default_rng(seed).standard_t(df, size=(ROWS, N_PER_ROW)).astype(np.float32)


def gaussian(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((ROWS, N_PER_ROW)).astype(np.float32)


def gaussian_with_outliers(seed: int, rate: float = 0.002) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((ROWS, N_PER_ROW))
    hit = rng.random(x.shape) < rate
    x[hit] = rng.choice([-1.0, 1.0], hit.sum()) * rng.uniform(8.0, 20.0, hit.sum())
    return x.astype(np.float32)


def importance(seed: int) -> np.ndarray:
    # log-normal per column, like the mean squared activations of an imatrix
    return np.exp(np.random.default_rng(seed).normal(0.0, 1.0, N_PER_ROW)).astype(np.float32)


# ---------------------------------------------------------------- (a) C == numpy reference

@pytest.mark.parametrize("name", HIFI_NAMES)
def test_c_dequant_matches_numpy_reference(ggml_lib, patched_gguf, name):
    tid = type_id(ggml_lib, name)
    x = student_t(seed=1)
    blob = ggml_lib.quantize(tid, x)
    assert len(blob) == ROWS * (N_PER_ROW // QK_K) * hifi_ref.layout(name).type_size

    _, res, _ = hifi_ref.split_blocks(blob, name)
    assert np.count_nonzero(res) > res.size // 2, "the quantizer should use the outlier slots on Student-t data"

    c = ggml_lib.dequantize(tid, blob, N_PER_ROW)
    ref = hifi_ref.dequantize(blob, name).reshape(c.shape)
    assert np.array_equal(bits(c), bits(ref))

    # gguf-py's own HIFI dequantizer (patch gguf-py : add HIFI types) agrees too
    qtype = patched_gguf.GGMLQuantizationType[name]
    py = patched_gguf.dequantize(np.frombuffer(blob, dtype=np.uint8).reshape(ROWS, -1), qtype)
    assert np.array_equal(bits(c), bits(py))


@pytest.mark.parametrize("name", HIFI_NAMES)
def test_duplicate_indices_and_unused_slots(ggml_lib, name):
    """Hand-made slots: equal indices add in slot order, res == 0 changes nothing."""
    tid = type_id(ggml_lib, name)
    lay = hifi_ref.layout(name)
    x = student_t(seed=2)[:4, :QK_K * 2]
    base, res, idx = hifi_ref.split_blocks(ggml_lib.quantize(tid, x), name)
    n_blocks = base.shape[0]

    idx[:] = np.array([7, 7, 255, 7, 0, 128, 255, 3], dtype=np.uint8)
    res[:] = np.array([0.5, -0.25, 3.0, 1e-3, 0.0, -2.0, -1024.0, 0.0], dtype=np.float16)
    res[1] = np.array([65504.0, -65504.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], dtype=np.float16)  # fp16 extremes
    idx[1] = np.array([0, 0, 1, 1, 1, 1, 1, 1], dtype=np.uint8)                         # mostly unused
    res[2] = 0.0                                                                          # all unused
    idx[2] = np.arange(NSLOT, dtype=np.uint8) * 31
    blob = hifi_ref.join_blocks(base, res, idx)

    c = ggml_lib.dequantize(tid, blob, QK_K).reshape(n_blocks, QK_K)
    assert np.array_equal(bits(c), bits(hifi_ref.dequantize(blob, name).reshape(n_blocks, QK_K)))

    # the semantics spelled out, with upstream's base dequantizer as the starting point
    base_c = ggml_lib.dequantize(type_id(ggml_lib, lay.base), base.tobytes(), QK_K).reshape(n_blocks, QK_K)
    expected = base_c.copy()
    for b in range(n_blocks):
        for s in range(NSLOT):
            expected[b, idx[b, s]] = np.float32(expected[b, idx[b, s]] + np.float32(res[b, s]))
    assert np.array_equal(bits(c), bits(expected))
    assert np.array_equal(c[2], base_c[2])  # res == 0 everywhere: the base values
    assert c[1, 0] == np.float32(base_c[1, 0] + np.float32(65504.0)) - np.float32(65504.0)


# ---------------------------------------------------------------- (b) error vs the base type

def weighted_rel_error(x: np.ndarray, y: np.ndarray, w: np.ndarray | None) -> float:
    w = np.ones(x.shape[-1], dtype=np.float64) if w is None else w.astype(np.float64)
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    return float(np.sqrt((w * (x64 - y64) ** 2).sum() / (w * x64 ** 2).sum()))


def quant_error(lib: ggml.GGML, name: str, x: np.ndarray, imatrix: np.ndarray | None) -> float:
    tid = type_id(lib, name)
    y = lib.dequantize(tid, lib.quantize(tid, x, imatrix), x.shape[1])
    return weighted_rel_error(x, y, imatrix)


HEAVY_TAILED = {"student_t3": lambda: student_t(seed=3), "gauss_outliers": lambda: gaussian_with_outliers(seed=4)}


@pytest.mark.parametrize("with_imatrix", [False, True], ids=["no_imatrix", "imatrix"])
@pytest.mark.parametrize("data", sorted(HEAVY_TAILED))
@pytest.mark.parametrize("name", HIFI_NAMES)
def test_hifi_beats_base_on_heavy_tails(ggml_lib, name, data, with_imatrix):
    x = HEAVY_TAILED[data]()
    imatrix = importance(seed=5) if with_imatrix else None
    base = hifi_ref.layout(name).base
    err_base = quant_error(ggml_lib, base, x, imatrix)
    err_hifi = quant_error(ggml_lib, name, x, imatrix)
    assert err_hifi < err_base, f"{name} {err_hifi:.5f} vs {base} {err_base:.5f}"


@pytest.mark.parametrize("with_imatrix", [False, True], ids=["no_imatrix", "imatrix"])
@pytest.mark.parametrize("name", HIFI_NAMES)
def test_hifi_never_worse_on_gaussian(ggml_lib, name, with_imatrix):
    x = gaussian(seed=6)
    imatrix = importance(seed=7) if with_imatrix else None
    base = hifi_ref.layout(name).base
    err_base = quant_error(ggml_lib, base, x, imatrix)
    err_hifi = quant_error(ggml_lib, name, x, imatrix)
    assert err_hifi <= err_base, f"{name} {err_hifi:.5f} vs {base} {err_base:.5f}"


# ---------------------------------------------------------------- (c) validation and random bytes

F16_NAN, F16_POS_INF, F16_NEG_INF = 0x7E00, 0x7C00, 0xFC00


def half_offsets(name: str) -> list[int]:
    """Byte offsets of every fp16 field validation must check: d (and dmin), then res[0..7]."""
    lay = hifi_ref.layout(name)
    return [*lay.half_offsets, *(lay.res_offset + 2 * s for s in range(NSLOT))]


def put_half(block: np.ndarray, offset: int, value: int) -> None:
    block[offset:offset + 2] = np.array([value], dtype="<u2").view(np.uint8)


@pytest.mark.parametrize("name", HIFI_NAMES)
def test_validation_accepts_quantized_rows(ggml_lib, name):
    tid = type_id(ggml_lib, name)
    assert ggml_lib.validate(tid, ggml_lib.quantize(tid, student_t(seed=8)))


@pytest.mark.parametrize("bad", [F16_NAN, F16_POS_INF, F16_NEG_INF], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("name", HIFI_NAMES)
def test_validation_rejects_non_finite_halves(ggml_lib, name, bad):
    tid = type_id(ggml_lib, name)
    size = hifi_ref.layout(name).type_size
    good = np.frombuffer(ggml_lib.quantize(tid, student_t(seed=9)[:2]), dtype=np.uint8).reshape(-1, size)
    assert ggml_lib.validate(tid, good.tobytes())
    for offset in half_offsets(name):
        blocks = good.copy()
        put_half(blocks[len(blocks) // 2], offset, bad)  # one bad block in the middle of the row
        assert not ggml_lib.validate(tid, blocks.tobytes()), f"non-finite half at byte {offset} accepted"


def finite_halves(rng: np.random.Generator, n: int) -> np.ndarray:
    h = rng.integers(0, 1 << 16, n, dtype=np.uint32)
    inf_or_nan = (h & 0x7C00) == 0x7C00
    h[inf_or_nan] &= ~np.uint32(0x4000)  # drop the top exponent bit: a finite value
    return h.astype(np.uint16)


@pytest.mark.parametrize("name", HIFI_NAMES)
def test_random_blocks(ggml_lib, name):
    """Random bytes: finite halves validate and dequantize exactly like the reference;
    a block validates exactly when all of its halves are finite."""
    tid = type_id(ggml_lib, name)
    size = hifi_ref.layout(name).type_size
    offsets = half_offsets(name)
    rng = np.random.default_rng(10)
    n_blocks = 512

    blocks = rng.integers(0, 256, (n_blocks, size), dtype=np.uint8)
    for offset in offsets:
        blocks[:, offset:offset + 2] = finite_halves(rng, n_blocks)[:, None].view(np.uint8)
    blocks[: n_blocks // 4, -NSLOT:] = rng.integers(0, 4, (n_blocks // 4, NSLOT))  # many duplicate indices
    blob = blocks.tobytes()
    assert ggml_lib.validate(tid, blob)
    c = ggml_lib.dequantize(tid, blob, QK_K)
    assert np.isfinite(c).all()
    assert np.array_equal(bits(c.ravel()), bits(hifi_ref.dequantize(blob, name)))

    # raw random halves: NaN/Inf occur; compare block by block with the prediction
    raw = rng.integers(0, 256, (n_blocks, size), dtype=np.uint8)
    for offset in offsets:  # make non-finite halves frequent enough to see both outcomes
        hit = rng.random(n_blocks) < 0.02
        raw[hit, offset + 1] |= 0x7C
    halves = np.stack([raw[:, o:o + 2].copy().view("<u2")[:, 0] for o in offsets], axis=1)
    finite = ((halves & 0x7C00) != 0x7C00).all(axis=1)
    assert 0 < finite.sum() < n_blocks
    got = np.array([ggml_lib.validate(tid, raw[i].tobytes()) for i in range(n_blocks)])
    assert np.array_equal(got, finite)


# ---------------------------------------------------------------- (d) type tables

def test_type_table_matches_patched_gguf(ggml_lib, patched_gguf):
    qt, sizes = patched_gguf.GGMLQuantizationType, patched_gguf.GGML_QUANT_SIZES
    built = {t.id: t for t in ggml_lib.types()}
    for t in built.values():
        assert t.id in qt._value2member_map_, f"gguf-py lacks ggml type {t.id} ({t.name})"
        member = qt(t.id)
        assert member.name.lower() == t.name.lower()
        assert sizes[member] == (t.block_size, t.type_size), member.name
    for member in qt:
        assert int(member) in built, f"gguf-py has {member.name}={int(member)}, the library does not"
    for name in HIFI_NAMES:
        member = qt[name]
        assert int(member) == gguf_io.hifi_type_ids()[name]
        assert sizes[member] == (QK_K, hifi_ref.layout(name).type_size)
        _, base_size = sizes[qt[hifi_ref.layout(name).base]]
        assert sizes[member][1] == base_size + NSLOT * 2 + NSLOT


def test_gguf_py_has_no_numpy_quantizer_for_hifi(patched_gguf):
    for name in HIFI_NAMES:
        with pytest.raises(NotImplementedError):
            patched_gguf.quantize(np.zeros((1, QK_K), dtype=np.float32), patched_gguf.GGMLQuantizationType[name])


@pytest.mark.parametrize("name", HIFI_NAMES)
def test_gguf_file_roundtrip(ggml_lib, patched_gguf, tmp_path, name):
    """GGUFWriter/GGUFReader of the gguf-py in use handle HIFI tensors."""
    tid = type_id(ggml_lib, name)
    qtype = patched_gguf.GGMLQuantizationType[name]
    x = student_t(seed=11)[:8, :QK_K * 4]
    blob = ggml_lib.quantize(tid, x)
    path = tmp_path / "hifi.gguf"
    writer = patched_gguf.GGUFWriter(path, "hifitest")
    writer.add_tensor("w", np.frombuffer(blob, dtype=np.uint8).reshape(x.shape[0], -1), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    (tensor,) = patched_gguf.GGUFReader(path).tensors
    assert tensor.tensor_type == qtype
    assert [int(n) for n in tensor.shape] == [x.shape[1], x.shape[0]]
    assert bytes(tensor.data) == blob
    y = patched_gguf.dequantize(tensor.data, qtype)
    assert np.array_equal(bits(y), bits(ggml_lib.dequantize(tid, blob, x.shape[1])))


# ---------------------------------------------------------------- (e) non-finite weights are not hidden

def _one_row(bad: float, at: int = 37) -> np.ndarray:
    x = student_t(seed=12)[:1, :QK_K].copy()
    x[0, at] = bad
    return x


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan], ids=["inf", "-inf", "nan"])
@pytest.mark.parametrize("name", HIFI_NAMES)
def test_non_finite_weight_fails_validation(ggml_lib, name, bad):
    """A row holding a NaN/Inf weight quantizes to a row ggml_validate_row_data rejects, as a K-quant row does:
    the quantizer must not clamp the weight into a valid block (it once stored 65504 for Inf)."""
    tid = type_id(ggml_lib, name)
    x = _one_row(bad)
    base = hifi_ref.layout(name).base
    if base == "Q4_K" and np.isinf(bad):  # q4_K rejects the same row
        assert not ggml_lib.validate(type_id(ggml_lib, base), ggml_lib.quantize(type_id(ggml_lib, base), x))
    blob = ggml_lib.quantize(tid, x)
    assert not ggml_lib.validate(tid, blob), f"{name} row with a {bad} weight validates"
    # the bad weight holds an outlier slot and keeps its value there; the rest of the block stays finite
    base_blocks, res, idx = hifi_ref.split_blocks(blob, name)
    slot = [s for s in range(NSLOT) if idx[0, s] == 37 and not np.isfinite(res[0, s])]
    assert slot, (idx[0], res[0])
    assert (np.isnan(res[0, slot[0]]) if np.isnan(bad) else res[0, slot[0]] == np.float16(bad))
    y = ggml_lib.dequantize(type_id(ggml_lib, base), base_blocks.tobytes(), QK_K)
    assert np.isfinite(y).all()


@pytest.mark.parametrize("name", HIFI_NAMES)
def test_finite_weight_beyond_fp16_saturates(ggml_lib, name):
    """A finite weight larger than the fp16 range still gives a valid row (its residual saturates)."""
    tid = type_id(ggml_lib, name)
    x = _one_row(3.0e5)
    blob = ggml_lib.quantize(tid, x)
    assert ggml_lib.validate(tid, blob)
    assert np.isfinite(ggml_lib.dequantize(tid, blob, QK_K)).all()


# ---------------------------------------------------------------- (f) the CPU vec_dot: SIMD against generic

class _TraitsCPU(ctypes.Structure):
    # struct ggml_type_traits_cpu (ggml-cpu.h at the pin)
    _fields_ = [("from_float", ctypes.c_void_p), ("vec_dot", ctypes.c_void_p),
                ("vec_dot_type", ctypes.c_int), ("nrows", ctypes.c_int64)]


_VEC_DOT = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.POINTER(ctypes.c_float), ctypes.c_size_t, ctypes.c_void_p,
                            ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
_FROM_FLOAT = ctypes.CFUNCTYPE(None, ctypes.POINTER(ctypes.c_float), ctypes.c_void_p, ctypes.c_int64)
Q8_K_BLOCK = 4 + QK_K + 2 * (QK_K // 16)   # float d, int8 qs[256], int16 bsums[16]


@pytest.fixture(scope="module")
def ggml_cpu(ggml_lib):
    from hifikit import paths
    cpu = ctypes.CDLL(str(paths.library("ggml-cpu")))
    cpu.ggml_cpu_init.restype = None
    cpu.ggml_cpu_init()
    cpu.ggml_get_type_traits_cpu.restype = ctypes.POINTER(_TraitsCPU)
    cpu.ggml_get_type_traits_cpu.argtypes = [ctypes.c_int]
    return cpu


def _dot(fn, n: int, x: bytes, y: bytes) -> float:
    out = ctypes.c_float()
    xb, yb = ctypes.create_string_buffer(x, len(x)), ctypes.create_string_buffer(y, len(y))
    fn(n, ctypes.byref(out), 0, xb, 0, yb, 0, 1)
    return float(out.value)


def _q8_K(cpu, a: np.ndarray) -> tuple[bytes, np.ndarray]:
    """a quantized to Q8_K by the CPU backend (as mul_mat does), and its dequantized values."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    q8k = 15   # GGML_TYPE_Q8_K
    traits = cpu.ggml_get_type_traits_cpu(q8k).contents
    buf = ctypes.create_string_buffer(Q8_K_BLOCK * (a.size // QK_K))
    _FROM_FLOAT(traits.from_float)(a.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), buf, a.size)
    blocks = np.frombuffer(buf.raw, dtype=np.uint8).reshape(-1, Q8_K_BLOCK)
    d = blocks[:, :4].copy().view("<f4")[:, 0].astype(np.float64)
    qs = blocks[:, 4:4 + QK_K].view(np.int8).astype(np.float64)
    return buf.raw, (d[:, None] * qs).ravel()


@pytest.mark.parametrize("n_blocks", [1, 15, 16, 17, 56])
@pytest.mark.parametrize("name", HIFI_NAMES)
def test_vec_dot_simd_matches_generic(ggml_lib, ggml_cpu, name, n_blocks):
    """The vec_dot the CPU backend uses (the base type's SIMD kernel on the copied base blocks, plus the
    outlier correction) and the generic one give the dot product of the dequantized rows on the same blocks.

    test-backend-ops -b CPU compares the backend with itself; this compares the two code paths. Row lengths
    cross the 16-block chunk of the copy."""
    tid = type_id(ggml_lib, name)
    n = n_blocks * QK_K
    x = gaussian_with_outliers(seed=13)[:1].repeat(n // N_PER_ROW + 1, axis=1)[:, :n]
    blob = ggml_lib.quantize(tid, x)
    _, res, _ = hifi_ref.split_blocks(blob, name)
    assert np.count_nonzero(res) > 0
    y_blob, y = _q8_K(ggml_cpu, np.random.default_rng(14).standard_normal(n))
    exact = float(np.dot(ggml_lib.dequantize(tid, blob, n).ravel().astype(np.float64), y))
    scale = float(np.dot(np.abs(ggml_lib.dequantize(tid, blob, n).ravel().astype(np.float64)), np.abs(y)))

    traits = ggml_cpu.ggml_get_type_traits_cpu(tid).contents
    assert traits.vec_dot_type == 15 and traits.nrows == 1
    simd = _dot(_VEC_DOT(traits.vec_dot), n, blob, y_blob)
    generic = _dot(_VEC_DOT(ctypes.cast(getattr(ggml_cpu, f"ggml_vec_dot_{ggml_lib.type_by_name(name).name}_q8_K_generic"),
                                        ctypes.c_void_p).value), n, blob, y_blob)
    assert abs(simd - exact) <= 1e-5 * scale, (simd, exact)
    assert abs(generic - exact) <= 1e-5 * scale, (generic, exact)
    assert abs(simd - generic) <= 1e-5 * scale, (simd, generic)
    # and the same as the base type's own kernel on the base blocks plus the outlier correction
    base_name = hifi_ref.layout(name).base
    base_traits = ggml_cpu.ggml_get_type_traits_cpu(type_id(ggml_lib, base_name)).contents
    base_blocks, res, idx = hifi_ref.split_blocks(blob, name)
    base_dot = _dot(_VEC_DOT(base_traits.vec_dot), n, base_blocks.tobytes(), y_blob)
    yq = y.reshape(n_blocks, QK_K)
    correction = sum(float(res[b, s]) * yq[b, idx[b, s]] for b in range(n_blocks) for s in range(NSLOT))
    assert abs(simd - (base_dot + correction)) <= 1e-5 * scale
