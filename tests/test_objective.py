"""The calibrated objective: alpha per tensor from measured points, its fallbacks, and the checks on it."""
from __future__ import annotations

import math

import pytest

from hifikit.sweep import curves, objective
from hifikit.errors import HifikitError

TYPES = {"q4_0": (100, 3e-3), "q5_0": (120, 1e-3), "q6_K": (140, 3e-4), "q8_0": (170, 2e-5), "f16": (320, 0.0)}


def _proxy(tensors: dict[str, float], run_id: int = 1) -> curves.Sweep:
    """tensor -> a multiplier on the TYPES errors (tensors differ in how well they quantize)."""
    return curves.Sweep(run_id, "proxy", [
        curves.TensorCurve(name, (256, 4), 1024, "f16",
                           [curves.CurvePoint(t, b, e * scale) for t, (b, e) in TYPES.items()])
        for name, scale in tensors.items()])


def _measured(proxy: curves.Sweep, alphas: dict[str, float], types=("q4_0", "q6_K"), rel_pm: float = 0.05,
              ) -> curves.Sweep:
    out = []
    for c in proxy.curves:
        if c.tensor not in alphas:
            out.append(curves.TensorCurve(c.tensor, c.shape, c.n_elements, c.source_type, []))
            continue
        pts = [curves.CurvePoint(p.type, p.nbytes, alphas[c.tensor] * p.error, rel_pm * alphas[c.tensor] * p.error)
               for p in c.points if p.type in types]
        out.append(curves.TensorCurve(c.tensor, c.shape, c.n_elements, c.source_type, pts))
    return curves.Sweep(proxy.run_id, "measured", out)


def test_alpha_is_recovered_and_scales_the_proxy():
    proxy = _proxy({"blk.0.attn_v.weight": 1.0, "blk.1.attn_v.weight": 2.0, "token_embd.weight": 0.5})
    alphas = {"blk.0.attn_v.weight": 0.2, "blk.1.attn_v.weight": 0.8, "token_embd.weight": 7.0}
    cal = objective.calibrate(proxy, _measured(proxy, alphas))
    for name, a in alphas.items():
        s = cal.scales[name]
        assert s.source == "measured" and s.points == 2 and s.alpha == pytest.approx(a)
        assert s.spread == pytest.approx(1.0)
    sweep = objective.calibrated_sweep(proxy, cal)
    assert sweep.mode == objective.MODE
    e = sweep.curve("token_embd.weight").point("q5_0").error
    assert e == pytest.approx(7.0 * 0.5 * 1e-3)
    # the order of one tensor's types is the proxy's: calibration scales, it never reorders
    errs = [p.error for p in sweep.curve("blk.1.attn_v.weight").points]
    assert errs == sorted(errs, reverse=True)


def test_unmeasured_tensors_interpolate_their_kind_over_layers_then_take_everyones():
    proxy = _proxy({f"blk.{i}.attn_v.weight": 1.0 for i in range(5)} | {"blk.0.ffn_up.weight": 1.0,
                                                                        "output.weight": 1.0})
    alphas = {"blk.0.attn_v.weight": 0.1, "blk.2.attn_v.weight": 0.4, "blk.0.ffn_up.weight": 1.6}
    cal = objective.calibrate(proxy, _measured(proxy, alphas))
    between, beyond = cal.scales["blk.1.attn_v.weight"], cal.scales["blk.4.attn_v.weight"]
    assert between.source == "layers" and between.alpha == pytest.approx(math.sqrt(0.1 * 0.4))
    assert beyond.source == "layers" and beyond.alpha == pytest.approx(0.4)
    overall = cal.scales["output.weight"]
    assert overall.source == "all" and overall.alpha == pytest.approx((0.1 * 0.4 * 1.6) ** (1 / 3))
    assert cal.summary()["by_source"] == {"measured": 3, "layers": 3, "all": 1}


def test_pick_pairs_can_sample_layers():
    proxy = _proxy({f"blk.{i}.attn_v.weight": 1.0 for i in range(10)} | {"token_embd.weight": 1.0})
    tensors = {t for t, _ in objective.pick_pairs(proxy, 1, layers=3)}
    assert tensors == {"blk.0.attn_v.weight", "blk.4.attn_v.weight", "blk.9.attn_v.weight", "token_embd.weight"}
    assert objective.sampled_layers(18, 3) == {0, 8, 17} and objective.sampled_layers(18, 1) == {9}
    assert objective.sampled_layers(4, 9) == {0, 1, 2, 3}


def test_points_in_the_noise_are_not_used():
    proxy = _proxy({"blk.0.attn_k.weight": 1.0, "blk.1.attn_k.weight": 1.0})
    measured = _measured(proxy, {"blk.0.attn_k.weight": 0.5, "blk.1.attn_k.weight": 0.5})
    noisy = measured.curves[1]
    noisy.points = [curves.CurvePoint(p.type, p.nbytes, p.error, p.error) for p in noisy.points]  # 1 sigma
    cal = objective.calibrate(proxy, measured)
    assert cal.scales["blk.1.attn_k.weight"].source == "layers"
    for c in measured.curves:
        c.points = [curves.CurvePoint(p.type, p.nbytes, -abs(p.error), 0.0) for p in c.points]
    with pytest.raises(HifikitError, match="no measured point stands above its noise"):
        objective.calibrate(proxy, measured)


def test_pick_pairs_takes_distinct_mid_range_types():
    proxy = _proxy({"blk.0.attn_q.weight": 1.0, "blk.0.ffn_down.weight": 10.0})
    pairs = objective.pick_pairs(proxy, 2)
    assert pairs[:2] == [("blk.0.attn_q.weight", "q4_0"), ("blk.0.attn_q.weight", "q6_K")]
    # a tensor that quantizes 10x worse reaches the targets with finer types
    assert pairs[2:] == [("blk.0.ffn_down.weight", "q6_K"), ("blk.0.ffn_down.weight", "q8_0")]
    assert objective.pick_pairs(proxy, 1) == [("blk.0.attn_q.weight", "q4_0"), ("blk.0.ffn_down.weight", "q6_K")]
    with pytest.raises(HifikitError):
        objective.pick_pairs(proxy, 3)


def test_holdout_compares_the_points_not_used_to_calibrate():
    proxy = _proxy({f"blk.{i}.attn_v.weight": 1.0 + i for i in range(4)})
    alphas = {f"blk.{i}.attn_v.weight": 0.1 * (i + 1) for i in range(4)}
    measured = _measured(proxy, alphas, types=("q4_0", "q5_0", "q6_K"))
    h = objective.holdout(proxy, measured, [(f"blk.{i}.attn_v.weight", "q4_0") for i in range(4)])
    assert h.points == 8 and h.median_ratio == pytest.approx(1.0) and h.within_2x == 1.0
    assert h.spearman == pytest.approx(1.0)


def test_additivity_sums_a_files_tensors():
    proxy = _proxy({"blk.0.attn_v.weight": 1.0, "token_embd.weight": 1.0})
    files = [("a", {"blk.0.attn_v.weight": "q4_0", "token_embd.weight": "q8_0"}, 0.0062, 0.0001),
             ("b", {"blk.0.attn_v.weight": "q6_K", "token_embd.weight": "f16"}, 0.0006, 0.0001),
             ("c", {"blk.0.attn_v.weight": "iq2_xxs", "token_embd.weight": "q4_0"}, 0.01, 0.001)]
    rows, summary = objective.additivity(proxy, files)
    assert rows[0].predicted == pytest.approx(3e-3 + 2e-5) and rows[0].ratio == pytest.approx(0.0062 / 3.02e-3)
    assert rows[1].predicted == pytest.approx(3e-4) and rows[1].missing == []
    assert rows[2].missing == ["blk.0.attn_v.weight:iq2_xxs"]
    assert summary["files"] == 3 and summary["min_ratio"] <= summary["median_ratio"] <= summary["max_ratio"]


def test_calibrated_analyze_then_plan(cli, tiny_model, tiny_text, tmp_path):
    """analyze --mode calibrated: a proxy sweep, one measured pair per tensor, the plan uses both."""
    from hifikit import db

    rec = cli.json("analyze", tiny_model, "--mode", "calibrated", "--points", "1", "--text", tiny_text,
                   "--ctx", "64", "--chunks", "1", "--types", "q4_0", "q6_K", "q8_0", "f16")
    assert rec["mode"] == "calibrated" and rec["sweep"]["measured_pairs"] == len(rec["tensors"])
    conn = db.connect()
    proxy = curves.load_sweep(conn, rec["run"], "proxy")
    measured = curves.load_sweep(conn, rec["run"], "measured")
    # the measured pairs are the picked ones, plus the exact f16 points (the reference itself: 0)
    picked = set(objective.pick_pairs(proxy, 1))
    got = {(c.tensor, p.type) for c in measured.curves for p in c.points if p.type != "f16"}
    assert got == picked
    assert all(p.error == 0.0 for c in measured.curves for p in c.points if p.type == "f16")
    cal = objective.calibrate(proxy, measured)
    assert {s.source for s in cal.scales.values()} <= {"measured", "layers", "all"}
    assert sum(s.source == "measured" for s in cal.scales.values()) >= len(cal.scales) - 2
    plan = cli.json("plan", tiny_model, "--from-run", rec["run"], "--match", "Q4_K_M", "-o", tmp_path / "s.yaml")
    assert plan["mode"] == "calibrated" and plan["predicted_bytes"] <= plan["budget_bytes"]
    # the plan's predicted error is the calibrated sum over its types
    calibrated = objective.errors_by_tensor(curves.load_sweep(conn, rec["run"]))
    from hifikit.planner import strategy

    s = strategy.load(tmp_path / "s.yaml")
    total, missing = objective.predict(s.types, calibrated)
    assert not missing and total == pytest.approx(plan["predicted_error"], rel=1e-6)
    bad = cli("analyze", tiny_model, "--mode", "calibrated", "--points", "3", "--text", tiny_text, check=False)
    assert bad.returncode == 1 and "--points must be 1, 2 or all" in bad.stderr


def test_hifi_standing_against_the_nearest_stock_types():
    from hifikit.sweep import analyze as sweep_analyze

    def curve(name: str, pts: dict[str, tuple[int, float]]) -> curves.TensorCurve:
        return curves.TensorCurve(name, (256, 4), 1024, "f16", [curves.CurvePoint(t, b, e) for t, (b, e) in pts.items()])

    base = {"q4_K": (144, 4e-3), "q5_K": (176, 1e-3), "q6_K": (210, 3e-4), "q8_0": (272, 2e-5)}
    sweep = curves.Sweep(1, "proxy", [
        # a HIFI point above the hull (worse per byte than its neighbours)
        curve("blk.0.ffn_down.weight", {**base, "q4_K_hifi": (168, 3e-3)}),
        # one below its neighbour's error at fewer bytes: on the hull, and it beats q5_K
        curve("blk.1.ffn_down.weight", {**base, "q4_K_hifi": (168, 8e-4)}),
        # a tensor without the HIFI type is not counted
        curve("blk.2.attn_q.weight", base),
    ])
    (h,) = [s for s in sweep_analyze.hifi_standing(sweep) if s.type == "q4_K_hifi"]
    assert h.tensors == 2 and h.on_front == 2 and h.on_hull == 1 and h.beats == {"q5_K": 1}
    assert h.bytes_ratio == {"q5_K": pytest.approx(168 / 176)}
    assert h.error_ratio["q5_K"] == pytest.approx((3.0 + 0.8) / 2)


def test_analyze_can_take_a_subset_of_tensors(cli, tiny_model):
    rec = cli.json("analyze", tiny_model, "--types", "q4_0", "q8_0", "--tensors", r"ffn_down|attn_output")
    assert {t["tensor"] for t in rec["tensors"]} == {f"blk.{i}.{k}.weight" for i in range(2)
                                                     for k in ("ffn_down", "attn_output")}
    bad = cli("analyze", tiny_model, "--tensors", "(", check=False)
    assert bad.returncode == 1 and "not a regular expression" in bad.stderr
    none = cli("analyze", tiny_model, "--tensors", "no_such_tensor", check=False)
    assert none.returncode == 1 and "matches --tensors" in none.stderr
