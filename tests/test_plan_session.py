"""PlanSession (planner/session.py): the editor's re-plans, pins, assessments and strategy text."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import ftype_models as fm
from test_plan import GEMMA_SMALL, synthetic_sweep

from hifikit import db, ggml
from hifikit.errors import HifikitError
from hifikit.planner import filesize, strategy
from hifikit.planner import plan as planner
from hifikit.planner.session import PlanSession
from hifikit.planner.speed import SpeedLimits
from hifikit.sweep import curves


@pytest.fixture(scope="module")
def gemma(built, tmp_path_factory) -> Path:
    return fm.write_model(tmp_path_factory.mktemp("session") / "gemma-small.gguf", GEMMA_SMALL, sparse=False)


def _size_target(model: Path, share: float) -> planner.Target:
    layout = filesize.FileLayout.read(model)
    f16 = filesize.file_size(layout, {t.name: t.source_type for t in layout.tensors})
    return planner.make_target(size=f"{f16 * share / 2**20:.3f}")


def _other_type(p: planner.Plan, name: str, larger: bool = True) -> str:
    t = next(t for t in p.tensors if t.name == name)
    cur = t.option(t.type).cost
    pick = [o for o in t.options if (o.cost > cur if larger else o.cost < cur)]
    assert pick, (name, t.type)
    return (max if larger else min)(pick, key=lambda o: o.cost).type


@pytest.mark.parametrize("how", ["size", "match"])
def test_session_plan_is_hifikit_plan(cli, gemma, tmp_path, how):
    run_id = synthetic_sweep(gemma, seed=2)
    target = _size_target(gemma, 0.45) if how == "size" else planner.make_target(match="Q4_K_M")
    out = tmp_path / "s.yaml"
    flag = ["--target-size", target.value] if how == "size" else ["--match", "Q4_K_M"]
    info = cli.json("plan", gemma, "--from-run", run_id, *flag, "-o", out)
    s = PlanSession.open(db.connect(), gemma, from_run=run_id)
    assert s.budget(target) == info["budget_bytes"]
    p = s.plan(target)
    assert s.strategy_text(p) == out.read_text()
    # the in-memory constructor makes the same plan from the same pieces
    conn = db.connect()
    mem = PlanSession.from_memory(curves.load_sweep(conn, run_id), filesize.FileLayout.read(gemma),
                                  planner.cached_dry_run(conn, gemma.resolve(), "Q8_0"), model=str(gemma.resolve()),
                                  match_types=lambda f: planner.cached_dry_run(conn, gemma.resolve(), f))
    assert mem.strategy_text(mem.plan(target)) == out.read_text()


def test_pins_are_kept_and_the_rest_is_replanned(built, gemma):
    run_id = synthetic_sweep(gemma, seed=4)
    s = PlanSession.open(db.connect(), gemma, from_run=run_id)
    target = _size_target(gemma, 0.4)
    budget = s.budget(target)
    free = s.plan(target)
    emb = "token_embd.weight"
    up = _other_type(free, emb, larger=True)
    down_name = next(t.name for t in free.tensors if t.name != emb and _cheaper(t))
    down = _other_type(free, down_name, larger=False)
    pins = {emb: up.upper(), down_name: down}           # type names are matched case-insensitively
    p = s.plan(target, pins)
    by_name = {t.name: t for t in p.tensors}
    assert by_name[emb].type == up and by_name[down_name].type == down
    assert by_name[emb].reason.startswith(planner.PINNED) and by_name[down_name].reason.startswith(planner.PINNED)
    assert all(not t.reason.startswith(planner.PINNED) for t in p.tensors if t.name not in pins)
    # exact bytes, within the budget; the bigger embedding took bytes from the other tensors
    assert p.predicted_bytes == filesize.file_size(s.layout, p.types) <= budget
    assert p.types != free.types and p.predicted_error >= free.predicted_error - 1e-12
    others = [n for n in by_name if n not in pins]
    assert sum(by_name[n].option(by_name[n].type).cost for n in others) < \
        sum(t.option(t.type).cost for t in free.tensors if t.name in others)
    # the rest is planned: no single upgrade of an unpinned tensor would still fit
    slack = budget - p.predicted_bytes
    for n in others:
        t = by_name[n]
        cur = t.option(t.type)
        assert not any(o.weighted < cur.weighted and o.cost - cur.cost <= slack for o in t.options), n
    # the same pins give the same plan (a pure function of the session's inputs)
    assert s.plan(target, pins).types == p.types
    assert [o.type for o in s.candidates(emb)] == [o.type for o in sorted(by_name[emb].options, key=lambda o: o.cost)]


def _cheaper(t: planner.TensorPlan) -> bool:
    return any(o.cost < t.option(t.type).cost for o in t.options)


def test_bad_pins_are_one_error_line(built, gemma):
    run_id = synthetic_sweep(gemma, seed=1)
    s = PlanSession.open(db.connect(), gemma, from_run=run_id)
    target = _size_target(gemma, 0.4)
    wide = "blk.0.attn_q.weight"                      # 640 wide: no 256-block type fits
    assert s.layout.tensor(wide).row_length == 640
    cases = {
        (("blk.9.attn_q.weight", "q8_0"),): "no such tensor",
        ((wide, "q4_K"),): "q4_K does not fit its rows: 640 is not a multiple of the block size 256",
        ((wide, "q9_X"),): "unknown type 'q9_X'",
        (("blk.0.attn_norm.weight", "q8_0"),): "not planned (llama-quantize does not quantize it)",
        tuple((n, "f16") for n in s.tensors): "the pins do not fit the target",
    }
    for pins, message in cases.items():
        with pytest.raises(HifikitError) as err:
            s.plan(target, dict(pins))
        assert message in str(err.value) and "\n" not in str(err.value), str(err.value)
    with pytest.raises(HifikitError, match="not planned"):
        s.candidates("blk.0.attn_norm.weight")


def test_assess_is_what_check_says(built, gemma, tmp_path):
    run_id = synthetic_sweep(gemma, seed=3)
    s = PlanSession.open(db.connect(), gemma, from_run=run_id)
    target = _size_target(gemma, 0.45)
    p = s.plan(target)
    a = s.assess({t.name: t.type for t in p.tensors}, target)   # the fixed tensors are filled in
    assert a.ok and a.fits and a.types == p.types
    assert a.bytes == p.predicted_bytes and a.budget == p.budget
    assert a.error == pytest.approx(p.predicted_error, rel=1e-12)
    # hand edits: the same types written to a strategy file and checked as 'plan --check' does
    lib = ggml.load()
    edited = dict(p.types)
    for t in p.tensors:
        if t.type != "f16" and any(o.type == "f16" for o in t.options):
            edited[t.name] = "f16"
    doc = yaml.safe_load(s.strategy_text(p))
    for name, entry in doc["tensors"].items():
        entry["type"] = edited[name]
    path = tmp_path / "edited.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    checked = strategy.check_file(path, gemma).result
    b = s.assess(edited, target)
    assert b.bytes == checked.bytes and b.bytes > b.budget and not b.fits
    assert b.error == pytest.approx(checked.error, rel=1e-5)     # the file's errors have 6 digits
    assert b.errors == checked.errors and any("over budget" in e for e in b.errors)
    # a type that does not fit a 640-wide row: no size, the error names the tensor
    bad = s.assess({**p.types, "blk.0.attn_q.weight": "q4_K"}, target)
    assert bad.bytes is None and not bad.ok and any(e.startswith("blk.0.attn_q.weight: q4_K does not fit")
                                                    for e in bad.errors)
    assert lib.type_by_name("q4_K").block_size == 256


def test_strategy_text_round_trip(built, gemma):
    run_id = synthetic_sweep(gemma, seed=6)
    s = PlanSession.open(db.connect(), gemma, from_run=run_id)
    target = planner.make_target(bpw="5")
    free = s.plan(target)
    name = next(t.name for t in free.tensors if _cheaper(t))
    pins = {name: _other_type(free, name, larger=False)}
    p = s.plan(target, pins)
    loaded = s.load_strategy(s.strategy_text(p))
    assert loaded.target == target and loaded.pins == pins and loaded.types == p.types
    assert loaded.assessment.ok and loaded.assessment.bytes == p.predicted_bytes
    assert s.plan(loaded.target, loaded.pins).types == p.types


def test_speed_limits_in_a_session(built, gemma):
    run_id = synthetic_sweep(gemma, seed=4)
    conn = db.connect()
    layout = filesize.FileLayout.read(gemma)
    lib = ggml.load()

    def seconds(tensor: str, type_name: str) -> tuple[float, float]:
        slot = layout.tensor(tensor)
        if not slot.quantizable:
            return 0.0, 0.0
        rate = 0.25 if type_name == "q8_0" else 1.0
        bpw = lib.type_by_name(type_name).bits_per_weight
        return 8e-9 * slot.n_elements * bpw * rate, 1e-9 * slot.n_elements * bpw * rate

    made = []

    def speed_budgets(limits: SpeedLimits, match: str | None) -> planner.SpeedBudget:
        made.append(limits)
        return planner.SpeedBudget(seconds, (0.01, 0.001), (None, 1.0 / limits.min_tg), "made-up costs", 512)

    s = PlanSession.from_memory(curves.load_sweep(conn, run_id), layout, planner.cached_dry_run(conn, gemma, "Q8_0"),
                                speed_budgets=speed_budgets, knees=None)
    target = _size_target(gemma, 0.6)
    free = s.plan(target, speed_limits=SpeedLimits(min_tg=1e-6))
    limit = SpeedLimits(min_tg=1.0 / (0.9 * free.speed["tg_seconds"]))
    fast = s.plan(target, speed_limits=limit)
    assert fast.speed["tg_seconds"] <= 0.9 * free.speed["tg_seconds"] * (1 + 1e-9)
    slow = s.assess(free.types, target, speed_limits=limit)
    assert slow.fits and slow.speed["tg_seconds"] == pytest.approx(free.speed["tg_seconds"])
    assert any(e.startswith("too slow: predicted") for e in slow.errors) and not slow.ok
    assert s.assess(fast.types, target, speed_limits=limit).ok
    s.plan(target, speed_limits=limit)
    assert len(made) == 2                              # one budget per limits, cached
