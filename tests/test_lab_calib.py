"""`hifikit calib build`: token-count sampling, determinism, composition in the database."""
from __future__ import annotations

import json

import pytest

from hifikit import calib, db
from hifikit.errors import HifikitError


@pytest.fixture
def sources(tmp_path, tiny_text):
    math_dir = tmp_path / "math"
    math_dir.mkdir()
    for i in range(6):
        (math_dir / f"p{i}.md").write_text("\n\n".join(
            f"Lemma {i}.{j}. For all n >= {j}, the sum of the first n odd numbers equals n^2, "
            f"since (n+1)^2 - n^2 = 2n + 1 and {j} * {j} = {j * j}." for j in range(12)))
    return {"prose": tiny_text, "math": math_dir}


def test_build_by_tokens_is_deterministic(cli, tiny_model, sources, tmp_path, hifikit_home):
    def build(out, seed):
        return json.loads(cli("calib", "build", "--mix", f"prose={sources['prose']}:0.6", "--mix",
                              f"math={sources['math']}:0.15", "--tokens", 1200, "-o", out, "--seed", seed,
                              "--model", tiny_model, "--json").stdout)
    a = build(tmp_path / "a.txt", 0)
    b = build(tmp_path / "b.txt", 0)
    c = build(tmp_path / "c.txt", 7)
    assert (tmp_path / "a.txt").read_bytes() == (tmp_path / "b.txt").read_bytes()
    assert (tmp_path / "a.txt").read_bytes() != (tmp_path / "c.txt").read_bytes()
    assert b["domains"] == a["domains"] and b["tokens"] == a["tokens"] and c["seed"] == 7
    doms = {d["name"]: d for d in a["domains"]}
    assert set(doms) == {"prose", "math", "code"} and doms["code"]["source"] == "stdlib"
    assert [doms[n]["target_tokens"] for n in ("prose", "code", "math")] == [720, 300, 180]
    for d in doms.values():  # measured with the model's tokenizer, at or a little above the target
        assert d["target_tokens"] <= d["tokens"] <= d["target_tokens"] * 1.15 + 40
    rows = db.connect().execute("SELECT domain, tokens, seed FROM compositions WHERE run_id=? ORDER BY domain",
                                (a["run"],)).fetchall()
    assert [(r["domain"], r["tokens"], r["seed"]) for r in rows] == sorted(
        (n, d["tokens"], 0) for n, d in doms.items())


def test_bad_mixes():
    with pytest.raises(HifikitError, match="NAME=PATH:WEIGHT"):
        calib.parse_mix("prose")
    with pytest.raises(HifikitError, match="sum to"):
        calib.complete_mix([calib.Domain("prose", "stdlib", 0.6), calib.Domain("code", "stdlib", 0.6)])
    with pytest.raises(HifikitError, match="no such file"):
        calib.parse_mix("prose=/nonexistent/x.txt:0.5")


def test_split_pieces_merges_short_blocks():
    pieces = calib.split_pieces("a\n\nb\n\n" + "x" * 500 + "\n\n" + "y" * 10)
    assert pieces[0].startswith("a\n\nb\n\nxxx") and pieces[-1] == "y" * 10
