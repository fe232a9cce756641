"""One self-contained HTML report from runs in the database.

The report holds: the table (size, BPW, PPL, mean KLD, same-top-p, llama-bench
t/s), a KLD-vs-size Pareto plot (stock, HIFI and planned models drawn apart,
the Pareto front as a line), a per-tensor type map of every quantized model
(layer x tensor kind), the exact commands (the runs' arguments), versions
and the machine. Plots are PNGs embedded as base64; nothing is fetched.
"""
from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import html
import json
import logging
import os
import platform
import sqlite3
from pathlib import Path
from typing import Any, Iterable

from . import __version__, atomic, ggml, gguf_io, jobs
from .plots import figure, png_bytes, split_layer
from .errors import HifikitError
from .frontier import pareto_front
from .tables import pm, table

log = logging.getLogger(__name__)

ROLES = ("reference", "stock", "recipe", "hifi", "plan")
ROLE_STYLE = {  # matplotlib marker, colour
    "reference": ("*", "#444444"),
    "stock": ("o", "#1f77b4"),
    "recipe": ("^", "#9467bd"),
    "hifi": ("D", "#d62728"),
    "plan": ("s", "#2ca02c"),
}


@dataclasses.dataclass
class Row:
    run_id: int
    label: str
    role: str                       # reference | stock | recipe | hifi | plan
    model: str
    file_bytes: int | None
    size_mib: float | None          # tensor data, MiB
    bpw: float | None               # tensor data bits per weight
    ppl: float | None = None
    ppl_error: float | None = None
    kld_mean: float | None = None
    kld_error: float | None = None
    same_top_p: float | None = None
    same_top_p_error: float | None = None
    chunks: int | None = None
    ctx: int | None = None
    types: dict[str, int] = dataclasses.field(default_factory=dict)
    tps: dict[str, tuple[float, float]] = dataclasses.field(default_factory=dict)   # test -> (avg, stddev)
    kld_p999: float | None = None
    size: str | None = None          # the ftype whose size it is held to (planner/baselines.py)
    predicted: float | None = None   # the objective's prediction of its mean KLD
    note: str = ""
    kld_p99: float | None = None
    kld_max: float | None = None
    rms_dp: float | None = None      # RMS of the change in the top token's probability, %
    kld_base_mib: float | None = None   # a reference: the size of its cached logits (kld.py)
    warnings: list[str] = dataclasses.field(default_factory=list)
    step: str = ""                   # the step that measured it

    @property
    def file_mib(self) -> float | None:
        return self.file_bytes / 2**20 if self.file_bytes is not None else None


def load_runs(conn: sqlite3.Connection, run_ids: Iterable[int]) -> list[dict[str, Any]]:
    """The runs with their steps; an unknown id raises HifikitError (one line)."""
    return [jobs.get_run(conn, int(i)) for i in run_ids]


def _role(run: dict[str, Any], step: dict[str, Any], result: dict[str, Any]) -> str:
    spec = step.get("spec") or {}
    if spec.get("role") in ROLES:
        return spec["role"]
    if step["kind"] == "kld-base":
        return "reference"
    if run["command"] in ("plan", "plan-verify", "quantize-verify"):
        return "plan"
    return "hifi" if _is_hifi(result) else "stock"


def _is_hifi(result: dict[str, Any]) -> bool:
    """A HIFI ftype (general.file_type) or any tensor in a HIFI type."""
    if any("hifi" in t.lower() for t in (result.get("types") or {})):
        return True
    try:
        return "HIFI" in gguf_io.gguf.LlamaFileType(int(result["file_type"])).name
    except (KeyError, TypeError, ValueError, AttributeError):
        return False


def _file_bytes(path: str, result: dict[str, Any]) -> int | None:
    if result.get("file_bytes") is not None:
        return int(result["file_bytes"])
    try:
        return Path(path).stat().st_size
    except OSError:
        return None


def rows(runs: list[dict[str, Any]]) -> list[Row]:
    """One row per model evaluated or benchmarked in the runs, in step order: the one reader of eval,
    reference-logits and bench results, for every command's table, the report and the API's results."""
    out: list[Row] = []
    for run in runs:
        by_model: dict[str, Row] = {}
        for step in run["steps"]:
            res = step.get("result") or {}
            if step["status"] != "done" or not res:
                continue
            spec = step.get("spec") or {}
            if step["kind"] in ("kld-base", "eval"):
                model = res["model"]
                kl = res.get("kld") or {}
                ppl = res.get("ppl")
                if isinstance(ppl, dict):  # kld-base keeps the reference's whole perplexity result
                    ppl, ppl_error = ppl.get("ppl"), ppl.get("ppl_error")
                else:
                    ppl_error = res.get("ppl_error")
                row = Row(run["id"], spec.get("label") or Path(model).stem, _role(run, step, res), model,
                          _file_bytes(model, res), res.get("size_mib"), res.get("bpw"), ppl, ppl_error,
                          kl.get("kld_mean"), kl.get("kld_error"), kl.get("same_top_p"), kl.get("same_top_p_error"),
                          res.get("chunks"), res.get("ctx"), res.get("types") or {},
                          kld_p999=(kl.get("kld_percentiles") or {}).get("99.9"), size=spec.get("size"),
                          predicted=spec.get("predicted"), note=spec.get("note") or "",
                          kld_p99=(kl.get("kld_percentiles") or {}).get("99.0"), kld_max=kl.get("kld_max"),
                          rms_dp=kl.get("rms_dp"),
                          kld_base_mib=res["size"] / 2**20 if step["kind"] == "kld-base" and "size" in res else None,
                          warnings=list(res.get("warnings") or []), step=step["name"])
                by_model[model] = row
                out.append(row)
            elif step["kind"] == "bench":
                for b in res.get("rows", []):
                    path = next((m for m in spec.get("models", []) if m == b["model"] or Path(m).name ==
                                 Path(b["model"]).name), b["model"])
                    path = str(Path(path).resolve())
                    row = by_model.get(path)
                    if row is None:
                        row = _bench_only_row(run["id"], path)
                        by_model[path] = row
                        out.append(row)
                    row.tps[b["test"]] = (float(b["avg_ts"]), float(b.get("stddev_ts") or 0.0))
    return out


def _bench_only_row(run_id: int, path: str) -> Row:
    """A model that was only benchmarked: size and kind read from the file when it still exists."""
    try:
        info = gguf_io.read_info(path)
    except HifikitError:
        return Row(run_id, Path(path).stem, "stock", path, None, None, None)
    facts = {"types": info.types, "file_type": info.file_type}
    return Row(run_id, Path(path).stem, "hifi" if _is_hifi(facts) else "stock", path, info.size, info.size_mib,
               info.bits_per_weight, types=info.types)


def bench_tests(records: list[Row]) -> list[str]:
    tests = {t for r in records for t in r.tps}
    return sorted(tests, key=lambda t: (not t.startswith("pp"), t))


def table_cells(records: list[Row]) -> tuple[list[str], list[list[str]]]:
    """Headers and formatted cells, shared by the terminal table and the HTML one."""
    tests = bench_tests(records)
    headers = ["model", "kind", "bytes", "MiB", "BPW", "PPL", "mean KLD", "same top p %",
               *[f"{t} t/s" for t in tests]]
    cells = []
    for r in records:
        cells.append([r.label, r.role, "" if r.file_bytes is None else f"{r.file_bytes:,}",
                      "" if r.file_mib is None else f"{r.file_mib:.2f}", "" if r.bpw is None else f"{r.bpw:.3f}",
                      pm(r.ppl, r.ppl_error, ".4f"), pm(r.kld_mean, r.kld_error, ".6f"),
                      pm(r.same_top_p, r.same_top_p_error, ".2f"),
                      *[pm(*r.tps[t], ".1f") if t in r.tps else "" for t in tests]])
    return headers, cells


def format_table(records: list[Row]) -> str:
    headers, cells = table_cells(records)
    return table(headers, cells, right=[False, False] + [True] * (len(headers) - 2))


# --- plots -----------------------------------------------------------------------------------------


def speed_test(records: list[Row]) -> str | None:
    """The llama-bench test that colours the plot: generation if measured (what a reader waits on), else prompt."""
    tests = bench_tests(records)
    gen = [t for t in tests if t.startswith("tg")]
    return (gen or tests or [None])[0]


def pareto_png(records: list[Row]) -> bytes | None:
    """KLD against size; marker = role, colour = llama-bench t/s of the speed test when every file has it."""
    pts = [r for r in records if r.kld_mean is not None and r.file_mib is not None]
    if not pts:
        return None
    fig = figure(figsize=(7.5, 4.5))
    ax = fig.subplots()
    test = speed_test(pts)
    timed = test is not None and all(test in r.tps for r in pts)
    if timed:
        import matplotlib.colors as mcolors

        speeds = [r.tps[test][0] for r in pts]
        norm = mcolors.Normalize(min(speeds), max(speeds))
    for role in ROLES:
        mine = [r for r in pts if r.role == role]
        if not mine:
            continue
        marker, colour = ROLE_STYLE[role]
        style = {"c": [r.tps[test][0] for r in mine], "cmap": "viridis", "norm": norm, "edgecolors": colour} \
            if timed else {"color": colour}
        mappable = ax.scatter([r.file_mib for r in mine], [r.kld_mean for r in mine], marker=marker, s=50,
                              label=role, zorder=3, **style)
    if timed:
        fig.colorbar(mappable, ax=ax, label=f"{test} t/s (llama-bench)")
    labels: dict[tuple[float, float], list[str]] = {}   # identical models share one label
    for r in pts:
        labels.setdefault((r.file_mib, r.kld_mean), []).append(r.label)
    for (x, y), names in labels.items():
        ax.annotate(" = ".join(names), (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    xs, ys = [r.file_mib for r in pts], [r.kld_mean for r in pts]
    front = [(xs[i], ys[i]) for i in pareto_front(xs, ys)]
    ax.step([x for x, _ in front], [y for _, y in front], where="post", color="#888888", linestyle="--",
            linewidth=1, label="Pareto front", zorder=2)
    if all(r.kld_mean > 0 for r in pts):
        ax.set_yscale("log")
    ax.set_xlabel("file size (MiB)")
    ax.set_ylabel("mean KLD against the reference")
    ax.set_title("KL divergence vs size (lower left is better)" + (f"; colour: {test} speed" if timed else ""))
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return png_bytes(fig)


def type_grid(model: str | Path) -> tuple[list[str], list[str], dict[tuple[str, str], str]]:
    """(row labels, column labels, (row, column) -> type) of a GGUF's matrices (tensors with 2+ dims)."""
    cells: dict[tuple[str, str], str] = {}
    layers: set[int] = set()
    kinds: list[str] = []
    other: list[str] = []
    for name, shape, typ in gguf_io.tensor_types(model):
        if len([n for n in shape if n > 1]) < 2:
            continue
        layer, kind = split_layer(name)
        if layer is not None:
            layers.add(layer)
            if kind not in kinds:
                kinds.append(kind)
            cells[(str(layer), kind)] = typ
        else:
            other.append(kind)
            cells[("other", kind)] = typ
    row_labels = [str(i) for i in sorted(layers)] + (["other"] if other else [])
    return row_labels, kinds + [k for k in other if k not in kinds], cells


def type_map_png(model: str | Path, title: str, all_types: list[str] | None = None) -> bytes:
    """The grid as a picture; all_types fixes the colours so that maps of one report agree."""
    import matplotlib
    import matplotlib.colors as mcolors
    import numpy as np

    row_labels, col_labels, cells = type_grid(model)
    types = all_types or sorted(set(cells.values()))
    index = {t: i for i, t in enumerate(types)}
    grid = np.full((len(row_labels), len(col_labels)), np.nan)
    for (r, c), t in cells.items():
        grid[row_labels.index(r), col_labels.index(c)] = index[t]
    palette = matplotlib.colormaps["tab20"].colors
    cmap = mcolors.ListedColormap([palette[i % len(palette)] for i in range(len(types))])
    cmap.set_bad("#f4f4f4")
    fig = figure(figsize=(1.0 + 0.75 * len(col_labels), 1.2 + 0.3 * len(row_labels)))
    ax = fig.subplots()
    ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=-0.5, vmax=len(types) - 0.5, aspect="auto",
              interpolation="nearest")
    for (r, c), t in cells.items():
        ax.text(col_labels.index(c), row_labels.index(r), t, ha="center", va="center", fontsize=6)
    ax.set_xticks(range(len(col_labels)), col_labels, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(row_labels)), row_labels, fontsize=7)
    ax.set_ylabel("layer")
    ax.set_title(title, fontsize=9)
    return png_bytes(fig)


# --- machine ---------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """This machine: CPU model, cores, memory, OS, Python and the ggml CPU features in use."""
    cpu = platform.processor() or platform.machine()
    mem = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
                break
    except OSError:
        pass
    try:
        features = sorted(k for k, v in ggml.cpu_features().items() if v)
    except HifikitError as exc:
        features = [f"unavailable: {exc}"]
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_bytes": mem, "os": platform.platform(),
            "python": platform.python_version(), "ggml_cpu_features": features}


# --- HTML ------------------------------------------------------------------------------------------

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 80em; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #f0f0f0; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
img { max-width: 100%; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def _html_table(headers: list[str], cells: list[list[str]], numeric_from: int = 2) -> str:
    out = ["<table>", "<tr>" + "".join(f"<th>{_e(h)}</th>" for h in headers) + "</tr>"]
    for row in cells:
        out.append("<tr>" + "".join(f'<td class="num">{_e(c)}</td>' if i >= numeric_from else f"<td>{_e(c)}</td>"
                                    for i, c in enumerate(row)) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _command_line(run: dict[str, Any]) -> str:
    return f"hifikit {run['command']}  # run {run['id']}, {run['status']}"


def render_html(runs: list[dict[str, Any]], records: list[Row], title: str = "hifikit report") -> str:
    parts = [f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{_e(title)}</title>\n"
             f"<style>{CSS}</style>\n</head>\n<body>", f"<h1>{_e(title)}</h1>",
             f"<p>runs {_e(', '.join(str(r['id']) for r in runs))}; made by hifikit {_e(__version__)} on "
             f"{_e(dt.datetime.now().strftime('%Y-%m-%d %H:%M'))}</p>"]
    parts.append("<h2>Results</h2>")
    if records:
        headers, cells = table_cells(records)
        parts.append(_html_table(headers, cells))
        evals = [r for r in records if r.chunks]
        if evals:
            parts.append(f"<p>KLD against the reference over {_e(evals[0].chunks)} chunks × {_e(evals[0].ctx)} "
                         f"tokens; MiB and bytes are the whole file, BPW counts tensor data only; "
                         f"t/s from llama-bench (mean ± stddev).</p>")
    else:
        parts.append("<p>These runs evaluated no model.</p>")
    pareto = pareto_png(records)
    if pareto:
        parts += ["<h2>KL divergence vs size</h2>", _img(pareto, "KLD vs size Pareto plot")]
    maps = []
    all_types = sorted({t for r in records if r.role != "reference" for t in r.types})
    for r in records:
        if r.role == "reference":
            continue
        try:
            maps.append((r, type_map_png(r.model, f"{r.label}: tensor types (layer × tensor)",
                                         all_types if set(r.types) <= set(all_types) else None)))
        except HifikitError as exc:
            maps.append((r, None))
            log.warning("type map of %s skipped: %s", r.model, exc)
    if maps:
        parts.append("<h2>Tensor types</h2>")
        for r, png in maps:
            parts.append(f"<h3>{_e(r.label)} <small>{_e(Path(r.model).name)}</small></h3>")
            parts.append(_img(png, f"tensor type map of {r.label}") if png else
                         f"<p>{_e(r.model)} is no longer readable; no type map.</p>")
    parts.append("<h2>Commands</h2>")
    for run in runs:
        parts.append(f"<h3>run {_e(run['id'])}: {_e(run['command'])}</h3>")
        parts.append(f"<pre>{_e(_command_line(run))}\n{_e(json.dumps(run['args'], indent=2, default=str))}</pre>")
        steps = [[s["idx"], s["name"], s["kind"], s["status"],
                  f"{s['finished'] - s['started']:.1f}" if s.get("finished") and s.get("started") else ""]
                 for s in run["steps"]]
        parts.append(_html_table(["#", "step", "kind", "status", "seconds"], steps, numeric_from=4))
    parts.append("<h2>Versions</h2>")
    for run in runs:
        parts.append(f"<h3>run {_e(run['id'])}</h3><pre>{_e(json.dumps(run['versions'], indent=2, default=str))}</pre>")
    m = machine()
    parts.append("<h2>Machine</h2><p>(the machine that made this report)</p>")
    parts.append(_html_table(["", ""], [
        ["CPU", m["cpu"]], ["cores", m["cores"]],
        ["memory", f"{m['memory_bytes'] / 2**30:.1f} GiB" if m["memory_bytes"] else "unknown"],
        ["OS", m["os"]], ["Python", m["python"]], ["ggml CPU features", " ".join(m["ggml_cpu_features"])]],
        numeric_from=99))
    parts.append("</body>\n</html>\n")
    return "\n".join(parts)


@dataclasses.dataclass
class ReportResult:
    path: str                   # the HTML file written
    run_ids: list[int]
    rows: list[Row]


def write(conn: sqlite3.Connection, run_ids: Iterable[int], output: Path, title: str = "hifikit report"
          ) -> ReportResult:
    """One self-contained HTML report of the runs (`hifikit report`), written atomically."""
    runs = load_runs(conn, run_ids)
    output = Path(output)
    atomic.check_writable(output)
    records = rows(runs)
    atomic.write_text(output, render_html(runs, records, title))
    return ReportResult(str(output.resolve()), [r["id"] for r in runs], records)
