"""`hifikit quantize IN OUT --strategy FILE --verify --text T [--bench]` and its library function
quantize.quantize_verify: one run `quantize-verify` that quantizes with a strategy, measures the file's KL
divergence against IN and, with --bench, sets llama-bench's speed beside the strategy's prediction.

No assertion here depends on how fast anything runs: only that the speeds were measured and where the
predictions come from.
"""
from __future__ import annotations

import json

import pytest
import yaml

import ftype_models as fm
from hifikit import db, jobs
from hifikit.errors import HifikitError
from hifikit.planner import filesize
from hifikit.quantize import QuantizeVerifyOptions, QuantizeVerifyResult, quantize_verify

from test_plan import CANDIDATES, GEMMA_SMALL, synthetic_sweep

COST_ARGS = ["--batch", "32", "--gen", "4", "--threads", "1", "--repetitions", "1", "--bench-repetitions", "1",
             "--working-set", "4"]
SPEED_ARGS = ["--costs-threads", "1", "--costs-batch", "32", "--costs-gen", "4", "--costs-working-set", "4"]
FAST = dict(ctx=128, chunks=2, threads=1)   # llama-perplexity prints KLD statistics from 128 tokens


def _runs() -> int:
    return db.connect().execute("SELECT COUNT(*) FROM runs").fetchone()[0]


def test_verify_with_bench_against_the_speed_reference(cli, tiny_model, tiny_text, tmp_path):
    run_id = synthetic_sweep(tiny_model, seed=11)
    cli("costs", tiny_model, "--types", *CANDIDATES, "q6_K", *COST_ARGS, "--json")
    strategy = tmp_path / "fast.yaml"
    cli("plan", tiny_model, "--from-run", run_id, "--match", "Q4_K_M", "--max-slowdown", "1.0", *SPEED_ARGS,
        "-o", strategy, "--json")
    doc = yaml.safe_load(strategy.read_text())
    out = tmp_path / "fast.gguf"
    res = quantize_verify(QuantizeVerifyOptions(tiny_model, out, strategy, tiny_text, bench=True, n_gen=4,
                                                repetitions=1, **FAST), progress=False)
    assert res.file_bytes == res.predicted_bytes == out.stat().st_size == doc["predicted"]["bytes"]
    assert res.predicted_error == pytest.approx(doc["predicted"]["error"], rel=1e-5)
    assert res.kld_mean is not None and res.kld_mean > 0 and res.kld_error is not None and res.kld_error >= 0
    got = filesize.tensor_types(out)
    assert all(got[n] == e["type"] for n, e in doc["tensors"].items())

    sp = res.speed
    assert sp is not None and sp.n_prompt == doc["speed"]["n_prompt"] == 32 and sp.n_gen == 4 and sp.note is None
    assert sp.source == doc["speed"]["source"]
    s, ref = sp.strategy, sp.reference
    assert s.role == "strategy" and s.model == str(out.resolve())
    assert s.predicted_tg_tps == pytest.approx(1 / doc["speed"]["tg_seconds"])
    assert s.predicted_pp_tps == pytest.approx(32 / doc["speed"]["pp_seconds"])
    # the speed reference of --max-slowdown was quantized beside the output and benchmarked with it
    assert ref is not None and ref.ftype == "Q4_K_M" == doc["speed_reference"]["ftype"]
    ref_file = tmp_path / "fast-Q4_K_M.gguf"
    assert ref.model == str(ref_file.resolve()) and ref_file.is_file()
    assert ref.predicted_tg_tps == pytest.approx(1 / doc["speed_reference"]["tg_seconds"])
    for r in (s, ref):
        assert r.measured_pp_tps > 0 and r.measured_tg_tps > 0
        assert r.tg_ratio == pytest.approx(r.predicted_tg_tps / r.measured_tg_tps)

    # one tracked run, read back the same way by `runs show`
    run = jobs.get_run(db.connect(), res.run_id)
    assert run["command"] == "quantize-verify" and run["status"] == "done"
    assert [st["kind"] for st in run["steps"]] == ["quantize", "quantize", "kld-base", "eval", "bench"]
    assert jobs.step_result(run, "quantize-reference")["ftype"] == "Q4_K_M"
    assert QuantizeVerifyResult.from_run(run).to_json() == res.to_json()
    shown = cli("runs", "show", res.run_id).stdout
    assert "pred/meas" in shown and "reference Q4_K_M" in shown and "measured mean KLD" in shown
    resumed = json.loads(cli("runs", "resume", res.run_id, "--json").stdout)
    assert resumed["kld_mean"] == res.kld_mean and resumed["speed"]["rows"][1]["ftype"] == "Q4_K_M"


def test_verify_from_the_cli_without_and_with_a_speed_section(cli, tiny_model, tiny_text, tmp_path):
    run_id = synthetic_sweep(tiny_model, seed=12)
    strategy = tmp_path / "plain.yaml"
    cli("plan", tiny_model, "--from-run", run_id, "--match", "Q4_K_M", "-o", strategy)
    out = tmp_path / "plain.gguf"
    info = cli.json("quantize", tiny_model, out, "--strategy", strategy, "--verify", "--text", tiny_text,
                    "--ctx", "128", "--chunks", "2", "--threads", "1")
    assert info["speed"] is None and info["file_bytes"] == out.stat().st_size == info["predicted_bytes"]
    assert info["kld_mean"] > 0 and [m["role"] for m in info["models"]][0] == "reference"
    # --bench on a strategy planned without a speed budget: measured, nothing predicted, and it says why
    res = cli("quantize", tiny_model, tmp_path / "plain2.gguf", "--strategy", strategy, "--verify", "--text",
              tiny_text, "--ctx", "128", "--chunks", "2", "--threads", "1", "--bench", "--bench-prompt", "16",
              "--bench-gen", "2", "--bench-reps", "1")
    assert "no speed section" in res.stderr and "pp16 pred" in res.stdout and "measured mean KLD" in res.stdout
    run = jobs.get_run(db.connect(), max(r["id"] for r in jobs.list_runs(db.connect())))
    v = QuantizeVerifyResult.from_run(run)
    assert v.speed is not None and len(v.speed.rows) == 1 and v.speed.strategy.predicted_tg_tps is None
    assert v.speed.strategy.measured_tg_tps > 0 and v.speed.n_prompt == 16


@pytest.fixture(scope="module")
def other_strategy(built, tmp_path_factory):
    """A strategy planned for another model (a Gemma-like layout)."""
    d = tmp_path_factory.mktemp("other")
    model = fm.write_model(d / "gemma-small.gguf", GEMMA_SMALL, sparse=False)
    return model, d


@pytest.mark.parametrize("case", ["no-text", "missing-text", "other-model", "ctx", "no-strategy", "bench-alone"])
def test_verify_bad_input_is_one_line_and_writes_nothing(cli, tiny_model, tiny_text, tmp_path, other_strategy, case):
    run_id = synthetic_sweep(tiny_model, seed=13)
    strategy = tmp_path / "s.yaml"
    cli("plan", tiny_model, "--from-run", run_id, "--match", "Q4_K_M", "-o", strategy)
    if case == "other-model":
        model, _ = other_strategy
        other = synthetic_sweep(model, seed=1)
        strategy = tmp_path / "other.yaml"
        cli("plan", model, "--from-run", other, "--match", "Q4_K_M", "-o", strategy)
    before = _runs()
    out = tmp_path / "out.gguf"
    args = {"no-text": ["--strategy", strategy, "--verify"],
            "missing-text": ["--strategy", strategy, "--verify", "--text", tmp_path / "nope.txt"],
            "other-model": ["--strategy", strategy, "--verify", "--text", tiny_text],
            "ctx": ["--strategy", strategy, "--verify", "--text", tiny_text, "--ctx", "0"],
            "no-strategy": ["--type", "Q4_K_M", "--verify", "--text", tiny_text],
            "bench-alone": ["--strategy", strategy, "--bench"]}[case]
    res = cli("quantize", tiny_model, out, *args, check=False)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode != 0 and len(lines) == 1 and lines[0].startswith("hifikit: error:"), res.stderr
    expect = {"no-text": "--verify needs --text", "missing-text": "nope.txt: no such file",
              "other-model": "a strategy of another model?", "ctx": "--ctx must be positive",
              "no-strategy": "--verify needs --strategy",
              "bench-alone": "--bench measures a verified strategy"}[case]
    assert expect in lines[0]
    assert not out.exists() and _runs() == before
    # the library refuses the same way, before a run exists
    if case in ("missing-text", "other-model"):
        with pytest.raises(HifikitError):
            quantize_verify(QuantizeVerifyOptions(tiny_model, out, strategy, tmp_path / "nope.txt"
                                                  if case == "missing-text" else tiny_text))
        assert _runs() == before
