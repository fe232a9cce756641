"""Turn llama.cpp tool output into dataclasses.

Every parser takes the text a tool printed (log prefixes already stripped,
see runner.ToolResult.text) and raises ParseError when the expected lines
are missing, so a format change upstream fails loudly.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
from typing import Any

from .errors import HifikitError


class ParseError(HifikitError):
    """Tool output did not have the expected shape."""


_NUM = r"[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|nan|inf|-nan|-inf)"


def _f(text: str) -> float:
    return float(text.replace("-nan", "nan"))


# --- llama-quantize -------------------------------------------------------------

@dataclasses.dataclass
class QuantTensor:
    index: int
    name: str
    shape: list[int]
    source_type: str
    target_type: str        # same as source_type when the tensor was copied
    mib_before: float
    mib_after: float


@dataclasses.dataclass
class QuantizeResult:
    tensors: list[QuantTensor]
    model_mib: float
    model_bpw: float
    quant_mib: float
    quant_bpw: float
    fallbacks: int = 0


_QT_HEAD_RE = re.compile(
    r"^\[\s*(\d+)/\s*(\d+)\]\s+(\S+)\s+-\s+\[([^\]]*)\],\s+type =\s+(\S+),", re.MULTILINE)
_QT_CONV_RE = re.compile(r"converting to (\S+) \.\.")
_QT_SIZE2_RE = re.compile(rf"size =\s+({_NUM}) MiB ->\s+({_NUM}) MiB")
_QT_SIZE1_RE = re.compile(rf"size =\s+({_NUM}) MiB")
_QT_DRY_RE = re.compile(rf"MiB ->\s+{_NUM} MiB \((\S+)\)")   # --dry-run names the target type
_QT_TOTAL_RE = re.compile(rf"(model|quant) size\s+=\s+({_NUM}) MiB \(({_NUM}) BPW\)")
_QT_FALLBACK_RE = re.compile(r"(\d+) of (\d+) tensor\(s\) required fallback")


def parse_quantize(text: str) -> QuantizeResult:
    heads = list(_QT_HEAD_RE.finditer(text))
    if not heads:
        raise ParseError("llama-quantize output has no tensor lines")
    tensors = []
    for n, m in enumerate(heads):
        end = heads[n + 1].start() if n + 1 < len(heads) else len(text)
        body = text[m.end():end]
        src = m.group(5)
        conv = _QT_CONV_RE.search(body)
        two = _QT_SIZE2_RE.search(body)
        if two:
            before, after = _f(two.group(1)), _f(two.group(2))
        else:
            one = _QT_SIZE1_RE.search(body)
            if not one:
                raise ParseError(f"llama-quantize: no size for tensor {m.group(3)}")
            before = after = _f(one.group(1))
        shape = [int(x) for x in m.group(4).replace(" ", "").split(",") if x]
        while len(shape) > 1 and shape[-1] == 1:
            shape.pop()
        dry = None if conv else _QT_DRY_RE.search(body)
        target = conv.group(1) if conv else dry.group(1) if dry else src
        tensors.append(QuantTensor(int(m.group(1)), m.group(3), shape, src, target, before, after))
    totals = {kind: (_f(mib), _f(bpw)) for kind, mib, bpw in _QT_TOTAL_RE.findall(text)}
    if "quant" not in totals or "model" not in totals:
        raise ParseError("llama-quantize output has no 'model size' / 'quant size' lines")
    fb = _QT_FALLBACK_RE.search(text)
    return QuantizeResult(tensors, totals["model"][0], totals["model"][1], totals["quant"][0],
                          totals["quant"][1], int(fb.group(1)) if fb else 0)


_QT_FTYPE_RE = re.compile(r"quantizing '.*' to '.*' as (\S+)")


def parse_quantize_ftype(text: str) -> str | None:
    """The ftype llama-quantize used ("quantizing 'IN' to 'OUT' as Q3_K_HIFI"), None if it did not say."""
    m = _QT_FTYPE_RE.search(text)
    return m.group(1) if m else None


_QOPT_RE = re.compile(r"^\s*(?:(\d+)\s+or\s+)?(\S+)\s*:\s*(.*)$")


def parse_quant_options(text: str) -> dict[str, dict[str, Any]]:
    """The 'allowed quantization types' table of llama-quantize --help: name -> {ftype, desc}."""
    marker = text.find("allowed quantization types")
    if marker < 0:
        raise ParseError("llama-quantize --help lists no quantization types")
    out: dict[str, dict[str, Any]] = {}
    for line in text[marker:].splitlines()[1:]:
        if not line.strip() or line.startswith("---"):
            continue
        m = _QOPT_RE.match(line)
        if m:
            out[m.group(2)] = {"ftype": int(m.group(1)) if m.group(1) else None, "desc": m.group(3).strip()}
    return out


# --- llama-perplexity -----------------------------------------------------------

@dataclasses.dataclass
class PerplexityResult:
    ppl: float
    ppl_error: float
    chunks: list[float]
    n_chunks: int
    n_ctx: int | None


_PPL_CHUNK_RE = re.compile(rf"\[(\d+)\]({_NUM}),")
_PPL_FINAL_RE = re.compile(rf"Final estimate: PPL = ({_NUM}) \+/- ({_NUM})")
_PPL_HEAD_RE = re.compile(r"(?:calculating perplexity|computing) over (\d+) chunks, n_ctx=(\d+)")


def parse_perplexity(text: str) -> PerplexityResult:
    final = _PPL_FINAL_RE.search(text)
    if not final:
        raise ParseError("llama-perplexity output has no 'Final estimate' line")
    chunks = [(int(i), _f(v)) for i, v in _PPL_CHUNK_RE.findall(text)]
    head = _PPL_HEAD_RE.search(text)
    return PerplexityResult(_f(final.group(1)), _f(final.group(2)), [v for _, v in sorted(chunks)],
                            int(head.group(1)) if head else len(chunks),
                            int(head.group(2)) if head else None)


@dataclasses.dataclass
class KLDChunk:
    chunk: int
    ppl: float
    ppl_error: float
    ln_ratio: float
    ln_ratio_error: float
    kld: float
    kld_error: float
    rms_dp: float
    rms_dp_error: float
    same_top_p: float
    same_top_p_error: float


@dataclasses.dataclass
class KLDResult:
    ppl: float                      # Mean PPL(Q)
    ppl_error: float
    ppl_base: float
    ppl_base_error: float
    ln_ratio: float                 # Mean ln(PPL(Q)/PPL(base))
    ln_ratio_error: float
    ppl_ratio: float
    ppl_ratio_error: float
    kld_mean: float
    kld_error: float
    kld_max: float
    kld_min: float
    kld_median: float
    kld_percentiles: dict[str, float]   # "99.0" -> value
    dp_percentiles: dict[str, float]    # % units, "Mean"/"Maximum"/"99.0"/...
    rms_dp: float                        # %
    rms_dp_error: float
    same_top_p: float                    # %
    same_top_p_error: float
    chunks: list[KLDChunk]


def _block(text: str, title: str) -> str:
    start = text.find(f"====== {title} ======")
    if start < 0:
        raise ParseError(f"llama-perplexity output has no '{title}' block")
    rest = text[start:].split("\n", 1)[1] if "\n" in text[start:] else ""
    end = rest.find("\n======")
    return rest if end < 0 else rest[:end]


def _pm(block: str, label: str) -> tuple[float, float]:
    m = re.search(rf"^{re.escape(label)}\s*:\s*({_NUM})\s*%?\s*±\s*({_NUM})", block, re.MULTILINE)
    if not m:
        raise ParseError(f"llama-perplexity: no '{label}' line")
    return _f(m.group(1)), _f(m.group(2))


def _stat_lines(block: str, unit: str) -> dict[str, float]:
    out = {}
    for key, value in re.findall(rf"^\s*(\S+%?)\s+{unit}:\s*({_NUM})", block, re.MULTILINE):
        out[key.rstrip("%")] = _f(value)
    return out


_KLD_CHUNK_LINE_RE = re.compile(
    rf"^\s*(\d+)\s+({_NUM})\s*±\s*({_NUM})\s+({_NUM})\s*±\s*({_NUM})\s+({_NUM})\s*±\s*({_NUM})"
    rf"\s+({_NUM})\s*±\s*({_NUM})\s*%\s+({_NUM})\s*±\s*({_NUM})\s*%", re.MULTILINE)


def parse_kld(text: str) -> KLDResult:
    ppl_block = _block(text, "Perplexity statistics")
    kld_block = _block(text, "KL divergence statistics")
    tok_block = _block(text, "Token probability statistics")
    ppl, ppl_err = _pm(ppl_block, "Mean PPL(Q)")
    base, base_err = _pm(ppl_block, "Mean PPL(base)")
    ln_r, ln_r_err = _pm(ppl_block, "Mean ln(PPL(Q)/PPL(base))")
    ratio, ratio_err = _pm(ppl_block, "Mean PPL(Q)/PPL(base)")
    kld, kld_err = _pm(kld_block, "Mean    KLD")
    stats = _stat_lines(kld_block, "KLD")
    dp = _stat_lines(tok_block, "Δp")
    rms, rms_err = _pm(tok_block, "RMS Δp    ")
    same, same_err = _pm(tok_block, "Same top p")
    if "Maximum" not in stats or "Median" not in stats:
        raise ParseError("llama-perplexity: KL divergence block lacks Maximum/Median")
    pct = {k: v for k, v in stats.items() if k not in ("Mean", "Maximum", "Minimum", "Median")}
    chunks = [KLDChunk(int(m[0]), *map(_f, m[1:])) for m in _KLD_CHUNK_LINE_RE.findall(text)]
    return KLDResult(ppl, ppl_err, base, base_err, ln_r, ln_r_err, ratio, ratio_err, kld, kld_err,
                     stats["Maximum"], stats.get("Minimum", math.nan), stats["Median"], pct, dp,
                     rms, rms_err, same, same_err, chunks)


# --- llama-imatrix --------------------------------------------------------------

@dataclasses.dataclass
class ImatrixResult:
    path: str
    chunks: int
    chunk_size: int | None
    entries: int
    datasets: list[str]
    ppl: float | None = None


@dataclasses.dataclass
class ImatrixStat:
    layer: str
    tensor: str
    sum_act2: float
    min: float
    max: float
    mean: float
    std: float
    active_pct: float
    n: int
    entropy: float
    entropy_norm_pct: float
    zd_pct: float
    cos_sim: float


_IM_STAT_RE = re.compile(
    rf"^\s*(\S+)\s+(\S+)\s+({_NUM})\s+({_NUM})\s+({_NUM})\s+({_NUM})\s+({_NUM})\s+({_NUM})%\s+(\d+)"
    rf"\s+({_NUM})\s+({_NUM})%\s+({_NUM})%\s+({_NUM})\s*$", re.MULTILINE)


def parse_imatrix_statistics(text: str) -> list[ImatrixStat]:
    """Rows of `llama-imatrix --show-statistics` (per layer and tensor)."""
    rows = []
    for m in _IM_STAT_RE.findall(text):
        layer, tensor = m[0], m[1]
        v = [_f(x) for x in m[2:8]]
        rows.append(ImatrixStat(layer, tensor, *v, int(m[8]), _f(m[9]), _f(m[10]), _f(m[11]), _f(m[12])))
    if not rows:
        raise ParseError("llama-imatrix --show-statistics printed no statistics rows")
    return rows


# --- llama-bench ----------------------------------------------------------------

@dataclasses.dataclass
class BenchResult:
    model: str
    model_type: str
    model_size: int
    n_params: int
    backends: str
    n_threads: int
    n_prompt: int
    n_gen: int
    avg_ts: float
    stddev_ts: float

    @property
    def test(self) -> str:
        return f"pp{self.n_prompt}" if self.n_prompt and not self.n_gen else \
            f"tg{self.n_gen}" if self.n_gen and not self.n_prompt else f"pp{self.n_prompt}+tg{self.n_gen}"


def parse_bench_json(text: str) -> list[BenchResult]:
    start = text.find("[")
    if start < 0:
        raise ParseError("llama-bench printed no JSON array")
    try:
        rows = json.JSONDecoder().raw_decode(text[start:])[0]
    except json.JSONDecodeError as exc:
        raise ParseError(f"llama-bench JSON is malformed: {exc}") from exc
    return [BenchResult(r["model_filename"], r.get("model_type", ""), int(r.get("model_size", 0)),
                        int(r.get("model_n_params", 0)), r.get("backends", ""), int(r.get("n_threads", 0)),
                        int(r.get("n_prompt", 0)), int(r.get("n_gen", 0)), float(r["avg_ts"]),
                        float(r.get("stddev_ts", 0.0))) for r in rows]


# --- llama-tokenize -------------------------------------------------------------

_TOK_COUNT_RE = re.compile(r"Total number of tokens:\s*(\d+)")


def parse_token_count(text: str) -> int:
    m = _TOK_COUNT_RE.search(text)
    if not m:
        raise ParseError("llama-tokenize printed no token count")
    return int(m.group(1))
