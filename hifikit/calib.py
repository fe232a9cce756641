"""Calibration mixes: sample text domains by token counts, deterministically.

A mix is a list of domains (name, source, weight). Each source (a file or a
directory of text files; ``stdlib`` for the Python standard library's own
sources, the default code domain) is cut into pieces at blank lines, the
pieces are shuffled with the seed, and pieces are taken until the domain's
share of the token budget is met, counted with the model's own tokenizer
(``llama-tokenize``). The domains' pieces are then interleaved with the same
seed and written atomically.

``build_calibration(CalibOptions(...)) -> CalibJobResult`` is the job of
``hifikit calib build``: one tracked run named ``calib`` whose composition is
kept in the runs database.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import random
import re
import sysconfig
import tempfile
import sqlite3
from pathlib import Path
from typing import Any, Callable, Sequence

from . import atomic, gguf_io, jobs, parsers, runner
from .errors import HifikitError

log = logging.getLogger(__name__)

STDLIB = "stdlib"
TEXT_SUFFIXES = {".txt", ".md", ".rst", ".tex", ".py", ".c", ".h", ".cpp", ".rs", ".go", ".js", ".ts", ".java"}
MIN_PIECE_CHARS = 300
MAX_PIECE_CHARS = 4000
DEFAULT_CHARS_PER_TOKEN = 4.0

TokenCounter = Callable[[str], int]


@dataclasses.dataclass
class Domain:
    name: str
    source: str          # a path, or "stdlib"
    weight: float


@dataclasses.dataclass
class DomainResult:
    name: str
    source: str
    weight: float
    target_tokens: int
    tokens: int
    pieces: int
    chars: int


@dataclasses.dataclass
class CalibResult:
    output: str
    tokens: int
    chars: int
    seed: int
    tokenizer: str | None
    domains: list[DomainResult]


def parse_mix(text: str) -> Domain:
    """``NAME=PATH:WEIGHT`` (PATH may be ``stdlib``)."""
    name, sep, rest = text.partition("=")
    source, sep2, weight = rest.rpartition(":")
    if not sep or not sep2 or not name:
        raise HifikitError(f"--mix {text!r}: expected NAME=PATH:WEIGHT, e.g. prose=books.txt:0.6")
    try:
        w = float(weight)
    except ValueError:
        raise HifikitError(f"--mix {text!r}: weight {weight!r} is not a number") from None
    if not 0 < w <= 1:
        raise HifikitError(f"--mix {text!r}: weight must be in (0, 1]")
    source = source or STDLIB
    if source != STDLIB and not Path(source).exists():
        raise HifikitError(f"--mix {name}: {source}: no such file or directory")
    return Domain(name, source, w)


def complete_mix(domains: list[Domain]) -> list[Domain]:
    """Weights must sum to 1; a missing code domain takes what is left, from the standard library."""
    names = [d.name for d in domains]
    if len(set(names)) != len(names):
        raise HifikitError(f"--mix names repeat: {names}")
    total = sum(d.weight for d in domains)
    if "code" not in names and total < 1 - 1e-6:
        domains = [*domains, Domain("code", STDLIB, round(1 - total, 6))]
        total = 1.0
    if abs(total - 1) > 1e-6:
        raise HifikitError(f"--mix weights sum to {total:g}, expected 1")
    return domains


def _files(source: str) -> list[Path]:
    if source == STDLIB:
        root = Path(sysconfig.get_paths()["stdlib"])
        files = [p for p in root.rglob("*.py") if "site-packages" not in p.parts and "test" not in p.parts]
    else:
        root = Path(source)
        if root.is_file():
            return [root]
        files = [p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES]
    if not files:
        raise HifikitError(f"{source}: no text files found")
    return sorted(files)


def split_pieces(text: str) -> list[str]:
    """Blank-line separated blocks, merged up to MIN_PIECE_CHARS and cut at MAX_PIECE_CHARS."""
    pieces, cur = [], ""
    for block in re.split(r"\n\s*\n", text):
        block = block.strip("\n")
        if not block.strip():
            continue
        cur = f"{cur}\n\n{block}" if cur else block
        if len(cur) >= MIN_PIECE_CHARS:
            while len(cur) > MAX_PIECE_CHARS:
                cut = cur.rfind("\n", 0, MAX_PIECE_CHARS)
                cut = cut if cut > 0 else MAX_PIECE_CHARS
                pieces.append(cur[:cut])
                cur = cur[cut:].lstrip("\n")
            pieces.append(cur)
            cur = ""
    if cur.strip():
        pieces.append(cur)
    return pieces


def _pool(domain: Domain, rng: random.Random, chars_wanted: int) -> list[str]:
    """Shuffled pieces from shuffled files, reading only as much as needed (×3 headroom)."""
    files = _files(domain.source)
    rng.shuffle(files)
    pool: list[str] = []
    have = 0
    for f in files:
        try:
            text = f.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        for piece in split_pieces(text):
            pool.append(piece)
            have += len(piece)
        if have >= 3 * chars_wanted:
            break
    rng.shuffle(pool)
    return pool


def _take(domain: Domain, target: int, count: TokenCounter, rng: random.Random) -> tuple[list[str], int]:
    """Pieces whose token count meets target as closely as whole pieces (then lines) allow."""
    pool = _pool(domain, rng, int(target * DEFAULT_CHARS_PER_TOKEN))
    chosen: list[str] = []
    ratio = DEFAULT_CHARS_PER_TOKEN
    tokens = 0
    for _ in range(8):
        if tokens >= target:
            break
        want = (target - tokens) * ratio
        added = 0
        while pool and added < want:
            piece = pool.pop()
            chosen.append(piece)
            added += len(piece)
        if not added:
            break
        tokens = count("\n\n".join(chosen))
        ratio = max(1.0, sum(map(len, chosen)) / max(tokens, 1))
    if tokens < target:
        raise HifikitError(f"domain {domain.name}: {domain.source} has only {tokens} tokens, {target} wanted")
    # drop whole pieces from the end, then cut the last one at a line or word boundary
    join = "\n\n".join
    while tokens > target and chosen:
        last = chosen[-1]
        rest_tokens = count(join(chosen[:-1])) if len(chosen) > 1 else 0
        if rest_tokens >= target:
            chosen.pop()
            tokens = rest_tokens
            continue
        keep = int((target - rest_tokens) * ratio)
        for _ in range(8):
            trial = [*chosen[:-1], last[:_boundary(last, keep)]]
            new = count(join(trial))
            if new >= target:
                if new < tokens:
                    chosen, tokens = trial, new
                break
            keep = int(keep * 1.1) + 8
        break
    return chosen, count("\n\n".join(chosen))


def _boundary(text: str, keep: int) -> int:
    """A cut position at or before keep: after a newline or a space when there is one."""
    if keep >= len(text):
        return len(text)
    cut = max(text.rfind("\n", 0, keep), text.rfind(" ", 0, keep))
    return cut if cut > 0 else keep


def tokenizer_counter(model: Path) -> TokenCounter:
    def count(text: str) -> int:
        with tempfile.NamedTemporaryFile("w", suffix=".txt", encoding="utf-8", delete=True) as f:
            f.write(text)
            f.flush()
            res = runner.run_tool("llama-tokenize", ["-m", model, "-f", f.name, "--show-count", "--ids",
                                                     "--no-bos", "--log-disable"])
        return parsers.parse_token_count(res.text)
    return count


def estimate_counter(text: str) -> int:
    return math.ceil(len(text) / DEFAULT_CHARS_PER_TOKEN)


def build(domains: list[Domain], tokens: int, output: Path, seed: int = 0, model: Path | None = None) -> CalibResult:
    if tokens <= 0:
        raise HifikitError("--tokens must be positive")
    atomic.check_writable(output)
    domains = complete_mix(domains)
    count = tokenizer_counter(model) if model else estimate_counter
    if model is None:
        log.warning("no --model: token counts are estimated at %.0f characters per token", DEFAULT_CHARS_PER_TOKEN)
    results, labelled = [], []
    # the largest-remainder rule so domain budgets add up to exactly `tokens`
    raw = [d.weight * tokens for d in domains]
    budgets = [int(r) for r in raw]
    for i in sorted(range(len(raw)), key=lambda i: raw[i] - budgets[i], reverse=True)[: tokens - sum(budgets)]:
        budgets[i] += 1
    for d, target in zip(domains, budgets):
        rng = random.Random(f"{seed}:{d.name}")
        pieces, got = _take(d, target, count, rng) if target else ([], 0)
        results.append(DomainResult(d.name, d.source, d.weight, target, got, len(pieces), sum(map(len, pieces))))
        labelled += pieces
    random.Random(f"{seed}:interleave").shuffle(labelled)
    text = "\n\n".join(labelled) + "\n"
    atomic.write_text(output, text)
    total = count(text)
    return CalibResult(str(output.resolve()), total, len(text), seed, str(model) if model else None, results)


# --- keeping calibration and evaluation apart -----------------------------------------------------

# word n-grams of this length shared by two texts mean shared passages, not shared vocabulary
# (13 words, as contamination checks of evaluation sets use)
OVERLAP_NGRAM = 13
# the share of the evaluation text's n-grams found in the calibration text above which we warn
OVERLAP_WARN = 0.01


def _ngrams(text: str, n: int) -> set[int]:
    words = re.findall(r"\w+", text.lower())
    return {hash(tuple(words[i:i + n])) for i in range(max(0, len(words) - n + 1))}


def text_overlap(calibration: Path, evaluation: Path, n: int = OVERLAP_NGRAM) -> float:
    """Share of the evaluation text's word n-grams that also occur in the calibration text."""
    ev = _ngrams(evaluation.read_text(encoding="utf-8", errors="replace"), n)
    if not ev:
        return 0.0
    cal = _ngrams(calibration.read_text(encoding="utf-8", errors="replace"), n)
    return len(ev & cal) / len(ev)


def overlap_warning(model: Path, evaluation: Path) -> str | None:
    """A warning when a quantized model's imatrix came from (part of) the evaluation text, else None.

    llama-quantize records the imatrix's dataset (the file llama-imatrix read) in the model's
    quantize.imatrix.dataset key; llama-imatrix records it in imatrix.datasets."""
    index = gguf_io.tensor_index(model)
    dataset = index.value("quantize.imatrix.dataset")
    datasets = [dataset] if isinstance(dataset, str) else []
    if index.value("general.type") == "imatrix":
        datasets = [d for d in gguf_io.imatrix_summary(model).get("datasets") or [] if isinstance(d, str)]
    if not datasets:
        return None
    found = [Path(d) for d in datasets if Path(d).is_file()]
    if not found:
        return (f"{model.name}: its imatrix's calibration text ({', '.join(datasets)}) is not on this machine, so "
                f"its overlap with the evaluation text {evaluation.name} cannot be checked")
    shares = {d: text_overlap(d, evaluation) for d in found}
    worst = max(shares, key=shares.get)
    if shares[worst] <= OVERLAP_WARN:
        return None
    return (f"{model.name}: its imatrix was computed on {worst}, which shares {100 * shares[worst]:.1f} % of the "
            f"evaluation text's {OVERLAP_NGRAM}-word passages, so its KLD is flattered (keep calibration and "
            "evaluation texts apart)")


@dataclasses.dataclass
class CalibOptions:
    tokens: int                                  # the total token budget
    output: Path
    mix: Sequence[str | Domain] = ()             # domains, or NAME=PATH:WEIGHT (PATH 'stdlib': Python's sources)
    seed: int = 0
    model: Path | None = None                    # the GGUF whose tokenizer counts the tokens (else estimated)


@dataclasses.dataclass
class CalibJobResult:
    run_id: int
    text: CalibResult
    sha256: str
    step: dict[str, Any]
    run: dict[str, Any]

    @classmethod
    def from_run(cls, run: dict[str, Any]) -> "CalibJobResult":
        res = jobs.step_result(run, "build")
        fields = {k: v for k, v in res.items() if k != "sha256"}
        text = CalibResult(**{**fields, "domains": [DomainResult(**d) for d in res["domains"]]})
        return cls(run["id"], text, res.get("sha256", ""), res, run)


def build_calibration(opts: CalibOptions, *, conn: sqlite3.Connection | None = None,
                      progress: bool | None = None) -> CalibJobResult:
    """A calibration text sampled from the mix by token counts (the default mix completed), as one tracked run."""
    domains = complete_mix([m if isinstance(m, Domain) else parse_mix(m) for m in opts.mix])
    model = gguf_io.check_model(opts.model) if opts.model else None
    output = Path(opts.output)
    atomic.check_writable(output)
    spec = {"domains": [dataclasses.asdict(d) for d in domains], "tokens": opts.tokens,
            "output": str(output.resolve()), "seed": opts.seed, "model": str(model) if model else None}
    run = jobs.start("calib", spec, [jobs.StepSpec("build", "calib", spec)], progress=progress, conn=conn)
    return CalibJobResult.from_run(run)
