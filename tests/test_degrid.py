"""hifikit degrid: the permuted twin computes the same function; what it cannot move exactly, it refuses."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ftype_models import ARCH_SPECS, write_model
from hifikit import degrid, gguf_io
from hifikit.errors import HifikitError


def _tensors(path: Path) -> dict[str, np.ndarray]:
    index = gguf_io.tensor_index(path)
    return {t.name: gguf_io.read_rows(path, t.offset, t.type_id, t.shape[0], 0, t.n_elements // t.shape[0])
            for t in index.tensors}


def test_degrid_preserves_the_function(cli, arch_model, tmp_path, tiny_text):
    out = tmp_path / "dg.gguf"
    res = cli.json("degrid", arch_model, out, "--seed", "5")
    assert res["seed"] == 5 and res["permuted"] > 0 and Path(res["output"]) == out.resolve()
    before, after = _tensors(arch_model), _tensors(out)
    assert before.keys() == after.keys()
    moved = 0
    for name, x in before.items():
        y = after[name]
        # values are moved, never changed: the same multiset of values per tensor
        assert np.array_equal(np.sort(x, axis=None), np.sort(y, axis=None)), name
        moved += not np.array_equal(x, y)
    assert moved == res["permuted"]
    # q/k rows stay in place (RoPE pairs): every row of attn_q is one of the original rows' permutations
    q0, q1 = before["blk.0.attn_q.weight"], after["blk.0.attn_q.weight"]
    assert np.array_equal(np.sort(q0, axis=1), np.sort(q1, axis=1))
    kld = cli.json("eval", out, "--ref", arch_model, "--text", tiny_text, "--ctx", "128", "--chunks", "2")
    record = next(r for r in kld["models"] if r["role"] != "reference")
    assert record["kld_mean"] < 1e-4
    assert record["same_top_p"] > 99.0


def test_degrid_is_deterministic_by_seed(arch_model, tmp_path):
    a, b, c = (degrid.degrid(arch_model, tmp_path / f"{n}.gguf", seed) for n, seed in (("a", 1), ("b", 1), ("c", 2)))
    assert Path(a.output).read_bytes() == Path(b.output).read_bytes()
    assert Path(a.output).read_bytes() != Path(c.output).read_bytes()
    index = gguf_io.tensor_index(a.output)
    assert index.value(degrid.KEY_SEED) == 1 and index.value(degrid.KEY_SOURCE) == arch_model.name


def test_degrid_refuses_what_it_cannot_move_exactly(cli, built, tmp_path):
    import gguf

    spec = ARCH_SPECS["llama"]
    good = write_model(tmp_path / "good.gguf", spec, sparse=False, tokenizer=True)
    # an unknown tensor: one line, exit 1, nothing written (no partial file either)
    reader = gguf.GGUFReader(good)
    odd = tmp_path / "odd.gguf"
    writer = gguf.GGUFWriter(odd, "llama")
    for name, field in reader.fields.items():
        if name.startswith("llama.") and field.types[0] != gguf.GGUFValueType.ARRAY:
            writer.add_key_value(name, field.parts[field.data[0]][0].item(), field.types[0])
    for t in reader.tensors:
        writer.add_tensor(t.name, np.asarray(t.data))
    writer.add_tensor("blk.0.ffn_gate_shexp.weight", np.zeros((64, 256), dtype=np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    out = tmp_path / "out.gguf"
    proc = cli("degrid", odd, out, check=False)
    assert proc.returncode == 1
    assert "blk.0.ffn_gate_shexp.weight: no de-grid rule" in proc.stderr and len(proc.stderr.splitlines()) == 1
    assert not out.exists() and not list(tmp_path.glob(".out*"))
    # a quantized model: dequantize first
    q = tmp_path / "q.gguf"
    cli("tool", "llama-quantize", good, q, "Q8_0")
    proc = cli("degrid", q, out, check=False)
    assert proc.returncode == 1 and "dequantize the model first" in proc.stderr and not out.exists()
    # a twin of a twin, a missing file, a non-GGUF file
    twin = tmp_path / "twin.gguf"
    degrid.degrid(good, twin)
    with pytest.raises(HifikitError, match="already a de-gridded twin"):
        degrid.degrid(twin, out)
    for bad in (tmp_path / "missing.gguf", tmp_path / "odd.txt"):
        if bad.suffix == ".txt":
            bad.write_text("not a model")
        proc = cli("degrid", bad, out, check=False)
        assert proc.returncode == 1 and proc.stderr.startswith("hifikit: error: ") and not out.exists()


def test_degrid_refuses_unsupported_architectures(built, tmp_path):
    import gguf

    path = tmp_path / "falcon.gguf"
    writer = gguf.GGUFWriter(path, "falcon")
    writer.add_embedding_length(64)
    writer.add_tensor("token_embd.weight", np.zeros((8, 64), dtype=np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(HifikitError, match="architecture 'falcon' is not supported"):
        degrid.degrid(path, tmp_path / "out.gguf")
