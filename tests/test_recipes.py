"""Simple recipes (--pure + embedding/output types): enumeration, exact sizes, ranking, hifikit recipes."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from ftype_models import ModelSpec, write_model
from hifikit.planner import filesize, recipes
from hifikit.sweep import objective
from hifikit.planner import plan as planner

SWEEP_TYPES = ("q4_0", "q5_0", "q5_1", "q8_0", "q4_K", "q5_K", "q6_K", "f16")


def test_composed_types_equal_llama_quantizes_own_dry_run(tiny_model, arch_model):
    for model in (tiny_model, arch_model):
        for r in (recipes.Recipe("q4_K", "q8_0", "q6_K"), recipes.Recipe("q8_0", "q5_1"),
                  recipes.Recipe("q4_0", None, "f16"), recipes.Recipe("iq4_nl", "q6_K", "q4_0")):
            pure = planner.dry_run_types(model, r.ftype, extra=["--pure"])
            direct = planner.dry_run_types(model, r.ftype, extra=r.args())
            assert recipes.recipe_types(r, pure) == direct, (model.name, r.label)


def test_enumeration_follows_the_rows_and_the_tie(built, tmp_path):
    # Gemma 3 270M's layout: 640-wide rows, tied embeddings
    wide = write_model(tmp_path / "wide.gguf", ModelSpec(n_layer=2, n_embd=640, n_ff=2048, n_head=4, n_head_kv=1,
                                                        head_dim=256, n_vocab=1024, tied=True))
    layout = filesize.FileLayout.read(wide)
    rs = recipes.enumerate_recipes(layout)
    assert {r.output for r in rs} == {None}                  # tied: no --output-tensor-type
    embd = {r.embd for r in rs}
    assert embd == {"q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "iq4_nl", "f16"}   # 32-blocks only for 640
    assert {r.pure for r in rs} == set(recipes.PURE_FTYPES)
    untied = filesize.FileLayout.read(write_model(tmp_path / "untied.gguf", ModelSpec()))
    assert {r.output for r in recipes.enumerate_recipes(untied)} >= {"q6_K", "q8_0", "f16"}


@pytest.fixture(scope="module")
def swept(built, tiny_model, tmp_path_factory):
    """A proxy sweep of the tiny model in its own runs database; returns (home, run id)."""
    import os
    import subprocess

    from conftest import hifikit_command

    home = tmp_path_factory.mktemp("recipes-home")
    env = dict(os.environ, HIFIKIT_HOME=str(home))
    proc = subprocess.run([*hifikit_command(), "analyze", str(tiny_model), "--types", *SWEEP_TYPES, "--json"],
                          env=env, text=True, capture_output=True, check=True)
    import json
    return home, json.loads(proc.stdout)["run"]


def test_search_ranks_by_the_objective_and_sizes_are_exact(cli, swept, tiny_model, tmp_path, monkeypatch):
    from hifikit.sweep import curves
    from hifikit import db

    home, run_id = swept
    monkeypatch.setenv("HIFIKIT_HOME", str(home))
    conn = db.connect()
    search = recipes.search_model(conn, tiny_model, planner.Target("match", "Q4_K_M"), run_id)
    assert search.considered == len(recipes.enumerate_recipes(filesize.FileLayout.read(tiny_model)))
    assert 0 < len(search.candidates) < search.considered
    assert all(c.bytes <= search.budget for c in search.candidates)
    priced = [c.predicted for c in search.candidates if c.predicted is not None]
    assert priced == sorted(priced) and len(priced) > 3
    errors = objective.errors_by_tensor(curves.load_sweep(conn, run_id))
    best = search.candidates[0]
    assert best.predicted == pytest.approx(objective.predict(best.types, errors)[0])
    out = tmp_path / "best.gguf"
    cli("tool", "llama-quantize", *best.recipe.args(), tiny_model, out, best.recipe.ftype)
    assert out.stat().st_size == best.bytes
    assert filesize.tensor_types(out) == {k: v for k, v in best.types.items()}


def test_recipes_command_lists_and_verifies(cli, swept, tiny_model, tiny_text, tmp_path, monkeypatch):
    home, run_id = swept
    monkeypatch.setenv("HIFIKIT_HOME", str(home))
    info = cli.json("recipes", tiny_model, "--match", "Q4_K_M", "--from-run", run_id, "--top", "3")
    assert info["fit"] > 3 and len(info["candidates"]) == 3 and info["budget_bytes"] > 0
    info = cli.json("recipes", tiny_model, "--match", "Q4_K_M", "--from-run", run_id, "--verify", "2",
                    "--text", tiny_text, "--ctx", "128", "--chunks", "2", "--out-dir", tmp_path)
    v = info["verify"]
    assert v["measured"] == 2 and v["best"] in {c["recipe"] for c in info["candidates"][:2]}
    for rec, cand in zip(v["models"], info["candidates"]):
        assert rec["recipe"] == cand["recipe"] and rec["kld_mean"] > 0
        assert Path(rec["model"]).stat().st_size == cand["bytes"]
    text = cli("recipes", tiny_model, "--match", "Q4_K_M", "--from-run", run_id).stdout
    assert "recipes fit" in text and "--pure" in text
    bad = cli("recipes", tiny_model, "--match", "Q9_Z", "--from-run", run_id, check=False)
    assert bad.returncode == 1 and "unknown quantization type 'Q9_Z'" in bad.stderr


def test_compare_baselines_puts_stock_recipes_and_plan_side_by_side(cli, swept, tiny_model, tiny_text, tmp_path,
                                                                   monkeypatch):
    home, run_id = swept
    monkeypatch.setenv("HIFIKIT_HOME", str(home))
    info = cli.json("compare", "--ref", tiny_model, "--text", tiny_text, "--ctx", "128", "--chunks", "2",
                    "--baselines", "Q4_K_M", "--from-run", run_id, "--top", "1", "--out-dir", tmp_path, "--bench")
    group = info["groups"]["Q4_K_M"]
    roles = [r["role"] for r in group]
    assert roles == ["stock", "recipe", "plan"]
    stock, recipe, plan = group
    assert stock["bytes_ratio"] == pytest.approx(1.0) and stock["kld_ratio"] == pytest.approx(1.0)
    for r in (recipe, plan):
        # no more bytes than the stock file, measured on the same text, its speed as a ratio beside it
        assert r["file_bytes"] <= stock["file_bytes"] and r["kld_mean"] > 0 and r["predicted"] > 0
        assert set(r["speed_ratio"]) == {"pp128", "tg32"}
    assert recipe["note"].startswith("rank 1 of ")
    assert info["additivity"]["files"] == 3
    from hifikit import db, jobs
    from hifikit.cli.compare import format_baselines
    from hifikit.planner.baselines import BaselinesResult

    res = BaselinesResult.from_run(jobs.get_run(db.connect(), info["run"]))
    assert json.loads(json.dumps(res.groups)) == info["groups"]        # the result is the run, read back
    text = format_baselines(res)
    assert "== Q4_K_M" in text and "objective vs measured mean KLD over 3 files" in text
    print(text)


def test_a_file_that_fits_several_sizes_is_measured_once(tmp_path):
    from hifikit.planner import baselines

    spec = {"input": "m.gguf", "ftype": "Q8_0", "extra": ["--pure"], "threads": None}

    def contender(label, role, size, out, **change):
        return baselines.Contender(label, role, size, None, 10, 0.1, {**spec, **change, "output": str(tmp_path / out)})

    items = [contender("--pure Q8_0 @A", "recipe", "A", "a"), contender("--pure Q8_0 @B", "recipe", "B", "b"),
             contender("B", "stock", "B", "c", ftype="B")]
    steps = baselines.steps(Path("m.gguf"), items, tmp_path / "t.txt", 128, 2, None, bench={"p": 8, "n": 2, "r": 1})
    names = [s.name for s in steps]
    assert names == ["reference-logits", "quantize-pure-Q8_0-A", "eval-pure-Q8_0-A", "quantize-B", "eval-B",
                     "bench"]
    assert steps[2].spec["also"] == [{"size": "B", "label": "--pure Q8_0 @B", "note": ""}]
    assert steps[-1].spec["models"] == [str(tmp_path / "a"), str(tmp_path / "c")]
