"""Reference logits for --kl-divergence, cached once per (model, text, ctx, chunks).

The base file holds about 2 bytes × vocabulary per scored token, so it is
made once and kept under $HIFIKIT_HOME/kld/, keyed by the sha256 of the
reference model and of the text plus ctx and chunks.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import sqlite3
import time
from pathlib import Path

from . import atomic, db, parsers, runner
from .errors import HifikitError
from .progress import Progress

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Reference:
    key: str
    path: str
    size: int
    model_sha256: str
    text_sha256: str
    ctx: int
    chunks: int
    ppl: dict
    cached: bool


def kld_dir() -> Path:
    return db.home() / "kld"


def cache_key(model_sha: str, text_sha: str, ctx: int, chunks: int) -> str:
    return hashlib.sha256(f"{model_sha}:{text_sha}:{ctx}:{chunks}".encode()).hexdigest()[:32]


def lookup(conn: sqlite3.Connection, key: str) -> dict | None:
    row = conn.execute("SELECT * FROM kld_refs WHERE key=?", (key,)).fetchone()
    if row is None:
        return None
    path = Path(row["path"])
    if not path.is_file() or path.stat().st_size != row["size"]:
        conn.execute("DELETE FROM kld_refs WHERE key=?", (key,))
        return None
    return db.row_dict(row)


def ensure_reference(conn: sqlite3.Connection, model: Path, text: Path, ctx: int, chunks: int, *,
                     log_path: Path | None = None, progress: bool | None = None,
                     threads: int | None = None) -> Reference:
    """Return the cached base logits for these inputs, computing them if needed."""
    model_sha = db.file_sha256(conn, model)
    text_sha = db.file_sha256(conn, text)
    key = cache_key(model_sha, text_sha, ctx, chunks)
    row = lookup(conn, key)
    if row is not None:
        conn.execute("UPDATE kld_refs SET last_used=? WHERE key=?", (time.time(), key))
        log.debug("KLD reference %s cached (%.1f MiB)", key[:12], row["size"] / 2**20)
        return Reference(key, row["path"], row["size"], model_sha, text_sha, ctx, chunks, row["ppl"] or {}, True)
    target = kld_dir() / f"{key}.kld"
    target.parent.mkdir(parents=True, exist_ok=True)
    args = ["-m", model, "-f", text, "-c", str(ctx), "--chunks", str(chunks)]
    if threads:
        args += ["-t", str(threads)]
    with atomic.output_file(target) as tmp:
        result = runner.run_tool("llama-perplexity", [*args, "--kl-divergence-base", tmp], log_path=log_path,
                                 progress=Progress("reference logits", progress), watcher=runner.watch_chunks)
    ppl = dataclasses.asdict(parsers.parse_perplexity(result.text))
    if ppl["n_chunks"] != chunks:
        target.unlink(missing_ok=True)
        raise HifikitError(f"{text}: llama-perplexity scored {ppl['n_chunks']} chunks, {chunks} were requested")
    size = target.stat().st_size
    now = time.time()
    conn.execute("INSERT OR REPLACE INTO kld_refs (key, model_sha256, text_sha256, ctx, chunks, path, size, ppl, "
                 "created, last_used) VALUES (?,?,?,?,?,?,?,?,?,?)",
                 (key, model_sha, text_sha, ctx, chunks, str(target), size, json.dumps(ppl), now, now))
    log.info("KLD reference %s written: %.1f MiB", key[:12], size / 2**20)
    return Reference(key, str(target), size, model_sha, text_sha, ctx, chunks, ppl, False)


def list_references(conn: sqlite3.Connection) -> list[dict]:
    return [db.row_dict(r) for r in conn.execute("SELECT * FROM kld_refs ORDER BY last_used DESC")]


def gc(conn: sqlite3.Connection, older_than_s: float | None = None) -> tuple[int, int]:
    """Remove cached references (all, or unused for older_than_s) and stray partial files."""
    if older_than_s is not None and older_than_s < 0:
        raise HifikitError("--older-than must be >= 0")
    removed, freed = 0, 0
    cutoff = time.time() - older_than_s if older_than_s is not None else None
    for ref in list_references(conn):
        if cutoff is not None and ref["last_used"] > cutoff:
            continue
        path = Path(ref["path"])
        if path.is_file():
            freed += path.stat().st_size
            path.unlink()
        conn.execute("DELETE FROM kld_refs WHERE key=?", (ref["key"],))
        removed += 1
    directory = kld_dir()
    if directory.is_dir():
        known = {Path(r["path"]).name for r in list_references(conn)}
        for path in directory.iterdir():
            if path.is_file() and (atomic.is_stale_partial(path) or
                                   (cutoff is None and path.suffix == ".kld" and path.name not in known)):
                freed += path.stat().st_size
                path.unlink()
                removed += 1
    return removed, freed


def count_tokens(model: Path, text: Path, log_path: Path | None = None) -> int:
    """Tokens llama.cpp sees in text with model's tokenizer (BOS included)."""
    result = runner.run_tool("llama-tokenize", ["-m", model, "-f", text, "--show-count", "--ids", "--log-disable"],
                             log_path=None)
    return parsers.parse_token_count(result.text)


def check_text(model: Path, text: Path, ctx: int, chunks: int | None) -> int:
    """Resolve chunks (all that fit when None) and fail in one line when the text is too short."""
    if not Path(text).is_file():
        raise HifikitError(f"{text}: no such file")
    n = count_tokens(model, text)
    available = n // ctx
    if chunks is None:
        chunks = available
    if available < max(chunks, 2):
        raise HifikitError(f"{text}: too short: {n} tokens give {available} chunks of {ctx}, "
                           f"{max(chunks, 2)} needed (use a longer text, a smaller --ctx or fewer --chunks)")
    return chunks
