"""Files that stay safe: the HIFI type ids sit far above upstream's, every file with HIFI tensors carries
hifi.format_version, and this build (its model loader) and `hifikit inspect` refuse a version they do not
know, a HIFI tensor without the key and a type id in the free range (docs/hifi-types.md).

The files are a tiny synthetic model quantized by this build's llama-quantize, then edited in place with
the bundled gguf-py (GGUFReader in r+ mode), the way gguf-py's gguf_set_metadata.py edits a value.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import ftype_models as fm
from hifikit import gguf_io, paths
from hifikit.errors import HifikitError

KEY = gguf_io.HIFI_FORMAT_KEY
TINY = fm.ModelSpec(n_layer=2, n_embd=256, n_ff=512, n_head=4, n_head_kv=2)
HIFI_IDS = {"q3_K_hifi": 128, "q4_K_hifi": 129, "q5_K_hifi": 130, "q6_K_hifi": 131}


def run(tool: str, *args, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([str(paths.binary(tool)), *map(str, args)], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=timeout)


def quantize(src: Path, out: Path, ftype: str, *options: str) -> Path:
    proc = run("llama-quantize", *options, src, out, ftype, "1")
    assert proc.returncode == 0, proc.stdout[-3000:]
    return out


@pytest.fixture(scope="module")
def tiny(built, tmp_path_factory) -> Path:
    return fm.write_model(tmp_path_factory.mktemp("hifi-format") / "tiny-f16.gguf", TINY, sparse=False,
                          tokenizer=True, seed=5)


@pytest.fixture(scope="module")
def hifi_file(tiny) -> Path:
    """--pure Q4_K_HIFI: every matrix q4_K_hifi."""
    return quantize(tiny, tiny.with_name("tiny-Q4_K_HIFI.gguf"), "Q4_K_HIFI", "--pure")


@pytest.fixture(scope="module")
def text(tiny) -> Path:
    path = tiny.with_name("text.txt")
    words = "the quick brown fox jumps over the lazy dog while a small model reads this text".split()
    rng = np.random.default_rng(0)
    path.write_text(" ".join(rng.choice(words, 1200)) + "\n")
    return path


def edited(src: Path, dst: Path, edit) -> Path:
    """A copy of src with edit(reader) applied to its bytes in place."""
    shutil.copyfile(src, dst)
    reader = gguf_io.require_gguf().GGUFReader(dst, "r+")
    edit(reader)
    reader.data.flush()
    del reader
    return dst


def set_version(version: int):
    def edit(reader) -> None:
        field = reader.fields[KEY]
        field.parts[field.data[0]][0] = version
    return edit


def rename_key(reader) -> None:
    """hifi.format_version -> hifi.format_versioX (same length): the file has no key any more."""
    field = reader.fields[KEY]
    name = field.parts[1]
    assert bytes(name) == KEY.encode()
    name[-1] = ord("X")


def key_as_i32(reader) -> None:
    field = reader.fields[KEY]
    field.parts[2][0] = 5  # GGUF_TYPE_INT32: same size as the u32


def first_matrix_type(type_id: int):
    def edit(reader) -> None:
        t = next(t for t in reader.tensors if t.name == "blk.0.attn_q.weight")
        t.field.parts[t.field.data[2]][0] = type_id
    return edit


def perplexity(model: Path, text: Path) -> subprocess.CompletedProcess:
    return run("llama-perplexity", "-m", model, "-f", text, "-c", "128", "--chunks", "1", "-t", "2", "-b", "128")


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 1, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("hifikit: error:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


# ---------------------------------------------------------------- the ids and the key a HIFI file carries

def test_hifi_ids_are_far_above_upstream(ggml_lib_types):
    assert {name: ggml_lib_types[name] for name in HIFI_IDS} == HIFI_IDS
    # every other type is upstream's, the last one Q2_0 = 42 at the pin: 43..127 are free
    others = [i for name, i in ggml_lib_types.items() if name not in HIFI_IDS]
    assert max(others) == ggml_lib_types["q2_0"] == 42


@pytest.fixture(scope="module")
def ggml_lib_types(built) -> dict[str, int]:
    from hifikit import ggml
    return {t.name: t.id for t in ggml.load().types()}


def test_free_ids_are_refused_by_the_ctypes_table(built):
    from hifikit import ggml
    lib = ggml.load()
    for type_id in (43, 100, 127, 4, 31):
        for call in (lambda: lib.type_name(type_id), lambda: lib.validate(type_id, bytes(64)),
                     lambda: lib.dequantize(type_id, bytes(64), 256)):
            with pytest.raises(HifikitError, match=f"ggml type id {type_id} is not a type of this build"):
                call()
    assert lib.type_name(129) == "q4_K_hifi"


def test_quantize_writes_the_format_version(hifi_file):
    reader = gguf_io.require_gguf().GGUFReader(hifi_file)
    field = reader.fields[KEY]
    assert [int(t) for t in field.types] == [4]  # u32
    assert field.contents() == gguf_io.HIFI_FORMAT_VERSION == 1
    assert {int(t.tensor_type) for t in reader.tensors if t.name.endswith("attn_q.weight")} == {129}
    assert gguf_io.read_info(hifi_file).hifi_format == 1


def test_stock_types_have_no_key_and_requantizing_drops_it(tiny, hifi_file, tmp_path):
    stock = quantize(tiny, tmp_path / "q4_K_M.gguf", "Q4_K_M")
    assert KEY not in gguf_io.tensor_index(stock).keys
    assert gguf_io.read_info(stock).hifi_format is None
    # the key is copied with the input's metadata, and removed when no HIFI tensor is left
    requant = quantize(hifi_file, tmp_path / "requant.gguf", "Q4_K_M", "--allow-requantize")
    index = gguf_io.tensor_index(requant)
    assert KEY not in index.keys and not set(HIFI_IDS.values()) & {t.type_id for t in index.tensors}


def test_hifi_file_loads(hifi_file, text, cli):
    proc = perplexity(hifi_file, text)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "[1]" in proc.stdout
    out = cli("inspect", hifi_file)
    assert "HIFI format 1: needs hifikit or a HIFI-enabled llama.cpp" in out.stdout
    assert cli.json("inspect", hifi_file)["hifi_format"] == 1


# ---------------------------------------------------------------- refused: the build and hifikit inspect

LOADER = "llama_model_load: error loading model: "


def test_unknown_version_is_refused(hifi_file, text, tmp_path, cli):
    bad = edited(hifi_file, tmp_path / "v2.gguf", set_version(2))
    assert gguf_io.require_gguf().GGUFReader(bad).fields[KEY].contents() == 2
    expected = f"{bad}: HIFI format version 2 is unknown to this build, which reads version 1"
    # llama-tokenize is left out: at the pin it can lose its log at exit (the async common log)
    for prefix, proc in ((LOADER, perplexity(bad, text)),
                         (LOADER, run("llama-bench", "-v", "-m", bad, "-p", "8", "-n", "0", "-r", "1", "-t", "1")),
                         ("llama_model_quantize: failed to quantize: ",
                          run("llama-quantize", bad, tmp_path / "o.gguf", "Q4_K_M", "1"))):
        assert proc.returncode != 0
        assert prefix + expected in proc.stdout, proc.stdout[-3000:]
    assert not (tmp_path / "o.gguf").exists()
    err = one_line_error(cli("inspect", bad, check=False))
    assert err == (f"hifikit: error: {bad}: HIFI format version 2 is unknown to this hifikit, which reads version 1: "
                   "the file needs a hifikit (HIFI-enabled llama.cpp) that knows that version")
    one_line_error(cli("inspect", bad, "--json", check=False))


def test_hifi_tensors_without_the_key_are_refused(hifi_file, text, tmp_path, cli):
    bad = edited(hifi_file, tmp_path / "nokey.gguf", rename_key)
    assert KEY not in gguf_io.require_gguf().GGUFReader(bad).fields
    proc = perplexity(bad, text)
    assert proc.returncode != 0
    assert re.search(f"{re.escape(LOADER + str(bad))}: tensor '[^']+' has the HIFI type q4_K_hifi \\(id 129\\) "
                     f"but the file has no {KEY} key", proc.stdout), proc.stdout[-3000:]
    err = one_line_error(cli("inspect", bad, check=False))
    assert f"has the HIFI type q4_K_hifi (id 129) but the file has no {KEY} key" in err
    assert "refusing to read it as HIFI" in err


def test_a_key_that_is_not_u32_is_refused(hifi_file, text, tmp_path, cli):
    bad = edited(hifi_file, tmp_path / "i32.gguf", key_as_i32)
    proc = perplexity(bad, text)
    assert proc.returncode != 0
    assert f"{LOADER}{bad}: {KEY} has type i32, expected u32" in proc.stdout, proc.stdout[-3000:]
    assert f"{KEY} is a i32, expected a u32" in one_line_error(cli("inspect", bad, check=False))


@pytest.mark.parametrize("type_id", [43, 46, 127])
def test_a_type_id_in_the_free_range_is_refused(hifi_file, text, tmp_path, cli, type_id):
    """A later upstream type (or a HIFI file of the old ids 43..46) is not read as anything."""
    bad = edited(hifi_file, tmp_path / f"type{type_id}.gguf", first_matrix_type(type_id))
    proc = perplexity(bad, text)
    assert proc.returncode != 0
    assert f"tensor 'blk.0.attn_q.weight' has ggml type {type_id}, which is not a type of this build" \
        in proc.stdout, proc.stdout[-3000:]
    err = one_line_error(cli("inspect", bad, check=False))
    assert re.search(rf"\b{type_id}\)? is not a valid GGMLQuantizationType", err)
    assert "this hifikit does not know" in err
    with pytest.raises(HifikitError, match=f"type id {type_id}, which this hifikit does not know"):
        gguf_io.tensor_index(bad)
