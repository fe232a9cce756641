"""The CLI end to end on the synthetic model, and every bad input as one clear line."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from hifikit import gguf_io

CTX = 128


def one_line_error(proc) -> str:
    assert proc.returncode != 0
    lines = [l for l in proc.stderr.splitlines() if l.startswith("hifikit: error:")]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def test_inspect_json(cli, tiny_model):
    data = cli.json("inspect", tiny_model)
    info = gguf_io.read_info(tiny_model)
    assert data["n_tensors"] == info.n_tensors == len(data["tensors"])
    assert data["types"] == {"f16": 16, "f32": 5}
    emb = next(t for t in data["tensors"] if t["name"] == "token_embd.weight")
    assert emb["shape"][0] == 256 and emb["type"] == "f16" and emb["n_bytes"] == 2 * emb["n_elements"]


def test_quantize_eval_and_kld_cache(cli, tiny_model, tiny_text, tmp_path, hifikit_home):
    out = tmp_path / "q4.gguf"
    q = cli.json("quantize", tiny_model, out, "--type", "q4_k_m", "--threads", 2)
    assert q["ftype"] == "Q4_K_M" and out.is_file()
    assert q["quant_mib"] == pytest.approx(gguf_io.read_info(out).size_mib, abs=0.006)
    assert not list(tmp_path.glob(".*partial*"))

    e1 = cli.json("eval", out, "--ref", tiny_model, "--text", tiny_text, "--ctx", CTX, "--chunks", 2, "--threads", 2)
    ref, model = e1["models"]
    assert ref["role"] == "reference" and model["kld_mean"] > 0 and model["ppl"] > 1
    refs = list((hifikit_home / "kld").glob("*.kld"))
    assert len(refs) == 1 and ref["kld_base_mib"] == pytest.approx(refs[0].stat().st_size / 2**20)
    mtime = refs[0].stat().st_mtime_ns
    # a second eval against the same (reference, text, ctx, chunks) reuses the logits
    e2 = cli.json("eval", out, "--ref", tiny_model, "--text", tiny_text, "--ctx", CTX, "--chunks", 2, "--threads", 2)
    assert refs[0].stat().st_mtime_ns == mtime
    assert e2["models"][1]["kld_mean"] == pytest.approx(model["kld_mean"])
    shown = cli.json("runs", "show", e2["run"])
    metrics = {m["metric"] for m in shown["measurements"]}
    assert {"ppl", "kld_mean", "kld_max", "same_top_p", "rms_dp", "bpw", "size_mib"} <= metrics
    assert shown["versions"]["llama_cpp_commit"].startswith("0c1e57098bba")
    size = refs[0].stat().st_size
    gc = cli.json("runs", "gc")
    assert gc["removed"] == 1 and gc["freed_bytes"] == size
    assert not list((hifikit_home / "kld").glob("*.kld"))
    listed = cli.json("runs", "list")
    assert [r["command"] for r in listed] == ["eval", "eval", "quantize"]


def test_compare_table(cli, tiny_model, tiny_text, tmp_path):
    proc = cli("compare", "--ref", tiny_model, "--text", tiny_text, "--ctx", CTX, "--chunks", 2, "--threads", 2,
               "--quant", "Q3_K_M", "--quant", "Q4_K_M", "--out-dir", tmp_path)
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:3] == ["model", "MiB", "BPW"]
    names = [l.split()[0] for l in lines[2:5]]
    assert names == [tiny_model.name, f"{tiny_model.stem}-Q3_K_M.gguf", f"{tiny_model.stem}-Q4_K_M.gguf"]
    print("\n" + proc.stdout)


# --- bad input ------------------------------------------------------------------


def test_missing_file(cli, tmp_path):
    err = one_line_error(cli("inspect", tmp_path / "absent.gguf", check=False))
    assert "no such file" in err


def test_not_a_gguf(cli, tmp_path):
    bogus = tmp_path / "notes.gguf"
    bogus.write_text("hello, not a model\n")
    err = one_line_error(cli("quantize", bogus, tmp_path / "o.gguf", "--type", "Q4_K_M", check=False))
    assert "not a GGUF file" in err
    assert not (tmp_path / "o.gguf").exists()


def test_truncated_gguf(cli, tiny_model, tmp_path):
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny_model.read_bytes()[: tiny_model.stat().st_size // 2])
    err = one_line_error(cli("inspect", cut, check=False))
    assert "truncated" in err
    out = tmp_path / "o.gguf"
    one_line_error(cli("quantize", cut, out, "--type", "Q4_K_M", check=False))
    assert not out.exists() and not list(tmp_path.glob(".*partial*"))


def test_unknown_type_name(cli, tiny_model, tmp_path):
    err = one_line_error(cli("quantize", tiny_model, tmp_path / "o.gguf", "--type", "Q4_K_XYZ", check=False))
    assert "unknown quantization type 'Q4_K_XYZ'" in err and "Q4_K_M" in err
    assert not list(tmp_path.iterdir())


def test_text_too_short(cli, tiny_model, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("Only a few words here.\n")
    err = one_line_error(cli("eval", tiny_model, "--ref", tiny_model, "--text", short, "--ctx", CTX,
                             "--chunks", 4, check=False))
    assert "too short" in err
    assert not (Path(os.environ["HIFIKIT_HOME"]) / "kld").exists() or \
        not list((Path(os.environ["HIFIKIT_HOME"]) / "kld").iterdir())


def test_unwritable_output(cli, tiny_model, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if not os.access(locked, os.W_OK):  # root ignores the mode bits
            err = one_line_error(cli("quantize", tiny_model, locked / "o.gguf", "--type", "Q4_K_M", check=False))
            assert "not writable" in err
    finally:
        locked.chmod(0o700)
    err = one_line_error(cli("quantize", tiny_model, locked, "--type", "Q4_K_M", check=False))
    assert "is a directory" in err
    err = one_line_error(cli("quantize", tiny_model, tmp_path / "no" / "dir" / "o.gguf", "--type", "Q4_K_M",
                             check=False))
    assert "does not exist" in err


def test_imatrix_then_quantize_with_it(cli, tiny_model, tiny_text, tmp_path):
    im = tmp_path / "tiny.imatrix.gguf"
    data = cli.json("imatrix", tiny_model, "--text", tiny_text, "--ctx", CTX, "--chunks", 2, "-o", im,
                    "--threads", 2)
    assert data["entries"] == 14 and data["chunks"] == 2 and im.is_file()
    out = tmp_path / "q3.gguf"
    q = cli.json("quantize", tiny_model, out, "--type", "Q3_K_S", "--imatrix", im, "--threads", 2)
    assert q["ftype"] == "Q3_K_S" and {t["target_type"] for t in q["tensors"]} >= {"q3_K"}
    err = one_line_error(cli("quantize", tiny_model, tmp_path / "x.gguf", "--type", "Q4_K_M",
                             "--imatrix", tiny_model, check=False))
    assert "not an imatrix" in err


def test_eval_without_reference_and_bench(cli, tiny_model, tiny_text):
    e = cli.json("eval", tiny_model, "--text", tiny_text, "--ctx", CTX, "--chunks", 2, "--threads", 2)
    (row,) = e["models"]
    assert row["ppl"] > 1 and row["kld_mean"] is None
    b = cli.json("bench", tiny_model, "-p", 16, "-n", 4, "-r", 1, "--threads", 2)
    assert sorted(r["test"] for r in b["rows"]) == ["pp16", "tg4"]


def test_hifi_needs_a_hifi_build(cli, tiny_model, tmp_path):
    from hifikit.cli import quantize as q
    hifi = [n for n in q.quant_options() if "HIFI" in n.upper()]
    proc = cli("quantize", tiny_model, tmp_path / "h.gguf", "--hifi", check=False)
    if hifi:
        assert proc.returncode == 0 and (tmp_path / "h.gguf").is_file()
    else:
        assert "no HIFI quantization types" in one_line_error(proc)


def test_unknown_tensor_type_id(cli, tiny_model, tmp_path):
    """A GGUF with a type id the patched gguf-py lacks (a newer llama.cpp's type, or another fork's)."""
    from hifikit.gguf_io import gguf
    odd = tmp_path / "odd.gguf"
    odd.write_bytes(tiny_model.read_bytes())
    reader = gguf.GGUFReader(odd, "r+")
    reader.tensors[0].field.parts[4][0] = 200  # name length, name, n_dims, dims, *type*, offset
    reader.data.flush()
    del reader
    err = one_line_error(cli("inspect", odd, check=False))
    assert "uses a tensor type this hifikit does not know" in err and "200" in err
    assert "a type of a newer llama.cpp, or a file of another fork" in err


def test_upstream_source_error_is_one_line(capsys, tmp_path, monkeypatch):
    """upstream.py's own error (it runs inside the CMake build, apart from hifikit's errors) is one line too."""
    from hifikit import upstream
    from hifikit.cli import main
    from hifikit.pr import export

    monkeypatch.setenv("HIFIKIT_LLAMA_CPP_DIR", "/nonexistent")
    # the export reads the pinned source after the template and the runs database; straight to it
    monkeypatch.setattr(export, "export", lambda *a, **k: upstream.pristine_tree())
    assert main.main(["pr", "export", "--out", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err
    assert err.splitlines() == ["hifikit: error: HIFIKIT_LLAMA_CPP_DIR=/nonexistent is not a llama.cpp source tree"]


def test_unknown_step_kind_is_one_line(cli, tiny_model, tmp_path):
    from hifikit import db, jobs

    conn = db.connect()
    run_id = jobs.create_run(conn, "quantize", {}, [jobs.StepSpec("quantize", "quantize", {
        "input": str(tiny_model), "output": str(tmp_path / "q.gguf"), "ftype": "Q4_K_M"})])
    conn.execute("UPDATE steps SET kind='no-such-kind' WHERE run_id=?", (run_id,))
    conn.commit()
    err = one_line_error(cli("runs", "resume", run_id, check=False))
    assert "kind 'no-such-kind' is not known to hifikit" in err
    assert "no-such-kind" in jobs.get_run(conn, run_id)["error"]


def test_eval_warns_when_the_imatrix_came_from_the_evaluation_text(cli, tiny_model, tiny_text, tmp_path):
    from synthetic import write_text

    im = tmp_path / "tiny.imatrix.gguf"
    cli("imatrix", tiny_model, "--text", tiny_text, "--ctx", CTX, "--chunks", 2, "-o", im, "--threads", 2)
    q = tmp_path / "q4.gguf"
    cli("quantize", tiny_model, q, "--type", "Q4_K_M", "--imatrix", im, "--threads", 2)
    same = cli("eval", q, "--ref", tiny_model, "--text", tiny_text, "--ctx", CTX, "--chunks", 2, "--threads", 2)
    assert "warning:" in same.stderr and "its KLD is flattered" in same.stderr
    (rec,) = [r for r in cli.json("eval", q, "--ref", tiny_model, "--text", tiny_text, "--ctx", CTX,
                                  "--chunks", 2)["models"] if r["role"] != "reference"]
    assert rec["warnings"] and "shares 100.0 %" in rec["warnings"][0]
    other = write_text(tmp_path / "other.txt", seed=7)
    apart = cli("eval", q, "--ref", tiny_model, "--text", other, "--ctx", CTX, "--chunks", 2, "--threads", 2)
    assert "flattered" not in apart.stderr
