"""What a plan is compared against: the files users publish at the same size.

For each size (an ftype's exact file size) the contenders are:

- ``stock``: the ftype itself, with and without an importance matrix;
- ``recipe``: the best simple recipes (recipes.py): every ``--pure`` type x
  embedding (x output) type that fits, ranked by the objective, the best ``top``
  quantized and measured (the table says how many of how many);
- ``plan``: the planner's strategy at that size (plan.py), from a sweep run;
- ``hifi``: the build's HIFI ftypes of no more bytes.

``steps`` turns them into one job (a quantize and an eval step each, after one
reference-logits step), so the whole comparison is one resumable run whose rows
the report and ``hifikit compare`` print. Every file is made from the same
reference, so KLD, size and speed come from the same files.
``compare_baselines(BaselinesOptions(...)) -> BaselinesResult`` is that job (a
run named ``compare``, its args holding ``baselines``).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import re
import sqlite3
from pathlib import Path
from typing import Any, Sequence

from .. import atomic, db, gguf_io, jobs, kld, report
from ..errors import HifikitError
from ..quant_rules import check_imatrix, quant_options, resolve_type
from ..sweep import curves, knee, objective
from ..sweep.agreement import rank_correlation
from . import filesize, recipes
from . import plan as planner
from . import strategy as strat

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Contender:
    label: str
    role: str                     # stock | recipe | plan | hifi
    size: str                     # the ftype whose file size it is held to
    imatrix: str | None
    bytes: int                    # exact file size (the file size model; checked when written)
    predicted: float | None       # the objective's sum, where the sweep prices every type
    quantize: dict                # the quantize step's spec
    note: str = ""                # e.g. "rank 1 of 38 recipes that fit"

    @property
    def tag(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.]+", "-", self.label).strip("-")


@dataclasses.dataclass
class Sweeps:
    """The sweep runs that price types (and make plans): without and with the importance matrix."""
    plain: int | None
    imatrix: int | None = None
    mode: str | None = None

    def run(self, with_imatrix: bool) -> int | None:
        return self.imatrix if with_imatrix else self.plain


def _spec(model: Path, out: Path, ftype: str, imatrix: Path | None, threads: int | None, **extra) -> dict:
    spec = {"input": str(model), "output": str(out.resolve()), "ftype": ftype, "threads": threads, **extra}
    if imatrix:
        spec["imatrix"] = str(imatrix.resolve())
    return spec


def contenders(conn, model: Path, sizes: Sequence[str], sweeps: Sweeps, out_dir: Path, *,
               imatrix: Path | None = None, top: int = 2, hifi: Sequence[str] = (), threads: int | None = None
               ) -> list[Contender]:
    """Every file of the comparison, in table order (size by size, without then with the imatrix)."""
    layout = filesize.FileLayout.read(model)
    ikeys = filesize.ImatrixKeys.from_file(imatrix, str(imatrix.resolve())) if imatrix else None
    out: list[Contender] = []
    for size in sizes:
        for im, keys in [(None, None)] + ([(imatrix, ikeys)] if imatrix else []):
            suffix = "+imatrix" if im else ""
            stem = f"{model.stem}-{size}{suffix}"
            budget = planner.ftype_file_size(conn, model, layout, size, im, keys)
            run_id = sweeps.run(im is not None)
            sweep = curves.load_sweep(conn, run_id, sweeps.mode) if run_id is not None else None
            errors = objective.errors_by_tensor(sweep) if sweep is not None else None
            predicted = objective.predict(planner.cached_dry_run(conn, model, size, im), errors)[0] \
                if errors is not None else None
            out.append(Contender(f"{size}{suffix}", "stock", size, str(im) if im else None, budget, predicted,
                                 _spec(model, out_dir / f"{stem}.gguf", size, im, threads)))
            if sweep is None:
                continue
            cands, considered = recipes.search(
                layout, budget, errors, lambda f: planner.cached_dry_run(conn, model, f, im, ["--pure"]), keys)
            for rank, c in enumerate(cands[:top]):
                out.append(Contender(f"{c.recipe.label}{suffix} @{size}", "recipe", size, str(im) if im else None,
                                     c.bytes, c.predicted,
                                     _spec(model, out_dir / f"{stem}-recipe{rank}.gguf", c.recipe.ftype, im, threads,
                                           extra=c.recipe.args(), expect_bytes=c.bytes, predicted_error=c.predicted),
                                     f"rank {rank + 1} of {len(cands)} recipes that fit ({considered} enumerated)"))
            p = planner.make_plan(sweep, model, layout, planner.Target("match", size), budget,
                                  planner.cached_dry_run(conn, model, "Q8_0", im), "Q8_0", im, keys,
                                  knees=knee.knee_type)
            path = out_dir / f"{model.stem}-plan@{size}{suffix}.yaml"
            strat.write(p, path)
            q = strat.quantize_step(model, out_dir / f"{model.stem}-plan@{size}{suffix}.gguf", strat.load(path),
                                    layout, threads, p.predicted_bytes, p.predicted_error).spec
            out.append(Contender(f"plan@{size}{suffix}", "plan", size, str(im) if im else None, p.predicted_bytes,
                                 p.predicted_error, q, f"strategy {path.name}, {sweep.mode} curves of run {run_id}"))
    largest = max((c.bytes for c in out if c.role == "stock"), default=0)
    plain = objective.errors_by_tensor(curves.load_sweep(conn, sweeps.plain, sweeps.mode)) \
        if sweeps.plain is not None else None
    for ftype in hifi:
        size = planner.ftype_file_size(conn, model, layout, ftype, None, None)
        if size > largest:
            log.info("%s: %d bytes, above every size compared; left out", ftype, size)
            continue
        predicted = objective.predict(planner.cached_dry_run(conn, model, ftype), plain)[0] if plain else None
        out.append(Contender(ftype, "hifi", ftype, None, size, predicted,
                             _spec(model, out_dir / f"{model.stem}-{ftype}.gguf", ftype, None, threads)))
    return out


def steps(model: Path, items: Sequence[Contender], text: Path, ctx: int, chunks: int, threads: int | None,
          bench: dict | None = None) -> list[jobs.StepSpec]:
    """One job: reference logits, then quantize + eval per contender, then llama-bench of every file."""
    base = {"text": str(text.resolve()), "ctx": ctx, "chunks": chunks, "threads": threads}
    out = [jobs.StepSpec("reference-logits", "kld-base", {"ref": str(model), **base, "label": model.stem,
                                                          "role": "reference"})]
    evals: dict[str, dict] = {}          # the same file at several sizes (a recipe that fits both): made once
    files: list[str] = []
    for c in items:
        key = json.dumps({k: v for k, v in c.quantize.items() if k != "output"}, sort_keys=True, default=str)
        if key in evals:
            evals[key]["also"].append({"size": c.size, "label": c.label, "note": c.note})
            continue
        spec = {"model": c.quantize["output"], "ref": str(model), **base, "label": c.label, "role": c.role,
                "size": c.size, "predicted": c.predicted, "note": c.note, "also": []}
        evals[key] = spec
        files.append(c.quantize["output"])
        out.append(jobs.StepSpec(f"quantize-{c.tag}", "quantize", c.quantize))
        out.append(jobs.StepSpec(f"eval-{c.tag}", "eval", spec))
    if bench is not None:
        out.append(jobs.StepSpec("bench", "bench", {"models": files, **bench, "threads": threads}))
    return out


def summary(run: dict) -> dict:
    """The comparison's rows (report.Row as dicts) grouped by size, with speed as ratios to the stock
    file of the same size and the additivity of the objective over the files it prices."""
    records = [r for r in report.rows([run]) if r.role != "reference"]
    also = {s["spec"]["model"]: s["spec"].get("also") or [] for s in run["steps"] if s["kind"] == "eval"}
    # a file measured once and listed at every size it fits
    records += [dataclasses.replace(r, size=a["size"], label=a["label"], note=a["note"])
                for r in list(records) for a in also.get(r.model, [])]
    order = {s: i for i, s in enumerate(dict.fromkeys(r.size for r in records))}
    ranks = {"stock": 0, "recipe": 1, "plan": 2, "hifi": 3}
    records.sort(key=lambda r: (order[r.size], "+imatrix" in r.label, ranks.get(r.role, 4)))
    stock = {r.size: r for r in records if r.role == "stock" and r.size and r.label == r.size}
    groups: dict[str, list[dict]] = {}
    for r in records:
        rec = dataclasses.asdict(r)
        base = stock.get(r.size)
        rec["bytes_ratio"] = (r.file_bytes / base.file_bytes) if base and base.file_bytes and r.file_bytes else None
        rec["kld_ratio"] = (r.kld_mean / base.kld_mean) if base and base.kld_mean and r.kld_mean else None
        rec["speed_ratio"] = {t: r.tps[t][0] / base.tps[t][0] for t in r.tps if base and t in base.tps} or None
        groups.setdefault(r.size or r.label, []).append(rec)
    priced = [r for r in records if r.predicted and r.kld_mean]
    ratios = [r.kld_mean / r.predicted for r in priced]
    additivity = {"files": len(priced),
                  "median_ratio": float(sorted(ratios)[len(ratios) // 2]) if ratios else None,
                  "min_ratio": min(ratios) if ratios else None, "max_ratio": max(ratios) if ratios else None,
                  "spearman": rank_correlation([r.predicted for r in priced], [r.kld_mean for r in priced])}
    return {"groups": groups, "additivity": additivity}


HIFI_FTYPES = ("Q3_K_HIFI", "Q4_K_HIFI", "Q4_K_XM", "Q4_K_HIFI_L")
BENCH = {"p": 128, "n": 32, "r": 3}     # llama-bench of every file (--bench): pp128 / tg32, 3 repetitions


@dataclasses.dataclass
class BaselinesOptions:
    ref: Path                          # the model every file is made from and measured against
    sizes: Sequence[str]               # ftypes whose exact file sizes the files are held to
    text: Path
    from_run: int | None = None        # the sweep run without an imatrix (default: the latest of ref)
    imatrix: Path | None = None        # also every size with this importance matrix
    imatrix_run: int | None = None     # the sweep run made with that imatrix (prices and plans those files)
    mode: str | None = None            # which curves of the runs (default as for the planner)
    top: int = 2                       # simple recipes measured per size
    hifi: bool = False                 # also the build's HIFI ftypes of no more bytes
    bench: bool = False                # llama-bench every file in the same run
    out_dir: Path | None = None        # default: next to ref
    ctx: int = 512
    chunks: int | None = None
    threads: int | None = None


@dataclasses.dataclass
class BaselinesResult:
    run_id: int
    groups: dict[str, list[dict[str, Any]]]   # size -> its files (report.Row fields + ratios to the stock file)
    additivity: dict[str, Any]                # the objective's predictions against the measured mean KLD
    text: str
    ctx: int
    chunks: int
    run: dict[str, Any]

    @classmethod
    def from_run(cls, run: dict[str, Any]) -> "BaselinesResult":
        s = summary(run)
        a = run["args"]
        return cls(run["id"], s["groups"], s["additivity"], a.get("text"), a.get("ctx"), a.get("chunks"), run)


def compare_baselines(opts: BaselinesOptions, *, conn: sqlite3.Connection | None = None,
                      progress: bool | None = None) -> BaselinesResult:
    """Stock files (with and without the imatrix), the best simple recipes and the plan at each size, and
    with hifi the HIFI ftypes, quantized from one reference and measured against it: one tracked run."""
    ref = gguf_io.check_model(opts.ref)
    if opts.imatrix_run is not None and opts.imatrix is None:
        raise HifikitError("--imatrix-run needs --imatrix F (the importance matrix that run was made with)")
    jobs.check_positive(ctx=opts.ctx, chunks=opts.chunks, top=opts.top)
    check_imatrix(opts.imatrix)
    sizes = [resolve_type(s.strip()) for s in opts.sizes if s.strip()]
    conn = conn or db.connect()
    sweeps = Sweeps(opts.from_run if opts.from_run is not None else planner.find_sweep_run(conn, ref),
                    opts.imatrix_run, opts.mode)
    out_dir = Path(opts.out_dir or ref.parent).resolve()
    hifi = [f for f in HIFI_FTYPES if f in quant_options()] if opts.hifi else []
    items = contenders(conn, ref, sizes, sweeps, out_dir, imatrix=opts.imatrix, top=opts.top, hifi=hifi,
                       threads=opts.threads)
    for c in items:
        atomic.check_writable(Path(c.quantize["output"]))
    chunks = kld.check_text(ref, opts.text, opts.ctx, opts.chunks)
    run = jobs.start("compare", {"ref": str(ref), "baselines": sizes, "sweeps": dataclasses.asdict(sweeps),
                                 "imatrix": str(opts.imatrix) if opts.imatrix else None, "top": opts.top,
                                 "text": str(opts.text), "ctx": opts.ctx, "chunks": chunks},
                     steps(ref, items, Path(opts.text), opts.ctx, chunks, opts.threads, BENCH if opts.bench else None),
                     progress=progress, conn=conn)
    return BaselinesResult.from_run(run)
