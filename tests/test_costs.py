"""The speed cost model: llama-costs' JSON and its refusals, the ops each tensor runs, prediction
arithmetic, `hifikit costs` resumed after SIGKILL and reused from the database, export/import.

No assertion here depends on how fast anything runs.
"""
from __future__ import annotations

import dataclasses

import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from hifikit import costs, db, gguf_io, jobs, paths, runner
from hifikit.errors import HifikitError

from conftest import run_hifikit

# small and quick: 8 MiB working set, 2 repetitions
FAST = ["--working-set", "8", "--repetitions", "2"]
# Types here stay off the AMX buffer type at batch > 1: some VMs advertise AMX (and grant the
# arch_prctl permission) but fault on tile instructions, which crashes llama-bench as well.


def _tool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(paths.binary("llama-costs")), *map(str, args)], input=stdin, capture_output=True,
                          text=True, env=runner.tool_env(), timeout=300)


def _lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_tool_times_cases_and_picks_llama_cpp_buffer_types(built):
    cases = ["mul_mat:q4_0:256:256:1", "mul_mat:iq4_nl:256:512:64", "mul_mat:f16:512:256:1",
             "get_rows:q8_0:256:1000:8"]
    proc = _tool(*cases, "--threads", "1", *FAST)
    assert proc.returncode == 0, proc.stderr
    device, *rows = _lines(proc.stdout)
    print(json.dumps(device))
    assert device["device"] == "CPU" and device["threads"] == 1 and device["working_set_mib"] == 8
    assert device["buffer_types"][-1] == "CPU" and device["cpu"]
    assert [f"{r['op']}:{r['type']}:{r['ne0']}:{r['ne1']}:{r['n']}" for r in rows] == cases
    for r in rows:
        print(json.dumps(r))
        assert 0 < r["us_min"] <= r["us"] <= r["us_max"]
        assert r["repetitions"] == 2 and r["copies"] >= 1 and r["threads"] == 1 and r["device"] == "CPU"
        assert r["buffer_type"] in device["buffer_types"]
    # no extra buffer type runs GET_ROWS: llama.cpp keeps the token embedding in the plain CPU buffer
    assert rows[3]["buffer_type"] == "CPU"
    features = device["cpu_features"]
    if features.get("AVX2") == "1" and "CPU_REPACK" in device["buffer_types"]:
        # Q4_0 and IQ4_NL with a multiple of 8 rows get a repacked layout on AVX2 (Q4_0: AMX's where it comes first)
        assert rows[0]["buffer_type"] != "CPU" and rows[1]["buffer_type"] == "CPU_REPACK"
    # the working set: an 8 MiB budget over a 36 KiB weight is many copies
    assert rows[0]["copies"] > 100


def test_tool_reads_a_cases_file_and_stdin(built, tmp_path):
    f = tmp_path / "cases.txt"
    f.write_text("# op type ne0 ne1 n\nmul_mat q8_0 256 256 1\n\n  get_rows  f16 256 64 2  # a comment\n")
    for args, stdin in ((["--cases", f], None), (["--cases", "-"], f.read_text())):
        proc = _tool(*args, "--threads", "1", *FAST, stdin=stdin)
        assert proc.returncode == 0, proc.stderr
        rows = _lines(proc.stdout)[1:]
        assert [(r["op"], r["type"], r["n"]) for r in rows] == [("mul_mat", "q8_0", 1), ("get_rows", "f16", 2)]


@pytest.mark.parametrize("args, message", [
    (["conv:q4_0:256:256:1"], "unknown op 'conv'"),
    (["mul_mat:q9_9:256:256:1"], "unknown type 'q9_9'"),
    (["mul_mat:q8_K:256:256:1"], "q8_K is not a weight type"),
    (["mul_mat:q4_K:640:256:1"], "q4_K needs rows of a multiple of 256 weights, NE0 is 640"),
    (["mul_mat:q4_0:256:x:1"], "NE1 'x' is not an integer"),
    (["mul_mat:q4_0:256:256:0"], "N must be positive"),
    (["mul_mat:q4_0:256:256"], "is not a case OP:TYPE:NE0:NE1:N (4 fields)"),
    (["mul_mat:q4_0:256:256:1", "--device", "NOPE0"], "unknown device 'NOPE0'"),
    (["--cases", "/nonexistent/cases.txt"], "cannot open the cases file"),
    ([], "no cases given"),
    (["mul_mat:q4_0:256:256:1", "--threads", "0"], "--threads must be positive"),
    (["mul_mat:q4_0:256:256:1", "--bogus"], "unknown option '--bogus'"),
])
def test_tool_rejects_bad_input_with_one_line(built, args, message):
    proc = _tool(*args)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("llama-costs: error: ") and message in lines[0], proc.stderr
    assert proc.stdout == ""  # nothing is timed before every case is checked


def test_tool_names_the_bad_line_of_a_cases_file(built, tmp_path):
    f = tmp_path / "cases.txt"
    f.write_text("mul_mat q8_0 256 256 1\nmul_mat q8_0 256 256\n")
    proc = _tool("--cases", f)
    assert proc.returncode != 0 and f"{f}:2:" in proc.stderr and proc.stdout == ""


# ---- the ops of each tensor -----------------------------------------------------------------------

def _write_gguf(path: Path, tensors: dict[str, tuple[int, ...]], arch: str = "gemma3") -> Path:
    import gguf

    writer = gguf.GGUFWriter(path, arch)
    for name, shape in tensors.items():
        writer.add_tensor(name, np.zeros(shape, dtype=np.float16))
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return path


def test_ubatches_follow_llama_bench():
    assert costs.ubatches(64) == [[64]]
    assert costs.ubatches(1000) == [[512, 488]]
    assert costs.ubatches(5000) == [[512] * 4, [512] * 4, [512, 392]]
    with pytest.raises(HifikitError):
        costs.ubatches(0)


def test_tensor_ops_untied(built, tiny_model):
    ops = costs.tensor_ops(tiny_model, 1000)
    by = {t.tensor: t for t in ops.tensors}
    assert by["token_embd.weight"].prompt == (("get_rows", 488, 1), ("get_rows", 512, 1))
    assert by["token_embd.weight"].gen == (("get_rows", 1, 1),)
    assert by["output.weight"].prompt == (("mul_mat", 1, 1),) and by["output.weight"].gen == (("mul_mat", 1, 1),)
    assert by["blk.0.ffn_down.weight"].prompt == (("mul_mat", 488, 1), ("mul_mat", 512, 1))
    # the last block's FFN only sees the rows that make logits
    assert by["blk.1.ffn_down.weight"].prompt == (("mul_mat", 1, 1),)
    assert by["blk.1.attn_q.weight"].prompt == by["blk.0.attn_q.weight"].prompt
    assert (by["blk.0.ffn_down.weight"].ne0, by["blk.0.ffn_down.weight"].ne1) == (512, 256)
    assert "blk.0.attn_norm.weight" not in by and all(t.type == "f16" for t in ops.tensors)
    # the signature is the model's shape, not its types
    assert ops.signature == costs.model_signature(gguf_io.tensor_index(tiny_model))


def test_tensor_ops_tied_embedding_runs_the_output_matmul(built, tmp_path):
    model = _write_gguf(tmp_path / "tied.gguf", {
        "token_embd.weight": (96, 640), "blk.0.attn_q.weight": (1024, 640), "blk.0.ffn_down.weight": (640, 2048),
        "blk.0.attn_norm.weight": (640,)})
    ops = costs.tensor_ops(model, 64)
    by = {t.tensor: t for t in ops.tensors}
    assert set(by) == {"token_embd.weight", "blk.0.attn_q.weight", "blk.0.ffn_down.weight"}
    assert by["token_embd.weight"].prompt == (("get_rows", 64, 1), ("mul_mat", 1, 1))
    assert by["token_embd.weight"].gen == (("get_rows", 1, 1), ("mul_mat", 1, 1))
    assert by["blk.0.ffn_down.weight"].prompt == (("mul_mat", 1, 1),)   # blk.0 is the last block here
    assert by["blk.0.attn_q.weight"].prompt == (("mul_mat", 64, 1),)
    cases = costs.cases_for(ops, {"token_embd.weight": ["q8_0"], "blk.0.attn_q.weight": ["q4_0", "q8_0"]})
    assert [c.arg() for c in cases] == [
        "get_rows:q8_0:640:96:1", "get_rows:q8_0:640:96:64", "mul_mat:q4_0:640:1024:1", "mul_mat:q4_0:640:1024:64",
        "mul_mat:q8_0:640:96:1", "mul_mat:q8_0:640:1024:1", "mul_mat:q8_0:640:1024:64"]


# ---- prediction arithmetic ------------------------------------------------------------------------

def _table(seconds: dict[costs.Case, float], constants=()) -> costs.CostTable:
    machine = costs.Machine("f" * 16, "CPU", 2, {"cpu": "test"})
    return costs.CostTable(machine, {c: costs.Cost(c, s, s, s, 1, 1, "CPU", "CPU") for c, s in seconds.items()},
                           list(constants))


def test_prediction_is_the_sum_of_tensor_costs_plus_the_constant(built, tiny_model):
    ops = costs.tensor_ops(tiny_model, 64)
    types = {t.tensor: ["q8_0", "f16"] for t in ops.tensors}
    cases = costs.cases_for(ops, types)
    # a distinct power of two per case: every sum below is exact and tells which cases went in
    seconds = {c: 2.0 ** -(i + 1) for i, c in enumerate(cases)}
    table = _table(seconds)
    mc = costs.model_costs(ops, table, types)
    k = costs.Constant(ops.signature, 64, 16, 0.5, 0.25, "ref", "sha", 0, 0, 0, 0, 1)
    plan = {t.tensor: ("q8_0" if i % 2 else "f16") for i, t in enumerate(ops.tensors)}
    pred = costs.predict(plan, mc, k)
    want_pp = 0.5 + sum(n_times * seconds[costs.Case(op, plan[t.tensor], t.ne0, t.ne1, n)]
                        for t in ops.tensors for op, n, n_times in t.prompt)
    want_tg = 0.25 + sum(n_times * seconds[costs.Case(op, plan[t.tensor], t.ne0, t.ne1, n)]
                         for t in ops.tensors for op, n, n_times in t.gen)
    assert pred.pp_seconds == want_pp and pred.tg_seconds == want_tg
    assert pred.pp_tps == 64 / want_pp and pred.tg_tps == 1 / want_tg
    assert tuple(pred) == (want_pp, want_tg)
    # per tensor: e.g. ffn_up of block 0 in q8_0
    up = ops.tensor("blk.0.ffn_up.weight")
    assert mc.cost(up.tensor, "q8_0").tg_seconds == seconds[costs.Case("mul_mat", "q8_0", 256, 512, 1)]
    assert mc.cost(up.tensor, "q8_0").pp_seconds == seconds[costs.Case("mul_mat", "q8_0", 256, 512, 64)]
    # the file itself (all F16)
    assert costs.predict_file(tiny_model, mc, k) == costs.predict({t.tensor: "f16" for t in ops.tensors}, mc, k)
    # without a type list, every fully costed type
    assert set(costs.model_costs(ops, table).tensors[up.tensor]) == {"q8_0", "f16"}
    # a negative part of the constant (the ops summed over llama-bench's time) adds nothing, as in the planner
    neg = dataclasses.replace(k, pp_seconds=-0.5, tg_seconds=0.25)
    clamped = costs.predict(plan, mc, neg)
    assert neg.rest == (0.0, 0.25) and neg.negative and not k.negative
    assert (clamped.pp_seconds, clamped.tg_seconds) == (want_pp - 0.5, want_tg)


def test_prediction_refuses_what_it_cannot_cost(built, tiny_model):
    ops = costs.tensor_ops(tiny_model, 64)
    table = _table({c: 1e-3 for c in costs.cases_for(ops, {t.tensor: ["q8_0"] for t in ops.tensors})})
    with pytest.raises(costs.MissingCostError, match="no cost for mul_mat:q4_0"):
        costs.model_costs(ops, table, {"blk.0.attn_q.weight": ["q4_0"]})
    mc = costs.model_costs(ops, table, {t.tensor: ["q8_0"] for t in ops.tensors})
    k = costs.Constant(ops.signature, 64, 16, 0.0, 0.0, "", "", 0, 0, 0, 0, 1)
    with pytest.raises(HifikitError, match="no type given"):
        costs.predict({}, mc, k)
    with pytest.raises(costs.MissingCostError, match="costed types: q8_0"):
        costs.predict({t.tensor: "q4_0" for t in ops.tensors}, mc, k)
    with pytest.raises(HifikitError, match="does not belong"):
        costs.predict({t.tensor: "q8_0" for t in ops.tensors}, mc,
                      costs.Constant("other", 64, 16, 0, 0, "", "", 0, 0, 0, 0, 1))
    with pytest.raises(costs.MissingCostError, match="no constant"):
        table.constant(ops.signature, 64, 16)


# ---- the job: resume after SIGKILL, reuse, export/import ----------------------------------------

COSTS_ARGS = ["--types", "q5_0", "q5_1", "iq4_nl", "q2_K", "q3_K", "q3_K_hifi", "--batch", "64",
              "--gen", "8", "--bench-repetitions", "1", "--threads", "1", *FAST]


def _wait_for_costs(path: Path, n: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"costs ended before it could be killed: {proc.stderr.read()}")
        if path.exists():
            try:
                conn = sqlite3.connect(path, timeout=1)
                row = conn.execute("SELECT COUNT(*) FROM costs").fetchone()
                conn.close()
                if row and row[0] >= n:
                    return
            except sqlite3.OperationalError:
                pass
        time.sleep(0.02)
    raise AssertionError("costs did not reach the kill point in time")


def test_sigkill_then_resume_then_reuse(cli, tiny_model, hifikit_home):
    proc = subprocess.Popen(cli.argv("costs", tiny_model, *COSTS_ARGS, "--json"), env=cli.env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _wait_for_costs(hifikit_home / "runs.db", 3, proc)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    conn = db.connect()
    run_id = conn.execute("SELECT id FROM runs WHERE command='costs' ORDER BY id DESC").fetchone()[0]
    before = {tuple(r[:5]): r[5] for r in conn.execute("SELECT op, type, ne0, ne1, n, created FROM costs")}
    n_cases = jobs.get_run(conn, run_id)["args"]["cases"]
    assert 3 <= len(before) < n_cases, "the kill must land mid-measurement"
    print(f"\nkilled run {run_id} with {len(before)}/{n_cases} cases stored")

    res = cli("runs", "resume", run_id, "--json")
    out = json.loads(res.stdout)
    after = {tuple(r[:5]): r[5] for r in conn.execute("SELECT op, type, ne0, ne1, n, created FROM costs")}
    assert len(after) == n_cases
    assert all(after[k] == created for k, created in before.items()), "a stored case was measured again"
    run = jobs.get_run(conn, run_id)
    assert run["status"] == "done"
    measure = next(s for s in run["steps"] if s["name"] == "measure")
    assert measure["attempts"] == 2 and measure["completions"] == 1
    assert measure["result"]["reused"] == len(before) and measure["result"]["measured"] == n_cases - len(before)
    assert out["run"] == run_id and out["constant_fitted"] is True
    assert set(out["tensors"]["blk.0.ffn_down.weight"]) == {"q5_0", "q5_1", "iq4_nl", "q2_K", "q3_K", "q3_K_hifi",
                                                            "f16"}
    assert out["prediction"]["pp_tps"] > 0 and out["prediction"]["tg_tps"] > 0
    k = out["constant"]
    assert k["n_prompt"] == 64 and k["n_gen"] == 8 and k["reference"] == str(tiny_model.resolve())
    # the constant is what llama-bench measured minus the summed costs of the reference's own types
    assert k["pp_seconds"] + k["summed_pp_seconds"] == pytest.approx(64 / k["measured_pp_tps"], rel=1e-12)
    assert k["tg_seconds"] + k["summed_tg_seconds"] == pytest.approx(1 / k["measured_tg_tps"], rel=1e-12)

    # a second run measures nothing and fits nothing: everything comes from the database
    again = json.loads(cli("costs", tiny_model, *COSTS_ARGS, "--json").stdout)
    assert again["run"] != run_id
    assert again["measure"]["measured"] == 0 and again["measure"]["reused"] == n_cases
    assert again["constant_fitted"] is False and again["constant"] == out["constant"]
    assert again["tensors"] == out["tensors"]
    final = {tuple(r[:5]): r[5] for r in conn.execute("SELECT op, type, ne0, ne1, n, created FROM costs")}
    assert final == after

    # what the planner calls: the same costs and constant from the database, for this machine
    mc, k = costs.for_model(conn, tiny_model, threads=1, working_set_mib=8, n_prompt=64, n_gen=8)
    assert mc.machine.fingerprint == out["machine"]["fingerprint"] and k.pp_seconds == out["constant"]["pp_seconds"]
    assert {t: {ty: [c.pp_seconds, c.tg_seconds] for ty, c in per.items()} for t, per in mc.tensors.items()} == \
        {t: {ty: [c["pp_seconds"], c["tg_seconds"]] for ty, c in per.items()} for t, per in out["tensors"].items()}

    # --remeasure times every case again and replaces it
    redo = json.loads(cli("costs", tiny_model, *COSTS_ARGS, "--remeasure", "--json").stdout)
    assert redo["measure"]["measured"] == n_cases and redo["measure"]["reused"] == 0
    replaced = {tuple(r[:5]): r[5] for r in conn.execute("SELECT op, type, ne0, ne1, n, created FROM costs")}
    assert replaced.keys() == after.keys() and all(replaced[k] > after[k] for k in after)

    # text output names the machine, the constant and every tensor group
    text = cli("costs", tiny_model, *COSTS_ARGS).stdout
    print(text)
    assert out["machine"]["fingerprint"] in text and "blk.*.attn_q.weight" in text and "predicted for" in text


def test_export_import_round_trip(cli, tiny_model, tmp_path, hifikit_home):
    first = json.loads(cli("costs", tiny_model, *COSTS_ARGS, "--json", "--export", tmp_path / "c.json").stdout)
    fp = first["machine"]["fingerprint"]
    data = json.loads((tmp_path / "c.json").read_text())
    assert data["format"] == "hifikit-costs" and [m["fingerprint"] for m in data["machines"]] == [fp]
    assert len(data["machines"][0]["costs"]) == first["measure"]["cases"]

    # another machine's database: import, then plan from the imported costs without measuring
    other_env = dict(cli.env(), HIFIKIT_HOME=str(tmp_path / "other-home"))

    def other(*args, check=True):
        return run_hifikit(*args, check=check, env=other_env)

    imp = json.loads(other("costs", "--import", tmp_path / "c.json", "--json").stdout)["import"]
    assert imp["machines"] == [fp] and imp["costs_added"] == first["measure"]["cases"] and imp["constants_added"] == 1
    shown = json.loads(other("costs", tiny_model, *COSTS_ARGS, "--machine", fp[:8], "--json").stdout)
    assert shown["run"] is None and shown["tensors"] == first["tensors"] and shown["constant"] == first["constant"]
    assert shown["prediction"] == first["prediction"]
    again = json.loads(other("costs", "--import", tmp_path / "c.json", "--json").stdout)["import"]
    assert again["costs_added"] == 0 and again["costs_kept"] == first["measure"]["cases"]
    # the round trip keeps every field
    other("costs", "--export", tmp_path / "c2.json")
    a, b = costs.read_export(tmp_path / "c.json"), costs.read_export(tmp_path / "c2.json")
    assert a[0].machine == b[0].machine and a[0].costs == b[0].costs and a[0].constants == b[0].constants

    # files that are not costs files, or were edited, are refused with one line
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "something"}))
    res = cli("costs", "--import", bad, check=False)
    assert res.returncode == 1 and "not a hifikit costs file" in res.stderr
    data["machines"][0]["description"]["threads"] = 64
    bad.write_text(json.dumps(data))
    res = cli("costs", "--import", bad, check=False)
    assert res.returncode == 1 and "does not match its description" in res.stderr
    res = other("costs", tiny_model, "--machine", "nope", check=False)
    assert res.returncode == 1 and "no cost machine 'nope'" in res.stderr


def test_cli_refuses_bad_options_before_any_run(cli, tiny_model, tmp_path):
    for args, message in ((["--batch", "0"], "--batch must be positive"),
                          (["--types", "q9_9"], "unknown type 'q9_9'"),
                          (["--reference", tmp_path / "missing.gguf"], "missing.gguf"),
                          (["--backend", "NOPE0"], "unknown device 'NOPE0'")):
        res = cli("costs", tiny_model, *args, check=False)
        assert res.returncode == 1 and message in res.stderr, res.stderr
    res = cli("costs", check=False)
    assert res.returncode == 1 and "give a MODEL" in res.stderr
    conn = db.connect()
    assert conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 0


def _loader_repacked(model: Path) -> set[str]:
    """The tensors llama.cpp's loader put in an extra CPU buffer type, from llama-bench's verbose log.

    Generation only (-p 0): it runs no batched matmul, so it also runs where AMX tiles fault.
    """
    import re

    res = runner.run_tool("llama-bench", ["-m", model, "-p", "0", "-n", "1", "-r", "1", "-t", "1", "-v"])
    text = res.stdout + res.stderr
    return set(re.findall(r"repack: repack tensor (\S+) with", text)) | \
        set(re.findall(r"amx repack tensor (\S+) of type", text))


@pytest.mark.parametrize("recipe", [["Q4_K_M"], ["--pure", "Q4_0"], ["--pure", "IQ4_NL"]])
def test_tool_buffer_types_are_the_ones_llama_cpp_loads_into(built, tiny_model, tmp_path, recipe):
    out = tmp_path / "model.gguf"
    runner.run_tool("llama-quantize", [*recipe[:-1], tiny_model, out, recipe[-1]])
    ops = costs.tensor_ops(out, 64)
    # the op llama.cpp's loader chooses the buffer type by: GET_ROWS for the (untied) embedding, else MUL_MAT
    cases = {t.tensor: costs.Case("get_rows" if t.tensor == "token_embd.weight" else "mul_mat", t.type, t.ne0, t.ne1, 1)
             for t in ops.tensors}
    proc = _tool(*sorted({c.arg() for c in cases.values()}), "--threads", "1", "--working-set", "1",
                 "--repetitions", "1")
    assert proc.returncode == 0, proc.stderr
    buft = {(r["op"], r["type"], r["ne0"], r["ne1"], r["n"]): r["buffer_type"] for r in _lines(proc.stdout)[1:]}
    ours = {name for name, c in cases.items() if buft[(c.op, c.type, c.ne0, c.ne1, c.n)] != "CPU"}
    theirs = _loader_repacked(out)
    print(recipe, sorted(ours))
    assert ours == theirs
