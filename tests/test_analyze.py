"""hifikit analyze: candidates, the proxy sweep through the built ggml, resume after SIGKILL, knees, plots."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import struct
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from hifikit.sweep import curves, knee, proxy
from hifikit import db, ggml, gguf_io, jobs
from hifikit.errors import HifikitError


def _write_gguf(path: Path, tensors: dict[str, np.ndarray], arch: str = "llama") -> Path:
    """A GGUF with just these tensors (numpy order: rows first); enough for the proxy sweep."""
    import gguf

    writer = gguf.GGUFWriter(path, arch)
    for name, data in tensors.items():
        writer.add_tensor(name, data)
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return path


@pytest.fixture(scope="module")
def wide_model(built, tmp_path_factory) -> Path:
    """Gemma 3 270M's row lengths: 640 (32-block types only), 1024 and 2048 (every type)."""
    rng = np.random.default_rng(7)
    t = {
        "token_embd.weight": rng.standard_normal((96, 640), dtype=np.float32).astype(np.float16),
        "blk.0.attn_norm.weight": np.ones(640, dtype=np.float32),
        "blk.0.attn_q.weight": (0.05 * rng.standard_normal((64, 640), dtype=np.float32)).astype(np.float16),
        "blk.0.attn_output.weight": (0.05 * rng.standard_normal((32, 1024), dtype=np.float32)).astype(np.float16),
        "blk.0.ffn_down.weight": (0.05 * rng.standard_normal((32, 2048), dtype=np.float32)).astype(np.float16),
        "blk.0.ffn_gate_inp.weight": rng.standard_normal((4, 640), dtype=np.float32),
        "rope_freqs.weight": np.ones(32, dtype=np.float32),
    }
    return _write_gguf(tmp_path_factory.mktemp("wide") / "wide.gguf", t)


def _cand(model: Path, name: str, types=None, importance=None) -> proxy.TensorCandidates:
    for c in proxy.candidates(model, types, importance):
        if c.tensor == name:
            return c
    raise AssertionError(f"{name} is not a candidate")


def test_tensor_index_matches_gguf_py(tiny_model, wide_model):
    for path in (tiny_model, wide_model):
        index = gguf_io.tensor_index(path)
        reader = gguf_io.open_reader(path)
        assert [(t.name, t.shape, t.type_id, t.offset) for t in index.tensors] == [
            (t.name, tuple(int(n) for n in t.shape), int(t.tensor_type), int(t.data_offset)) for t in reader.tensors]


def test_truncated_model_is_one_clear_error(tiny_model, tmp_path):
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny_model.read_bytes()[:-4096])
    with pytest.raises(HifikitError, match="truncated"):
        gguf_io.tensor_index(cut)


def test_candidates_follow_row_length_and_quantize_rules(wide_model):
    cands = {c.tensor: c for c in proxy.candidates(wide_model)}
    # norms, 1-D tensors and expert gates are never quantized by llama-quantize
    assert set(cands) == {"token_embd.weight", "blk.0.attn_q.weight", "blk.0.attn_output.weight",
                          "blk.0.ffn_down.weight"}
    blocks32 = {"q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl", "f16"}
    assert set(cands["token_embd.weight"].types) == blocks32
    assert set(cands["blk.0.attn_q.weight"].types) == blocks32
    assert set(cands["blk.0.ffn_down.weight"].types) == set(proxy.DEFAULT_TYPES)
    assert set(cands["blk.0.attn_output.weight"].types) == set(proxy.DEFAULT_TYPES)
    assert cands["blk.0.ffn_down.weight"].shape == (2048, 32)


def test_nbytes_are_exact(wide_model):
    lib = ggml.load()
    for c in proxy.candidates(wide_model):
        x = np.zeros((c.n_rows, c.n_per_row), dtype=np.float32)
        for t in c.types:
            assert c.nbytes[t] == len(lib.quantize(lib.type_by_name(t).id, x)), (c.tensor, t)
    c = _cand(wide_model, "blk.0.ffn_down.weight")
    assert c.nbytes["q4_K"] == 32 * (2048 // 256) * 144 and c.nbytes["f16"] == 2 * 2048 * 32
    assert c.nbytes["q4_K_hifi"] == 32 * (2048 // 256) * 168


def test_unknown_type_is_one_clear_error(cli, tiny_model, hifikit_home):
    with pytest.raises(HifikitError, match="unknown type 'q9_K'"):
        proxy.resolve_types(["q4_K", "q9_K"], False)
    res = cli("analyze", tiny_model, "--types", "q4_K", "q9_K", check=False)
    assert res.returncode == 1
    assert res.stderr.strip().splitlines() == [res.stderr.strip().splitlines()[0]]
    assert "unknown type 'q9_K'" in res.stderr and not res.stdout
    assert db.connect().execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 0


def test_imatrix_types_need_an_imatrix():
    assert [t.name for t in proxy.resolve_types(["iq2_xxs", "q4_K"], False)] == ["q4_K"]
    assert [t.name for t in proxy.resolve_types(["IQ2_XXS", "Q4_K"], True)] == ["iq2_xxs", "q4_K"]


def test_proxy_error_falls_with_bits(tiny_model):
    c = _cand(tiny_model, "blk.0.ffn_gate.weight")
    err = {p.type: p.error for p in proxy.proxy_points(tiny_model, c)}
    print({k: f"{v:.3e}" for k, v in sorted(err.items(), key=lambda kv: -kv[1])})
    assert err["f16"] == 0.0  # the source is F16: converting back is exact
    assert 0 < err["q8_0"] < err["q6_K"] < err["q5_K"] < err["q4_K"] < err["q3_K"] < err["q2_K"] < 1
    assert err["q5_0"] < err["q4_0"]


def test_hifi_beats_its_base_on_outliers(built, tmp_path):
    rng = np.random.default_rng(3)
    w = 0.02 * rng.standard_normal((64, 1024), dtype=np.float32)
    idx = rng.integers(0, 1024, size=(64, 4))  # a few large weights per row, as real models have
    np.put_along_axis(w, idx, 0.6 * rng.choice([-1.0, 1.0], size=(64, 4)).astype(np.float32), axis=1)
    model = _write_gguf(tmp_path / "outliers.gguf", {"blk.0.ffn_down.weight": w.astype(np.float16)})
    c = _cand(model, "blk.0.ffn_down.weight")
    err = {p.type: p.error for p in proxy.proxy_points(model, c)}
    for base in ("q3_K", "q4_K", "q5_K", "q6_K"):
        print(f"{base}: {err[base]:.3e}  {base}_hifi: {err[base + '_hifi']:.3e}")
        assert err[f"{base}_hifi"] < 0.9 * err[base]


def test_importance_weights_the_error_as_llama_quantize_does(built, tmp_path):
    rng = np.random.default_rng(5)
    w = (0.05 * rng.standard_normal((48, 512), dtype=np.float32)).astype(np.float16)
    model = _write_gguf(tmp_path / "m.gguf", {"blk.0.ffn_down.weight": w})
    sums = rng.uniform(0.5, 1.5, size=512).astype(np.float32)
    sums[rng.integers(0, 512, size=8)] = 400.0
    counts = np.array([100.0], dtype=np.float32)
    imat = _write_gguf(tmp_path / "m.imatrix.gguf", {"blk.0.ffn_down.weight.in_sum2": sums * counts[0],
                                                     "blk.0.ffn_down.weight.counts": counts})
    importance = proxy.load_importance(imat)
    np.testing.assert_allclose(importance["blk.0.ffn_down.weight"][0], sums, rtol=1e-6)
    c = _cand(model, "blk.0.ffn_down.weight", ["q3_K", "q4_0", "iq4_nl"], importance)
    got = {p.type: p.error for p in proxy.proxy_points(model, c, importance)}
    plain = {p.type: p.error for p in proxy.proxy_points(model, c)}
    lib = ggml.load()
    x = w.astype(np.float32)
    for t in c.types:
        tid = lib.type_by_name(t).id
        q = lib.dequantize(tid, lib.quantize(tid, x, sums), 512)
        want = float((sums * (x - q) ** 2).sum() / (sums * x ** 2).sum())
        assert got[t] == pytest.approx(want, rel=1e-5)
        assert got[t] != pytest.approx(plain[t], rel=1e-3)


def test_sweep_stores_curves_and_json(cli, wide_model, hifikit_home):
    out = cli.json("analyze", wide_model, "--types", "q4_0", "q8_0", "q4_K", "f16", "--threads", "2")
    conn = db.connect()
    sweep = curves.load_sweep(conn, out["run"])
    assert sweep.mode == "proxy" and out["mode"] == "proxy"
    by_name = {c.tensor: c for c in sweep.curves}
    assert set(by_name) == {"token_embd.weight", "blk.0.attn_q.weight", "blk.0.attn_output.weight",
                            "blk.0.ffn_down.weight"}
    assert {p.type for p in by_name["token_embd.weight"].points} == {"q4_0", "q8_0", "f16"}
    assert {p.type for p in by_name["blk.0.ffn_down.weight"].points} == {"q4_0", "q8_0", "q4_K", "f16"}
    rec = {t["tensor"]: t for t in out["tensors"]}
    down = rec["blk.0.ffn_down.weight"]
    assert down["best"]["4.5"]["type"] in ("q4_0", "q4_K") and down["best"]["8.5"]["type"] == "q8_0"
    assert down["knee"]["knee_type"] in ("q4_0", "q4_K", "q8_0", "f16")
    assert out["sweep"]["points"] == out["sweep"]["points_total"] == 3 + 3 + 4 + 4
    # the CLI and the library agree
    c = _cand(wide_model, "blk.0.ffn_down.weight", ["q4_0", "q8_0", "q4_K", "f16"])
    for p in proxy.proxy_points(wide_model, c):
        assert by_name["blk.0.ffn_down.weight"].point(p.type).error == pytest.approx(p.error, rel=1e-9)
        assert by_name["blk.0.ffn_down.weight"].point(p.type).nbytes == p.nbytes


def _wait_for_tensors(path: Path, n: int, proc: subprocess.Popen, timeout: float = 300) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"analyze ended before it could be killed: {proc.stderr.read()}")
        if path.exists():
            try:
                conn = sqlite3.connect(path, timeout=1)
                row = conn.execute("SELECT run_id, COUNT(DISTINCT tensor) FROM curve_points GROUP BY run_id "
                                   "ORDER BY run_id DESC LIMIT 1").fetchone()
                conn.close()
                if row and row[1] >= n:
                    return int(row[0])
            except sqlite3.OperationalError:
                pass
        time.sleep(0.02)
    raise AssertionError("analyze did not reach the kill point in time")


def test_sigkill_then_resume_redoes_no_finished_tensor(cli, tiny_model, hifikit_home):
    # slow types and one process so that the kill lands mid-sweep (output.weight, 32000 rows, comes last)
    argv = cli.argv("analyze", tiny_model, "--types", "iq4_nl", "q4_K_hifi", "q8_0", "--threads", "1", "--json")
    proc = subprocess.Popen(argv, env=cli.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        run_id = _wait_for_tensors(hifikit_home / "runs.db", 2, proc)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    conn = db.connect()
    before = {(r["tensor"], r["type"]): r["created"] for r in conn.execute(
        "SELECT tensor, type, created FROM curve_points WHERE run_id=?", (run_id,))}
    n_tensors = conn.execute("SELECT COUNT(*) FROM sweep_tensors WHERE run_id=?", (run_id,)).fetchone()[0]
    done_before = {t for t, _ in before}
    assert 2 <= len(done_before) < n_tensors, "the kill must land mid-sweep"
    # a tensor is committed with all its points or not at all
    assert all(sum(1 for k in before if k[0] == t) == 3 for t in done_before)
    print(f"\nkilled run {run_id} with {len(done_before)}/{n_tensors} tensors stored")

    res = cli("runs", "resume", run_id, "--json")
    after = {(r["tensor"], r["type"]): r["created"] for r in conn.execute(
        "SELECT tensor, type, created FROM curve_points WHERE run_id=?", (run_id,))}
    assert len(after) == 3 * n_tensors
    assert all(after[k] == created for k, created in before.items()), "a finished tensor was measured again"
    run = jobs.get_run(conn, run_id)
    assert run["status"] == "done"
    sweep_step = next(s for s in run["steps"] if s["name"] == "sweep")
    assert sweep_step["attempts"] == 2 and sweep_step["completions"] == 1
    assert sweep_step["result"]["skipped"] == len(done_before)
    assert sweep_step["result"]["tensors"] == n_tensors - len(done_before)
    out = json.loads(res.stdout)
    assert out["run"] == run_id and len(out["tensors"]) == n_tensors
    print(res.stderr.strip())


# ---- knees -----------------------------------------------------------------------------------

CANDIDATE_BPW = [2.625, 3.4375, 4.0, 4.5, 5.0, 5.5, 6.0, 6.5625, 7.3, 8.5, 16.0]


def test_knee_of_a_piecewise_linear_curve_is_its_corner():
    xs = np.array([2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.5, 6.5, 8.5, 12.0, 16.0])
    ys = np.where(xs <= 4.5, 1.0 - 0.35 * (xs - 2.0), 1.0 - 0.35 * 2.5 - 0.004 * (xs - 4.5))
    f = knee.fit(xs, ys, [f"t{x:g}" for x in xs])
    print(f.method, f.knee_bpw, f.residual)
    assert f.knee_bpw == pytest.approx(4.5, abs=0.25)
    assert f.knee_type == "t4.5"


def test_knee_of_an_exponential_is_analytic():
    a, b, c = 0.09, 2.0, 1e-4
    xs = np.array(CANDIDATE_BPW)
    ys = a * np.exp2(-b * (xs - xs[0])) + c
    f = knee.fit(xs, ys)
    assert f.method == "exp"
    # Kneedle: tangent parallel to the chord, |y'(x*)| = (y(x0) - y(x1)) / (x1 - x0)
    s = (ys[0] - ys[-1]) / (xs[-1] - xs[0])
    want = xs[0] + np.log2(a * b * np.log(2) / s) / b
    assert f.knee_bpw == pytest.approx(want, abs=0.05)
    # and it is where the chord gap of the true curve peaks
    grid = np.linspace(xs[0], xs[-1], 20001)
    true = a * np.exp2(-b * (grid - xs[0])) + c
    gap = ys[0] + (ys[-1] - ys[0]) * (grid - xs[0]) / (xs[-1] - xs[0]) - true
    assert f.knee_bpw == pytest.approx(grid[np.argmax(gap)], abs=0.05)
    assert f.params["b"] == pytest.approx(b, rel=0.02)


def test_noisy_non_monotone_curve_still_fits_monotone_and_convex():
    rng = np.random.default_rng(11)
    xs = np.array(CANDIDATE_BPW + [4.25, 4.5, 5.0, 6.0])
    ys = 0.08 * np.exp2(-1.8 * (xs - 2.625)) * np.exp(rng.normal(0, 0.35, xs.size))
    ys[3] = ys[1] * 1.5  # more bits, more error: dominated
    assert np.any(np.diff(ys[np.argsort(xs)]) > 0)
    f = knee.fit(xs, ys)
    grid = np.linspace(min(xs), max(xs), 500)
    pred = f.predict(grid)
    assert np.all(np.diff(pred) <= 1e-12)
    assert np.all(np.diff(pred, 2) >= -1e-9)
    assert np.all(np.diff(f.frontier_error) < 0) and np.all(np.diff(f.frontier_bpw) > 0)
    assert f.knee_bpw is not None and min(xs) <= f.knee_bpw <= max(xs)
    # the hull fallback is monotone and convex as well
    h = knee.fit(xs, ys, residual_tol=0.0)
    assert h.method == "hull"
    hp = h.predict(grid)
    assert np.all(np.diff(hp) <= 1e-12) and np.all(np.diff(hp, 2) >= -1e-9)


def test_knee_edge_cases():
    one = knee.fit([8.5], [1e-4], ["q8_0"])
    assert one.method == "single" and one.knee_type == "q8_0"
    line = knee.fit([2.0, 4.0, 6.0], [3.0, 2.0, 1.0], ["a", "b", "c"], residual_tol=0.0)
    assert line.knee_bpw is None
    with pytest.raises(ValueError):
        knee.fit([], [])


# ---- plots -----------------------------------------------------------------------------------

def test_plots_are_png_files(cli, wide_model, tmp_path, hifikit_home):
    from hifikit.sweep import plots

    out = cli.json("analyze", wide_model, "--types", "q4_0", "q5_0", "q8_0", "q4_K", "q6_K", "f16",
                   "--plots", tmp_path / "plots")
    assert len(out["plots"]) == 4 + 1
    sweep = curves.load_sweep(db.connect(), out["run"])
    chosen = {"blk.0.ffn_down.weight": "q6_K"}
    paths = plots.plot_curves(sweep, tmp_path / "again", chosen=chosen)
    assert {p.name for p in paths} == {plots.file_name(c.tensor) for c in sweep.curves} | {plots.OVERVIEW}
    import matplotlib.image as mpimg
    for p in [*map(Path, out["plots"]), *paths]:
        data = p.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = struct.unpack(">II", data[16:24])
        assert width > 200 and height > 200
        assert mpimg.imread(p).shape[:2] == (height, width)
    assert not list((tmp_path / "again").glob(".*"))  # no partial files left


def test_imatrix_of_another_shape_is_rejected(built, tmp_path):
    model = _write_gguf(tmp_path / "m.gguf", {"blk.0.ffn_down.weight": np.zeros((8, 512), dtype=np.float16)})
    imat = _write_gguf(tmp_path / "i.gguf", {"blk.0.ffn_down.weight.in_sum2": np.ones(256, dtype=np.float32),
                                             "blk.0.ffn_down.weight.counts": np.ones(1, dtype=np.float32)})
    with pytest.raises(HifikitError, match="imatrix entry for blk.0.ffn_down.weight has 256 values"):
        proxy.candidates(model, ["q4_K"], proxy.load_importance(imat))


def test_overview_grid_is_layer_by_kind():
    from hifikit.sweep import plots

    pos, rows, cols = plots._grid_layout(["token_embd.weight", "blk.0.attn_q.weight", "blk.0.ffn_down.weight",
                                          "blk.1.attn_q.weight", "blk.1.ffn_down.weight", "output.weight"])
    assert cols == ["attn_q", "ffn_down"] and rows == ["", "blk.0", "blk.1"]
    assert pos["token_embd.weight"] == (0, 0) and pos["output.weight"] == (0, 1)
    assert pos["blk.1.ffn_down.weight"] == (2, 1) and pos["blk.0.attn_q.weight"] == (1, 0)


@pytest.mark.parametrize("type_name", ["q4_K", "q3_K_hifi"])
def test_proxy_equals_llama_quantize_with_an_imatrix(tiny_model, tmp_path, type_name):
    """The proxy's error and bytes are those of the tensor llama-quantize writes (same type, same imatrix)."""
    import gguf

    from hifikit import runner

    rng = np.random.default_rng(9)
    index = gguf_io.tensor_index(tiny_model)
    writer = gguf.GGUFWriter(tmp_path / "tiny.imatrix.gguf", "llama")
    writer.add_string("general.type", "imatrix")
    writer.add_array("imatrix.datasets", ["synthetic"])
    writer.add_uint32("imatrix.chunk_count", 4)
    writer.add_uint32("imatrix.chunk_size", 512)
    for t in index.tensors:
        if t.name.startswith("blk.") and len(t.shape) == 2:
            sums = rng.uniform(0.1, 2.0, size=t.shape[0]).astype(np.float32)
            sums[rng.integers(0, t.shape[0], size=4)] = 300.0
            writer.add_tensor(t.name + ".in_sum2", sums * 2048.0)
            writer.add_tensor(t.name + ".counts", np.array([2048.0], dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    imat = tmp_path / "tiny.imatrix.gguf"
    out = tmp_path / "q.gguf"
    # the HIFI names are also ftypes (mixtures): --tensor-type puts the type itself on the two tensors
    runner.run_tool("llama-quantize", ["--imatrix", imat, "--pure", "--tensor-type", f"ffn_down={type_name}",
                                       "--tensor-type", f"attn_q={type_name}", tiny_model, out, "Q8_0", "2"])

    importance = proxy.load_importance(imat)
    lib = ggml.load()
    src = {t.name: t for t in index.tensors}
    written = {t.name: t for t in gguf_io.tensor_index(out).tensors}
    for name in ("blk.0.ffn_down.weight", "blk.1.attn_q.weight"):
        c = _cand(tiny_model, name, [type_name], importance)
        (point,) = proxy.proxy_points(tiny_model, c, importance)
        t = written[name]
        assert lib.type_by_name(type_name).id == t.type_id
        with open(out, "rb") as f:
            f.seek(t.offset)
            blob = f.read(point.nbytes)
        q = lib.dequantize(t.type_id, blob, c.n_per_row)
        x = np.memmap(tiny_model, dtype=np.float16, mode="r", offset=src[name].offset,
                      shape=(c.n_rows, c.n_per_row)).astype(np.float32)
        w = importance[name][0].astype(np.float64)
        want = float(((x - q).astype(np.float64) ** 2 * w).sum() / ((x.astype(np.float64) ** 2) * w).sum())
        assert point.error == pytest.approx(want, rel=1e-6), name
        # the next tensor starts right after this one's bytes (up to alignment): the byte count is the file's
        following = sorted(o.offset for o in written.values() if o.offset > t.offset)
        if following:
            assert following[0] - t.offset - point.nbytes < 32
