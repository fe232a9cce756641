"""`hifikit plan --front`: the (bytes, predicted pp and tg time, predicted error) Pareto front of the plans
of one sweep, with and without a stored cost model.

No assertion here depends on how fast anything runs: the times compared are the cost model's predictions.
"""
from __future__ import annotations

import json

import pytest

from hifikit import db
from hifikit.frontier import pareto_front
from hifikit.planner import filesize
from hifikit.planner import front as front_lib
from hifikit.planner import plan as planner
from hifikit.planner import speed

from test_plan import CANDIDATES, synthetic_sweep

COST_ARGS = ["--batch", "32", "--gen", "4", "--threads", "1", "--repetitions", "1", "--bench-repetitions", "1",
             "--working-set", "4"]
SPEED_ARGS = ["--costs-threads", "1", "--costs-batch", "32", "--costs-gen", "4", "--costs-working-set", "4"]
COSTS = speed.SpeedLimits(threads=1, n_prompt=32, n_gen=4, working_set_mib=4)


def _dominates(q: tuple, p: tuple) -> bool:
    return all(a <= b for a, b in zip(q, p)) and any(a < b for a, b in zip(q, p))


def test_front_without_costs_is_bytes_by_error(cli, tiny_model, tmp_path):
    run_id = synthetic_sweep(tiny_model, seed=7)
    plots = tmp_path / "plots"
    res = cli("plan", tiny_model, "--from-run", run_id, "--front", "--front-sizes", "6", "--plots", plots, "--json")
    info = json.loads(res.stdout)
    assert info["dimensions"] == ["bytes", "error"] and info["n_prompt"] is None
    assert "cost model" in info["note"] and "(bytes, error) only" in info["note"]
    pts = info["points"]
    assert len(pts) >= 2 and info["tried"] == len(info["budgets"]) == 6
    # a 2-D front: by increasing bytes, strictly decreasing error
    assert [p["predicted_bytes"] for p in pts] == sorted(p["predicted_bytes"] for p in pts)
    assert all(a["predicted_error"] > b["predicted_error"] for a, b in zip(pts, pts[1:]))
    for p in pts:
        assert p["predicted_bytes"] <= p["budget_bytes"] and p["pp_seconds"] is None
        assert p["lower_bound"] <= p["predicted_error"] * (1 + 1e-9)
    # the plan at the largest budget, planned on its own, is no better than the front's best point
    last = pts[-1]
    direct = cli.json("plan", tiny_model, "--from-run", run_id, *last["plan_args"], "-o", tmp_path / "d.yaml")
    assert direct["budget_bytes"] == last["budget_bytes"]
    assert last["predicted_error"] <= direct["predicted_error"] * (1 + 1e-12)
    largest = cli.json("plan", tiny_model, "--from-run", run_id, "--target-size", repr(max(info["budgets"]) / 2**20),
                       "-o", tmp_path / "l.yaml")
    assert last["predicted_error"] <= largest["predicted_error"] * (1 + 1e-12)
    png = plots / f"{tiny_model.stem}-front.png"
    assert info["plot"] == str(png) and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the text output says the front is 2-D
    text = cli("plan", tiny_model, "--from-run", run_id, "--front", "--front-sizes", "3")
    assert "(bytes, error) only" in text.stderr and "non-dominated plans over (bytes, error)" in text.stdout


def test_front_with_stored_costs(cli, tiny_model, tmp_path):
    run_id = synthetic_sweep(tiny_model, seed=8)
    cli("costs", tiny_model, "--types", *CANDIDATES, "q6_K", *COST_ARGS, "--json")
    res = front_lib.front(front_lib.FrontOptions(tiny_model, run_id, sizes=5, speeds=3, costs=COSTS,
                                                 use_speed=True, reference="Q4_K_M", strategies=tmp_path / "fr"))
    assert res.dimensions == ["bytes", "pp_seconds", "tg_seconds", "error"] and res.note is None
    assert res.n_prompt == 32 and res.tried == 5 * 3
    pts = res.points
    coords = [(p.predicted_bytes, p.pp_seconds, p.tg_seconds, p.predicted_error) for p in pts]
    for i, p in enumerate(coords):
        assert not any(_dominates(q, p) for j, q in enumerate(coords) if j != i), (i, p)
    assert len(set(coords)) == len(coords)

    conn = db.connect()
    layout = filesize.FileLayout.read(tiny_model)
    for p in pts:
        types = p.plan.types
        # each point's plan respects its budgets: bytes (the file size model, exact) and its speed limits
        assert filesize.file_size(layout, types) == p.predicted_bytes <= p.budget_bytes
        weights = {n: t for n, t in types.items() if layout.tensor(n).quantizable}
        pp, tg = speed.unlimited(conn, tiny_model, COSTS, {n: [t] for n, t in weights.items()}).total(weights)
        assert pp == pytest.approx(p.pp_seconds, rel=1e-9) and tg == pytest.approx(p.tg_seconds, rel=1e-9)
        if p.pp_limit is not None:
            assert p.pp_seconds <= p.pp_limit * (1 + 1e-9) and p.tg_seconds <= p.tg_limit * (1 + 1e-9)
        assert p.pp_tps == pytest.approx(32 / p.pp_seconds) and p.tg_tps == pytest.approx(1 / p.tg_seconds)
        doc = planner.strategy.load(p.strategy)
        assert doc.types == types and doc.budget == p.budget_bytes
    # the front is more than bytes x error: some points are kept only for their speed
    assert len(pts) > len(pareto_front([p.predicted_bytes for p in pts], [p.predicted_error for p in pts]))
    # the plan at the largest budget without a limit is no worse than any other point, nor than planning it alone
    best = res.best
    assert all(best.predicted_error <= p.predicted_error for p in pts)
    alone = planner.plan(planner.PlanOptions(tiny_model, tmp_path / "alone.yaml", planner.make_target(
        size=repr(max(res.budgets) / 2**20)), from_run=run_id))
    assert best.predicted_error <= alone.plan.predicted_error * (1 + 1e-12)
    ref = res.reference
    assert ref["ftype"] == "Q4_K_M" and ref["bytes"] > 0 and ref["tg_tps"] == pytest.approx(1 / ref["tg_seconds"])
    info = res.to_json()
    assert [p["predicted_bytes"] for p in info["points"]] == [p.predicted_bytes for p in pts]
    assert json.loads(json.dumps(info))["points"][0]["plan_args"][0] == "--target-size"

    # the CLI renders the same front as a table, beside the reference
    text = cli("plan", tiny_model, "--from-run", run_id, "--front", "--front-sizes", "5", "--front-speeds", "3",
               "--match", "Q4_K_M", *SPEED_ARGS).stdout
    assert "pp32 t/s" in text and "× Q4_K_M pp / tg" in text and "(bytes, pp_seconds, tg_seconds, error)" in text


@pytest.mark.parametrize("extra, message", [
    (["--target-size", "3"], "give no --target-bpw/--target-size"),
    (["--front-sizes", "0"], "--front-sizes must be positive"),
    (["-o", "x.yaml"], "drop -o"),
    (["--min-tg", "10"], "drop --min-tg"),
    (["--costs-machine", "deadbeef"], "no cost machine 'deadbeef'"),
    (["--speed-ref", "Q9_NOPE"], "Q9_NOPE"),
])
def test_front_bad_input_is_one_error_line(cli, tiny_model, tmp_path, extra, message):
    run_id = synthetic_sweep(tiny_model, seed=9)
    out = tmp_path / "fr"
    res = cli("plan", tiny_model, "--from-run", run_id, "--front", "--front-out", out, *extra, check=False,
              cwd=tmp_path)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode != 0 and len(lines) == 1 and lines[0].startswith("hifikit: error:"), res.stderr
    assert message in lines[0] and res.stdout == ""
    assert not out.exists() and not (tmp_path / "x.yaml").exists()
