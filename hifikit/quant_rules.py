"""What ``llama-quantize`` accepts and decides per tensor at the pin, mirrored once for all of hifikit.

``quant_options`` is the type table the built llama-quantize lists (its
QUANT_OPTIONS, HIFI ftypes included); ``resolve_type`` / ``resolve_hifi`` turn a
name the user gave into one of its names, ``check_imatrix`` refuses a file that
is not an importance matrix. ``allows_quantization`` is ``tensor_allows_quantization`` of src/llama-quant.cpp
(default parameters: the output tensor is quantized, no ``--only-copy``): which
tensors llama-quantize may give another type. ``requires_imatrix`` is
``tensor_requires_imatrix``: which (tensor, type) pairs it refuses without an
importance matrix. The sweep chooses its candidates with them, the planner its
tensors and the file size model its fixed tensors, the grid check what to
probe; tests/test_quant_rules.py reads the pinned C++ and fails when the lists
here no longer match it.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Sequence

from . import gguf_io, parsers, paths, runner
from .errors import HifikitError

# name fragments: a tensor whose name contains one is never quantized
NEVER_FRAGMENTS = (
    "_norm.weight", "ffn_gate_inp.weight", "ffn_gate_tid2eid.weight", "altup", "laurel", "per_layer_model_proj",
    "ssm_conv1d", "shortconv.conv.weight", "indexer.k_proj.weight", "indexer.q_proj.weight",
    # RWKV's small 2-D weights
    "time_mix_first.weight", "time_mix_w0.weight", "time_mix_w1.weight", "time_mix_w2.weight", "time_mix_v0.weight",
    "time_mix_v1.weight", "time_mix_v2.weight", "time_mix_a0.weight", "time_mix_a1.weight", "time_mix_a2.weight",
    "time_mix_g1.weight", "time_mix_g2.weight", "time_mix_decay_w1.weight", "time_mix_decay_w2.weight",
    "time_mix_lerp_fused.weight",
    # T5's relative position bias
    "attn_rel_b.weight",
    # multimodal and audio tensors
    ".position_embd", "sam.pos_embd", "sam.neck.", "sam.net_", ".rel_pos", ".patch_embd", ".patch_merger",
    "a.rvq.codebook", "mm.a.code_embd",
)
# whole names (LLM_TENSOR_POS_EMBD and LLM_TENSOR_TOKEN_TYPES with "weight")
NEVER_NAMES = ("position_embd.weight", "token_types.weight")
# fragments that keep their type only in one architecture
NEVER_BY_ARCH: dict[str, tuple[str, ...]] = {
    "glm5-next": ("hc_", "indexer.attn_q_b", "indexer.attn_k", "indexer.proj", "indexer_compressor_gate",
                  "indexer_compressor_ape", "ssm_f_a.weight", "ssm_f_b.weight", "ssm_g_a.weight", "ssm_g_b.weight",
                  "ssm_beta.weight", "attn_kv_a_mqa.weight", "attn_k_b.weight", "attn_v_b.weight"),
}

# tensor_requires_imatrix(): these types need importance data, except on the token embedding and the output
IMATRIX_TYPES = ("iq3_xxs", "iq2_xxs", "iq2_xs", "iq2_s", "iq1_m", "iq1_s")
IMATRIX_EXEMPT = ("token_embd.weight", "per_layer_token_embd.weight", "output.weight")


def n_dims(shape: Sequence[int]) -> int:
    """ggml_n_dims: the index of the last dimension above 1, plus one (at least 1)."""
    for i in range(len(shape) - 1, 0, -1):
        if shape[i] > 1:
            return i + 1
    return 1


def _ends_in_weight(name: str) -> bool:
    # `name.rfind("weight") == name.size() - 6` with size_t arithmetic: for a 5-character name both sides
    # are npos, so upstream counts it as ending in "weight"
    return name.endswith("weight") or len(name) == 5


def allows_quantization(name: str, shape: Sequence[int], architecture: str | None = None) -> bool:
    """Whether llama-quantize may change this tensor's type (2-D or more, ends in weight, not a named exception)."""
    if n_dims(shape) < 2 or not _ends_in_weight(name):
        return False
    if name in NEVER_NAMES or any(f in name for f in NEVER_FRAGMENTS):
        return False
    return not any(f in name for f in NEVER_BY_ARCH.get(architecture or "", ()))


def requires_imatrix(name: str, type_name: str, ftype: str | None = None) -> bool:
    """Whether llama-quantize refuses this tensor in this type without an importance matrix.

    Q2_K needs one only in a Q2_K_S file (ftype), as upstream says."""
    if name in IMATRIX_EXEMPT:
        return False
    t = type_name.lower()
    return t in IMATRIX_TYPES or (t == "q2_k" and (ftype or "").upper() == "Q2_K_S")


def quant_options() -> dict[str, dict]:
    """name -> {ftype, desc}, as the llama-quantize of the build in use lists them (asked once per binary)."""
    exe = paths.binary("llama-quantize")
    return dict(_quant_options(str(exe.resolve()), exe.stat().st_mtime_ns))


@lru_cache(maxsize=4)
def _quant_options(exe: str, mtime_ns: int) -> dict[str, dict]:
    res = runner.run_tool("llama-quantize", ["--help"], check=False)
    return parsers.parse_quant_options(res.stdout + res.stderr)


def resolve_type(name: str) -> str:
    """llama-quantize's spelling of a type name given in any case; one error line listing the types."""
    options = quant_options()
    for known in options:
        if known.lower() == name.lower():
            return known
    raise HifikitError(f"unknown quantization type '{name}'; this build accepts: {', '.join(options)}")


def resolve_hifi(variant: str) -> str:
    """A HIFI mixture of this build: the variant named ('Q4_K' or 'Q4_K_HIFI'), or the _M one for ''."""
    hifi = [n for n in quant_options() if "HIFI" in n.upper()]
    if not hifi:
        raise HifikitError("this build has no HIFI quantization types (llama-quantize lists none)")
    if variant:
        return resolve_type(variant if "HIFI" in variant.upper() else f"{variant}_HIFI")
    medium = [n for n in hifi if n.upper().endswith("_M")]
    return (medium or hifi)[0]


def check_imatrix(path: Path | str | None) -> None:
    """Nothing, or one error line when path is not a GGUF importance matrix."""
    if path is None:
        return
    kind = gguf_io.general_type(path)
    if kind != "imatrix":
        raise HifikitError(f"{path}: not an imatrix GGUF (general.type is {kind!r})")
