"""The planner: exact file sizes, the allocation, strategy files, --check and quantize --strategy."""
from __future__ import annotations

import dataclasses
import itertools
import json
import random
import subprocess
from pathlib import Path

import pytest
import yaml

import ftype_models as fm
from synthetic import write_model

from hifikit.planner import allocate, filesize
from hifikit.sweep import curves
from hifikit import costs, db, ggml, gguf_io, jobs
from hifikit.errors import HifikitError

# a Gemma-3-270M-like layout, small: hidden 640 (no 256-block type fits most rows), tied embeddings
GEMMA_SMALL = fm.ModelSpec(n_layer=2, n_embd=640, n_ff=1024, n_head=4, n_head_kv=1, head_dim=256,
                           n_vocab=1024, tied=True)
CANDIDATES = ("q3_K", "q4_0", "iq4_nl", "q4_K", "q5_0", "q5_K", "q6_K", "q8_0", "f16")


@pytest.fixture(scope="module")
def quantize_bin(built) -> Path:
    return built / "llama-quantize"


@pytest.fixture(scope="module")
def gemma_small(built, tmp_path_factory) -> Path:
    return fm.write_model(tmp_path_factory.mktemp("plan") / "gemma-small.gguf", GEMMA_SMALL, sparse=False)


@pytest.fixture(scope="module")
def gemma_imatrix(tmp_path_factory) -> Path:
    return fm.write_imatrix(tmp_path_factory.mktemp("plan-im") / "gemma-small.imatrix.gguf", GEMMA_SMALL)


@pytest.fixture(scope="module")
def tiny(built, tmp_path_factory) -> Path:
    return write_model(tmp_path_factory.mktemp("plan-tiny") / "tiny.gguf")


def quantize(exe: Path, src: Path, out: Path, ftype: str, *options) -> None:
    proc = subprocess.run([str(exe), *map(str, options), str(src), str(out), ftype], text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.returncode == 0, proc.stderr[-2000:]


# --- the file size model ----------------------------------------------------------

@pytest.mark.parametrize("ftype", ["Q3_K_M", "Q4_K_M", "Q8_0", "Q3_K_HIFI"])
def test_file_size_is_exact(quantize_bin, tiny, gemma_small, tmp_path, ftype):
    for src in (tiny, gemma_small):
        out = tmp_path / f"{src.stem}-{ftype}.gguf"
        quantize(quantize_bin, src, out, ftype)
        layout = filesize.FileLayout.read(src)
        predicted = filesize.file_size(layout, filesize.tensor_types(out))
        assert predicted == out.stat().st_size, (src.name, ftype)


def test_file_size_with_imatrix_keys(quantize_bin, gemma_small, gemma_imatrix, tmp_path):
    out = tmp_path / "im.gguf"
    quantize(quantize_bin, gemma_small, out, "Q4_K_M", "--imatrix", gemma_imatrix)
    layout = filesize.FileLayout.read(gemma_small)
    keys = filesize.ImatrixKeys.from_file(gemma_imatrix)
    types = filesize.tensor_types(out)
    assert filesize.file_size(layout, types, keys) == out.stat().st_size
    # the imatrix keys are part of the size: without them the model is short
    assert filesize.file_size(layout, types) < out.stat().st_size


def test_layout_reads_the_header_through_tensor_index(tiny, tmp_path):
    index = gguf_io.tensor_index(tiny)
    # the KV pairs' sizes tile the KV section exactly, key by key in file order
    assert list(index.kv_sizes) == list(index.keys)
    assert sum(index.kv_sizes.values()) == index.kv_end - filesize.HEADER_BYTES
    layout = filesize.FileLayout.read(tiny)
    assert layout.kv == index.kv_sizes
    assert [(t.name, t.shape) for t in layout.tensors] == [(t.name, t.shape) for t in index.tensors]
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny.read_bytes()[:index.kv_end - 3])
    with pytest.raises(HifikitError, match="truncated or malformed GGUF header"):
        filesize.FileLayout.read(cut)


# --- the allocation ---------------------------------------------------------------

def brute_force(items, capacity):
    best = None
    for combo in itertools.product(*[range(len(o)) for o in items]):
        b = sum(items[i][j][0] for i, j in enumerate(combo))
        if b <= capacity:
            e = sum(items[i][j][1] for i, j in enumerate(combo))
            if best is None or e < best:
                best = e
    return best


def test_allocation_against_brute_force():
    rng = random.Random(7)
    exact = 0
    n = 200
    for _ in range(n):
        items = []
        for _ in range(rng.randint(2, 6)):
            opts = []
            for _ in range(rng.randint(2, 5)):
                b = rng.randint(1, 100) * 32
                opts.append((b, rng.random() * 10 / (b / 3200 + 0.1)))
            items.append(opts)
        lo = sum(min(o[0] for o in it) for it in items)
        hi = sum(max(o[0] for o in it) for it in items)
        cap = rng.randint(lo, hi)
        opt = brute_force(items, cap)
        a = allocate.allocate(items, cap)
        assert a.bytes <= cap
        assert a.bytes == sum(items[i][j][0] for i, j in enumerate(a.choice))
        assert a.error >= opt - 1e-9
        assert a.lower_bound <= opt + 1e-9          # the certificate really bounds the optimum
        assert a.error - opt <= a.gap + 1e-9
        exact += abs(a.error - opt) < 1e-9
    # documented in docs/planner.md: the exact optimum on at least 95 % of random small instances
    assert exact >= 0.95 * n, exact


def test_allocation_escapes_the_ratio_trap():
    # greedy by error per byte takes A's small step first, then B's big step no longer fits;
    # the optimum spends the budget on B alone
    items = [[(100, 10.0), (110, 8.0)],      # A: 0.2 per byte
             [(100, 10.0), (200, 0.5)]]      # B: 0.095 per byte
    a = allocate.allocate(items, 300)
    assert a.choice == [0, 1] and a.error == pytest.approx(10.5) and a.bytes == 300


def test_allocation_refuses_an_impossible_budget():
    with pytest.raises(HifikitError, match="below the smallest possible size"):
        allocate.allocate([[(100, 1.0), (200, 0.5)]], 99)


# --- planning on models -----------------------------------------------------------

def synthetic_sweep(model: Path, seed: int = 0, k_points_everywhere: bool = False) -> int:
    """An analyze run with curves error = w * 2^-bpw (w random per tensor); returns the run id."""
    conn = db.connect()
    run_id = jobs.create_run(conn, "analyze", {"model": str(model.resolve())}, [])
    rng = random.Random(seed)
    lib = ggml.load()
    layout = filesize.FileLayout.read(model)
    with db.transaction(conn):
        for slot in layout.tensors:
            if not slot.quantizable:
                continue
            curves.store_tensor(conn, run_id, slot.name, slot.shape, slot.n_elements, slot.source_type)
            w = rng.uniform(0.2, 5.0)
            points = []
            for name in CANDIDATES:
                t = lib.type_by_name(name)
                fits = slot.row_length % t.block_size == 0
                if not fits and not k_points_everywhere:
                    continue
                nbytes = t.row_size(slot.row_length) * slot.n_rows
                # a type that does not fit gets a tempting error: the planner must still refuse it
                err = w * 2.0 ** -t.bits_per_weight if fits else 1e-9
                points.append(curves.CurvePoint(t.name, nbytes, err))
            curves.store_points(conn, run_id, "proxy", slot.name, points)
    conn.execute("UPDATE runs SET status='done' WHERE id=?", (run_id,))
    return run_id


def test_plan_quantize_and_verify_sizes(cli, gemma_small, tmp_path):
    run_id = synthetic_sweep(gemma_small)
    layout = filesize.FileLayout.read(gemma_small)
    q3 = filesize.file_size(layout, {t.name: t.source_type for t in layout.tensors})  # f16 size, for scale
    target_mib = round(q3 * 0.45 / 2**20, 3)
    strategy = tmp_path / "s.yaml"
    info = cli.json("plan", gemma_small, "--from-run", run_id, "--target-size", target_mib, "-o", strategy)
    budget = int(float(target_mib) * 2**20)
    assert info["budget_bytes"] == budget
    assert info["predicted_bytes"] <= budget
    out = tmp_path / "planned.gguf"
    res = cli.json("quantize", gemma_small, out, "--strategy", strategy)
    size = out.stat().st_size
    assert size == info["predicted_bytes"] == res["file_bytes"]
    assert size <= budget
    planned = yaml.safe_load(strategy.read_text())
    got = filesize.tensor_types(out)
    for name, entry in planned["tensors"].items():
        assert got[name] == entry["type"], name
    # the budget is used: no single candidate upgrade would still fit
    slack = budget - size
    for name, entry in planned["tensors"].items():
        cur = entry["candidates"][entry["type"]]
        for t, (nbytes, err) in entry["candidates"].items():
            if err < cur[1]:
                assert filesize.pad(nbytes) - filesize.pad(cur[0]) > slack, (name, t)


def test_match_ftype_budget_is_the_real_file(cli, quantize_bin, gemma_small, tmp_path):
    run_id = synthetic_sweep(gemma_small, seed=3)
    info = cli.json("plan", gemma_small, "--from-run", run_id, "--match", "Q4_K_M", "-o", tmp_path / "m.yaml")
    stock = tmp_path / "stock.gguf"
    quantize(quantize_bin, gemma_small, stock, "Q4_K_M")
    assert info["budget_bytes"] == stock.stat().st_size
    assert info["predicted_bytes"] <= info["budget_bytes"]


def test_640_wide_tensors_only_get_32_block_types(cli, gemma_small, tmp_path):
    run_id = synthetic_sweep(gemma_small, k_points_everywhere=True)
    strategy = tmp_path / "k.yaml"
    cli.json("plan", gemma_small, "--from-run", run_id, "--target-bpw", "6", "-o", strategy)
    doc = yaml.safe_load(strategy.read_text())
    lib = ggml.load()
    layout = filesize.FileLayout.read(gemma_small)
    wide = [s for s in layout.tensors if s.quantizable and s.row_length == 640]
    assert wide
    for slot in wide:
        entry = doc["tensors"][slot.name]
        assert lib.type_by_name(entry["type"]).block_size in (1, 32), (slot.name, entry["type"])
        assert "q4_K" not in entry["candidates"] and "q6_K" not in entry["candidates"]


def test_check_rejects_edited_strategy(cli, gemma_small, tmp_path):
    run_id = synthetic_sweep(gemma_small, seed=1)
    strategy = tmp_path / "s.yaml"
    cli.json("plan", gemma_small, "--from-run", run_id, "--target-bpw", "5", "-o", strategy)
    ok = cli("plan", "--check", strategy, gemma_small)
    assert "ok" in ok.stdout
    doc = yaml.safe_load(strategy.read_text())
    names = list(doc["tensors"])
    wide = next(n for n in names if n.endswith("attn_q.weight"))
    doc["tensors"][wide]["type"] = "q4_K"                                   # 640 wide: does not fit
    doc["tensors"]["blk.9.attn_q.weight"] = {"type": "q8_0"}                # no such tensor
    others = [n for n in names if n != wide]
    doc["tensors"][others[0]]["type"] = "q9_X"                              # no such type
    missing = others[1]
    del doc["tensors"][missing]                                             # missing tensor
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(doc, sort_keys=False))
    res = cli("plan", "--check", bad, gemma_small, check=False)
    assert res.returncode == 1
    err = res.stderr
    assert f"{wide}: q4_K does not fit its rows: 640 is not a multiple of the block size 256" in err
    assert "blk.9.attn_q.weight: no such tensor" in err
    assert f"{others[0]}: unknown type 'q9_X'" in err
    assert f"{missing}: missing from the strategy" in err
    # over budget: everything that can be f16 becomes f16
    doc = yaml.safe_load(strategy.read_text())
    for entry in doc["tensors"].values():
        entry["type"] = "f16"
    over = tmp_path / "over.yaml"
    over.write_text(yaml.safe_dump(doc, sort_keys=False))
    res = cli("plan", "--check", over, gemma_small, check=False)
    assert res.returncode == 1 and "over budget: the file would be" in res.stderr
    # quantize refuses it before running llama-quantize
    res = cli("quantize", gemma_small, tmp_path / "x.gguf", "--strategy", over, check=False)
    assert res.returncode == 1 and "over budget" in res.stderr and not (tmp_path / "x.gguf").exists()


def test_strategy_mismatch_is_an_error(built, gemma_small, tmp_path):
    # bypass the check: ask llama-quantize for q4_K on a 640-wide tensor; it falls back, the step must fail
    from hifikit.planner import strategy as strat
    name = "blk.0.attn_q.weight"
    spec = {"input": str(gemma_small), "output": str(tmp_path / "mm.gguf"), "ftype": "Q8_0", "threads": None,
            "tensor_types": [(strat.regex_for(name), "q4_K")], "expect_types": {name: "q4_K"}}
    with pytest.raises(HifikitError, match=rf"{name}: q5_0 instead of q4_K"):
        jobs.start("quantize", {}, [jobs.StepSpec("quantize", "quantize", spec)], progress=False)
    assert not (tmp_path / "mm.gguf").exists()


def test_check_refuses_a_strategy_sized_for_another_shape(cli, tiny, tmp_path):
    # same tensor names, other shapes (a strategy of another model of the architecture): the candidates' bytes
    # are what the shape gives, so the check finds it even where every name and type would be accepted
    from hifikit.planner import strategy as strat
    run_id = synthetic_sweep(tiny, seed=6)
    path = tmp_path / "s.yaml"
    cli("plan", tiny, "--from-run", run_id, "--target-bpw", "6", "-o", path)
    assert strat.check_file(path).ok
    doc = yaml.safe_load(path.read_text())
    name, entry = next(iter(doc["tensors"].items()))
    entry["candidates"] = {t: [2 * b, e] for t, (b, e) in entry["candidates"].items()}
    path.write_text(yaml.safe_dump(doc))
    res = strat.check_file(path).result
    assert [e for e in res.errors if e.startswith(f"{name}: ") and "a strategy of another model?" in e] == res.errors
    assert len(res.errors) == 1


def test_regex_is_anchored_and_escaped():
    import re
    pattern = __import__("hifikit.planner.strategy", fromlist=["regex_for"]).regex_for("blk.1.attn_q.weight")
    assert re.search(pattern, "blk.1.attn_q.weight")
    assert not re.search(pattern, "blk.11.attn_q.weight") and not re.search(pattern, "blkx1.attn_q.weight")


def test_allocation_does_not_buy_noise():
    # f16 beats q6_K by 1e-8: below the tie, so the spare bytes stay unspent
    items = [[(100, 1.0), (200, 1e-7), (400, 0.0)], [(100, 0.5), (150, 0.2)]]
    # capacity 450: the tie keeps the decisions off noise (item 1 upgrades, item 0 stays at q6_K-like),
    # then the 100 spare bytes cannot buy f16 (+200): nothing noise-level is bought over a real gain
    a = allocate.allocate(items, 450, tie=1e-6)
    assert a.choice == [1, 1] and a.bytes == 350 and a.stage[0] == "hull"
    # with room to spare, the leftover bytes go to the smallest error, ties included
    b = allocate.allocate(items, 1000, tie=1e-6)
    assert b.choice == [2, 1] and b.stage[0] == "spare"


def test_moe_expert_tensors_are_planned(cli, tmp_path):
    # header-only (sparse) MoE model: planning reads headers and llama-quantize --dry-run only
    model = fm.write_model(tmp_path / "moe.gguf", fm.ModelSpec(n_layer=2, n_embd=256, n_ff=512, n_expert=4),
                           sparse=True)
    run_id = synthetic_sweep(model, seed=5)
    strategy = tmp_path / "moe.yaml"
    info = cli.json("plan", model, "--from-run", run_id, "--target-bpw", "5.5", "-o", strategy)
    doc = yaml.safe_load(strategy.read_text())
    experts = [n for n in doc["tensors"] if "_exps" in n]
    assert len(experts) == 6                                     # gate/up/down x 2 layers
    assert "blk.0.ffn_gate_inp.weight" in doc["fixed"]            # the router is never quantized
    assert 0 < info["expert_share"] < 1
    assert info["predicted_bytes"] <= info["budget_bytes"]
    layout = filesize.FileLayout.read(model)
    types = {**doc["fixed"], **{n: e["type"] for n, e in doc["tensors"].items()}}
    assert filesize.file_size(layout, types) == info["predicted_bytes"]


def _one_large_item_instances(n: int, seed: int = 1):
    """One item spanning much of the budget (a tied embedding) and six small ones; with the brute-force optimum."""
    import itertools
    import random

    rng = random.Random(seed)
    out = []
    while len(out) < n:
        lo = (rng.randint(100, 300), rng.uniform(5, 20))
        hi = (rng.randint(400, 900), rng.uniform(0, 5))
        items = [[lo, (hi[0], min(hi[1], lo[1]))]]
        for _ in range(6):
            b = sorted(rng.sample(range(10, 120), 3))
            e = sorted((rng.uniform(0, 3) for _ in range(3)), reverse=True)
            items.append(list(zip(b, e)))
        cap = rng.randint(600, 1300)
        feasible = [sum(items[i][j][1] for i, j in enumerate(c)) for c in itertools.product(*(range(3 if i else 2)
                    for i in range(7))) if sum(items[i][j][0] for i, j in enumerate(c)) <= cap]
        if feasible:
            out.append((items, cap, min(feasible)))
    return out


def test_branching_on_a_large_item_finds_what_the_greedy_walk_misses(monkeypatch):
    cases = _one_large_item_instances(200)
    with_branching = [allocate.allocate(items, cap) for items, cap, _ in cases]
    optimal = sum(a.error <= best + 1e-9 for a, (_, _, best) in zip(with_branching, cases))
    assert optimal >= 0.98 * len(cases)
    assert any("branch" in a.stage for a in with_branching)
    monkeypatch.setattr(allocate, "BRANCH_ITEMS", 0)
    plain = sum(allocate.allocate(items, cap).error <= best + 1e-9 for items, cap, best in cases)
    assert plain < optimal


def _limited_instances(n: int, seed: int = 3):
    """Small random instances with two time-like resources; with the brute-force optimum (None if infeasible)."""
    import itertools
    import random

    rng = random.Random(seed)
    out = []
    for _ in range(n):
        items, costs = [], []
        for _ in range(5):
            b = sorted(rng.sample(range(10, 100), 3))
            e = sorted((rng.uniform(0, 3) for _ in range(3)), reverse=True)
            # more bytes are usually slower, but not always (a repacked or sgemm type can be faster)
            items.append(list(zip(b, e)))
            costs.append([(x * rng.uniform(0.5, 1.5), x * rng.uniform(0.5, 1.5)) for x in b])
        cap = rng.randint(200, 400)
        limits = (rng.uniform(150, 350), rng.uniform(150, 350))
        best = None
        for c in itertools.product(range(3), repeat=5):
            if sum(items[i][j][0] for i, j in enumerate(c)) > cap:
                continue
            if any(sum(costs[i][j][r] for i, j in enumerate(c)) > limits[r] for r in range(2)):
                continue
            e = sum(items[i][j][1] for i, j in enumerate(c))
            best = e if best is None or e < best else best
        out.append((items, costs, cap, limits, best))
    return out


def test_time_limits_are_met_near_the_optimum():
    cases = _limited_instances(150)
    found = near = 0
    for items, item_costs, cap, limits, best in cases:
        a = allocate.allocate_limited(items, cap, item_costs, limits)
        assert a.bytes <= cap and a.lower_bound <= (best if best is not None else float("inf")) + 1e-9
        if best is None:
            continue
        if a.feasible:
            found += 1
            assert all(t <= lim * (1 + 1e-9) for t, lim in zip(a.totals, limits))
            assert a.error >= best - 1e-9
            near += a.error <= best * 1.10 + 1e-9
        else:
            assert a.totals != () and not all(t <= lim for t, lim in zip(a.totals, limits))
    feasible = sum(best is not None for *_, best in cases)
    # every instance that has a solution gets one; nearly all within 10 % of the optimum
    assert found == feasible and near >= 0.9 * feasible


def test_time_limits_that_already_hold_change_nothing():
    items = [[(100, 1.0), (200, 0.1)], [(100, 0.5), (150, 0.2)]]
    costs = [[(1.0,), (2.0,)], [(1.0,), (1.5,)]]
    free = allocate.allocate(items, 350)
    limited = allocate.allocate_limited(items, 350, costs, (10.0,))
    assert limited.choice == free.choice and limited.multipliers == (0.0,) and limited.feasible
    # a tight limit forces the slower upgrade out
    tight = allocate.allocate_limited(items, 350, costs, (3.0,))
    assert tight.feasible and tight.totals[0] <= 3.0 and tight.error > free.error


def test_a_speed_budget_makes_the_plan_trade_error_for_time(built, gemma_small, tmp_path):
    from hifikit.planner import plan as planner
    from hifikit.planner import strategy as strat

    run_id = synthetic_sweep(gemma_small, seed=4)
    conn = db.connect()
    sweep = curves.load_sweep(conn, run_id)
    layout = filesize.FileLayout.read(gemma_small)
    budget = int(filesize.file_size(layout, {t.name: t.source_type for t in layout.tensors}) * 0.6)
    base = planner.dry_run_types(gemma_small, "Q8_0")

    # made-up costs: seconds grow with the bytes, except q8_0, which is fast (as a repacked layout can be)
    def seconds(tensor: str, type_name: str) -> tuple[float, float]:
        slot = layout.tensor(tensor)
        if not slot.quantizable:
            return 0.0, 0.0
        bpw = ggml.load().type_by_name(type_name).bits_per_weight
        rate = 0.25 if type_name == "q8_0" else 1.0
        return 1e-9 * slot.n_elements * bpw * rate * 8, 1e-9 * slot.n_elements * bpw * rate

    def plan(limits):
        speed = planner.SpeedBudget(seconds, (0.01, 0.001), limits, "test costs (CPU, 2 threads)", 512)
        return planner.make_plan(sweep, gemma_small, layout, planner.Target("size", "1"), budget, base, "Q8_0",
                                 None, None, speed=speed)

    free = plan((None, None))
    fast = plan((None, 0.9 * free.speed["tg_seconds"]))
    assert fast.speed["tg_seconds"] <= 0.9 * free.speed["tg_seconds"] * (1 + 1e-9)
    assert fast.predicted_error >= free.predicted_error and fast.predicted_bytes <= budget
    assert fast.types != free.types and fast.speed["multipliers"][1] > 0 == free.speed["multipliers"][1]
    # the prediction is the sum of the chosen types' costs plus the constant
    speed = planner.SpeedBudget(seconds, (0.01, 0.001), (None, None), "test costs (CPU, 2 threads)", 512)
    assert fast.speed["tg_seconds"] == pytest.approx(speed.total(fast.types)[1])
    path = tmp_path / "fast.yaml"
    strat.write(fast, path)
    doc = yaml.safe_load(path.read_text())
    assert doc["speed"]["tg_seconds"] == pytest.approx(fast.speed["tg_seconds"], rel=1e-5)
    assert doc["speed"]["source"] == "test costs (CPU, 2 threads)"  # commas survive the flow mapping
    with pytest.raises(HifikitError, match="speed budget cannot be met"):
        plan((None, 0.0005))


def test_plan_max_slowdown_with_measured_costs(cli, tiny_model, tmp_path):
    """plan --match FTYPE --max-slowdown R on costs `hifikit costs` measured here: the predicted times are
    within R x the reference ftype's, and an impossible speed is one error line."""
    from hifikit.planner import strategy as strat

    run_id = synthetic_sweep(tiny_model, seed=5)
    cost_args = ["--batch", "32", "--gen", "4", "--threads", "1", "--repetitions", "1", "--bench-repetitions", "1",
                 "--working-set", "4"]
    # the sweep's candidates, and Q4_K_M's own types (costs adds the model's; the reference's are added here)
    cli("costs", tiny_model, "--types", *CANDIDATES, "q6_K", *cost_args, "--json")
    speed_args = ["--costs-threads", "1", "--costs-batch", "32", "--costs-gen", "4", "--costs-working-set", "4"]
    out = tmp_path / "fast.yaml"
    res = cli("plan", tiny_model, "--from-run", run_id, "--match", "Q4_K_M", "--max-slowdown", "1.0", *speed_args,
              "-o", out, "--json")
    info = json.loads(res.stdout)
    sp = info["speed"]
    ref = sp["reference"]
    assert ref["ftype"] == "Q4_K_M"
    assert sp["pp_seconds"] <= ref["pp_seconds"] * (1 + 1e-9) and sp["tg_seconds"] <= ref["tg_seconds"] * (1 + 1e-9)
    assert sp["limits"] == pytest.approx([ref["pp_seconds"], ref["tg_seconds"]])
    doc = yaml.safe_load(out.read_text())
    assert doc["speed"]["tg_seconds"] == pytest.approx(sp["tg_seconds"], rel=1e-5)

    # the same prediction as the cost model gives for the planned types
    conn = db.connect()
    mc, k = costs.for_model(conn, tiny_model, threads=1, working_set_mib=4, n_prompt=32, n_gen=4)
    assert doc["speed_reference"]["ftype"] == "Q4_K_M" and doc["speed"]["source"] == sp["source"]
    types = strat.load(out).types
    # (a negative constant, the ops' costs above llama-bench's time on this tiny model, counts as 0)
    rest = dataclasses.replace(k, pp_seconds=max(k.pp_seconds, 0.0), tg_seconds=max(k.tg_seconds, 0.0))
    p = costs.predict({n: t for n, t in types.items() if n in mc.tensors}, mc, rest)
    assert p.tg_seconds == pytest.approx(sp["tg_seconds"], rel=1e-6)
    assert p.pp_seconds == pytest.approx(sp["pp_seconds"], rel=1e-6)

    # text output says the predicted speed next to the reference's
    text = cli("plan", tiny_model, "--from-run", run_id, "--match", "Q4_K_M", "--max-slowdown", "1.0", *speed_args,
               "-o", tmp_path / "fast2.yaml").stdout
    assert "predicted speed pp32" in text and "Q4_K_M predicted" in text

    bad = cli("plan", tiny_model, "--from-run", run_id, "--match", "Q4_K_M", "--min-tg", "1e9", *speed_args,
              "-o", tmp_path / "never.yaml", check=False)
    last = bad.stderr.strip().splitlines()[-1]
    assert bad.returncode != 0 and last.startswith("hifikit: error:") and "speed" in last
    assert "Traceback" not in bad.stderr
    assert not (tmp_path / "never.yaml").exists()
    none = cli("plan", tiny_model, "--from-run", run_id, "--target-size", "1", "--max-slowdown", "1.0",
               *speed_args, "-o", tmp_path / "noref.yaml", check=False)
    assert none.returncode != 0 and "--speed-ref" in none.stderr
