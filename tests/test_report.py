"""`hifikit report`: one well-formed, self-contained HTML file from any runs."""
from __future__ import annotations

import base64
import html.parser
import io
import re
import shutil

import pytest

from hifikit import report

CTX = 128
VOID = {"meta", "img", "br", "hr", "link", "input"}


class Checker(html.parser.HTMLParser):
    """Fails on unbalanced tags; collects <img> sources and external references."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.images: list[str] = []
        self.external: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images.append(a["src"])
        for key in ("src", "href"):
            if a.get(key) and not a[key].startswith("data:"):
                self.external.append(a[key])
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1] if self.stack else None}>"
        self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def check_html(text: str) -> Checker:
    assert text.startswith("<!DOCTYPE html>")
    c = Checker()
    c.feed(text)
    c.close()
    assert c.stack == [], f"unclosed tags {c.stack}"
    assert c.external == []
    return c


def decode_png(src: str):
    import matplotlib.image

    prefix = "data:image/png;base64,"
    assert src.startswith(prefix)
    data = base64.b64decode(src[len(prefix):], validate=True)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return matplotlib.image.imread(io.BytesIO(data), format="png")


def test_report_from_compare_and_bench_runs(cli, tiny_model, tiny_text, tmp_path):
    odd = tmp_path / "odd <b>&'name.gguf"          # escaped everywhere it appears
    shutil.copy(tiny_model, odd)
    cmp_ = cli.json("compare", "--ref", tiny_model, "--text", tiny_text, "--ctx", CTX, "--chunks", 2,
                    "--threads", 2, "--quant", "Q3_K_M", "--quant", "Q3_K_HIFI", "--out-dir", tmp_path, odd)
    quantized = [m["model"] for m in cmp_["models"] if m["role"] != "reference" and "odd" not in m["model"]]
    bench = cli.json("bench", *quantized, "-p", 16, "-n", 4, "-r", 1, "--threads", 2)
    out = tmp_path / "report.html"
    data = cli.json("report", cmp_["run"], bench["run"], "-o", out)
    assert data["report"] == str(out.resolve())
    text = out.read_text(encoding="utf-8")
    checker = check_html(text)
    body = "".join(checker.text)

    # the runs' numbers, formatted as the table prints them
    for m in cmp_["models"]:
        if m["kld_mean"] is not None:
            assert f"{m['kld_mean']:.6f} ± {m['kld_error']:.6f}" in body
        assert f"{m['ppl']:.4f} ± {m['ppl_error']:.4f}" in body
    for r in bench["rows"]:
        assert f"{r['avg_ts']:.1f} ± {r['stddev_ts']:.1f}" in body
    roles = {(m["run_id"], m["label"]): m["role"] for m in data["models"]}
    for run in (cmp_["run"], bench["run"]):                    # evaluated, and only benchmarked
        assert roles[(run, "tiny-f16-Q3_K_HIFI")] == "hifi" and roles[(run, "tiny-f16-Q3_K_M")] == "stock"
    assert roles[(cmp_["run"], "tiny-f16")] == "reference"

    # the Pareto plot and one type map per non-reference model, all decodable PNGs
    images = [decode_png(src) for src in checker.images]
    n_models = sum(1 for m in data["models"] if m["role"] != "reference")
    assert len(images) == 1 + n_models
    assert all(img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100 for img in images)

    assert "odd &lt;b&gt;&amp;&#x27;name" in text and "<b>&" not in text
    assert '"quant": [' in body and "Q3_K_HIFI" in body       # the runs' arguments
    assert "llama_cpp_commit" in body                           # versions
    assert "ggml CPU features" in body and "cores" in body      # the machine


def test_report_unknown_run_is_one_line(cli, tmp_path):
    out = tmp_path / "r.html"
    proc = cli("report", "424242", "-o", out, check=False)
    assert proc.returncode == 1
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert lines == ["hifikit: error: no run with id 424242 (see 'hifikit runs list')"]
    assert not out.exists()


def test_type_grid_of_a_quantized_model(cli, tiny_model, tmp_path):
    out = tmp_path / "q.gguf"
    cli.json("quantize", tiny_model, out, "--type", "Q3_K_HIFI", "--threads", 2)
    rows, cols, cells = report.type_grid(out)
    assert rows == ["0", "1", "other"]
    assert {"attn_q", "ffn_down"} <= set(cols) and "token_embd" in cols
    from hifikit import gguf_io
    types = {t.name: t.type for t in gguf_io.read_info(out).tensors}
    assert cells[("1", "ffn_down")] == types["blk.1.ffn_down.weight"]
    assert cells[("other", "token_embd")] == types["token_embd.weight"]
    assert not any(re.search("norm", c) for c in cols)          # 1-D tensors are not in the map


def test_tensor_types_from_the_header_match_gguf_py(tiny_model, tmp_path):
    from hifikit import gguf_io
    from hifikit.errors import HifikitError

    reader = gguf_io.open_reader(tiny_model)
    names = gguf_io.type_names()
    expected = [(t.name, [int(n) for n in t.shape], names[int(t.tensor_type)]) for t in reader.tensors]
    assert gguf_io.tensor_types(tiny_model) == expected
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny_model.read_bytes()[:4096])      # inside the vocabulary's metadata
    with pytest.raises(HifikitError, match="truncated or malformed"):
        gguf_io.tensor_types(cut)


def test_plots_leave_the_process_matplotlib_alone(tmp_path):
    """Drawing hifikit's plots neither switches the backend a notebook or GUI chose nor imports pyplot."""
    import os
    import subprocess
    import sys

    code = """if True:
        import sys
        import matplotlib
        from hifikit import report
        rows = [report.Row(1, f"m{i}", "stock", f"m{i}.gguf", 2**20 * (10 + i), 10.0 + i, 4.0, kld_mean=0.1 / (i + 1))
                for i in range(3)]
        png = report.pareto_png(rows)
        assert png.startswith(b"\\x89PNG")
        print(matplotlib.get_backend(), "matplotlib.pyplot" in sys.modules)
    """
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, env=dict(os.environ, MPLBACKEND="svg"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["svg", "False"]


def test_pareto_plot_colours_by_generation_speed_when_every_file_has_it():
    import io

    from PIL import Image

    rows = [report.Row(1, "a", "stock", "a.gguf", 100 * 2**20, 90.0, 5.0, kld_mean=0.2,
                       tps={"pp128": (900.0, 1.0), "tg32": (90.0, 1.0)}),
            report.Row(1, "b", "plan", "b.gguf", 98 * 2**20, 88.0, 4.9, kld_mean=0.05,
                       tps={"pp128": (700.0, 1.0), "tg32": (70.0, 1.0)})]
    assert report.speed_test(rows) == "tg32"
    coloured = report.pareto_png(rows)
    rows[1].tps = {}               # one file without speed: no colour scale
    plain = report.pareto_png(rows)

    def colours(png: bytes) -> int:
        return len(Image.open(io.BytesIO(png)).convert("RGB").getcolors(1 << 24))

    # the colour bar (a viridis gradient) adds hundreds of colours the plain plot does not have
    assert colours(coloured) > colours(plain) + 100
