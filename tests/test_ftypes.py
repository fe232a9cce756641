"""HIFI ftypes and ``llama-quantize --hifi`` (docs/ftypes.md).

The recipes below are the documented rules, written out independently of the
C table; every dry-run test compares llama-quantize's choice for every tensor
with them. Q3_K_HIFI starts from Q3_K_M's allocation, which is taken from the
same binary's Q3_K_M dry run (that is what "Q3_K_M's allocation" means).

Models are synthetic (tests/ftype_models.py). Dry runs read headers only, so
the 3B..100B models are sparse files that cost no disk.
"""
from __future__ import annotations

import dataclasses
import math
import re
import subprocess
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

import ftype_models as fm
from hifikit import paths
from hifikit.errors import NotBuiltError

QK_K = 256

# rows that are not a multiple of 256 (types as ggml_type_name prints them)
FALLBACK = {
    "q3_K": "q4_0", "q3_K_hifi": "q4_0",
    "q4_K": "q5_0", "q4_K_hifi": "q5_0",
    "q5_K": "q5_1", "q5_K_hifi": "q5_1",
    "q6_K": "q8_0", "q6_K_hifi": "q8_0",
}


# --------------------------------------------------------------------------
# the documented recipes


def _all(n_params: int) -> int:
    return 100


def _q3_early(n_params: int) -> int:
    return 40


def _q4_ffn_down(n_params: int) -> int:
    return 50 if n_params <= 10_000_000_000 else 25 if n_params <= 70_000_000_000 else 0


def _q4_attn_v(n_params: int) -> int:
    return 25 if n_params > 100_000_000_000 else 100


@dataclasses.dataclass(frozen=True)
class Rule:
    role: str
    type: str
    layer_pct: Callable[[int], int]


# a rule's type "twin": the HIFI twin of the base ftype's K-quant choice
TWIN = {"q3_K": "q3_K_hifi", "q4_K": "q4_K_hifi", "q5_K": "q5_K_hifi", "q6_K": "q6_K_hifi"}


@dataclasses.dataclass(frozen=True)
class Recipe:
    base: str | None  # a stock ftype, or None: upstream's generic rules on Q4_K
    rules: tuple[Rule, ...]
    # rows that cannot take a K-quant: the recipe's type instead of FALLBACK's (upstream's)
    fallbacks: tuple[tuple[str, str], ...] = ()


RECIPES = {
    "Q3_K_HIFI": Recipe("Q3_K_M", (
        Rule("attn_v", "twin", _q3_early),
        Rule("ffn_down", "twin", _all),
        Rule("output", "q6_K", _all),
    ), fallbacks=(("q3_K", "q5_0"), ("q6_K", "q5_1"))),
    "Q4_K_HIFI": Recipe(None, (
        Rule("attn_v", "q4_K_hifi", _q4_attn_v),
        Rule("ffn_down", "q4_K_hifi", _q4_ffn_down),
        Rule("output", "q6_K", _all),
    )),
    "Q4_K_XM": Recipe(None, (
        Rule("attn_v", "q5_K", _all),
        Rule("ffn_gate", "q5_K", _all),
        Rule("token_embd", "q5_K", _all),
        Rule("ffn_down", "q6_K", _all),
        Rule("attn_output", "q6_K", _all),
        Rule("output", "q6_K", _all),
    )),
    "Q4_K_HIFI_L": Recipe(None, (
        Rule("ffn_down", "q6_K_hifi", _all),
        Rule("attn_output", "q6_K_hifi", _all),
        Rule("output", "q6_K_hifi", _all),
    )),
}
HIFI_FTYPES = tuple(RECIPES)
FTYPE_IDS = {"Q3_K_HIFI": 128, "Q4_K_HIFI": 129, "Q4_K_XM": 130, "Q4_K_HIFI_L": 131}


def role(name: str, tied: bool) -> str:
    if name == "output.weight":
        return "output"
    if name == "token_embd.weight":
        return "output" if tied else "token_embd"
    if name.endswith(("attn_v.weight", "attn_qkv.weight", "attn_kv_b.weight")):
        return "attn_v"
    if name.endswith("attn_output.weight"):
        return "attn_output"
    if "ffn_gate" in name and "ffn_gate_inp" not in name:
        return "ffn_gate"
    if "ffn_down" in name:
        return "ffn_down"
    return "other"


def quantizable(t: fm.TensorSpec) -> bool:
    return (len(t.shape) >= 2 and t.name.endswith("weight") and not t.name.endswith("_norm.weight")
            and "ffn_gate_inp" not in t.name)


def fits(t: fm.TensorSpec) -> bool:
    return t.n_per_row % QK_K == 0


def with_fallback(t: fm.TensorSpec, type_name: str) -> str:
    return type_name if fits(t) else FALLBACK.get(type_name, type_name)


def generic_q4(t: fm.TensorSpec, tied: bool) -> str:
    """Upstream's rules for a Q4_K-default ftype no branch names (a dense non-70B llama)."""
    if role(t.name, tied) == "output":
        return "q6_K" if fits(t) else "q8_0"
    return with_fallback(t, "q4_K")


# bits per weight of the types these tests meet
BPW = {"f32": 32.0, "f16": 16.0, "q4_0": 4.5, "q4_1": 5.0, "q5_0": 5.5, "q5_1": 6.0, "q8_0": 8.5,
       "q2_K": 2.625, "q3_K": 3.4375, "q4_K": 4.5, "q5_K": 5.5, "q6_K": 6.5625,
       "q3_K_hifi": 4.1875, "q4_K_hifi": 5.25, "q5_K_hifi": 6.25, "q6_K_hifi": 7.3125}


def layer_of(name: str) -> int | None:
    m = re.match(r"blk\.(\d+)\.", name)
    return int(m.group(1)) if m else None


def expected_types(ftype: str, spec: fm.ModelSpec, stock_base: dict[str, str] | None = None) -> dict[str, str]:
    recipe = RECIPES[ftype]
    fallbacks = dict(recipe.fallbacks)
    k_quant_of = {hifi: k for k, hifi in TWIN.items()}
    n = fm.n_params(spec)
    out = {}
    for t in fm.tensors(spec):
        if not quantizable(t):
            out[t.name] = "f32" if t.dtype == np.float32 else "f16"
            continue
        base = stock_base[t.name] if recipe.base else generic_q4(t, spec.tied)
        chosen = base
        for rule in recipe.rules:
            if rule.role != role(t.name, spec.tied):
                continue
            layer, pct = layer_of(t.name), rule.layer_pct(n)
            in_cut = layer is None or pct >= 100 or layer < spec.n_layer * pct // 100
            if in_cut:
                want = TWIN.get(base, base) if rule.type == "twin" else rule.type
                k_quant = k_quant_of.get(want, want)
                if t.n_per_row % (QK_K if k_quant in TWIN else 32) == 0:
                    chosen = want
                elif k_quant in fallbacks:   # the recipe's fallback for the rule's type
                    chosen = fallbacks[k_quant]
                    # it replaces upstream's fallback for that K-quant, whatever its size
                    if base == FALLBACK[k_quant]:
                        base = chosen
            break
        # a K-quant mixture picks q4_0 only as upstream's fallback of a q2_K/q3_K row that cannot take it
        if chosen == "q4_0" and not fits(t) and t.n_per_row % 32 == 0 and "q3_K" in fallbacks:
            chosen = fallbacks["q3_K"]
        # a recipe only adds bits to upstream's choice
        if BPW[chosen] < BPW[base]:
            chosen = base
        out[t.name] = chosen
    return out


# --------------------------------------------------------------------------
# running llama-quantize

LINE = re.compile(r"\[\s*\d+/\s*\d+\]\s+(\S+)\s+- \[[^\]]*\], type =\s*(\S+), size =[^(\n]*(?:\((\S+)\))?")


@dataclasses.dataclass
class DryRun:
    types: dict[str, str]
    log: str


@pytest.fixture(scope="module")
def quantize_bin() -> Path:
    try:
        return paths.binary("llama-quantize")
    except NotBuiltError as exc:
        pytest.skip(str(exc))


def run_quantize(exe: Path, *args: str | Path, check: bool = True, cwd: Path | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(exe), *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=600, cwd=cwd)
    if check and proc.returncode != 0:
        raise AssertionError(f"llama-quantize {' '.join(map(str, args))} failed ({proc.returncode}):\n"
                             + proc.stdout[-4000:])
    return proc


def dry_run(exe: Path, model: Path, ftype: str | None, *options: str) -> DryRun:
    """llama-quantize --dry-run [options] model [ftype]; the type chosen for each tensor."""
    proc = run_quantize(exe, "--dry-run", *options, model, *([ftype] if ftype else []))
    types = {m.group(1): m.group(3) or m.group(2) for m in LINE.finditer(proc.stdout)}
    assert types, f"no tensor lines in llama-quantize's output:\n{proc.stdout[-3000:]}"
    return DryRun(types, proc.stdout)


def assert_types(got: dict[str, str], want: dict[str, str]) -> None:
    assert set(got) == set(want)
    wrong = {name: (got[name], want[name]) for name in want if got[name] != want[name]}
    assert not wrong, f"(got, documented) per tensor: {wrong}"


# --------------------------------------------------------------------------
# models

SMALL28 = fm.ModelSpec(n_layer=28, n_embd=256, n_ff=512, n_head=4, n_head_kv=2)
# Gemma-3-270M-like: hidden 640 (no K-quant fits), head_dim 256, ffn 2048, tied embeddings
GEMMA_LIKE = fm.ModelSpec(n_layer=18, n_embd=640, n_ff=2048, n_head=4, n_head_kv=1, head_dim=256,
                          n_vocab=1024, tied=True)
MOE = fm.ModelSpec(n_layer=8, n_embd=256, n_ff=512, n_head=4, n_head_kv=4, n_expert=4, n_expert_used=2)


def dense(n_layer: int, n_embd: int, n_ff: int, extra: int = 0) -> fm.ModelSpec:
    return fm.ModelSpec(n_layer=n_layer, n_embd=n_embd, n_ff=n_ff, n_head=n_embd // 128,
                        n_head_kv=8, head_dim=128, n_vocab=32000, extra_params=extra)


MEDIUM = dense(24, 3072, 8192)      # ~2.6B
LARGE = dense(40, 5120, 13824)      # ~11.3B
XL = dense(88, 8192, 28672)         # ~76B  (Q4_K_HIFI: no ffn_down coverage)
XXL = dense(120, 8192, 28672)       # ~103B (Q4_K_HIFI: first quarter of attn_v only)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("ftype-models")
    specs = {"small28": SMALL28, "gemma_like": GEMMA_LIKE, "moe": MOE,
             "medium": MEDIUM, "large": LARGE, "xl": XL, "xxl": XXL}
    return {name: fm.write_model(d / f"{name}.gguf", spec, sparse=True) for name, spec in specs.items()}


SPECS = {"small28": SMALL28, "gemma_like": GEMMA_LIKE, "moe": MOE, "medium": MEDIUM, "large": LARGE,
         "xl": XL, "xxl": XXL}


def test_model_sizes_are_in_their_bands():
    # the scale tests below rely on these parameter counts
    assert fm.n_params(SMALL28) <= 2e9
    assert 2e9 < fm.n_params(MEDIUM) <= 1e10
    assert 1e10 < fm.n_params(LARGE) <= 7e10
    assert 7e10 < fm.n_params(XL) <= 1e11
    assert fm.n_params(XXL) > 1e11


# --------------------------------------------------------------------------
# the ftypes


def test_usage_lists_hifi_ftypes(quantize_bin):
    proc = run_quantize(quantize_bin, check=False)
    for name, ftype_id in FTYPE_IDS.items():
        assert re.search(rf"^\s*{ftype_id}\s+or\s+{name}\s+:", proc.stdout, re.M), proc.stdout[-2000:]
    assert "--hifi-scale" in proc.stdout


@pytest.mark.parametrize("ftype", HIFI_FTYPES)
@pytest.mark.parametrize("model", ["small28", "gemma_like", "moe", "medium", "large", "xl", "xxl"])
def test_dry_run_types_match_recipe(quantize_bin, models, model, ftype):
    spec = SPECS[model]
    stock = dry_run(quantize_bin, models[model], RECIPES[ftype].base).types if RECIPES[ftype].base else None
    got = dry_run(quantize_bin, models[model], ftype)
    assert_types(got.types, expected_types(ftype, spec, stock))
    # the recipe as applied is logged with the model's parameter count
    assert f"{ftype} for {fm.n_params(spec)} parameters" in got.log


def test_q3_k_hifi_matches_seed_cut_at_28_layers(quantize_bin, models):
    # seed 000: attn_v of layers 0-10 of a 28-layer model; ffn_down of every layer (measured, docs/ftypes.md);
    # each takes the HIFI twin of Q3_K_M's type
    types = dry_run(quantize_bin, models["small28"], "Q3_K_HIFI").types
    q3m = dry_run(quantize_bin, models["small28"], "Q3_K_M").types
    hifi = sorted(name for name, t in types.items() if t.endswith("_hifi"))
    want = sorted([f"blk.{i}.attn_v.weight" for i in range(11)] + [f"blk.{i}.ffn_down.weight" for i in range(28)])
    assert hifi == want
    assert {types[name] for name in want} == {"q4_K_hifi", "q5_K_hifi"}
    assert all(types[name] == TWIN[q3m[name]] for name in want)
    # the output keeps Q3_K_M's type (the seed's Q3_K_HIFI output is not used, docs/ftypes.md)
    assert types["output.weight"] == q3m["output.weight"] == "q6_K"


def test_q4_k_hifi_coverage_by_size(quantize_bin, models):
    def count(model: str, suffix: str) -> int:
        types = dry_run(quantize_bin, models[model], "Q4_K_HIFI").types
        return sum(1 for name, t in types.items() if name.endswith(suffix) and t == "q4_K_hifi")

    assert count("medium", "ffn_down.weight") == 12      # 50% of 24
    assert count("large", "ffn_down.weight") == 10       # 25% of 40
    assert count("xl", "ffn_down.weight") == 0           # > 70B
    assert count("xl", "attn_v.weight") == 88            # all layers up to 100B
    assert count("xxl", "attn_v.weight") == 30           # > 100B: first quarter of 120


def test_stock_ftype_unchanged_on_640_rows(quantize_bin, models):
    # the HIFI hooks must leave a stock ftype alone: Q3_K_M falls back as upstream documents
    types = dry_run(quantize_bin, models["gemma_like"], "Q3_K_M").types
    assert types["blk.5.attn_q.weight"] == "q4_0"
    assert types["token_embd.weight"] == "q8_0"


def test_gemma_like_640_rows_take_the_recipe_fallbacks(quantize_bin, models):
    # 640-wide rows cannot take a 256 block: attn_v keeps the base ftype's fallback
    q3 = dry_run(quantize_bin, models["gemma_like"], "Q3_K_HIFI")
    q3m = dry_run(quantize_bin, models["gemma_like"], "Q3_K_M").types
    assert q3.types["blk.0.attn_v.weight"] == q3m["blk.0.attn_v.weight"] == "q5_1"
    # the q3_K rows: Q3_K_M gives them q4_0, Q3_K_HIFI q5_0
    for name in ("blk.0.attn_q.weight", "blk.3.attn_k.weight", "blk.17.ffn_gate.weight", "blk.9.ffn_up.weight"):
        assert (q3m[name], q3.types[name]) == ("q4_0", "q5_0")
    # the tied output (q6_K): Q3_K_M gives it q8_0, Q3_K_HIFI q5_1
    assert (q3m["token_embd.weight"], q3.types["token_embd.weight"]) == ("q8_0", "q5_1")
    assert "rows that q3_K cannot take -> q5_0 (instead of q4_0)" in q3.log
    assert "rows that q6_K cannot take -> q5_1 (instead of q8_0)" in q3.log
    q3 = q3.types
    # ffn_down rows are 2048 wide: every layer takes the HIFI twin of Q3_K_M's type
    assert (q3m["blk.0.ffn_down.weight"], q3["blk.0.ffn_down.weight"]) == ("q5_K", "q5_K_hifi")
    assert {(q3m[f"blk.{i}.ffn_down.weight"], q3[f"blk.{i}.ffn_down.weight"]) for i in range(1, 18)} == \
        {("q4_K", "q4_K_hifi")}


@pytest.mark.parametrize("override,want", [
    ("q3_K_hifi", "q4_0"), ("q4_K_hifi", "q5_0"), ("q5_K_hifi", "q5_1"), ("q6_K_hifi", "q8_0"),
])
def test_hifi_type_fallback(quantize_bin, models, override, want):
    # --tensor-type with a HIFI type on 640-wide rows falls back like its base K-quant;
    # on 2048-wide rows it is kept
    for ftype in ("Q4_K_M", "Q3_K_HIFI"):  # an explicit override is not the recipe's: upstream's fallback
        types = dry_run(quantize_bin, models["gemma_like"], ftype,
                        "--tensor-type", f"attn_q={override}", "--tensor-type", f"ffn_down={override}").types
        assert {types[f"blk.{i}.attn_q.weight"] for i in range(GEMMA_LIKE.n_layer)} == {want}
        assert {types[f"blk.{i}.ffn_down.weight"] for i in range(GEMMA_LIKE.n_layer)} == {override}


def test_overrides_take_precedence(quantize_bin, models):
    types = dry_run(quantize_bin, models["small28"], "Q4_K_HIFI", "--tensor-type", "attn_v=q8_0",
                    "--output-tensor-type", "q5_K").types
    assert {t for n, t in types.items() if n.endswith("attn_v.weight")} == {"q8_0"}
    assert types["output.weight"] == "q5_K"
    assert types["blk.0.ffn_down.weight"] == "q4_K_hifi"


# --------------------------------------------------------------------------
# --hifi


@pytest.mark.parametrize("model,ftype", [("small28", "Q3_K_HIFI"), ("medium", "Q4_K_XM"),
                                         ("large", "Q4_K_HIFI_L")])
def test_hifi_picks_ftype_by_size(quantize_bin, models, model, ftype):
    got = dry_run(quantize_bin, models[model], None, "--hifi")
    assert f"model has {fm.n_params(SPECS[model])} parameters" in got.log
    assert f"--hifi -> {ftype}" in got.log
    assert got.types == dry_run(quantize_bin, models[model], ftype).types


@pytest.mark.parametrize("scale,ftype", [("small", "Q3_K_HIFI"), ("medium", "Q4_K_XM"),
                                         ("large", "Q4_K_HIFI_L")])
def test_hifi_scale_overrides(quantize_bin, models, scale, ftype):
    # the detected scale of the 2.6B model is medium; the override wins either way
    got = dry_run(quantize_bin, models["medium"], None, "--hifi-scale", scale)
    assert "scale medium" in got.log
    assert f"--hifi-scale {scale} overrides it -> {ftype}" in got.log
    assert got.types == dry_run(quantize_bin, models["medium"], ftype).types


def _spec_with_params(n_layer_max: int, n_embd: int, n_ff: int, target: int) -> fm.ModelSpec:
    """A dense spec whose parameter count is exactly target (tuned with a 1-D tensor)."""
    for n_layer in range(n_layer_max, 0, -1):
        spec = dense(n_layer, n_embd, n_ff)
        if fm.n_params(spec) <= target:
            return dataclasses.replace(spec, extra_params=target - fm.n_params(spec))
    raise AssertionError("no spec fits")


@pytest.mark.parametrize("threshold,below,above", [(2_000_000_000, "Q3_K_HIFI", "Q4_K_XM"),
                                                   (10_000_000_000, "Q4_K_XM", "Q4_K_HIFI_L")])
def test_hifi_thresholds_are_inclusive(quantize_bin, tmp_path, threshold, below, above):
    for n, want in ((threshold, below), (threshold + 1, above)):
        spec = _spec_with_params(64, 3072, 8192, n)
        assert fm.n_params(spec) == n
        model = fm.write_model(tmp_path / f"m{n}.gguf", spec, sparse=True)
        log = dry_run(quantize_bin, model, None, "--hifi").log
        assert f"model has {n} parameters" in log and f"--hifi -> {want}" in log


def test_hifi_counts_every_split(quantize_bin, tmp_path):
    first = fm.write_model(tmp_path / "split.gguf", TINY, sparse=False, split_max_tensors=12)
    assert first.name == "split-00001-of-00004.gguf"
    assert fm.n_params(TINY) > sum(e.ne[0] * math.prod(e.ne[1:]) for e in fm.read_index(first).tensors.values())
    log = dry_run(quantize_bin, first, None, "--hifi").log
    assert f"model has {fm.n_params(TINY)} parameters" in log


def test_hifi_rejects_an_explicit_type(quantize_bin, models):
    proc = run_quantize(quantize_bin, "--dry-run", "--hifi", models["small28"], "Q4_K_M", check=False)
    assert proc.returncode != 0
    assert "--hifi picks the type itself" in proc.stdout


def test_hifi_scale_rejects_unknown_scale(quantize_bin, models):
    proc = run_quantize(quantize_bin, "--dry-run", "--hifi-scale", "huge", models["small28"], check=False)
    assert proc.returncode != 0


# --------------------------------------------------------------------------
# real quantization (needs the HIFI types' ggml traits and quantize functions)

TINY = fm.ModelSpec(n_layer=4, n_embd=256, n_ff=512, n_head=4, n_head_kv=2)

GGML_TYPE_IDS = {
    "f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q5_0": 6, "q5_1": 7, "q8_0": 8,
    "q2_K": 10, "q3_K": 11, "q4_K": 12, "q5_K": 13, "q6_K": 14, "iq4_nl": 20,
    "q3_K_hifi": 128, "q4_K_hifi": 129, "q5_K_hifi": 130, "q6_K_hifi": 131,
}


@pytest.fixture(scope="module")
def tiny_plain(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("ftype-plain")
    return fm.write_model(d / "tiny-plain-f16.gguf", TINY, sparse=False, seed=1)


@pytest.mark.parametrize("ftype", HIFI_FTYPES)
def test_quantized_file_has_planned_types(quantize_bin, tiny_plain, tmp_path, ftype):
    out = tmp_path / f"tiny-{ftype}.gguf"
    run_quantize(quantize_bin, tiny_plain, out, ftype, "2")
    index = fm.read_index(out)
    planned = dry_run(quantize_bin, tiny_plain, ftype).types
    assert {name: e.type_id for name, e in index.tensors.items()} == \
        {name: GGML_TYPE_IDS[t] for name, t in planned.items()}
    assert index.scalars["general.file_type"] == FTYPE_IDS[ftype]


def test_imatrix_reaches_hifi_tensors(quantize_bin, tiny_plain, tmp_path):
    imatrix = fm.write_imatrix(tmp_path / "imatrix.gguf", TINY, seed=2)
    with_im, without = tmp_path / "with.gguf", tmp_path / "without.gguf"
    proc = run_quantize(quantize_bin, "--imatrix", imatrix, tiny_plain, with_im, "Q3_K_HIFI", "2")
    assert "have importance matrix data" in proc.stdout
    run_quantize(quantize_bin, tiny_plain, without, "Q3_K_HIFI", "2")
    a, b = fm.read_index(with_im).tensors, fm.read_index(without).tensors

    def data(path: Path, entry: fm.TensorEntry) -> bytes:
        return fm.tensor_bytes(path, entry, 134 * 64)  # the first 8576 bytes

    for name, hifi_type in (("blk.0.ffn_down.weight", "q4_K_hifi"), ("blk.0.attn_v.weight", "q5_K_hifi")):
        assert a[name].type_id == GGML_TYPE_IDS[hifi_type]
        assert data(with_im, a[name]) != data(without, b[name]), f"{name} ignores the imatrix"
    # the output has no imatrix entry: same bytes both times (quantization is deterministic)
    assert data(with_im, a["output.weight"]) == data(without, b["output.weight"])


# --------------------------------------------------------------------------
# the files load and run in llama-perplexity
# (needs the HIFI types' CPU kernels as well: vec_dot, get_rows)


def _write_text(path: Path, n_words: int = 3000, seed: int = 0) -> Path:
    words = ("the of and to in is was for on that with as by at from it an be this which or are "
             "model weight layer token block scale error value mean large small river house "
             "garden morning letter window music number city water light story people").split()
    rng = np.random.default_rng(seed)
    sentences, cur = [], []
    for _ in range(n_words):
        cur.append(words[int(rng.integers(len(words)))])
        if len(cur) >= 6 + int(rng.integers(10)):
            sentences.append(" ".join(cur).capitalize() + ".")
            cur = []
    path.write_text(" ".join(sentences) + "\n")
    return path


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("ftype-tiny")
    return fm.write_model(d / "tiny-f16.gguf", TINY, sparse=False, tokenizer=True, seed=3)


@pytest.mark.parametrize("ftype", HIFI_FTYPES)
def test_quantized_file_runs_in_perplexity(quantize_bin, tiny_model, tmp_path, ftype):
    try:
        perplexity = paths.binary("llama-perplexity")
    except NotBuiltError as exc:
        pytest.skip(str(exc))
    out = tmp_path / f"tiny-{ftype}.gguf"
    run_quantize(quantize_bin, tiny_model, out, ftype, "2")
    text = _write_text(tmp_path / "text.txt")
    ppl = subprocess.run([str(perplexity), "-m", str(out), "-f", str(text), "-c", "128", "--chunks", "2",
                          "-t", "2", "-b", "128"],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    assert ppl.returncode == 0, ppl.stdout[-4000:]
    # the per-chunk value, not "Final estimate": at the pin llama-perplexity sometimes loses the tail
    # of its log at exit (stock builds too, about one run in three on this machine)
    m = re.search(r"\[1\]([0-9.]+|nan|inf)", ppl.stdout)
    assert m, ppl.stdout[-3000:]
    assert math.isfinite(float(m.group(1))) and float(m.group(1)) > 1.0


# --------------------------------------------------------------------------
# user overrides always win, on tied and untied embeddings

TIED_1024 = fm.ModelSpec(n_layer=4, n_embd=1024, n_ff=2048, n_head=8, n_head_kv=4, n_vocab=1024, tied=True)
UNTIED_1024 = dataclasses.replace(TIED_1024, tied=False)
# the single type of --pure: the HIFI type of the ftype's default type; Q4_K_XM holds stock types only
PURE = {"Q3_K_HIFI": "q3_K_hifi", "Q4_K_HIFI": "q4_K_hifi", "Q4_K_XM": "q4_K", "Q4_K_HIFI_L": "q4_K_hifi"}


@pytest.fixture(scope="module")
def tie_models(tmp_path_factory) -> dict[bool, Path]:
    d = tmp_path_factory.mktemp("tie-models")
    return {tied: fm.write_model(d / f"tied{int(tied)}.gguf", spec, sparse=True)
            for tied, spec in ((True, TIED_1024), (False, UNTIED_1024))}


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("ftype", HIFI_FTYPES)
def test_user_overrides_win(quantize_bin, tie_models, ftype, tied):
    model, spec = tie_models[tied], TIED_1024 if tied else UNTIED_1024
    out_name = "token_embd.weight" if tied else "output.weight"
    # --output-tensor-type: the output, which upstream applies to tied token embeddings as well
    got = dry_run(quantize_bin, model, ftype, "--output-tensor-type", "q8_0").types
    assert got[out_name] == "q8_0"
    # --token-embedding-type
    got = dry_run(quantize_bin, model, ftype, "--token-embedding-type", "q8_0").types
    assert got["token_embd.weight"] == "q8_0"
    # --tensor-type: first match wins
    got = dry_run(quantize_bin, model, ftype, "--tensor-type", "token_embd=q8_0", "--tensor-type", "^output=q8_0",
                  "--tensor-type", "attn_v=q8_0", "--tensor-type", "ffn_down=q5_K").types
    assert got["token_embd.weight"] == "q8_0" and got.get("output.weight", "q8_0") == "q8_0"
    assert {got[n] for n in got if n.endswith("attn_v.weight")} == {"q8_0"}
    assert {got[n] for n in got if n.endswith("ffn_down.weight")} == {"q5_K"}
    # --pure: one type for every quantizable tensor, the ftype's own
    got = dry_run(quantize_bin, model, ftype, "--pure").types
    assert {got[t.name] for t in fm.tensors(spec) if quantizable(t)} == {PURE[ftype]}


def test_pure_hifi_file_holds_the_hifi_type(quantize_bin, tiny_plain, tmp_path):
    # --pure Q3_K_HIFI once wrote plain q3_K tensors under the Q3_K_HIFI label
    out = tmp_path / "pure.gguf"
    run_quantize(quantize_bin, "--pure", tiny_plain, out, "Q3_K_HIFI", "2")
    index = fm.read_index(out)
    assert {e.type_id for n, e in index.tensors.items() if quantizable(next(
        t for t in fm.tensors(TINY) if t.name == n))} == {GGML_TYPE_IDS["q3_K_hifi"]}
    assert index.scalars["general.file_type"] == FTYPE_IDS["Q3_K_HIFI"]


# --------------------------------------------------------------------------
# recipes keep upstream's safety bumps: a recipe only adds bits

MOE8 = fm.ModelSpec(n_layer=4, n_embd=256, n_ff=512, n_head=4, n_head_kv=4, n_expert=8, n_expert_used=2)
FALCON = fm.ModelSpec(arch="falcon", n_layer=4, n_embd=512, n_ff=2048, n_head=8, n_head_kv=1, head_dim=64,
                      n_vocab=1024)
# Falcon-7B's width: rows that take no 256 block (upstream forces Q8_0 on Falcon's output either way)
FALCON_4544 = dataclasses.replace(FALCON, n_embd=4544, n_ff=4 * 4544, n_head=71)
LLAMA_70B = fm.ModelSpec(n_layer=80, n_embd=256, n_ff=512, n_head=8, n_head_kv=2, head_dim=32, n_vocab=1024)


@pytest.fixture(scope="module")
def bump_models(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bump-models")
    specs = {"moe8": MOE8, "falcon": FALCON, "falcon_4544": FALCON_4544, "llama_70b": LLAMA_70B}
    return {name: fm.write_model(d / f"{name}.gguf", spec, sparse=True) for name, spec in specs.items()}


@pytest.mark.parametrize("ftype", HIFI_FTYPES)
def test_recipes_keep_upstream_bumps(quantize_bin, bump_models, ftype):
    # 8 experts: upstream bumps attn_v (and attn_k) to Q8_0 for every ftype
    moe = dry_run(quantize_bin, bump_models["moe8"], ftype).types
    assert dry_run(quantize_bin, bump_models["moe8"], "Q4_K_M").types["blk.0.attn_v.weight"] == "q8_0"
    assert {moe[f"blk.{i}.attn_v.weight"] for i in range(MOE8.n_layer)} == {"q8_0"}
    assert {moe[f"blk.{i}.attn_k.weight"] for i in range(MOE8.n_layer)} == {"q8_0"}
    # Falcon: upstream forces a Q8_0 output, whatever the rows
    for name in ("falcon", "falcon_4544"):
        falcon = dry_run(quantize_bin, bump_models[name], ftype)
        assert dry_run(quantize_bin, bump_models[name], "Q4_K_M").types["output.weight"] == "q8_0"
        assert falcon.types["output.weight"] == "q8_0", name
        assert "llama_model_loader: - kv   0:                       general.architecture str              = falcon" \
            in falcon.log or "arch = falcon" in falcon.log or "falcon" in falcon.log
    # a 70B llama (80 layers, GQA): upstream bumps a Q3_K/Q4_K attn_v to Q5_K
    big = dry_run(quantize_bin, bump_models["llama_70b"], ftype).types
    attn_v = [big[f"blk.{i}.attn_v.weight"] for i in range(LLAMA_70B.n_layer)]
    assert min(BPW[t] for t in attn_v) >= BPW["q5_K"], attn_v


# --------------------------------------------------------------------------
# the recipe's fallbacks are counted with upstream's

def test_recipe_fallbacks_are_counted(quantize_bin, models):
    def count(ftype: str) -> int:
        m = re.search(r"(\d+) of (\d+) tensor\(s\) required fallback", dry_run(quantize_bin, models["gemma_like"], ftype).log)
        assert m, ftype
        return int(m.group(1))
    n_layer = GEMMA_LIKE.n_layer
    # 640-wide attn_q, attn_k, attn_v, ffn_gate, ffn_up of every layer; Q3_K_M picks Q8_0 for the tied output itself
    assert count("Q3_K_M") == 5 * n_layer
    # Q3_K_HIFI: the same rows (72 of them with the recipe's Q5_0) and the output's Q5_1
    assert count("Q3_K_HIFI") == 5 * n_layer + 1


# --------------------------------------------------------------------------
# --hifi: positional arguments, split.count

def test_hifi_takes_a_number_after_the_input_as_nthreads(quantize_bin, tiny_plain, tmp_path):
    model = tmp_path / "in" / "model.gguf"
    model.parent.mkdir()
    model.write_bytes(tiny_plain.read_bytes())
    for n in ("8", "4"):   # 8 is also a type id (Q5_0), 4 is not
        proc = run_quantize(quantize_bin, "--hifi", model, n, cwd=tmp_path)
        assert f"using {n} threads" in proc.stdout
        assert (model.parent / "ggml-model-Q3_K_HIFI.gguf").is_file()
        assert not (tmp_path / n).exists() and not (model.parent / n).exists()
    # with an output name, the number is nthreads as well; a type is still refused
    out = tmp_path / "out.gguf"
    assert "using 2 threads" in run_quantize(quantize_bin, "--hifi", model, out, "2").stdout and out.is_file()
    for args in (("Q4_K_M",), ("8", "2"), ("Q4_K_M", "2")):
        proc = run_quantize(quantize_bin, "--hifi", model, *args, check=False)
        assert proc.returncode == 1 and "--hifi picks the type itself" in proc.stdout, args


def test_hifi_reports_a_split_count_that_is_not_u16(quantize_bin, tmp_path):
    model = fm.write_model(tmp_path / "m.gguf", TINY, sparse=True, extra_u32={"split.count": 1})
    proc = run_quantize(quantize_bin, "--dry-run", "--hifi", model, check=False)
    assert proc.returncode == 1, (proc.returncode, proc.stdout[-2000:])   # not an abort
    assert "split.count has type u32, expected u16" in proc.stdout


# --------------------------------------------------------------------------
# names: an ftype named HIFI holds HIFI tensors; docs/ftypes.md says what each one holds

def _contents_table() -> dict[str, set[str]]:
    """docs/ftypes.md's table of what each ftype holds: ftype -> ggml types (on 256-wide rows)."""
    doc = (Path(__file__).resolve().parent.parent / "docs" / "ftypes.md").read_text()
    section = doc.split("## What each ftype holds", 1)[1].split("\n## ", 1)[0]
    table = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and cells[0].startswith("`") and cells[0].endswith("`"):
            table[cells[0].strip("`")] = set(re.findall(r"`(\w+)`", cells[1]))
    return table


def test_docs_say_what_each_ftype_holds(quantize_bin, models):
    table = _contents_table()
    assert set(table) == set(HIFI_FTYPES)
    for ftype in HIFI_FTYPES:
        held = set(dry_run(quantize_bin, models["small28"], ftype).types.values()) - {"f32", "f16"}
        assert held == table[ftype], (ftype, held)
        assert ("HIFI" in ftype) == any(t.endswith("_hifi") for t in held), ftype


# --------------------------------------------------------------------------
# a file without general.file_type: the loader guesses a file type for every HIFI type

GUESS = {"q3_K_hifi": "Q3_K_HIFI", "q4_K_hifi": "Q4_K_HIFI", "q5_K_hifi": "Q5_K - Medium", "q6_K_hifi": "Q6_K"}


@pytest.mark.parametrize("hifi_type", sorted(GUESS))
def test_loader_guesses_every_hifi_type(quantize_bin, tiny_model, tmp_path, hifi_type):
    try:
        bench = paths.binary("llama-bench")
    except NotBuiltError as exc:
        pytest.skip(str(exc))
    out = tmp_path / "q.gguf"
    run_quantize(quantize_bin, "--pure", "--tensor-type", f".={hifi_type}", tiny_model, out, "Q4_K_XM", "2")
    data = out.read_bytes()
    assert data.count(b"general.file_type") == 1
    guessed = tmp_path / "guessed.gguf"   # the same key length: the file stays valid, the loader must guess
    guessed.write_bytes(data.replace(b"general.file_type", b"general.file_typx"))
    proc = subprocess.run([str(bench), "-m", str(guessed), "-p", "8", "-n", "0", "-r", "1", "-t", "1", "-o", "json"],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:]
    m = re.search(r'"model_type": "([^"]*)"', proc.stdout)
    assert m, proc.stdout[-3000:]
    assert "(guessed)" in m.group(1) and GUESS[hifi_type] in m.group(1), m.group(1)
