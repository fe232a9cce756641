"""The grid check: a float model dequantized from a published quantization is recognised, its twin is not."""
from __future__ import annotations

from pathlib import Path

from hifikit import degrid, ggml, gguf_io, grid


def _requantized(cli, model: Path, tmp_path: Path, ftype: str) -> Path:
    """The model quantized to ftype and dequantized back to F16: a float file on the ftype's grid."""
    q = tmp_path / f"q-{ftype}.gguf"
    back = tmp_path / f"q-{ftype}-f16.gguf"
    cli("tool", "llama-quantize", model, q, ftype)
    cli("tool", "llama-quantize", "--allow-requantize", q, back, "F16")
    return back


def test_grid_is_found_before_and_gone_after(cli, arch_model, tmp_path):
    published = _requantized(cli, arch_model, tmp_path, "Q4_0")
    before = grid.detect(published)
    assert before.detected and before.by_type.get("q4_0", 0) >= before.checked - 2, before.by_type
    assert "hifikit degrid" in before.message()
    twin = tmp_path / "twin.gguf"
    degrid.degrid(published, twin, seed=0)
    after = grid.detect(twin)
    assert not after.detected and after.checked == before.checked
    assert after.degrid_seed == 0 and "de-gridded twin" in after.message()
    # the proxy error of a tensor at its published type: the F16 rounding before, a real error after
    lib = ggml.load()
    q4 = lib.type_by_name("q4_0").id
    for path, low in ((published, True), (twin, False)):
        index = gguf_io.tensor_index(path)
        t = next(e for e in index.tensors if e.name == "blk.1.ffn_down.weight")
        x = gguf_io.read_rows(path, t.offset, t.type_id, t.shape[0], 0, t.n_elements // t.shape[0])
        err = grid.relative_error(lib, q4, x)
        assert (err < 1e-6) if low else (err > 1e-3), (path.name, err)


def test_a_fresh_model_has_no_grid(arch_model):
    report = grid.detect(arch_model)
    assert report.checked > 0 and not report.detected and report.message() is None


def test_grid_check_in_analyze_and_plan(cli, arch_model, tmp_path):
    published = _requantized(cli, arch_model, tmp_path, "Q8_0")
    rec = cli.json("analyze", published, "--types", "q4_0", "q8_0", "f16")
    assert rec["grid"]["detected"] and rec["grid"]["by_type"] == {"q8_0": rec["grid"]["checked"]}
    proc = cli("analyze", published, "--types", "q4_0", "q8_0", "f16")
    assert "warning: grid detected" in proc.stderr and "hifikit degrid" in proc.stderr
    twin = tmp_path / "twin.gguf"
    cli("degrid", published, twin)
    rec = cli.json("analyze", twin, "--types", "q4_0", "q8_0", "f16")
    assert not rec["grid"]["detected"] and rec["grid"]["degrid_seed"] == 0
    plan = cli.json("plan", twin, "--from-run", str(rec["run"]), "--match", "Q8_0", "-o", tmp_path / "s.yaml")
    assert plan["grid"]["detected"] is False
    plan = cli.json("plan", published, "--match", "Q8_0", "-o", tmp_path / "s2.yaml")
    assert plan["grid"]["detected"] is True
