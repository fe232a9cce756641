"""`hifikit publish`: the model card from the runs database, and uploads to a fake Hub on 127.0.0.1.

The fake Hub (tests/fakehub.py) serves the HTTP calls huggingface_hub's whoami,
create_repo and upload_file make; it answers "regular" to preupload, so content
travels in the commit itself (no LFS or Xet storage is faked).
"""
from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from hifikit import db, gguf_io, grid, jobs, publish, report
from hifikit.errors import HifikitError
from hifikit.evaluate import BenchOptions, EvalOptions, bench, evaluate
from hifikit.quantize import QuantizeOptions, quantize
from hifikit.tables import pm
from fakehub import FakeHub

TOKEN = "hf_write_token"


@contextlib.contextmanager
def serve(tmp_path, monkeypatch, token=TOKEN):
    with FakeHub({}, tokens={TOKEN}) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
        monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
        monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        if token is None:
            monkeypatch.delenv("HF_TOKEN", raising=False)
        else:
            monkeypatch.setenv("HF_TOKEN", token)
        yield server


@pytest.fixture
def hub(tmp_path, monkeypatch):
    with serve(tmp_path, monkeypatch) as server:
        yield server


@pytest.fixture
def folder(tiny_model, tmp_path) -> Path:
    """Two small GGUF files that no run has seen."""
    d = tmp_path / "out"
    d.mkdir()
    shutil.copy(tiny_model, d / "a.gguf")
    data = bytearray(tiny_model.read_bytes())
    (d / "b.gguf").write_bytes(bytes(data))
    (d / "notes.txt").write_text("not a model\n")
    return d


def test_card_figures_are_the_databases(tiny_model, tiny_text, tmp_path, hub):
    d = tmp_path / "pub"
    d.mkdir()
    q4, q8 = d / "tiny-Q4_K_M.gguf", d / "tiny-Q8_0.gguf"
    made = quantize(QuantizeOptions(tiny_model, q4, ftype="Q4_K_M", threads=2), progress=False)
    quantize(QuantizeOptions(tiny_model, q8, ftype="Q8_0", threads=2), progress=False)
    ev = evaluate(EvalOptions(q4, tiny_text, ref=tiny_model, ctx=128, chunks=2, threads=2), progress=False)
    b = bench(BenchOptions([q4], n_prompt=16, n_gen=4, repetitions=1, threads=2), progress=False)

    res = publish.publish(publish.PublishOptions(d, "org/tiny-GGUF", dry_run=True, license="mit"), progress=False)
    assert res.dry_run and res.run_id is None and res.uploaded == []
    assert hub.requests == [] and hub.repos == {}                      # nothing went to the Hub
    assert not any(r["command"] == "publish" for r in jobs.list_runs(db.connect()))

    files = {f.name: f for f in res.files}
    assert sorted(files) == [q4.name, q8.name]
    row = next(r for r in report.rows([ev.run]) if r.model == str(q4.resolve()))
    (brow,) = report.rows([b.run])
    f = files[q4.name]
    assert f.measured and f.eval_run == ev.run_id and f.bench_run == b.run_id and f.made_by == made.run_id
    assert (f.bytes, f.bpw, f.ppl, f.kld_mean, f.kld_error, f.kld_p999, f.same_top_p) == \
        (q4.stat().st_size, row.bpw, row.ppl, row.kld_mean, row.kld_error, row.kld_p999, row.same_top_p)
    assert {t: tuple(v) for t, v in f.tps.items()} == brow.tps and f.ftype == "Q4_K_M" and not f.on_grid
    assert not files[q8.name].measured and files[q8.name].made_by is not None

    card = (d / "README.md").read_text()
    assert res.card == str((d / "README.md").resolve())
    head, body = card.split("---\n", 2)[1:]
    assert "base_model_relation" not in head and "license: mit" in head and "quantized_by: org" in head
    assert "tags:\n- gguf\n" in head
    (line,) = [ln for ln in body.splitlines() if ln.startswith(f"| `{q4.name}`")]
    for cell in (f"{f.bytes:,}", f"{row.bpw:.4f}", pm(row.kld_mean, row.kld_error, ".6f"), f"{row.kld_p999:.6f}",
                 pm(row.ppl, row.ppl_error, ".4f"), pm(row.same_top_p, row.same_top_p_error, ".3f"),
                 *[pm(*v, ".2f") for v in brow.tps.values()]):
        assert cell in line
    (line8,) = [ln for ln in body.splitlines() if ln.startswith(f"| `{q8.name}`")]
    assert f"{q8.stat().st_size:,}" in line8 and publish.NOT_MEASURED in line8
    assert f"Lowest mean KLD: `{q4.name}`" in body
    assert f"hifikit quantize {tiny_model} {q4} --type Q4_K_M --threads 2  # run {made.run_id}" in body
    assert f"hifikit eval {q4} --ref {tiny_model} --text {tiny_text} --ctx 128 --chunks 2" in body
    assert "## Build" in body and "llama.cpp" in body and "patch series" in body


def test_grid_figures_are_labelled_not_headlined(tiny_model, tiny_text, tmp_path, hub, monkeypatch):
    d = tmp_path / "pub"
    d.mkdir()
    q4 = d / "tiny-Q4_K_M.gguf"
    quantize(QuantizeOptions(tiny_model, q4, ftype="Q4_K_M", threads=2), progress=False)
    evaluate(EvalOptions(q4, tiny_text, ref=tiny_model, ctx=128, chunks=2, threads=2), progress=False)
    on_grid = grid.GridReport(str(tiny_model), 10, [grid.GridTensor("blk.0.ffn_down.weight", "q4_K", 0.0)], None, None)
    monkeypatch.setattr(publish.grid, "detect", lambda model, *a, **k: on_grid)
    res = publish.publish(publish.PublishOptions(d, "org/tiny-GGUF", dry_run=True), progress=False)
    (f,) = res.files
    assert f.on_grid and f.reference == str(tiny_model.resolve())
    card = (d / "README.md").read_text()
    assert "Lowest mean KLD" not in card
    (line,) = [ln for ln in card.splitlines() if ln.startswith(f"| `{q4.name}`")]
    assert line.count(publish.GRID_MARK) == 2
    assert f"{publish.GRID_MARK} measured against a reference whose weights sit on a published" in card


def test_publish_uploads_the_folder(cli, folder, hub):
    data = cli.json("publish", folder, "--repo-id", "org/tiny-GGUF", "--private")
    repo = hub.repos["org/tiny-GGUF"]
    assert sorted(repo) == ["README.md", "a.gguf", "b.gguf"] and hub.private["org/tiny-GGUF"]
    for name in ("a.gguf", "b.gguf", "README.md"):
        assert repo[name] == (folder / name).read_bytes()
    assert data["uploaded"] == ["a.gguf", "b.gguf", "README.md"] and not data["dry_run"]
    assert [f["measured"] for f in data["files"]] == [False, False]
    card = (folder / "README.md").read_text()
    assert card.count(publish.NOT_MEASURED) == 2 and "notes.txt" not in card
    shown = cli.json("runs", "show", data["run"])
    assert shown["command"] == "publish" and shown["status"] == "done"
    assert [s["kind"] for s in shown["steps"]] == ["publish-card", "publish-repo"] + ["publish-upload"] * 3
    # again: the repository exists (409, reused) and the Hub already has every file, so nothing is committed
    commits = list(hub.commit_log)
    again = cli.json("publish", folder, "--repo-id", "org/tiny-GGUF")
    assert again["run"] != data["run"] and hub.commit_log == commits and "POST /api/repos/create" in hub.requests


def test_refused_token_is_one_line(cli, folder, tmp_path, monkeypatch):
    with serve(tmp_path, monkeypatch, token="hf_wrong"):
        proc = cli("publish", folder, "--repo-id", "org/tiny-GGUF", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert line.startswith("hifikit: error:") and "refused the token (401)" in line
    assert not (folder / "README.md").exists() and not list(folder.glob(".*partial*"))
    assert cli.json("runs", "list") == []


def test_interrupted_upload_resumes(cli, folder, hub):
    hub.fail_commit = {"b.gguf"}
    proc = cli("publish", folder, "--repo-id", "org/tiny-GGUF", check=False)
    assert proc.returncode == 1
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.startswith("hifikit: error:")]
    assert "uploading b.gguf" in line and "hifikit runs resume" in line
    (run,) = cli.json("runs", "list")
    assert run["command"] == "publish" and run["status"] == "failed"
    assert sorted(hub.repos["org/tiny-GGUF"]) == ["a.gguf"]
    data = cli.json("runs", "resume", run["id"])
    assert sorted(hub.repos["org/tiny-GGUF"]) == ["README.md", "a.gguf", "b.gguf"]
    assert hub.repos["org/tiny-GGUF"]["b.gguf"] == (folder / "b.gguf").read_bytes()
    assert hub.commit_log == [["a.gguf"], ["b.gguf"], ["README.md"]]      # a.gguf went up once
    assert data["uploaded"] == ["a.gguf", "b.gguf", "README.md"]


def test_dry_run_uploads_nothing(cli, folder, hub):
    proc = cli("publish", folder, "--repo-id", "org/tiny-GGUF", "--dry-run")
    assert "dry run: nothing uploaded" in proc.stdout
    assert (folder / "README.md").read_text().startswith("---\n")
    assert hub.requests == [] and hub.repos == {} and cli.json("runs", "list") == []


@pytest.mark.parametrize("case", ["missing", "empty", "repo-id", "no-token"])
def test_bad_input_is_one_line(cli, folder, tmp_path, monkeypatch, case):
    empty = tmp_path / "empty"
    empty.mkdir()
    target, repo, expect = {"missing": (tmp_path / "nope", "org/x", "no such directory"),
                            "empty": (empty, "org/x", "no GGUF files to publish"),
                            "repo-id": (folder, "not a repo", "expected ORG/NAME"),
                            "no-token": (folder, "org/x", "no Hugging Face token")}[case]
    with serve(tmp_path, monkeypatch, token=None) as server:
        proc = cli("publish", target, "--repo-id", repo, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert line.startswith("hifikit: error:") and expect in line
    assert not (folder / "README.md").exists() and server.requests in ([], ["GET /api/whoami-v2"])


def test_split_decision():
    assert publish.split_decision(100, threshold=100) == (False, True)
    assert publish.split_decision(101, threshold=100, tool=None) == (True, False)
    assert publish.split_decision(101, threshold=100, tool=Path("/bin/true")) == (True, True)
    assert publish.split_decision(49 * 10**9) == (False, True) and publish.SPLIT_BYTES == 50 * 10**9


def test_files_over_the_limit_without_the_split_tool(folder, hub, monkeypatch):
    # a build without llama-gguf-split (this one ships it)
    monkeypatch.setattr(publish, "split_tool", lambda: None)
    size = (folder / "a.gguf").stat().st_size
    res = publish.publish(publish.PublishOptions(folder, "org/tiny-GGUF", split_bytes=size - 1), progress=False)
    assert res.uploaded == ["README.md"] and sorted(hub.repos["org/tiny-GGUF"]) == ["README.md"]
    assert len(res.notes) == 2 and all("cannot be uploaded yet" in n and "llama-gguf-split" in n for n in res.notes)
    assert all(not f.uploadable and f.split for f in res.files)
    assert res.notes[0] in (folder / "README.md").read_text()


def test_unknown_run_is_refused(folder):
    with pytest.raises(HifikitError, match="no run with id 99"):
        publish.publish(publish.PublishOptions(folder, "org/x", runs=[99], dry_run=True))
    assert not (folder / "README.md").exists()


def test_card_json_roundtrip(folder):
    res = publish.publish(publish.PublishOptions(folder, "org/x", dry_run=True), progress=False)
    out = json.loads(json.dumps(res.to_json()))
    assert out["run"] is None and [f["name"] for f in out["files"]] == ["a.gguf", "b.gguf"]


def test_card_names_the_strategy_and_the_imatrix(cli, tiny_model, tiny_text, tmp_path):
    from test_plan import synthetic_sweep
    from hifikit.quantize import ImatrixOptions, QuantizeVerifyOptions, imatrix, quantize_verify

    run_id = synthetic_sweep(tiny_model, seed=13)
    strategy = tmp_path / "plain.yaml"
    cli("plan", tiny_model, "--from-run", run_id, "--match", "Q4_K_M", "-o", strategy)
    im = imatrix(ImatrixOptions(tiny_model, tiny_text, tmp_path / "tiny.imatrix.gguf", ctx=128, chunks=2, threads=2),
                 progress=False)
    d = tmp_path / "pub"
    d.mkdir()
    out = d / "tiny-plan.gguf"
    v = quantize_verify(QuantizeVerifyOptions(tiny_model, out, strategy, tiny_text, imatrix=Path(im.path), ctx=128,
                                              chunks=2, threads=2), progress=False)
    res = publish.publish(publish.PublishOptions(d, "org/tiny-GGUF", dry_run=True), progress=False)
    (f,) = res.files
    assert f.made_by == f.eval_run == v.run_id and f.kld_mean == v.kld_mean and f.kld_error == v.kld_error
    assert f.strategy == str(strategy.resolve()) and Path(f.imatrix).resolve() == Path(im.path).resolve()
    card = (d / "README.md").read_text()
    assert "strategy `plain.yaml`" in card and f"made by run {im.run_id} from `{tiny_text.name}`" in card
    assert strategy.read_text().strip() in card
    assert f"hifikit quantize {tiny_model} {out.resolve()} --strategy {strategy.resolve()} --verify" in card


def test_base_model_from_the_fetch_run(cli, tiny_model, tmp_path, monkeypatch):
    with FakeHub({"org/tiny-base": {"tiny-f16.gguf": tiny_model.read_bytes()}}) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
        monkeypatch.delenv("HF_TOKEN", raising=False)
        (model,) = cli.json("fetch", "org/tiny-base")["models"]   # a subprocess: hub.download reads HF_ENDPOINT anew
    d = tmp_path / "pub"
    d.mkdir()
    quantize(QuantizeOptions(Path(model), d / "tiny-Q8_0.gguf", ftype="Q8_0", threads=2), progress=False)
    res = publish.publish(publish.PublishOptions(d, "me/tiny-GGUF", dry_run=True), progress=False)
    assert res.metadata["base_model"] == "org/tiny-base" and res.metadata["base_model_relation"] == "quantized"
    assert "license" not in res.metadata and res.metadata["quantized_by"] == "me"
    assert "base_model: org/tiny-base\nbase_model_relation: quantized\n" in (d / "README.md").read_text()


def test_library_publish_follows_hf_endpoint(folder, tmp_path, monkeypatch):
    """In one process, each publish goes to the HF_ENDPOINT of that moment (huggingface_hub reads it on import)."""
    for i in range(2):
        with serve(tmp_path / str(i), monkeypatch) as server:
            res = publish.publish(publish.PublishOptions(folder, "org/tiny-GGUF"), progress=False)
            assert res.uploaded == ["a.gguf", "b.gguf", "README.md"] and sorted(server.repos["org/tiny-GGUF"]) == \
                ["README.md", "a.gguf", "b.gguf"]


def test_files_over_the_limit_go_up_as_shards_that_merge_back(folder, hub, tmp_path):
    """A file over split_bytes is uploaded as llama-gguf-split's shards (not itself), the card names them, and
    `llama-gguf-split --merge` of what the Hub received gives back the file's tensors and metadata."""
    gguf = gguf_io.require_gguf()
    tool = publish.split_tool()
    assert tool is not None, "this build ships llama-gguf-split"
    for name in ("b.gguf", "notes.txt"):
        (folder / name).unlink()
    size = (folder / "a.gguf").stat().st_size
    limit = size // 2                    # llama-gguf-split counts in MB (10**6 bytes): the tiny model is larger
    assert limit >= 2 * 10**6
    res = publish.publish(publish.PublishOptions(folder, "org/tiny-GGUF", split_bytes=limit), progress=False)
    repo = hub.repos["org/tiny-GGUF"]
    (entry,) = res.files
    assert entry.split and entry.uploadable and len(entry.shards) >= 2
    assert sorted(repo) == sorted([*entry.shards, "README.md"]) and "a.gguf" not in repo
    assert res.uploaded == [*entry.shards, "README.md"]
    n = len(entry.shards)
    assert entry.shards == [f"a-{i:05d}-of-{n:05d}.gguf" for i in range(1, n + 1)]
    card = repo["README.md"].decode()
    assert card == (folder / "README.md").read_text()
    (line,) = [ln for ln in card.splitlines() if ln.startswith("- `a.gguf`:")]
    assert all(f"`{s}`" in line for s in entry.shards)

    got = tmp_path / "from-hub"
    got.mkdir()
    for s in entry.shards:
        (got / s).write_bytes(repo[s])
    merged = tmp_path / "merged.gguf"
    proc = subprocess.run([str(tool), "--merge", str(got / entry.shards[0]), str(merged)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    a, m = gguf.GGUFReader(folder / "a.gguf"), gguf.GGUFReader(merged)
    assert [(t.name, t.tensor_type, list(t.shape)) for t in a.tensors] == \
        [(t.name, t.tensor_type, list(t.shape)) for t in m.tensors]
    assert all(bytes(x.data.tobytes()) == bytes(y.data.tobytes()) for x, y in zip(a.tensors, m.tensors))
    # the merge keeps the split.* keys (split.count set to 0): every other key is the original's
    kv = {k: f.contents() for k, f in a.fields.items() if not k.startswith("GGUF.")}
    kv_merged = {k: f.contents() for k, f in m.fields.items() if not k.startswith(("GGUF.", "split."))}
    assert kv == kv_merged
    assert {k for k in m.fields if k.startswith("split.")} == {"split.no", "split.count", "split.tensors.count"}
