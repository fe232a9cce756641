"""The speed cost model: llama-costs' JSON and its refusals.

No assertion here depends on how fast anything runs.
"""
from __future__ import annotations

import json
import subprocess

import pytest

from hifikit import paths, runner

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
