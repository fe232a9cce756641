"""The library API (docs/api.md) from Python alone, and the runs it leaves are the CLI's runs.

A whole sweep -> plan -> quantize -> evaluate on the synthetic model without
argparse; `plan --verify`, and `runs show` of the run it makes.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from hifikit import db, jobs
from hifikit.evaluate import EvalOptions, EvalResult, evaluate
from hifikit.planner.plan import PlanOptions, PlanVerifyResult, make_target, plan
from hifikit.quantize import QuantizeOptions, QuantizeResult, quantize
from hifikit.sweep.analyze import AnalyzeOptions, AnalyzeResult, analyze

TYPES = ("q4_0", "q5_0", "q8_0", "q4_K", "q6_K")
CTX = 128


def test_sweep_plan_quantize_evaluate_from_python(built, tiny_model, tiny_text, tmp_path):
    swept = analyze(AnalyzeOptions(tiny_model, types=TYPES, threads=1))
    assert swept.sweep.mode == "proxy" and swept.tensors and all(t.knee for t in swept.tensors)
    assert {p["type"] for t in swept.tensors for p in t.points} <= set(TYPES)

    strategy = tmp_path / "tiny-plan.yaml"
    planned = plan(PlanOptions(tiny_model, strategy, make_target(match="Q4_K_M"), from_run=swept.run_id))
    p = planned.plan
    assert strategy.is_file() and p.run_id == swept.run_id and p.predicted_bytes <= p.budget
    assert planned.verify is None and planned.to_json()["strategy"] == str(strategy.resolve())

    out = tmp_path / "tiny-planned.gguf"
    q = quantize(QuantizeOptions(tiny_model, out, strategy=strategy, threads=2))
    # the file size model is exact and every tensor has its planned type (checked by the quantize step)
    assert q.file_bytes == p.predicted_bytes == out.stat().st_size == q.predicted_bytes
    chosen = {t.name: t.type.lower() for t in p.tensors}
    assert {t["name"]: t["target_type"].lower() for t in q.tensors if t["name"] in chosen} == chosen

    ev = evaluate(EvalOptions(out, tiny_text, ref=tiny_model, ctx=CTX, chunks=2, threads=2))
    ref, m = ev.rows
    assert ref.role == "reference" and ev.models == [m]
    assert m.model == str(out.resolve()) and m.file_bytes == q.file_bytes and m.kld_mean > 0 and m.ppl > 1

    # each job is a run as the CLI makes it, and reads back as the same result
    conn = db.connect()
    assert [r["command"] for r in jobs.list_runs(conn)] == ["eval", "quantize", "analyze"]
    assert QuantizeResult.from_run(jobs.get_run(conn, q.run_id)).file_bytes == q.file_bytes
    assert EvalResult.from_run(jobs.get_run(conn, ev.run_id)).rows == ev.rows
    again = AnalyzeResult.from_run(jobs.get_run(conn, swept.run_id), conn)
    assert again.to_json() == swept.to_json()


def test_plan_verify_and_runs_show_of_its_run(cli, tiny_model, tiny_text, tmp_path):
    swept = cli.json("analyze", tiny_model, "--types", *TYPES, "--threads", 1)
    strategy = tmp_path / "s.yaml"
    info = cli.json("plan", tiny_model, "--from-run", swept["run"], "--match", "Q4_K_M", "-o", strategy,
                    "--verify", "--text", tiny_text, "--ctx", CTX, "--chunks", 2, "--threads", 2)
    v = info["verify"]
    quantized = strategy.with_suffix(".gguf")
    assert v["output"] == str(quantized.resolve()) and quantized.stat().st_size == v["file_bytes"]
    assert v["file_bytes"] == v["predicted_bytes"] == info["predicted_bytes"]
    assert v["predicted_error"] == pytest.approx(info["predicted_error"])
    assert v["kld_mean"] > 0 and v["ppl"] > 1 and [m["role"] for m in v["models"]] == ["reference", "plan"]

    run = jobs.get_run(db.connect(), v["run"])
    assert run["command"] == "plan-verify" and run["status"] == "done"
    assert PlanVerifyResult.from_run(run).to_json() == v
    shown = cli("runs", "show", v["run"]).stdout
    assert f"file {v['file_bytes']} bytes (predicted {v['predicted_bytes']})" in shown
    assert Path(v["output"]).name in shown and f"{v['kld_mean']:.6f}" in shown
    # the JSON of `runs show` is the stored run; `runs resume` of the finished run renders it as plan does
    assert cli.json("runs", "show", v["run"])["command"] == "plan-verify"
    assert json.loads(cli("runs", "resume", v["run"], "--json").stdout) == v


def test_options_are_checked_before_a_run_exists(built, tiny_model, tiny_text, tmp_path):
    from hifikit.errors import HifikitError

    with pytest.raises(HifikitError, match="--chunks must be positive"):
        evaluate(EvalOptions(tiny_model, tiny_text, ctx=CTX, chunks=0))
    with pytest.raises(HifikitError, match="give one of"):
        quantize(QuantizeOptions(tiny_model, tmp_path / "x.gguf", ftype="Q4_K_M", hifi=""))
    with pytest.raises(HifikitError, match="unknown quantization type 'Q9_Z'"):
        quantize(QuantizeOptions(tiny_model, tmp_path / "x.gguf", ftype="Q9_Z"))
    assert jobs.list_runs(db.connect()) == []
