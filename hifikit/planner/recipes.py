"""The simple recipes people publish, and the search for the best one under a byte budget.

A simple recipe is one type for every tensor (``llama-quantize --pure``) plus
one type for the token embedding and, in models with a separate output
projection, one for the output (``--token-embedding-type`` /
``--output-tensor-type``). ``--pure Q8_0 --token-embedding-type q5_1`` is the
kind of one-liner a planner has to beat to be worth its complexity.

The search enumerates every pure type x embedding type (x output type) whose
file fits the budget, computes each file's exact size from llama-quantize's
own ``--dry-run --pure`` choice of types (rows a pure type cannot hold fall
back as upstream's ``tensor_type_fallback`` says), the side types, and the file
size model, and ranks
the candidates by the objective's predicted error, so only the best few need
to be quantized and measured. ``find_recipes(RecipesOptions(...)) ->
RecipesResult`` is the job of ``hifikit recipes``; with ``verify`` the best N are
quantized and measured as one tracked run named ``recipes-verify``.

Upstream facts this relies on (src/llama-quant.cpp at the pin):
``--token-embedding-type`` is applied as given (no fallback), so types whose
block size does not divide the embedding rows are not candidates; with
``--pure`` the ftype mixture is skipped, so in a model with tied embeddings
``--output-tensor-type`` does not reach token_embd and only the embedding type
matters.
"""
from __future__ import annotations

import dataclasses
import logging
import sqlite3
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from .. import db, ggml, gguf_io, grid, jobs, kld, report
from ..errors import HifikitError
from ..quant_rules import check_imatrix
from ..sweep import curves, objective
from . import filesize
from . import plan as planner

log = logging.getLogger(__name__)

# pure type -> the stock ftype whose default type it is (llama_ftype_get_default_type at the pin)
PURE_FTYPES: dict[str, str] = {
    "q2_K": "Q2_K", "q3_K": "Q3_K_M", "q4_K": "Q4_K_M", "q5_K": "Q5_K_M", "q6_K": "Q6_K",
    "q4_0": "Q4_0", "q4_1": "Q4_1", "q5_0": "Q5_0", "q5_1": "Q5_1", "q8_0": "Q8_0",
    "iq4_nl": "IQ4_NL", "iq4_xs": "IQ4_XS",
}
# candidate types of the token embedding and the output projection
SIDE_TYPES = ("q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "iq4_nl", "iq4_xs", "q2_K", "q3_K", "q4_K", "q5_K", "q6_K",
              "f16")
EMBD, OUTPUT = "token_embd.weight", "output.weight"


@dataclasses.dataclass(frozen=True)
class Recipe:
    pure: str                    # ggml type name of every tensor
    embd: str | None = None      # --token-embedding-type
    output: str | None = None    # --output-tensor-type (untied models)

    @property
    def ftype(self) -> str:
        return PURE_FTYPES[self.pure]

    def args(self) -> list[str]:
        """llama-quantize arguments before the files (the ftype is given separately)."""
        out = ["--pure"]
        if self.embd:
            out += ["--token-embedding-type", self.embd]
        if self.output:
            out += ["--output-tensor-type", self.output]
        return out

    @property
    def label(self) -> str:
        parts = [f"--pure {self.ftype}"]
        if self.embd:
            parts.append(f"--token-embedding-type {self.embd}")
        if self.output:
            parts.append(f"--output-tensor-type {self.output}")
        return " ".join(parts)


@dataclasses.dataclass
class Candidate:
    recipe: Recipe
    bytes: int
    predicted: float | None              # the objective's sum; None when a type has no curve point
    types: dict[str, str]                # tensor -> type as llama-quantize chooses them

    def to_json(self) -> dict:
        return {"recipe": self.recipe.label, "pure": self.recipe.pure, "embd": self.recipe.embd,
                "output": self.recipe.output, "ftype": self.recipe.ftype, "args": self.recipe.args(),
                "bytes": self.bytes, "predicted": self.predicted}


def enumerate_recipes(layout: filesize.FileLayout, has_imatrix: bool = False) -> list[Recipe]:
    """Every pure type x embedding type (x output type) this model's rows allow."""
    lib = ggml.load()
    names = {t.name for t in layout.tensors}
    tied = OUTPUT not in names

    def fits(tensor: str, type_name: str) -> bool:
        t = lib.type_by_name(type_name)
        return layout.tensor(tensor).row_length % t.block_size == 0 and \
            (has_imatrix or not lib.requires_imatrix(t.id))

    embd_types = [t for t in SIDE_TYPES if EMBD in names and fits(EMBD, t)] or [None]
    out_types = [None] if tied else [t for t in SIDE_TYPES if fits(OUTPUT, t)]
    return [Recipe(p, e, o) for p in PURE_FTYPES for e in embd_types for o in out_types]


def recipe_types(recipe: Recipe, pure_types: Mapping[str, str]) -> dict[str, str]:
    """The types llama-quantize gives every tensor under this recipe, from its --pure dry run alone.

    With --pure the ftype mixture is skipped and --token-embedding-type / --output-tensor-type return
    before any fallback (llama_tensor_get_type at the pin), so the side types replace exactly those two
    tensors' types and nothing else moves (tests compare this with llama-quantize's own dry run)."""
    types = dict(pure_types)
    if recipe.embd and EMBD in types:
        types[EMBD] = recipe.embd
    if recipe.output and OUTPUT in types:
        types[OUTPUT] = recipe.output
    return types


def search(layout: filesize.FileLayout, budget: int, errors: Mapping[str, Mapping[str, float]],
           pure_dry_run: Callable[[str], dict[str, str]], imatrix_keys: filesize.ImatrixKeys | None = None,
           recipes: Sequence[Recipe] | None = None) -> tuple[list[Candidate], int]:
    """The recipes whose file fits the budget, best predicted first; and how many were considered.

    errors: tensor -> {type name (lower case): predicted error}, the objective the planner uses.
    pure_dry_run(ftype) -> tensor -> type: llama-quantize --dry-run --pure's choice (cached by the caller).
    """
    recipes = list(recipes) if recipes is not None else enumerate_recipes(layout, imatrix_keys is not None)
    pure = {r.ftype: None for r in recipes}
    pure_types = {ftype: pure_dry_run(ftype) for ftype in pure}
    out = []
    for recipe in recipes:
        types = recipe_types(recipe, pure_types[recipe.ftype])
        size = filesize.file_size(layout, {**{t.name: t.source_type for t in layout.tensors}, **types}, imatrix_keys)
        if size > budget:
            continue
        total, missing = objective.predict(types, errors)
        out.append(Candidate(recipe, size, None if missing else total, types))
    out.sort(key=lambda c: (c.predicted is None, c.predicted if c.predicted is not None else 0.0, c.bytes))
    log.info("simple recipes: %d of %d fit %d bytes", len(out), len(recipes), budget)
    return out, len(recipes)


@dataclasses.dataclass
class RecipeSearch:
    model: str
    target: dict
    budget: int
    run: int                      # the sweep whose objective ranked the recipes
    mode: str
    considered: int               # recipes enumerated
    candidates: list[Candidate]   # those that fit, best predicted first

    def to_json(self, top: int | None = None) -> dict:
        return {"model": self.model, "target": self.target, "budget_bytes": self.budget, "run": self.run,
                "mode": self.mode, "considered": self.considered, "fit": len(self.candidates),
                "candidates": [c.to_json() for c in self.candidates[:top]]}


def search_model(conn, model: Path, target, run_id: int, mode: str | None = None,
                 imatrix: Path | None = None) -> RecipeSearch:
    """Rank the simple recipes of a model at a target (plan.Target) by a sweep's objective."""
    layout = filesize.FileLayout.read(model)
    ikeys = filesize.ImatrixKeys.from_file(imatrix, str(imatrix)) if imatrix else None
    budget = planner.budget_for(target, layout, lambda f: planner.ftype_file_size(conn, model, layout, f,
                                                                                  imatrix, ikeys))
    sweep = curves.load_sweep(conn, run_id, mode)
    cands, considered = search(layout, budget, objective.errors_by_tensor(sweep),
                               lambda ftype: planner.cached_dry_run(conn, model, ftype, imatrix, ["--pure"]), ikeys)
    return RecipeSearch(str(model), dataclasses.asdict(target), budget, run_id, sweep.mode, considered, cands)


def verify_steps(search: RecipeSearch, n: int, out_dir: Path, text: Path, ctx: int, chunks: int,
                 threads: int | None, imatrix: Path | None) -> list[jobs.StepSpec]:
    """Quantize and evaluate the best n candidates (one reference-logits step first)."""
    model = Path(search.model)
    base = {"text": str(Path(text).resolve()), "ctx": ctx, "chunks": chunks, "threads": threads}
    steps = [jobs.StepSpec("reference", "kld-base", {"ref": str(model), **base})]
    for i, c in enumerate(search.candidates[:n]):
        out = out_dir / f"{model.stem}-recipe{i}.gguf"
        spec = {"input": str(model), "output": str(out.resolve()), "ftype": c.recipe.ftype,
                "extra": c.recipe.args(), "threads": threads, "expect_bytes": c.bytes,
                "predicted_error": c.predicted, "recipe": c.recipe.label}
        if imatrix:
            spec["imatrix"] = str(imatrix.resolve())
        steps.append(jobs.StepSpec(f"quantize-{i}", "quantize", spec))
        steps.append(jobs.StepSpec(f"eval-{i}", "eval", {"model": str(out.resolve()), "ref": str(model), **base,
                                                         "label": c.recipe.label, "role": "recipe"}))
    return steps


@dataclasses.dataclass
class RecipesOptions:
    model: Path
    target: Any                        # plan.Target (plan.make_target)
    from_run: int | None = None        # the analyze run whose curves rank the recipes (default: the latest)
    mode: str | None = None
    imatrix: Path | None = None        # the importance matrix the quantization will use
    top: int = 10                      # candidates to list
    verify: int = 0                    # quantize and measure the best N
    out_dir: Path | None = None        # with verify: where the files go (default: next to the model)
    text: Path | None = None           # with verify: the evaluation text
    ctx: int = 512
    chunks: int | None = None
    threads: int | None = None


@dataclasses.dataclass
class RecipesVerifyResult:
    run_id: int
    rows: list[report.Row]             # the reference, then the measured recipes (best predicted first)
    run: dict[str, Any]

    @classmethod
    def from_run(cls, run: dict[str, Any]) -> "RecipesVerifyResult":
        return cls(run["id"], report.rows([run]), run)

    @property
    def measured(self) -> list[report.Row]:
        return [r for r in self.rows if r.role != "reference"]

    @property
    def best(self) -> str | None:
        """The recipe with the lowest measured mean KLD."""
        return min(self.measured, key=lambda r: r.kld_mean).label if self.measured else None

    def to_json(self) -> dict[str, Any]:
        return {"run": self.run_id, "measured": len(self.measured), "best": self.best,
                "models": [{**dataclasses.asdict(r), "recipe": r.label} for r in self.measured]}


@dataclasses.dataclass
class RecipesResult:
    search: RecipeSearch
    top: int
    grid: grid.GridReport
    verify: RecipesVerifyResult | None

    def to_json(self) -> dict[str, Any]:
        """What `hifikit recipes --json` prints."""
        out = {**self.search.to_json(self.top), "grid": self.grid.to_json()}
        if self.verify is not None:
            out["verify"] = self.verify.to_json()
        return out


def find_recipes(opts: RecipesOptions, *, conn: sqlite3.Connection | None = None,
                 progress: bool | None = None) -> RecipesResult:
    """The simple recipes that fit the target, best predicted first; with verify, the best N measured."""
    model = gguf_io.check_model(opts.model)
    check_imatrix(opts.imatrix)
    jobs.check_positive(top=opts.top)
    if opts.verify < 0:
        raise HifikitError(f"--verify must be a count of recipes, got {opts.verify}")
    if opts.verify and opts.text is None:
        raise HifikitError("--verify needs --text F (the evaluation text)")
    conn = conn or db.connect()
    run_id = opts.from_run if opts.from_run is not None else planner.find_sweep_run(conn, model)
    imatrix = Path(opts.imatrix).resolve() if opts.imatrix else None
    search = search_model(conn, model, opts.target, run_id, opts.mode, imatrix)
    verified = None
    if opts.verify:
        chunks = kld.check_text(model, opts.text, opts.ctx, opts.chunks)
        out_dir = Path(opts.out_dir or model.parent).resolve()
        run = jobs.start("recipes-verify", {"model": str(model), "target": search.target, "run": run_id,
                                            "top": opts.verify, "text": str(opts.text), "ctx": opts.ctx,
                                            "chunks": chunks},
                         verify_steps(search, opts.verify, out_dir, Path(opts.text), opts.ctx, chunks, opts.threads,
                                      imatrix), progress=progress, conn=conn)
        verified = RecipesVerifyResult.from_run(run)
    return RecipesResult(search, opts.top, grid.detect(model), verified)
