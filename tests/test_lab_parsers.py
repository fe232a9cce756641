"""The parsers on output the real binaries print for the synthetic model."""
from __future__ import annotations

import math

import pytest

from hifikit import gguf_io, imatrix_stats, parsers, runner

CTX, CHUNKS = 128, 3


@pytest.fixture(scope="module")
def quantized(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("q") / "tiny-q4_k_m.gguf"
    res = runner.run_tool("llama-quantize", [tiny_model, out, "Q4_K_M", "2"])
    return out, res


def test_quantize_output_matches_the_file(tiny_model, quantized):
    out, res = quantized
    parsed = parsers.parse_quantize(res.text)
    src, dst = gguf_io.read_info(tiny_model), gguf_io.read_info(out)
    assert [t.index for t in parsed.tensors] == list(range(1, src.n_tensors + 1))
    by_name = {t.name: t for t in dst.tensors}
    for t in parsed.tensors:
        written = by_name[t.name]
        assert t.target_type == written.type
        assert t.shape == written.shape
        assert t.mib_after == pytest.approx(written.n_bytes / 2**20, abs=0.006)
    # the 1-D norms are copied, the matrices converted
    assert {t.source_type for t in parsed.tensors if len(t.shape) == 1} == {"f32"}
    assert all(t.target_type != t.source_type for t in parsed.tensors if len(t.shape) == 2)
    assert parsed.quant_mib == pytest.approx(dst.size_mib, abs=0.006)
    assert parsed.quant_bpw == pytest.approx(dst.bits_per_weight, abs=0.006)
    assert parsed.model_bpw == pytest.approx(src.bits_per_weight, abs=0.006)


def test_quantize_watcher_follows_tensor_lines(quantized):
    _, res = quantized
    assert runner.watch_quantize(res.text) == (gguf_io.read_info(quantized[0]).n_tensors,) * 2


def test_perplexity_and_kld(tiny_model, tiny_text, quantized, tmp_path):
    base = tmp_path / "base.kld"
    common = ["-f", tiny_text, "-c", CTX, "--chunks", CHUNKS, "-t", "2"]
    ref = runner.run_tool("llama-perplexity", ["-m", tiny_model, *common, "--kl-divergence-base", base])
    p = parsers.parse_perplexity(ref.text)
    assert p.n_chunks == CHUNKS and p.n_ctx == CTX and len(p.chunks) == CHUNKS
    assert p.chunks[-1] == pytest.approx(p.ppl, rel=1e-6)  # the running estimate ends at the final one
    assert p.ppl > 1 and p.ppl_error > 0
    assert runner.watch_chunks(ref.text) == (CHUNKS, CHUNKS)

    res = runner.run_tool("llama-perplexity", ["-m", quantized[0], *common, "--kl-divergence-base", base,
                                               "--kl-divergence"])
    k = parsers.parse_kld(res.text)
    assert k.ppl_base == pytest.approx(p.ppl, rel=0.01)
    assert k.ppl_ratio == pytest.approx(k.ppl / k.ppl_base, rel=1e-3)
    assert 0 < k.kld_min <= k.kld_median <= k.kld_max
    assert k.kld_min <= k.kld_mean <= k.kld_max and k.kld_error > 0
    pct = sorted((float(q), v) for q, v in k.kld_percentiles.items())
    assert [v for _, v in pct] == sorted(v for _, v in pct)
    assert {"99.0", "95.0", "1.0"} <= set(k.kld_percentiles)
    assert 0 <= k.same_top_p <= 100 and k.rms_dp >= 0
    assert [c.chunk for c in k.chunks] == list(range(1, CHUNKS + 1))
    assert k.chunks[-1].kld == pytest.approx(k.kld_mean, rel=1e-4)
    assert not math.isnan(k.ln_ratio)


def test_imatrix_file_and_statistics(tiny_model, tiny_text, tmp_path):
    out = tmp_path / "im.gguf"
    res = runner.run_tool("llama-imatrix", ["-m", tiny_model, "-f", tiny_text, "-c", CTX, "--chunks", CHUNKS,
                                            "-o", out, "-t", "2"])
    summary = gguf_io.imatrix_summary(out)
    matrices = [t for t in gguf_io.read_info(tiny_model).tensors
                if len(t.shape) == 2 and t.name.startswith("blk.")]
    assert summary["entries"] == len(matrices)
    assert summary["chunks"] == CHUNKS and summary["chunk_size"] == CTX
    assert parsers.parse_perplexity(res.text).n_chunks == CHUNKS
    ours = imatrix_stats.statistics(out)
    assert len(ours) == len(matrices)
    assert all(r.min <= r.mean <= r.max and r.n in (256, 512) and 0 <= r.zd_pct <= 100 for r in ours)
    assert {r.layer for r in ours} == {"0", "1"}
    assert all(r.cos_sim == 0 for r in ours if r.layer == "0") and all(r.cos_sim > 0 for r in ours if r.layer == "1")
    # the tool's printout, when its logger got to write it, says the same
    for _ in range(5):
        printed = runner.run_tool("llama-imatrix", ["-m", tiny_model, "--in-file", out, "--show-statistics"]).text
        if "Computing statistics" in printed:
            break
    else:
        pytest.xfail("llama-imatrix --show-statistics printed nothing (common_log not flushed at exit)")
    rows = parsers.parse_imatrix_statistics(printed)
    assert [(r.layer, r.tensor) for r in rows] == [(r.layer, r.tensor) for r in ours]
    for tool, mine in zip(rows, ours):
        assert tool.sum_act2 == pytest.approx(mine.sum_act2, rel=1e-3, abs=0.01)
        assert tool.max == pytest.approx(mine.max, rel=1e-3, abs=1e-4)
        assert tool.entropy == pytest.approx(mine.entropy, abs=1e-3)
        assert tool.zd_pct == pytest.approx(mine.zd_pct, abs=0.01)
        assert tool.cos_sim == pytest.approx(mine.cos_sim, abs=1e-3)


def test_bench_json(tiny_model, quantized):
    res = runner.run_tool("llama-bench", ["-m", tiny_model, "-m", quantized[0], "-p", "32", "-n", "4", "-r", "1",
                                          "-t", "2", "-o", "json"])
    rows = parsers.parse_bench_json(res.stdout)
    assert sorted(r.test for r in rows) == ["pp32", "pp32", "tg4", "tg4"]
    assert all(r.avg_ts > 0 for r in rows)
    sizes = {r.model_size for r in rows}
    assert len(sizes) == 2  # F16 and Q4_K_M differ


def test_failed_tool_is_one_line_plus_tail(tmp_path):
    missing = tmp_path / "nope.gguf"
    with pytest.raises(runner.ToolFailedError) as exc:
        runner.run_tool("llama-quantize", [missing, tmp_path / "o.gguf", "Q4_K_M"], log_path=tmp_path / "q.log")
    first = str(exc.value).splitlines()[0]
    assert "llama-quantize failed with exit code" in first and "q.log" in first
    assert (tmp_path / "q.log").read_text().startswith("$ ")


def test_parse_errors_are_loud():
    with pytest.raises(parsers.ParseError):
        parsers.parse_quantize("nothing here")
    with pytest.raises(parsers.ParseError):
        parsers.parse_kld("Final estimate: PPL = 3.0 +/- 0.1")
