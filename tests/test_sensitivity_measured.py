"""llama-sensitivity and the measured sweep driver (hifikit.sweep.measured) on the tiny synthetic model."""
from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from hifikit.sweep import curves, measured
from hifikit import db, gguf_io, jobs, paths, runner
from hifikit.sweep.agreement import spearman
from hifikit.errors import ToolFailedError

TENSOR = "blk.0.ffn_down.weight"
OTHER = "blk.1.attn_q.weight"
# short chunks: the synthetic model's text is a few thousand tokens
CTX, CHUNKS = 64, 2


@functools.lru_cache(maxsize=4)
def _tensors(model: Path) -> tuple[gguf_io.TensorInfo, ...]:
    return tuple(gguf_io.read_info(model).tensors)


def sensitivity(model: Path, text: Path, pairs: list[tuple[str, str]] | str, tmp_path: Path,
                *extra: str) -> subprocess.CompletedProcess:
    pairs_path = tmp_path / "pairs.tsv"
    pairs_path.write_text(pairs if isinstance(pairs, str) else "".join(f"{t}\t{ty}\n" for t, ty in pairs))
    argv = [str(paths.binary("llama-sensitivity")), "-m", str(model), "-f", str(text), "--pairs", str(pairs_path),
            "-c", str(CTX), "--chunks", str(CHUNKS), "-t", "1", *extra]
    return subprocess.run(argv, capture_output=True, text=True, env=runner.tool_env(), timeout=600)


def results(proc: subprocess.CompletedProcess) -> list[dict]:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in proc.stdout.splitlines()]


def test_kld_orders_types_and_sizes_are_exact(built, tiny_model, tiny_text, tmp_path):
    types = ["f16", "q8_0", "q3_K", "q2_K", "q4_K_hifi"]
    recs = results(sensitivity(tiny_model, tiny_text, [(TENSOR, t) for t in types], tmp_path))
    assert [r["type"] for r in recs] == types
    kld = {r["type"]: r["kld"] for r in recs}
    # the model is stored as F16: an F16 image is the tensor itself, the output the reference
    assert abs(kld["f16"]) < 1e-12
    assert kld["q8_0"] > 0
    assert kld["q3_K"] > kld["q8_0"]
    assert kld["q2_K"] > kld["q8_0"]
    for r in recs:
        assert r["kld_pm"] >= 0 and 0.0 <= r["same_top"] <= 1.0 and r["seconds"] > 0
    assert recs[0]["same_top"] == 1.0

    from hifikit import ggml
    shape = {t.name: t.shape for t in _tensors(tiny_model)}[TENSOR]
    lib = ggml.load()
    for r in recs:
        assert r["nbytes"] == lib.type_by_name(r["type"]).row_size(shape[0]) * shape[1]


def test_weights_are_restored_after_each_pair(built, tiny_model, tiny_text, tmp_path):
    pairs = [(TENSOR, "q2_K"), (TENSOR, "f16"), (TENSOR, "q2_K"), (OTHER, "q2_K"), (TENSOR, "f16"), (OTHER, "f16")]
    recs = results(sensitivity(tiny_model, tiny_text, pairs, tmp_path))
    assert recs[0]["kld"] > 1e-6
    # a restored tensor gives the reference back, whatever was measured before
    assert abs(recs[1]["kld"]) < 1e-12 and abs(recs[4]["kld"]) < 1e-12 and abs(recs[5]["kld"]) < 1e-12
    # the same pair twice: the same result (the second starts from the original weights too)
    assert recs[2]["kld"] == recs[0]["kld"]
    assert recs[3]["kld"] > 1e-6


def test_scores_llama_perplexity_positions_by_default(built, tiny_model, tiny_text, tmp_path):
    # llama-perplexity --kl-divergence scores the positions from ctx/2 on: ctx - 1 - ctx/2 per chunk
    pairs = [(TENSOR, "q4_K")]
    default = sensitivity(tiny_model, tiny_text, pairs, tmp_path)
    assert f"scoring {CTX - 1 - CTX // 2} positions per chunk" in default.stderr
    every = sensitivity(tiny_model, tiny_text, pairs, tmp_path, "--all-positions")
    assert f"scoring {CTX - 1} positions per chunk" in every.stderr
    assert results(default)[0]["kld"] != results(every)[0]["kld"]


def _only_tensor_quantized(src: Path, out: Path, tensor: str, type_name: str, tmp_path: Path) -> Path:
    """src with `tensor` quantized to `type_name` by llama-quantize and every other tensor as it is (F16)."""
    from hifikit.planner.strategy import regex_for

    # as a strategy does (hifikit.planner.strategy.quantize_step): one anchored pattern per matrix
    matrices = [t.name for t in _tensors(src) if len(t.shape) >= 2]
    types = tmp_path / "types.txt"
    types.write_text("".join(f"{regex_for(n)}={type_name if n == tensor else 'f16'}\n" for n in matrices))
    subprocess.run([str(paths.binary("llama-quantize")), "--tensor-type-file", str(types), str(src), str(out), "Q8_0",
                    "1"], check=True, capture_output=True, env=runner.tool_env(), timeout=600)
    got = {t.name: t.type for t in gguf_io.read_info(out).tensors}
    assert got[tensor].lower() == type_name.lower()
    assert sum(t.lower() == type_name.lower() for t in got.values()) == 1
    return out


@pytest.mark.parametrize("type_name", ["q4_K", "q8_0"])
def test_kld_equals_hifikit_eval_of_a_file_with_only_that_tensor_quantized(built, tiny_model, tiny_text, tmp_path,
                                                                           type_name):
    from hifikit import evaluate

    chunks = 8  # llama-perplexity prints its statistics from 100 scored positions on
    model = _only_tensor_quantized(tiny_model, tmp_path / "one.gguf", TENSOR, type_name, tmp_path)
    row = evaluate.evaluate(evaluate.EvalOptions(model, tiny_text, ref=tiny_model, ctx=CTX, chunks=chunks,
                                                 threads=1), progress=False).models[0]
    exact = results(sensitivity(tiny_model, tiny_text, [(TENSOR, type_name)], tmp_path, "--chunks", str(chunks),
                                "--top-k", "0"))[0]
    default = results(sensitivity(tiny_model, tiny_text, [(TENSOR, type_name)], tmp_path, "--chunks", str(chunks)))[0]
    assert exact["kld"] > 0 and row.kld_mean > 0
    # the same positions, the same quantized weights, the same kernels: with the whole vocabulary kept, only
    # llama-perplexity's 16-bit rounding of the reference log-probabilities (and its 16-nat cut) is left
    # between the two (measured: 0.3 % for q4_K, 0.4 % for q8_0)
    assert abs(exact["kld"] - row.kld_mean) <= 0.01 * row.kld_mean, (exact, row.kld_mean, row.kld_error)
    # the default top-64 reference adds the noise of its sampled tail term, inside its +/-
    assert abs(default["kld"] - row.kld_mean) <= default["kld_pm"], (default, row.kld_mean, row.kld_error)


def test_top_k_reference_without_tail_samples_is_a_lower_bound(built, tiny_model, tiny_text, tmp_path):
    pairs = [(TENSOR, "q4_K"), (OTHER, "q3_K")]
    exact = results(sensitivity(tiny_model, tiny_text, pairs, tmp_path, "--top-k", "0"))
    bounds = {}
    for k in ("8", "64", "512"):
        proc = sensitivity(tiny_model, tiny_text, pairs, tmp_path, "--top-k", k, "--tail-samples", "0")
        assert f"the top {k} of " in proc.stderr
        bounds[k] = results(proc)
        for a, e in zip(bounds[k], exact):
            # pooling the tail into one outcome can only lose divergence (data processing inequality)
            assert 0 < a["kld"] <= e["kld"] * (1 + 1e-9)
            assert a["same_top"] == e["same_top"]
    # the bound tightens with k
    for a, b, e in zip(bounds["8"], bounds["512"], exact):
        assert a["kld"] <= b["kld"] * (1 + 1e-9) <= e["kld"] * (1 + 2e-9)


def test_tail_samples_estimate_the_whole_divergence(built, tiny_model, tiny_text, tmp_path):
    # the tiny model's distributions are flat: the top 64 of 32000 tokens hold 3 % of the mass, and the
    # lower bound alone is 3 % of the divergence; the sampled tail term gives the rest back
    pairs = [(TENSOR, "q4_K"), (OTHER, "q3_K"), (TENSOR, "q8_0")]
    exact = results(sensitivity(tiny_model, tiny_text, pairs, tmp_path, "--top-k", "0"))
    default = sensitivity(tiny_model, tiny_text, pairs, tmp_path)
    assert "the top 64 of 32000 tokens per position and 64 tail samples" in default.stderr
    for a, e in zip(results(default), exact):
        # the draws' noise is part of the positions' spread, i.e. inside the reported +/-
        assert abs(a["kld"] - e["kld"]) <= a["kld_pm"], (a, e)
        assert abs(a["kld"] - e["kld"]) <= 0.1 * e["kld"], (a, e)
    # the draws are fixed by the position: the same run gives the same figures
    again = results(sensitivity(tiny_model, tiny_text, pairs, tmp_path))
    assert [r["kld"] for r in again] == [r["kld"] for r in results(default)]


def _peak_rss_mib(model: Path, text: Path, tmp_path: Path, *args: str) -> float:
    """Peak resident memory of one llama-sensitivity run, from a fresh process's RUSAGE_CHILDREN."""
    pairs = tmp_path / "rss-pairs.tsv"
    pairs.write_text(f"{TENSOR}\tq8_0\n")
    argv = [str(paths.binary("llama-sensitivity")), "-m", str(model), "-f", str(text), "--pairs", str(pairs),
            "-t", "1", *args]
    probe = ("import resource, subprocess, sys\n"
             "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n")
    out = subprocess.run([sys.executable, "-c", probe, *argv], check=True, capture_output=True, text=True,
                         env=runner.tool_env(), cwd=tmp_path, timeout=600)
    return int(out.stdout.split()[-1]) / 1024


def test_reference_memory_does_not_grow_with_vocab_times_positions(built, tiny_model, tiny_text, tmp_path):
    # 8 chunks of 256 tokens score 8 x 127 positions on a 32000-token vocabulary: kept whole, as floats,
    # that is 124 MiB; the top 64 of each position are 0.7 MiB
    rss = {(k, chunks): _peak_rss_mib(tiny_model, tiny_text, tmp_path, "-c", "256", "--chunks", str(chunks),
                                      "--top-k", k)
           for k in ("64", "4096") for chunks in (1, 8)}
    grow_64 = rss["64", 8] - rss["64", 1]
    grow_4096 = rss["4096", 8] - rss["4096", 1]
    # the control: 4096 tokens x 12 bytes x 7 x 127 more positions = 42 MiB more, which the probe sees
    assert grow_4096 > 30, rss
    assert grow_64 < 8, rss


def _one_error_line(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode != 0
    assert proc.stdout == ""
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-2000:]
    for needle in needles:
        assert needle in errors[0]
    # validation happens before the reference pass
    assert "reference" not in proc.stderr
    return errors[0]


def test_bad_pairs_are_rejected_before_any_work(built, tiny_model, tiny_text, tmp_path):
    ok = f"{TENSOR}\tq4_K\n"
    _one_error_line(sensitivity(tiny_model, tiny_text, ok + "blk.9.ffn_up.weight\tq4_K\n", tmp_path),
                    "blk.9.ffn_up.weight", ":2:")
    _one_error_line(sensitivity(tiny_model, tiny_text, ok + f"{TENSOR}\tq4_X\n", tmp_path), "q4_X")
    _one_error_line(sensitivity(tiny_model, tiny_text, ok + f"{TENSOR} q4_K\n", tmp_path), "tensor<TAB>type")
    _one_error_line(sensitivity(tiny_model, tiny_text, f"{TENSOR}\tiq2_xxs\n", tmp_path), "--imatrix")
    _one_error_line(sensitivity(tiny_model, tiny_text, "# nothing\n", tmp_path), "no pairs")
    # llama-quantize quantizes matrices only: a norm vector keeps its type
    _one_error_line(sensitivity(tiny_model, tiny_text, ok + "blk.0.attn_norm.weight\tq8_0\n", tmp_path),
                    "blk.0.attn_norm.weight", "not a matrix", ":2:")


def test_bad_arguments_are_one_line(built, tiny_model, tiny_text, tmp_path):
    pairs = [(TENSOR, "q4_K")]
    _one_error_line(sensitivity(tiny_model, tiny_text, pairs, tmp_path, "--top-k", "-1"), "--top-k")
    _one_error_line(sensitivity(tiny_model, tiny_text, pairs, tmp_path, "-c", "abc"), "--ctx-size")
    _one_error_line(sensitivity(tiny_model, tiny_text, pairs, tmp_path, "--frobnicate"), "--frobnicate")
    _one_error_line(sensitivity(tiny_model, tiny_text, pairs, tmp_path, "--top-k"), "--top-k", "needs a value")


def test_out_of_memory_is_one_line(built, tiny_model, tiny_text, tmp_path):
    import resource

    # the whole vocabulary of 8 x 255 positions: 8 x 255 x 32000 x 12 bytes = 747 MiB, beyond the address
    # space left to the tool
    limit = 640 << 20

    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    pairs_path = tmp_path / "pairs.tsv"
    pairs_path.write_text(f"{TENSOR}\tq4_K\n")
    argv = [str(paths.binary("llama-sensitivity")), "-m", str(tiny_model), "-f", str(tiny_text), "--pairs",
            str(pairs_path), "-t", "1", "-c", "256", "--chunks", "8", "--all-positions"]
    ok = subprocess.run([*argv, "--top-k", "64"], capture_output=True, text=True, env=runner.tool_env(),
                        preexec_fn=cap, timeout=600)
    assert ok.returncode == 0, ok.stderr[-2000:]
    proc = subprocess.run([*argv, "--top-k", "0"], capture_output=True, text=True, env=runner.tool_env(),
                          preexec_fn=cap, timeout=600)
    assert proc.returncode == 1 and proc.stdout == ""
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [proc.stderr.splitlines()[-1]], proc.stderr[-2000:]
    assert "out of memory for the reference distributions" in errors[0]


def test_type_that_does_not_fit_the_row(built, tiny_text, tmp_path):
    from synthetic import TinyConfig, write_model

    model = write_model(tmp_path / "narrow.gguf", config=TinyConfig(n_embd=384, n_head=4, n_head_kv=4))
    line = _one_error_line(sensitivity(model, tiny_text, f"{OTHER}\tq8_0\n{OTHER}\tq4_K\n", tmp_path),
                           OTHER, "384", "256")
    assert ":2:" in line


def test_missing_files_and_short_text(built, tiny_model, tiny_text, tmp_path):
    pairs = [(TENSOR, "q4_K")]
    proc = sensitivity(tmp_path / "none.gguf", tiny_text, pairs, tmp_path)
    assert proc.returncode != 0 and "none.gguf" in proc.stderr.splitlines()[-1]
    corrupt = tmp_path / "corrupt.gguf"
    corrupt.write_bytes(b"GGUF" + b"\0" * 64)
    proc = sensitivity(corrupt, tiny_text, pairs, tmp_path)
    assert proc.returncode != 0 and "corrupt.gguf" in proc.stderr.splitlines()[-1]
    short = tmp_path / "short.txt"
    short.write_text("a few words only")
    proc = sensitivity(tiny_model, short, pairs, tmp_path)
    assert proc.returncode != 0 and "tokens, need" in proc.stderr.splitlines()[-1]


# the driver ---------------------------------------------------------------------

def _new_run(conn, model: Path) -> int:
    run_id = jobs.create_run(conn, "analyze", {"model": str(model), "mode": "measured"}, [])
    with db.transaction(conn):
        for t in _tensors(model):
            curves.store_tensor(conn, run_id, t.name, t.shape, t.n_elements, t.type)
    return run_id


def _sweep_pairs() -> list[tuple[str, str]]:
    names = [f"blk.{i}.{k}.weight" for i in range(2)
             for k in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")]
    return [(n, t) for n in names for t in ("q3_K", "q4_K", "q8_0")]


def _stored(conn, run_id: int) -> dict[tuple[str, str], float]:
    return {(r["tensor"], r["type"]): r["created"] for r in conn.execute(
        "SELECT tensor, type, created FROM curve_points WHERE run_id=? AND mode='measured'", (run_id,))}


def test_run_sweep_stores_points_and_skips_done_ones(built, tiny_model, tiny_text, tmp_path):
    conn = db.connect()
    run_id = _new_run(conn, tiny_model)
    pairs = [(TENSOR, "q8_0"), (TENSOR, "Q2_K"), (OTHER, "q4_K")]
    kw = dict(ctx=CTX, chunks=CHUNKS, imatrix=None, threads=1, log_path=tmp_path / "runs" / "7" / "sweep.log",
              progress=False)
    measured.run_sweep(conn, run_id, tiny_model, tiny_text, pairs[:2], **kw)
    first = _stored(conn, run_id)
    assert set(first) == {(TENSOR, "q8_0"), (TENSOR, "q2_K")}
    # the type name given in another case is the same pair: only the new one runs
    measured.run_sweep(conn, run_id, tiny_model, tiny_text, pairs, **kw)
    second = _stored(conn, run_id)
    assert set(second) == set(first) | {(OTHER, "q4_K")}
    assert all(second[k] == first[k] for k in first)
    sweep = curves.load_sweep(conn, run_id, "measured")
    c = sweep.curve(TENSOR)
    assert c.point("q2_K").error > c.point("q8_0").error > 0
    assert c.point("q2_K").nbytes < c.point("q8_0").nbytes
    assert c.point("q8_0").error_pm is not None and c.point("q8_0").seconds > 0


def test_run_sweep_reports_a_failing_tool(built, tiny_model, tiny_text, tmp_path):
    conn = db.connect()
    run_id = _new_run(conn, tiny_model)
    with pytest.raises(ToolFailedError, match="no tensor 'blk.7.attn_q.weight'"):
        measured.run_sweep(conn, run_id, tiny_model, tiny_text, [("blk.7.attn_q.weight", "q4_K")], ctx=CTX,
                           chunks=CHUNKS, imatrix=None, threads=1, log_path=tmp_path / "sweep.log", progress=False)
    assert _stored(conn, run_id) == {}


def test_killed_sweep_resumes_and_stores_each_pair_once(built, tiny_model, tiny_text, tmp_path):
    conn = db.connect()
    run_id = _new_run(conn, tiny_model)
    pairs = _sweep_pairs()
    script = textwrap.dedent(f"""
        import json, sys
        from pathlib import Path
        from hifikit import db
        from hifikit.sweep import measured
        pairs = [tuple(p) for p in json.loads(sys.argv[1])]
        measured.run_sweep(db.connect(), {run_id}, Path({str(tiny_model)!r}), Path({str(tiny_text)!r}), pairs,
                           ctx={CTX}, chunks={CHUNKS}, imatrix=None, threads=1,
                           log_path=Path({str(tmp_path / 'killed.log')!r}), progress=False)
    """)
    # cwd: `python -c` puts the working directory first on sys.path; from the checkout's root that
    # would import the source tree (no binaries) instead of the installed package
    child = subprocess.Popen([sys.executable, "-c", script, json.dumps(pairs)], env=dict(os.environ),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=tmp_path)
    deadline = time.monotonic() + 300
    try:
        while len(_stored(conn, run_id)) < 3:
            assert child.poll() is None, child.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the sweep stored nothing in 300 s"
            time.sleep(0.02)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    before = _stored(conn, run_id)
    assert 3 <= len(before) < len(pairs), "the sweep finished before it could be killed"

    measured.run_sweep(conn, run_id, tiny_model, tiny_text, pairs, ctx=CTX, chunks=CHUNKS, imatrix=None,
                       threads=1, log_path=tmp_path / "resumed.log", progress=False)
    after = _stored(conn, run_id)
    assert set(after) == set(pairs)
    rows = conn.execute("SELECT COUNT(*) FROM curve_points WHERE run_id=? AND mode='measured'", (run_id,)).fetchone()
    assert rows[0] == len(pairs)
    # what was stored before the kill was not measured again
    assert all(after[k] == before[k] for k in before)
    resumed = (tmp_path / "resumed.log").read_text()
    assert f"[{len(pairs) - len(before):4d}/{len(pairs) - len(before):4d}]" in resumed


# agreement ----------------------------------------------------------------------

def _sweep(mode: str, errors: dict[str, list[float]]) -> curves.Sweep:
    types = ["q3_K", "q4_K", "q5_K", "q8_0"]
    return curves.Sweep(1, mode, [
        curves.TensorCurve(name, (256, 256), 65536, "f16",
                           [curves.CurvePoint(t, 1000 * (i + 1), e) for i, (t, e) in enumerate(zip(types, errs))])
        for name, errs in errors.items()])


def test_spearman_per_tensor_and_overall():
    proxy = _sweep("proxy", {"a": [4.0, 3.0, 2.0, 1.0], "b": [0.4, 0.3, 0.2, 0.1], "c": [1.0, 2.0, 3.0, 4.0]})
    meas = _sweep("measured", {"a": [0.9, 0.5, 0.2, 0.1], "b": [0.09, 0.05, 0.02, 0.01], "c": [1, 1, 1, 1]})
    out = spearman(proxy, meas)
    assert out["tensors"]["a"] == {"rho": pytest.approx(1.0), "n": 4}
    assert out["tensors"]["b"]["rho"] == pytest.approx(1.0)
    assert out["tensors"]["c"]["rho"] is None  # constant measured errors have no ranks
    assert out["mean_per_tensor"] == pytest.approx(1.0)
    assert out["overall"]["n"] == 12
    assert 0 < out["overall"]["rho"] < 1
    reversed_meas = _sweep("measured", {"a": [0.1, 0.2, 0.5, 0.9]})
    assert spearman(proxy, reversed_meas)["tensors"] == {"a": {"rho": pytest.approx(-1.0), "n": 4}}


def _write_imatrix(path: Path, entries: dict[str, int], seed: int = 0) -> Path:
    """A GGUF importance matrix (in_sum2 / counts) with a few heavy columns per tensor."""
    import gguf
    import numpy as np

    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_string("general.type", "imatrix")
    writer.add_array("imatrix.datasets", ["synthetic"])
    writer.add_uint32("imatrix.chunk_count", 10)
    writer.add_uint32("imatrix.chunk_size", 512)
    for name, n in entries.items():
        sums = rng.uniform(0.5, 1.5, size=n).astype(np.float32)
        sums[rng.integers(0, n, size=max(1, n // 32))] = 400.0
        writer.add_tensor(name + ".in_sum2", sums * 100.0)
        writer.add_tensor(name + ".counts", np.array([100.0], dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_imatrix_is_passed_to_the_quantizer(built, tiny_model, tiny_text, tmp_path):
    n_per_row = {t.name: t.shape[0] for t in _tensors(tiny_model)}[TENSOR]
    imatrix = _write_imatrix(tmp_path / "imatrix.gguf", {TENSOR: n_per_row})
    pairs = [(TENSOR, "q3_K"), (TENSOR, "iq2_xxs")]
    plain = results(sensitivity(tiny_model, tiny_text, pairs[:1], tmp_path))
    weighted = results(sensitivity(tiny_model, tiny_text, pairs, tmp_path, "--imatrix", str(imatrix)))
    assert weighted[0]["kld"] != plain[0]["kld"]  # the importance changed the q3_K image
    assert weighted[1]["type"] == "iq2_xxs" and weighted[1]["kld"] > weighted[0]["kld"]

    wrong = _write_imatrix(tmp_path / "wrong.gguf", {TENSOR: n_per_row // 2})
    _one_error_line(sensitivity(tiny_model, tiny_text, pairs[:1], tmp_path, "--imatrix", str(wrong)),
                    TENSOR, str(n_per_row // 2))


# pairs from stdin, offload flags ------------------------------------------------

def _tool_argv(model: Path, text: Path, pairs: str, *extra: str) -> list[str]:
    return [str(paths.binary("llama-sensitivity")), "-m", str(model), "-f", str(text), "--pairs", pairs,
            "-c", str(CTX), "--chunks", str(CHUNKS), "-t", "1", *extra]


def test_pairs_from_stdin_one_result_per_line_as_it_comes(built, tiny_model, tiny_text, tmp_path):
    """--pairs -: each pair is measured when its line arrives (the next is not written before its result is
    read), the results are those of a pairs file bit for bit, the model is loaded once, end of input ends it."""
    pairs = [(TENSOR, "q4_K"), (TENSOR, "q8_0"), (OTHER, "q3_K"), (TENSOR, "bf16")]
    from_file = results(sensitivity(tiny_model, tiny_text, pairs, tmp_path))
    proc = subprocess.Popen(_tool_argv(tiny_model, tiny_text, "-"), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, bufsize=1, env=runner.tool_env())
    try:
        got = []
        for i, (tensor, type_name) in enumerate(pairs):
            if i == 1:
                proc.stdin.write("# a comment and a blank line are skipped\n\n")
            proc.stdin.write(f"{tensor}\t{type_name}\n")
            proc.stdin.flush()
            got.append(json.loads(proc.stdout.readline()))
        proc.stdin.close()
        assert proc.wait(timeout=60) == 0
        assert proc.stdout.read() == ""
        stderr = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    drop = {"seconds"}
    assert [{k: v for k, v in r.items() if k not in drop} for r in got] == \
        [{k: v for k, v in r.items() if k not in drop} for r in from_file]
    assert stderr.count("model loaded and reference computed") == 1
    assert "end of input after 4 pairs" in stderr


def test_pairs_from_stdin_a_bad_line_is_one_error(built, tiny_model, tiny_text, tmp_path):
    proc = subprocess.run(_tool_argv(tiny_model, tiny_text, "-"), input=f"{TENSOR}\tq4_K\n{TENSOR}\tq4_X\n"
                          f"{TENSOR}\tq8_0\n", capture_output=True, text=True, env=runner.tool_env(), timeout=600)
    assert proc.returncode == 1
    # the first pair was measured; the bad second one ends the tool before the third
    assert [json.loads(line)["type"] for line in proc.stdout.splitlines()] == ["q4_K"]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: stdin:2: unknown or unsupported type 'q4_X'"]
    # no input at all is no error: the tool loaded, found nothing to do and ended
    empty = subprocess.run(_tool_argv(tiny_model, tiny_text, "-"), input="", capture_output=True, text=True,
                           env=runner.tool_env(), timeout=600)
    assert empty.returncode == 0 and empty.stdout == "" and "end of input after 0 pairs" in empty.stderr


def test_offload_flags_on_a_cpu_build(built, tiny_model, tiny_text, tmp_path):
    """-ngl 0, --device none and -ngl with no GPU leave every weight on the CPU: the results are the default's
    bit for bit. A device that does not exist, the CPU as a device and a bad -ngl are one error line each."""
    pairs = [(TENSOR, "q4_K"), (OTHER, "iq4_nl"), (OTHER, "q4_0")]
    default = results(sensitivity(tiny_model, tiny_text, pairs, tmp_path))
    drop = {"seconds"}

    def same(recs):
        return [{k: v for k, v in r.items() if k not in drop} for r in recs] == \
            [{k: v for k, v in r.items() if k not in drop} for r in default]

    assert same(results(sensitivity(tiny_model, tiny_text, pairs, tmp_path, "-ngl", "0")))
    assert same(results(sensitivity(tiny_model, tiny_text, pairs, tmp_path, "--device", "none", "-ngl", "all")))
    build_has_gpu = bool(paths.build_info().get("build", {}).get("GGML_CUDA"))
    if not build_has_gpu:
        proc = sensitivity(tiny_model, tiny_text, pairs, tmp_path, "--n-gpu-layers", "99")
        assert same(results(proc))
        assert "warning: no usable GPU found, -ngl is ignored" in proc.stderr
        line = _one_error_line(sensitivity(tiny_model, tiny_text, pairs, tmp_path, "--device", "CUDA0"),
                               "unknown device 'CUDA0'", "none in this build")
        assert line.startswith("error: --device:")
    _one_error_line(sensitivity(tiny_model, tiny_text, pairs, tmp_path, "-dev", "NoSuchGPU7"),
                    "unknown device 'NoSuchGPU7'")
    _one_error_line(sensitivity(tiny_model, tiny_text, pairs, tmp_path, "--device", "CPU"), "is the CPU")
    _one_error_line(sensitivity(tiny_model, tiny_text, pairs, tmp_path, "-ngl", "auto"), "-ngl", "'auto'")
    _one_error_line(sensitivity(tiny_model, tiny_text, pairs, tmp_path, "--gpu-layers", "-3"), "--gpu-layers")
    listed = subprocess.run([str(paths.binary("llama-sensitivity")), "--list-devices"], capture_output=True,
                            text=True, env=runner.tool_env(), timeout=60)
    assert listed.returncode == 0 and listed.stdout.startswith("Available devices:")
    if not build_has_gpu:
        assert "none (this build offloads to no device)" in listed.stdout


def test_measured_analyze_passes_ngl_and_device_to_the_tool(built, tiny_model, tiny_text, tmp_path):
    from hifikit.errors import HifikitError
    from hifikit.sweep.analyze import AnalyzeOptions, analyze

    opts = dict(types=["q4_K"], tensors=r"blk\.0\.ffn_down", text=tiny_text, ctx=CTX, chunks=CHUNKS, threads=1)
    plain = analyze(AnalyzeOptions(tiny_model, "measured", **opts))
    offload = analyze(AnalyzeOptions(tiny_model, "measured", ngl=0, device="none", **opts))

    def points(res):
        return {(c.tensor, p.type): (p.nbytes, p.error, p.error_pm) for c in res.sweep.curves for p in c.points}

    assert points(offload) == points(plain)
    spec = next(s["spec"] for s in offload.run["steps"] if s["name"] == "sweep")
    assert spec["ngl"] == 0 and spec["device"] == "none"
    # the tool sees the device: an unknown one fails the run with the tool's own line
    with pytest.raises(Exception, match="unknown device 'NoSuchGPU7'"):
        analyze(AnalyzeOptions(tiny_model, "measured", device="NoSuchGPU7", **opts))
    with pytest.raises(HifikitError, match="--ngl and --device are for --mode measured or calibrated"):
        analyze(AnalyzeOptions(tiny_model, "proxy", ngl=2))
    with pytest.raises(HifikitError, match="--ngl must be a number of layers >= 0"):
        analyze(AnalyzeOptions(tiny_model, "measured", ngl=-2, **opts))
    assert measured.tool_args(tiny_model, tiny_text, "-", ctx=8, chunks=1, imatrix=None, threads=None,
                              ngl=measured.ALL_LAYERS, device="CUDA0,CUDA1")[-4:] == \
        ["-ngl", "all", "--device", "CUDA0,CUDA1"]
