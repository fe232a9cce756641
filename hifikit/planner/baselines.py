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
"""
from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path
from typing import Sequence

from ..sweep import curves, knee, objective
from . import filesize, recipes
from .. import jobs
from ..sweep.agreement import rank_correlation
from . import plan as planner
from . import strategy as strat
from ..quantize import strategy_step

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
            q = strategy_step(model, out_dir / f"{model.stem}-plan@{size}{suffix}.gguf", strat.load(path), layout,
                              threads, p.predicted_bytes, p.predicted_error).spec
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
    for c in items:
        out.append(jobs.StepSpec(f"quantize-{c.tag}", "quantize", c.quantize))
        out.append(jobs.StepSpec(f"eval-{c.tag}", "eval", {"model": c.quantize["output"], "ref": str(model), **base,
                                                           "label": c.label, "role": c.role, "size": c.size,
                                                           "predicted": c.predicted, "note": c.note}))
    if bench is not None:
        out.append(jobs.StepSpec("bench", "bench", {"models": [c.quantize["output"] for c in items], **bench,
                                                    "threads": threads}))
    return out


def summary(run: dict) -> dict:
    """The comparison's rows (report.Row as dicts) grouped by size, with speed as ratios to the stock
    file of the same size and the additivity of the objective over the files it prices."""
    from ..report import rows as report_rows

    records = [r for r in report_rows([run]) if r.role != "reference"]
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
