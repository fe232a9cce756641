"""llama-sensitivity on a quantized baseline: --source (the swept tensors' values from the F16 file), --reference-out
and --reference-in (the F16 model's reference distributions in a file), on the tiny synthetic model."""
from __future__ import annotations

import re
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from hifikit import gguf_io, paths, report, runner
from test_sensitivity_measured import CHUNKS, CTX, OTHER, TENSOR, results, sensitivity

HEADER = 88  # magic, version, positions mode, 6 int64 fields, 3 hashes (tokens, model, data)
DROP = {"seconds"}


def _figures(recs: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in DROP} for r in recs]


def _write_reference(model: Path, text: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    """A run with no pairs and --reference-out: the reference pass only."""
    proc = sensitivity(model, text, "", out.parent, "--reference-out", str(out), *extra)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout == ""
    assert out.is_file() and not Path(str(out) + ".tmp").exists()
    return proc


@pytest.fixture(scope="module")
def reference(built, tiny_model, tiny_text, tmp_path_factory) -> Path:
    """The tiny F16 model's reference at the default top-k and tail samples, CTX x CHUNKS."""
    out = tmp_path_factory.mktemp("ref") / "ref.bin"
    _write_reference(tiny_model, tiny_text, out)
    return out


@pytest.fixture(scope="module")
def q8_model(built, tiny_model, tmp_path_factory) -> Path:
    """The tiny model quantized Q8_0 by this build's llama-quantize (its norms stay F32)."""
    out = tmp_path_factory.mktemp("q8") / "tiny-Q8_0.gguf"
    subprocess.run([str(paths.binary("llama-quantize")), str(tiny_model), str(out), "Q8_0", "1"], check=True,
                   capture_output=True, env=runner.tool_env(), timeout=600)
    return out


def _one_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """One 'error:' line holding the needles, a non-zero exit and no measurement."""
    assert proc.returncode != 0, proc.stderr[-2000:]
    assert proc.stdout == ""
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-2000:]
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def test_reference_file_layout(built, tiny_model, tiny_text, reference):
    data = reference.read_bytes()
    assert data[:8] == b"HKSREF\0\0"
    version, all_pos, n_vocab, n_ctx, n_chunks, n_top, n_samp, n_total = struct.unpack_from("<II6q", data, 8)
    assert (version, all_pos, n_ctx, n_chunks, n_top, n_samp) == (2, 0, CTX, CHUNKS, 64, 64)
    assert n_vocab == 32000 and n_total == CHUNKS * (CTX - 1 - CTX // 2)
    # idx, logp, samp, samp_logp per kept token, tail and top per position
    assert len(data) == HEADER + n_total * (n_top * 12 + 12 + n_samp * 12)


def _fnv1a(data: bytes) -> int:
    h = 0xcbf29ce484222325
    for b in data:
        h = ((h ^ b) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return h


def _whole_text_tokens(model: Path, text: Path) -> list[int]:
    """The text's tokens as upstream's llama-tokenize gives them, the whole file at once (BOS included)."""
    proc = subprocess.run([str(paths.binary("llama-tokenize")), "-m", str(model), "-f", str(text), "--ids",
                           "--log-disable"], capture_output=True, text=True, env=runner.tool_env(), timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("["))
    return [int(x) for x in line.strip("[]").split(",")]


@pytest.mark.parametrize("kind", ["sentences", "long tokens", "one line"])
def test_the_head_of_the_text_gives_the_whole_texts_tokens(built, tiny_model, tiny_text, tmp_path, kind):
    # the tool tokenizes only the head of the text that its chunks need (a whole calibration file cost every
    # worker seconds per MiB): the tokens it measures on must be those of the whole text, which eval's
    # llama-perplexity measures on. Its reference file's header holds their hash
    if kind == "sentences":
        text = tiny_text
    else:
        # one token per 15 bytes: the first head (8 bytes per token) is too short and must grow
        words = ["implementation"] * 4000
        sep = "\n" if kind == "long tokens" else " "
        text = tmp_path / "text.txt"
        text.write_text("".join(" ".join(words[i:i + 8]) + sep for i in range(0, len(words), 8)))
    out = tmp_path / "ref.bin"
    proc = _write_reference(tiny_model, text, out)
    head, size = map(int, re.search(r"tokenized the first (\d+) of (\d+) bytes", proc.stderr).groups())
    assert size == text.stat().st_size
    n_needed = CTX * CHUNKS
    if kind == "one line":
        assert head == size         # no newline to cut after: the whole text
    else:
        assert head < size / 2 and text.read_bytes()[head - 1:head] == b"\n"
    if kind == "long tokens":
        assert head > 8 * (n_needed + 512)
    tokens = _whole_text_tokens(tiny_model, text)
    assert len(tokens) > 2 * n_needed
    tokens_hash = struct.unpack_from("<Q", out.read_bytes(), 64)[0]
    assert tokens_hash == _fnv1a(struct.pack(f"<{n_needed}i", *tokens[:n_needed]))
    # and a hash of other tokens differs: the check can fail
    assert tokens_hash != _fnv1a(struct.pack(f"<{n_needed}i", *tokens[1:n_needed + 1]))


def test_source_and_reference_file_give_the_plain_figures(built, tiny_model, tiny_text, reference, tmp_path):
    """-m F16 --source F16 --reference-in REF: the same values, the same reference, bit for bit the same figures."""
    pairs = [(TENSOR, "q4_K"), (OTHER, "q8_0"), (TENSOR, "iq4_nl"), (OTHER, "f16"), (TENSOR, "q2_K"),
             (OTHER, "q3_K_hifi")]
    plain = results(sensitivity(tiny_model, tiny_text, pairs, tmp_path))
    proc = sensitivity(tiny_model, tiny_text, pairs, tmp_path, "--source", str(tiny_model), "--reference-in",
                       str(reference))
    assert f"reference distributions read from {reference}" in proc.stderr
    assert _figures(results(proc)) == _figures(plain)
    assert plain[0]["kld"] > 0 and plain[3]["kld"] == 0.0
    # the reference read back, without --source, is the computed one too
    again = results(sensitivity(tiny_model, tiny_text, pairs[:2], tmp_path, "--reference-in", str(reference)))
    assert _figures(again) == _figures(plain[:2])


def _quantized_with(src: Path, out: Path, overrides: dict[str, str], tmp_path: Path) -> Path:
    """src quantized Q8_0 by llama-quantize, the tensors of `overrides` in their own type."""
    from hifikit.planner.strategy import regex_for

    argv = [str(paths.binary("llama-quantize"))]
    if overrides:
        types = tmp_path / f"{out.stem}-types.txt"
        types.write_text("".join(f"{regex_for(n)}={t}\n" for n, t in overrides.items()))
        argv += ["--tensor-type-file", str(types)]
    subprocess.run([*argv, str(src), str(out), "Q8_0", "1"], check=True, capture_output=True, env=runner.tool_env(),
                   timeout=600)
    return out


def test_q8_baseline_measures_the_file_with_q8_0_everywhere_but_the_tensor(built, tiny_model, tiny_text, q8_model,
                                                                           tmp_path):
    from hifikit import evaluate

    chunks = 8  # llama-perplexity prints its statistics from 100 scored positions on
    mixed = _quantized_with(tiny_model, tmp_path / "mixed.gguf", {TENSOR: "q4_K"}, tmp_path)
    base_types = {t.name: t.type.lower() for t in gguf_io.read_info(q8_model).tensors}
    mixed_types = {t.name: t.type.lower() for t in gguf_io.read_info(mixed).tensors}
    assert mixed_types == {**base_types, TENSOR: "q4_k"} and base_types[TENSOR] == "q8_0"

    def kld_of(model: Path) -> report.Row:
        return evaluate.evaluate(evaluate.EvalOptions(model, tiny_text, ref=tiny_model, ctx=CTX, chunks=chunks,
                                                      threads=1), progress=False).models[0]

    row_mixed, row_q8 = kld_of(mixed), kld_of(q8_model)
    pairs = [(TENSOR, "q4_K"), (TENSOR, "q8_0"), (OTHER, "q2_K"), (OTHER, "q8_0")]
    got = {}
    for k in ("0", "64"):
        ref = tmp_path / f"ref-{k}.bin"
        _write_reference(tiny_model, tiny_text, ref, "--chunks", str(chunks), "--top-k", k)
        got[k] = results(sensitivity(q8_model, tiny_text, pairs, tmp_path, "--chunks", str(chunks), "--top-k", k,
                                     "--source", str(tiny_model), "--reference-in", str(ref)))
        print(f"top-k {k}: " + ", ".join(f"{r['tensor']} {r['type']} {r['kld']:.6g} +/- {r['kld_pm']:.3g}"
                                         for r in got[k]))
    print(f"hifikit eval: mixed {row_mixed.kld_mean:.6g} +/- {row_mixed.kld_error:.3g}, "
          f"Q8_0 {row_q8.kld_mean:.6g} +/- {row_q8.kld_error:.3g}")
    # the F16 worker's figures of the same pairs: the Q8_0 elsewhere adds to them
    f16 = results(sensitivity(tiny_model, tiny_text, [pairs[0], pairs[2]], tmp_path, "--chunks", str(chunks),
                              "--top-k", "0"))
    print("F16 model, top-k 0: " + ", ".join(f"{r['tensor']} {r['type']} {r['kld']:.6g} +/- {r['kld_pm']:.3g}"
                                             for r in f16))
    assert f16[0]["kld"] < got["0"][0]["kld"] and f16[1]["kld"] < got["0"][2]["kld"]
    for k, recs in got.items():
        q4, t_q8, other_q2, other_q8 = recs
        # q8_0 of the source's values is the baseline's own tensor, byte for byte: both q8_0 pairs are the
        # Q8_0 file unchanged, whichever tensor they name and whatever was measured before
        assert t_q8["kld"] == other_q8["kld"] and t_q8["same_top"] == other_q8["same_top"]
        assert other_q2["kld"] > other_q8["kld"] > 0
        assert q4["kld"] > t_q8["kld"]
        if k == "0":
            # the whole vocabulary: only llama-perplexity's 16-bit rounding of the reference is left between the two
            assert abs(q4["kld"] - row_mixed.kld_mean) <= 0.01 * row_mixed.kld_mean, (q4, row_mixed)
            assert abs(t_q8["kld"] - row_q8.kld_mean) <= 0.01 * row_q8.kld_mean, (t_q8, row_q8)
        else:
            # the top-64 reference's sampled tail term: inside the run's +/-
            assert abs(q4["kld"] - row_mixed.kld_mean) <= q4["kld_pm"], (q4, row_mixed)
            assert abs(t_q8["kld"] - row_q8.kld_mean) <= t_q8["kld_pm"], (t_q8, row_q8)


def _write_gguf(path: Path, tensors: dict[str, np.ndarray]) -> Path:
    import gguf

    writer = gguf.GGUFWriter(path, "llama")
    for name, values in tensors.items():
        writer.add_tensor(name, values)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_bad_sources_are_one_line(built, tiny_model, tiny_text, q8_model, reference, tmp_path):
    shape = {t.name: t.shape for t in gguf_io.read_info(tiny_model).tensors}

    def run(source: Path, pairs=((TENSOR, "q4_K"),), model: Path = q8_model):
        return sensitivity(model, tiny_text, list(pairs), tmp_path, "--source", str(source), "--reference-in",
                           str(reference))

    _one_error(run(tmp_path / "none.gguf"), "none.gguf")
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(b"not a gguf file at all" * 8)
    _one_error(run(garbage), "--source", "garbage.gguf", "not a readable GGUF")
    # a source with OTHER (as F32) and TENSOR transposed
    rows, cols = shape[TENSOR][1], shape[TENSOR][0]
    partial = _write_gguf(tmp_path / "partial.gguf", {
        OTHER: np.zeros((shape[OTHER][1], shape[OTHER][0]), dtype=np.float32),
        TENSOR: np.zeros((cols, rows), dtype=np.float16)})
    _one_error(run(partial, [(OTHER, "q4_K"), ("blk.0.ffn_up.weight", "q4_K")]), ":2:", "no tensor",
               "blk.0.ffn_up.weight", "partial.gguf")
    _one_error(run(partial), TENSOR, f"{rows}x{cols} in the source", f"{cols}x{rows} in the model")
    # the quantized file is no source
    _one_error(run(q8_model), TENSOR, "stored as q8_0", "F32, F16 or BF16")
    # a source cut short: its tensors' bytes past the end of the file
    cut = tmp_path / "cut.gguf"
    data = tiny_model.read_bytes()
    cut.write_bytes(data[:len(data) - 4096])
    _one_error(run(cut, [("output.weight", "q4_K")]), "cut.gguf", "'output.weight'", "past the end of the file")
    # a candidate bigger than the baseline's slot: f16 does not fit in the Q8_0 bytes
    _one_error(run(tiny_model, [(TENSOR, "q8_0"), (TENSOR, "f16")]), ":2:", "type f16", "holds as q8_0")
    # the source's values without the source's reference would measure against the baseline
    _one_error(sensitivity(q8_model, tiny_text, [(TENSOR, "q4_K")], tmp_path, "--source", str(tiny_model)),
               "--source needs --reference-in")
    # without --source the baseline's Q8_0 tensors have no float values to quantize
    _one_error(sensitivity(q8_model, tiny_text, [(TENSOR, "q4_K")], tmp_path), TENSOR, "stored as q8_0")


def test_reference_for_another_run_is_one_line(built, tiny_model, tiny_text, reference, tmp_path):
    pairs = [(TENSOR, "q4_K")]
    ref = ["--reference-in", str(reference)]
    other_text = tmp_path / "other.txt"
    other_text.write_text("Another opening line. " + tiny_text.read_text())
    _one_error(sensitivity(tiny_model, other_text, pairs, tmp_path, *ref), "another text", "token hash")
    _one_error(sensitivity(tiny_model, tiny_text, pairs, tmp_path, *ref, "-c", "32"), "-c = 64", "has 32")
    _one_error(sensitivity(tiny_model, tiny_text, pairs, tmp_path, *ref, "--chunks", "3"), "--chunks = 2", "has 3")
    _one_error(sensitivity(tiny_model, tiny_text, pairs, tmp_path, *ref, "--top-k", "32"), "top-k", "= 64", "has 32")
    _one_error(sensitivity(tiny_model, tiny_text, pairs, tmp_path, *ref, "--tail-samples", "8"), "--tail-samples")
    _one_error(sensitivity(tiny_model, tiny_text, pairs, tmp_path, *ref, "--all-positions"), "--all-positions")
    _one_error(sensitivity(tiny_model, tiny_text, pairs, tmp_path, "--reference-in", str(tmp_path / "no.bin")),
               "no.bin")


def test_reference_of_another_model_is_one_line(built, tiny_model, tiny_text, q8_model, reference, tmp_path):
    """A model of the same shapes, vocabulary and text but other weights: only the model's fingerprint tells its
    reference from the tiny model's (it would give a wrong KLD for every pair)."""
    from synthetic import write_model

    pairs = [(TENSOR, "q4_K")]
    ref = ["--reference-in", str(reference)]
    other = write_model(tmp_path / "other-f16.gguf", seed=1)
    _one_error(sensitivity(other, tiny_text, pairs, tmp_path, *ref), "another model", "other-f16.gguf")
    # on a baseline, the reference must be the source's
    _one_error(sensitivity(q8_model, tiny_text, pairs, tmp_path, "--source", str(other), *ref), "another model")
    # the fingerprint is of the content: a copy of the model under another name is the same model
    copy = tmp_path / "copy.gguf"
    copy.write_bytes(tiny_model.read_bytes())
    assert _figures(results(sensitivity(copy, tiny_text, pairs, tmp_path, *ref))) == \
        _figures(results(sensitivity(tiny_model, tiny_text, pairs, tmp_path)))


def test_damaged_reference_file_is_one_line(built, tiny_model, tiny_text, reference, tmp_path):
    data = reference.read_bytes()
    damaged = tmp_path / "damaged.bin"

    def run(content: bytes, *needles: str) -> str:
        damaged.write_bytes(content)
        return _one_error(sensitivity(tiny_model, tiny_text, [(TENSOR, "q4_K")], tmp_path, "--reference-in",
                                      str(damaged)), "damaged.bin", *needles)

    for cut in (0, 5, 40, HEADER - 1):
        run(data[:cut], "truncated", "header")
    for cut in (HEADER, HEADER + 7, len(data) // 2, len(data) - 1):
        run(data[:cut], "truncated", f"{cut} bytes", str(len(data)))
    run(data + b"\0", "longer than its header says")
    run(b"X" + data[1:], "bad magic")
    run(data[:8] + struct.pack("<I", 1) + data[12:], "format version 1", "version 2")
    # one changed byte anywhere in the data: the hash in the header no longer matches
    for at in (HEADER, HEADER + (len(data) - HEADER) // 3, len(data) - 1):
        flipped = bytearray(data)
        flipped[at] ^= 0x40
        run(bytes(flipped), "corrupted")
    # a header field changed: the file no longer says what run it was written for
    run(data[:16] + struct.pack("<q", 31999) + data[24:], "vocabulary", "31999")
    run(data[:72] + struct.pack("<Q", struct.unpack_from("<Q", data, 72)[0] ^ 1) + data[80:], "another model")


def test_reference_out_is_written_whole_or_not_at_all(built, tiny_model, tiny_text, reference, tmp_path):
    _one_error(sensitivity(tiny_model, tiny_text, [(TENSOR, "q4_K")], tmp_path, "--reference-out",
                           str(tmp_path / "no" / "such" / "dir" / "ref.bin")), "--reference-out", "cannot write")
    # a run that fails after opening it (a text too short) leaves neither the file nor its temporary
    short = tmp_path / "short.txt"
    short.write_text("a few words only")
    out = tmp_path / "ref.bin"
    proc = sensitivity(tiny_model, short, [(TENSOR, "q4_K")], tmp_path, "--reference-out", str(out))
    assert proc.returncode != 0 and "tokens, need" in proc.stderr.splitlines()[-1]
    assert list(tmp_path.glob("ref.bin*")) == []
    # with pairs, the reference is written and the pairs measured as without it; the file is the same
    pairs = [(TENSOR, "q4_K"), (OTHER, "q3_K")]
    with_out = results(sensitivity(tiny_model, tiny_text, pairs, tmp_path, "--reference-out", str(out)))
    assert _figures(with_out) == _figures(results(sensitivity(tiny_model, tiny_text, pairs, tmp_path)))
    assert out.read_bytes() == reference.read_bytes()


# the driver -------------------------------------------------------------------

def _points(conn, run_id: int) -> dict[tuple[str, str], tuple[int, float, float | None]]:
    return {(r["tensor"], r["type"]): (r["nbytes"], r["error"], r["error_pm"]) for r in conn.execute(
        "SELECT tensor, type, nbytes, error, error_pm FROM curve_points WHERE run_id=? AND mode='measured'",
        (run_id,))}


def test_analyze_on_a_baseline_stores_the_tools_figures_and_resumes_on_it(cli, tiny_model, tiny_text, q8_model,
                                                                          reference, tmp_path):
    from hifikit import db, jobs

    types = ["q4_K", "q8_0", "f16"]
    out = cli.json("analyze", tiny_model, "--mode", "measured", "--baseline", q8_model, "--types", *types,
                   "--tensors", r"blk\.0\.ffn_down", "--text", tiny_text, "--ctx", CTX, "--chunks", CHUNKS,
                   "--threads", "1")
    conn = db.connect()
    run = jobs.get_run(conn, out["run"])
    sweep = next(s for s in run["steps"] if s["name"] == "sweep")
    assert run["args"]["baseline"] == sweep["spec"]["baseline"] == str(q8_model.resolve())
    # f16 needs more bytes than the Q8_0 tensor it would replace: left out, not stored as 0
    assert sweep["result"]["left_out_pairs"] == 1
    stored = _points(conn, out["run"])
    assert set(stored) == {(TENSOR, "q4_K"), (TENSOR, "q8_0")}
    # the driver's reference is the F16 model's, the one the tool writes; the points are the tool's figures
    ref = Path(run["run_dir"]) / "reference.bin"
    assert ref.read_bytes() == reference.read_bytes()
    assert {a["path"] for a in jobs.run_record(conn, out["run"])["artifacts"] if a["kind"] == "reference"} == {str(ref)}
    direct = results(sensitivity(q8_model, tiny_text, [(TENSOR, "q4_K"), (TENSOR, "q8_0")], tmp_path, "--source",
                                 str(tiny_model), "--reference-in", str(reference)))
    assert {(TENSOR, r["type"]): (r["nbytes"], r["kld"], r["kld_pm"]) for r in direct} == stored
    # measured on the F16 model instead, q4_K is another figure (Q8_0 is not everywhere else)
    plain = results(sensitivity(tiny_model, tiny_text, [(TENSOR, "q4_K")], tmp_path))[0]
    assert plain["kld"] < stored[TENSOR, "q4_K"][1]

    # resume after losing a point and the reference: the same baseline, the same figure
    with db.transaction(conn):
        conn.execute("DELETE FROM curve_points WHERE run_id=? AND type='q4_K'", (out["run"],))
        conn.execute("UPDATE steps SET status='pending' WHERE id=?", (sweep["id"],))
        conn.execute("UPDATE runs SET status='failed' WHERE id=?", (out["run"],))
    ref.unlink()
    jobs.resume(out["run"], progress=False, conn=conn)
    assert _points(conn, out["run"]) == stored
    assert ref.read_bytes() == reference.read_bytes()


def test_a_baseline_of_another_model_is_one_line(cli, tiny_model, tiny_text, tmp_path):
    from synthetic import TinyConfig, write_model

    args = ["--types", "q4_K", "--tensors", r"blk\.0\.ffn_down", "--text", tiny_text, "--ctx", CTX, "--chunks",
            CHUNKS, "--threads", "1"]
    wider = write_model(tmp_path / "wider.gguf", config=TinyConfig(n_ff=768))
    bad = cli("analyze", tiny_model, "--mode", "measured", "--baseline", wider, *args, check=False)
    assert bad.returncode != 0 and bad.stdout == ""
    # the first tensor that differs, in file order
    assert "is not a quantization of" in bad.stderr and "blk.0.ffn_gate.weight" in bad.stderr
    assert "256x768 there, 256x512 in the model" in bad.stderr
    deeper = write_model(tmp_path / "deeper.gguf", config=TinyConfig(n_layer=3))
    bad = cli("analyze", tiny_model, "--mode", "measured", "--baseline", deeper, *args, check=False)
    assert bad.returncode != 0 and "has a tensor the model lacks" in bad.stderr and "blk.2." in bad.stderr
    same = cli("analyze", tiny_model, "--mode", "measured", "--baseline", tiny_model, *args, check=False)
    assert same.returncode != 0 and "is the model itself" in same.stderr
    proxy = cli("analyze", tiny_model, "--baseline", wider, "--types", "q4_K", check=False)
    assert proxy.returncode != 0 and "--baseline is for --mode measured (a proxy sweep runs no model)" in proxy.stderr
    calibrated = cli("analyze", tiny_model, "--mode", "calibrated", "--baseline", wider, *args, check=False)
    assert calibrated.returncode != 0 and "--baseline is for --mode measured (a calibrated sweep" in calibrated.stderr
    # nothing was run
    from hifikit import db
    assert db.connect().execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 0
