"""Publishing a folder of GGUF files to the Hugging Face Hub with a model card (``hifikit publish``).

The card (README.md in the folder) follows the Hub's model-card conventions: a
YAML front matter (``base_model`` with ``base_model_relation: quantized``,
``license`` when known, ``tags`` with ``gguf``, ``quantized_by``) and a table of
every GGUF in the folder with what the runs database measured on it: bytes,
BPW, mean KLD, 99.9 % KLD, PPL, same top token and llama-bench speed
(``report.rows``). A file is matched to runs by its resolved path and the
sha256 the database recorded for it (artifacts and measurements); a file with
no measurement is listed with its bytes and "not measured". The card also names
how each file was made (the quantize run's strategy YAML and imatrix), the
build (pin and patch series, ``info.build_report``) and the runs as hifikit
command lines. Figures measured against a reference whose weights sit on a
published quantization grid (``grid.detect``) are labelled, never headlined.

``publish(PublishOptions(directory, repo_id, ...)) -> PublishResult`` is one
tracked run "publish": the card (and splits), the repository, then one upload
step per file and the card last, so an interrupted upload resumes with
``hifikit runs resume ID`` at the first file not yet uploaded. ``dry_run``
writes the card and uploads nothing (no run).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import sqlite3
import subprocess
from pathlib import Path
from typing import Any, Sequence

from . import __version__, atomic, db, gguf_io, grid, jobs, paths, report
from .errors import HifikitError
from .jobs import StepContext, StepOutput
from .tables import num, pm

log = logging.getLogger(__name__)

SPLIT_BYTES = 50 * 10**9          # the Hub's limit per file
SPLIT_TOOL = "llama-gguf-split"
CARD = "README.md"
NOT_MEASURED = "not measured"
GRID_MARK = "†"
REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
SPEC_URL = "https://huggingface.co/docs/hub/model-cards"


# --- options and results ----------------------------------------------------------------------------


@dataclasses.dataclass
class PublishOptions:
    directory: Path
    repo_id: str                          # ORG/NAME
    runs: Sequence[int] | None = None     # the runs to read figures from (default: every run)
    private: bool = False
    dry_run: bool = False                 # write the card, upload nothing
    base_model: str | None = None         # default: the fetch run of the source, or the GGUF's metadata
    license: str | None = None            # default: the GGUF's general.license
    quantized_by: str | None = None       # default: the repo's owner
    split_bytes: int = SPLIT_BYTES        # files over this are split with llama-gguf-split (when built)


@dataclasses.dataclass
class FileEntry:
    name: str
    path: str
    bytes: int
    sha256: str
    measured: bool = False
    bpw: float | None = None
    ppl: float | None = None
    ppl_error: float | None = None
    kld_mean: float | None = None
    kld_error: float | None = None
    kld_p999: float | None = None
    same_top_p: float | None = None
    same_top_p_error: float | None = None
    tps: dict[str, list[float]] = dataclasses.field(default_factory=dict)   # test -> [avg, stddev]
    eval_run: int | None = None
    bench_run: int | None = None
    reference: str | None = None          # the model the KLD was measured against
    text: str | None = None
    ctx: int | None = None
    chunks: int | None = None
    on_grid: bool = False                 # the reference sits on a published grid: figures overstated
    made_by: int | None = None            # the quantize run
    ftype: str | None = None
    strategy: str | None = None
    imatrix: str | None = None
    source: str | None = None             # the quantize run's input
    split: bool = False                   # over split_bytes
    shards: list[str] = dataclasses.field(default_factory=list)   # split: the shards' names in the repo
    uploadable: bool = True               # False: too large and no llama-gguf-split in the build


@dataclasses.dataclass
class Card:
    text: str
    metadata: dict[str, Any]
    files: list[FileEntry]
    commands: list[str]
    notes: list[str]                      # one line each: files that cannot be uploaded yet


@dataclasses.dataclass
class PublishResult:
    run_id: int | None
    directory: str
    repo_id: str
    card: str                             # the README.md written
    metadata: dict[str, Any]
    files: list[FileEntry]
    notes: list[str]
    uploaded: list[str]                   # paths in the repo, in upload order
    url: str | None
    dry_run: bool
    run: dict | None = None

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.pop("run")
        out["run"] = out.pop("run_id")
        return out

    @classmethod
    def from_run(cls, run: dict[str, Any]) -> "PublishResult":
        card = jobs.step_result(run, "card")
        repo = jobs.step_result(run, "repo")
        uploaded = [p for s in run["steps"] if s["kind"] == "publish-upload" and s["result"]
                    for p in s["result"].get("uploaded", [])]
        return cls(run["id"], card.get("directory", run["args"]["directory"]), run["args"]["repo_id"],
                   card.get("card", ""), card.get("metadata", {}), [FileEntry(**f) for f in card.get("files", [])],
                   card.get("notes", []), uploaded, repo.get("url"), False, run)


# --- inputs -----------------------------------------------------------------------------------------


def check_repo_id(repo_id: str) -> str:
    if not REPO_ID.match(repo_id or "") or ".." in repo_id or "--" in repo_id or repo_id.endswith((".", "-")):
        raise HifikitError(f"--repo-id {repo_id!r}: expected ORG/NAME (letters, digits, '-', '_', '.'; "
                           "no '--' or '..')")
    return repo_id


def gguf_files(directory: Path) -> list[Path]:
    """The GGUF files of the folder (not its hidden partial files), by name."""
    directory = Path(directory)
    if not directory.is_dir():
        raise HifikitError(f"{directory}: no such directory")
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix == ".gguf"
                   and not p.name.startswith("."))
    if not files:
        raise HifikitError(f"{directory}: no GGUF files to publish")
    return files


def split_tool() -> Path | None:
    """llama-gguf-split of the build in use, None when the build does not ship it."""
    path = paths.bin_dir() / SPLIT_TOOL
    return path if path.is_file() else None


def split_decision(size: int, threshold: int = SPLIT_BYTES, tool: Path | None = None) -> tuple[bool, bool]:
    """(split, uploadable): a file over the threshold is split when the tool exists, else it cannot go up yet."""
    if size <= threshold:
        return False, True
    return True, tool is not None


def too_large_note(name: str, size: int, threshold: int) -> str:
    return (f"{name}: {size:,} bytes is over the Hub's {threshold:,}-byte file limit and {SPLIT_TOOL} is not in "
            "this build, so it cannot be uploaded yet")


# --- matching files to the runs database ------------------------------------------------------------


def _same_paths(conn: sqlite3.Connection, path: Path, sha: str) -> set[str]:
    """Every path the database saw this content at (resolved), and the file's own."""
    out = {str(path)}
    for (p,) in conn.execute("SELECT path FROM artifacts WHERE sha256=?", (sha,)):
        out.add(str(Path(p).resolve()) if Path(p).is_absolute() else p)
    for (p,) in conn.execute("SELECT DISTINCT model FROM measurements WHERE model_sha256=?", (sha,)):
        out.add(p)
    return out


def _step_sha(run: dict[str, Any], step_name: str) -> str | None:
    for s in run["steps"]:
        if s["name"] == step_name:
            return (s.get("result") or {}).get("model_sha256")
    return None


def _match(conn: sqlite3.Connection, entry: FileEntry, runs: list[dict[str, Any]]) -> None:
    """Fill entry's figures from the newest eval (with KLD if any) and the newest bench of this content."""
    path = Path(entry.path)
    same = _same_paths(conn, path, entry.sha256)
    by_id = {r["id"]: r for r in runs}
    evals, benches = [], []
    for row in report.rows(runs):
        if row.role == "reference" or str(Path(row.model).resolve()) not in same and row.model not in same:
            continue
        sha = _step_sha(by_id[row.run_id], row.step) if row.step else None
        if sha is not None and sha != entry.sha256:
            continue                      # the path once held another file
        if row.step:
            evals.append(row)
        if row.tps:
            benches.append(row)
    with_kld = [r for r in evals if r.kld_mean is not None]
    best = max(with_kld or evals, key=lambda r: r.run_id, default=None)
    if best is not None:
        entry.measured = True
        entry.eval_run = best.run_id
        entry.bpw, entry.ppl, entry.ppl_error = best.bpw, best.ppl, best.ppl_error
        entry.kld_mean, entry.kld_error, entry.kld_p999 = best.kld_mean, best.kld_error, best.kld_p999
        entry.same_top_p, entry.same_top_p_error = best.same_top_p, best.same_top_p_error
        entry.ctx, entry.chunks = best.ctx, best.chunks
        step = next(s for s in by_id[best.run_id]["steps"] if s["name"] == best.step)
        entry.reference = (step.get("result") or {}).get("ref")
        entry.text = (step.get("result") or {}).get("text")
    bench = max(benches, key=lambda r: r.run_id, default=None)
    if bench is not None:
        entry.measured = True
        entry.bench_run = bench.run_id
        entry.tps = {t: [a, s] for t, (a, s) in bench.tps.items()}
    for run in sorted(runs, key=lambda r: -r["id"]):
        if run["command"] not in ("quantize", "quantize-verify", "compare", "plan-verify", "recipes-verify", "demo"):
            continue
        for s in run["steps"]:
            res = s.get("result") or {}
            if s["kind"] == "quantize" and s["status"] == "done" and res.get("sha256") == entry.sha256:
                spec = s.get("spec") or {}
                args = run["args"] if isinstance(run["args"], dict) else {}
                entry.made_by, entry.ftype = run["id"], res.get("ftype")
                entry.source = spec.get("input") or args.get("input")
                entry.strategy = args.get("strategy") if run["command"] in ("quantize", "quantize-verify") else None
                entry.imatrix = spec.get("imatrix") or args.get("imatrix")
                return


def _grid_models(entries: list[FileEntry]) -> dict[str, bool]:
    """Whether each reference model (still on disk) sits on a published quantization grid."""
    out: dict[str, bool] = {}
    for ref in {e.reference for e in entries if e.reference}:
        try:
            out[ref] = grid.detect(ref).detected
        except (HifikitError, OSError) as exc:
            log.warning("grid check of %s skipped: %s", ref, exc)
            out[ref] = False
    return out


# --- commands and provenance ------------------------------------------------------------------------


def _q(value: Any) -> str:
    import shlex

    return shlex.quote(str(value))


def command_line(run: dict[str, Any]) -> str:
    """A run's arguments as the hifikit command line that makes it (report._command_line's header, with
    the arguments), ending in '# run ID'."""
    a = run["args"] if isinstance(run["args"], dict) else {}
    cmd = run["command"]
    parts: list[str] = ["hifikit"]
    if cmd == "quantize":
        parts += ["quantize", _q(a.get("input")), _q(a.get("output"))]
        parts += ["--strategy", _q(a["strategy"])] if a.get("strategy") else ["--type", _q(a.get("ftype"))]
        parts += ["--imatrix", _q(a["imatrix"])] if a.get("imatrix") else []
    elif cmd == "quantize-verify":
        parts += ["quantize", _q(a.get("input")), _q(a.get("output")), "--strategy", _q(a.get("strategy")),
                  "--verify", "--text", _q(a.get("text")), "--ctx", str(a.get("ctx")), "--chunks", str(a.get("chunks"))]
        parts += ["--imatrix", _q(a["imatrix"])] if a.get("imatrix") else []
        if a.get("bench"):
            b = a["bench"]
            parts += ["--bench", "--bench-prompt", str(b.get("n_prompt")), "--bench-gen", str(b.get("n_gen")),
                      "--bench-reps", str(b.get("repetitions"))]
    elif cmd == "eval":
        parts += ["eval", _q(a.get("model"))] + (["--ref", _q(a["ref"])] if a.get("ref") else [])
        parts += ["--text", _q(a.get("text")), "--ctx", str(a.get("ctx")), "--chunks", str(a.get("chunks"))]
    elif cmd == "bench":
        parts += ["bench", *[_q(m) for m in a.get("models", [])], "-p", str(a.get("p")), "-n", str(a.get("n")),
                  "-r", str(a.get("r"))]
    elif cmd == "imatrix":
        parts += ["imatrix", _q(a.get("model")), "--text", _q(a.get("text")), "-o", _q(a.get("output")),
                  "--ctx", str(a.get("ctx")), "--chunks", str(a.get("chunks"))]
    elif cmd == "compare":
        parts += ["compare", *[_q(m) for m in a.get("models", [])], "--ref", _q(a.get("ref"))]
        parts += [x for t in a.get("quant") or [] for x in ("--quant", _q(t))]
        parts += ["--text", _q(a.get("text")), "--ctx", str(a.get("ctx")), "--chunks", str(a.get("chunks"))]
    else:
        parts.append(cmd)
        for k, v in a.items():
            if v is None or v is False or isinstance(v, (dict, list)):
                continue
            parts += [f"--{k.replace('_', '-')}"] + ([] if v is True else [_q(v)])
    threads = a.get("threads") or next((s["spec"].get("threads") for s in run.get("steps", [])
                                        if isinstance(s.get("spec"), dict) and s["spec"].get("threads")), None)
    if threads:
        parts += ["--threads", str(threads)]
    return " ".join(parts) + f"  # run {run['id']}"


def _imatrix_provenance(conn: sqlite3.Connection, imatrix: str) -> str:
    path = Path(imatrix)
    line = f"imatrix `{path.name}`"
    if not path.is_file():
        return line + " (no longer on disk)"
    sha = db.file_sha256(conn, path)
    row = conn.execute("SELECT run_id FROM artifacts WHERE sha256=? AND kind='imatrix' ORDER BY id DESC LIMIT 1",
                       (sha,)).fetchone()
    line += f", sha256 `{sha[:16]}…`"
    if row is not None:
        run = jobs.get_run(conn, int(row[0]))
        a = run["args"] if isinstance(run["args"], dict) else {}
        line += (f", made by run {run['id']} from `{Path(str(a.get('text'))).name}` (ctx {a.get('ctx')}, "
                 f"{a.get('chunks')} chunks)")
    return line


def _source_metadata(conn: sqlite3.Connection, sources: list[str]) -> dict[str, str]:
    """base_model and license from a fetch run of the source model, or the source's GGUF metadata."""
    out: dict[str, str] = {}
    fetched: dict[str, str] = {}          # model file (resolved) -> the repo it was fetched or converted from
    for (run_id,) in conn.execute("SELECT id FROM runs WHERE command='fetch' AND status='done' ORDER BY id"):
        run = jobs.get_run(conn, int(run_id))
        for m in jobs.step_result(run, "convert").get("models", []):
            fetched[str(Path(m).resolve())] = run["args"]["repo_id"]
    for src in sources:
        if str(Path(src).resolve()) in fetched:
            out.setdefault("base_model", fetched[str(Path(src).resolve())])
        try:
            meta = gguf_io.read_info(src).metadata
        except (HifikitError, OSError):
            continue
        url = meta.get("general.base_model.0.repo_url") or meta.get("general.source.repo_url")
        if isinstance(url, str) and "huggingface.co/" in url:
            out.setdefault("base_model", url.split("huggingface.co/", 1)[1].strip("/"))
        if isinstance(meta.get("general.license"), str):
            out.setdefault("license", meta["general.license"])
    return out


# --- the card ---------------------------------------------------------------------------------------


def _yaml_scalar(value: str) -> str:
    return value if re.match(r"^[A-Za-z0-9][A-Za-z0-9._/-]*$", value) else json.dumps(value)


def front_matter(metadata: dict[str, Any]) -> str:
    lines = ["---"]
    for key, value in metadata.items():
        if isinstance(value, list):
            lines.append(f"{key}:")
            lines += [f"- {_yaml_scalar(str(v))}" for v in value]
        else:
            lines.append(f"{key}: {_yaml_scalar(str(value))}")
    return "\n".join(lines + ["---", ""])


def build_card(conn: sqlite3.Connection, opts: PublishOptions, files: list[Path] | None = None,
               shards: dict[str, list[str]] | None = None) -> Card:
    """The model card of the folder, its files matched to the runs database (nothing is written); shards:
    the shard names of each split file, once split (the card lists them)."""
    from .info import build_report

    files = files if files is not None else gguf_files(opts.directory)
    ids = list(opts.runs) if opts.runs else [r["id"] for r in jobs.list_runs(conn, 1_000_000)]
    runs = report.load_runs(conn, ids)
    tool = split_tool()
    entries = []
    notes = []
    for f in files:
        path = f.resolve()
        size = path.stat().st_size
        e = FileEntry(f.name, str(path), size, db.file_sha256(conn, path))
        _match(conn, e, runs)
        e.split, e.uploadable = split_decision(size, opts.split_bytes, tool)
        e.shards = list((shards or {}).get(f.name, []))
        if not e.uploadable:
            notes.append(too_large_note(f.name, size, opts.split_bytes))
        entries.append(e)
    on_grid = _grid_models(entries)
    for e in entries:
        e.on_grid = bool(e.reference and on_grid.get(e.reference))
    meta_src = _source_metadata(conn, sorted({e.source for e in entries if e.source} |
                                             {e.reference for e in entries if e.reference}))
    base_model = opts.base_model or meta_src.get("base_model")
    license_ = opts.license or meta_src.get("license")
    metadata: dict[str, Any] = {}
    if base_model:
        metadata["base_model"] = base_model
        metadata["base_model_relation"] = "quantized"
    if license_:
        metadata["license"] = license_
    metadata["library_name"] = "gguf"
    metadata["tags"] = ["gguf", "hifikit", "quantized"]
    metadata["quantized_by"] = opts.quantized_by or opts.repo_id.split("/")[0]

    build = build_report()
    used = sorted({i for e in entries for i in (e.made_by, e.eval_run, e.bench_run) if i is not None})
    by_id = {r["id"]: r for r in runs}
    commands = [command_line(by_id[i]) for i in used if i in by_id]
    text = _render(opts, metadata, entries, notes, commands, build, conn)
    return Card(text, metadata, entries, commands, notes)


def _render(opts: PublishOptions, metadata: dict[str, Any], entries: list[FileEntry], notes: list[str],
            commands: list[str], build, conn: sqlite3.Connection) -> str:
    name = opts.repo_id.split("/")[1]
    out = [front_matter(metadata), f"# {name}", ""]
    base = metadata.get("base_model")
    intro = f"GGUF files{f' of [{base}](https://huggingface.co/{base})' if base else ''}, quantized with hifikit " \
            f"{__version__} (llama.cpp `{build.llama_cpp_commit[:12]}` with {len(build.patches)} patches)."
    out += [intro, ""]
    measured = [e for e in entries if e.kld_mean is not None and not e.on_grid]
    if measured and len({(e.reference, e.text, e.ctx, e.chunks) for e in measured}) == 1:  # one yardstick
        best = min(measured, key=lambda e: e.kld_mean)
        out += [f"Lowest mean KLD: `{best.name}`, {best.kld_mean:.6f} at {best.bytes:,} bytes.", ""]
    tests = sorted({t for e in entries for t in e.tps}, key=lambda t: (not t.startswith("pp"), t))
    headers = ["file", "bytes", "BPW", "mean KLD", "KLD 99.9 %", "PPL", "same top p %", *[f"{t} t/s" for t in tests]]
    out += ["## Files", "", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for e in entries:
        mark = f" {GRID_MARK}" if e.on_grid else ""
        if not e.measured:
            cells = [f"`{e.name}`", f"{e.bytes:,}", NOT_MEASURED] + [""] * (len(headers) - 3)
        else:
            cells = [f"`{e.name}`", f"{e.bytes:,}", num(e.bpw, ".4f"),
                     pm(e.kld_mean, e.kld_error, ".6f") + (mark if e.kld_mean is not None else ""),
                     num(e.kld_p999, ".6f") + (mark if e.kld_p999 is not None else ""),
                     pm(e.ppl, e.ppl_error, ".4f"), pm(e.same_top_p, e.same_top_p_error, ".3f"),
                     *[pm(*e.tps[t], ".2f") if t in e.tps else "" for t in tests]]
        out.append("| " + " | ".join(cells) + " |")
    out.append("")
    split = [e for e in entries if e.split and e.uploadable]
    if split:
        out += [f"Files over {opts.split_bytes:,} bytes are uploaded as the shards of `{SPLIT_TOOL}`; llama.cpp "
                "loads the first shard as the whole model, and `llama-gguf-split --merge FIRST OUT` joins them:", ""]
        for e in split:
            parts = ", ".join(f"`{n}`" for n in e.shards) if e.shards else "shards made at upload"
            out.append(f"- `{e.name}`: {parts}")
        out.append("")
    evals = [e for e in entries if e.eval_run is not None]
    if evals:
        refs = sorted({(Path(e.reference).name if e.reference else "none", Path(e.text or "").name, e.ctx, e.chunks)
                       for e in evals})
        for ref, text, ctx, chunks in refs:
            out.append(f"KLD and same-top-token against `{ref}` on `{text}`, {chunks} chunks × {ctx} tokens "
                       "(llama-perplexity).")
        out += ["Bytes are the whole file; BPW counts tensor data only; t/s from llama-bench (mean ± stddev).", ""]
    if any(e.on_grid for e in entries):
        out += [f"{GRID_MARK} measured against a reference whose weights sit on a published quantization grid "
                "(`hifikit degrid` explains): these figures are overstated and are not headlined.", ""]
    for n in notes:
        out += [f"- {n}"]
    if notes:
        out.append("")
    made = [e for e in entries if e.made_by is not None]
    if made:
        out += ["## How the files were made", ""]
        for e in made:
            how = f"`{e.strategy and Path(e.strategy).name or e.ftype}`"
            out.append(f"- `{e.name}`: run {e.made_by}, {'strategy ' if e.strategy else 'type '}{how} from "
                       f"`{Path(e.source).name if e.source else '?'}`"
                       + (f"; {_imatrix_provenance(conn, e.imatrix)}" if e.imatrix else "; no imatrix"))
        out.append("")
        for e in made:
            if e.strategy and Path(e.strategy).is_file():
                out += [f"### Strategy of `{e.name}` (`{Path(e.strategy).name}`)", "", "```yaml",
                        Path(e.strategy).read_text(encoding="utf-8").rstrip(), "```", ""]
    if commands:
        out += ["## Commands", "", "```sh", *commands, "```", ""]
    out += ["## Build", "",
            f"hifikit {build.version}, llama.cpp `{build.llama_cpp_commit}` (source sha256 `{build.source_sha256}`), "
            f"patch series:", ""]
    if build.patches:
        out += ["| patch | sha256 | description |", "|---|---|---|"]
        out += [f"| `{p.get('name', '')}` | `{str(p.get('sha256', ''))[:16]}` | {p.get('description', '')} |"
                for p in build.patches if isinstance(p, dict)]
    else:
        out.append("(none recorded in this build)")
    out.append("")
    return "\n".join(out)


# --- steps ------------------------------------------------------------------------------------------


def _hf():
    from .hub import _hf as hf

    return hf()


def _api():
    """An HfApi on the HF_ENDPOINT of now (huggingface_hub reads it once, when first imported)."""
    hf, _ = _hf()
    endpoint = os.environ.get("HF_ENDPOINT")
    return hf.HfApi(endpoint=endpoint.rstrip("/") if endpoint else None)


def _hub_error(repo_id: str, what: str, exc: BaseException) -> HifikitError:
    from .hub import _first

    code = getattr(getattr(exc, "response", None), "status_code", None)
    if code == 401:
        return HifikitError(f"{repo_id}: the Hub refused the token (401) while {what}: set HF_TOKEN to a token "
                            "with write access, or 'hf auth login'")
    if code == 403:
        return HifikitError(f"{repo_id}: the token may not write here (403) while {what}")
    return HifikitError(f"{repo_id}: {what} failed: {_first(exc)}")


def _options(spec: dict[str, Any]) -> PublishOptions:
    return PublishOptions(Path(spec["directory"]), spec["repo_id"], spec.get("runs"), bool(spec.get("private")),
                          False, spec.get("base_model"), spec.get("license"), spec.get("quantized_by"),
                          int(spec.get("split_bytes") or SPLIT_BYTES))


def card_step(ctx: StepContext, spec: dict[str, Any]) -> StepOutput:
    """Write the card into the folder and split what is over the limit (when llama-gguf-split is built)."""
    opts = _options(spec)
    # split first, so the card names the shards that go up
    tool = split_tool()
    shards: dict[str, list[Path]] = {}
    for f in gguf_files(opts.directory):
        split, uploadable = split_decision(f.stat().st_size, opts.split_bytes, tool)
        if split and uploadable:
            shards[f.name] = _split(ctx, f.resolve(), opts.split_bytes)
    card = build_card(ctx.conn, opts, shards={n: [p.name for p in ps] for n, ps in shards.items()})
    target = Path(opts.directory) / CARD
    atomic.write_text(target, card.text)
    uploads: dict[str, list[list[str]]] = {}
    for e in card.files:
        if not e.uploadable:
            continue
        if e.split:
            uploads[e.name] = [[str(p), p.name] for p in shards[e.name]]
        else:
            uploads[e.name] = [[e.path, e.name]]
    uploads[CARD] = [[str(target.resolve()), CARD]]
    return StepOutput(result={"directory": str(Path(opts.directory).resolve()), "card": str(target.resolve()),
                              "metadata": card.metadata, "files": [dataclasses.asdict(f) for f in card.files],
                              "notes": card.notes, "commands": card.commands, "uploads": uploads},
                      artifacts=[db.Artifact(str(target.resolve()), "model-card", db.sha256_file(target),
                                             target.stat().st_size)])


def _split(ctx: StepContext, path: Path, limit: int) -> list[Path]:
    tool = split_tool()
    if tool is None:   # decided before the run; the build changed since
        raise HifikitError(f"{path.name}: needs {SPLIT_TOOL}, which this build does not have")
    out_dir = ctx.run_dir / "split"
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob(f"{path.stem}-*-of-*.gguf"):
        old.unlink()
    prefix = out_dir / path.stem
    with open(ctx.log_path, "a") as logf:
        proc = subprocess.run([str(tool), "--split", "--split-max-size", f"{max(limit // 10**6, 1)}M",
                               str(path), str(prefix)], stdout=logf, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise HifikitError(f"{SPLIT_TOOL} failed on {path.name} with exit code {proc.returncode} "
                           f"(log: {ctx.log_path})")
    return sorted(out_dir.glob(f"{path.stem}-*-of-*.gguf"))


def repo_step(ctx: StepContext, spec: dict[str, Any]) -> StepOutput:
    try:
        url = _api().create_repo(spec["repo_id"], private=bool(spec.get("private")), exist_ok=True,
                                 repo_type="model")
    except Exception as exc:  # noqa: BLE001 - HTTP, connection and validation errors: one line, resumable
        raise _hub_error(spec["repo_id"], "creating the repository", exc) from None
    return StepOutput(result={"url": str(url), "repo_id": spec["repo_id"], "private": bool(spec.get("private"))})


def upload_step(ctx: StepContext, spec: dict[str, Any]) -> StepOutput:
    """Upload one file (or its shards) of the card step's list; a re-run uploads it again (same content)."""
    from .hub import _progress_bars

    pieces = ctx.previous["card"]["uploads"].get(spec["file"], [])
    api = _api()
    done = []
    for local, in_repo in pieces:
        if not Path(local).is_file():
            raise HifikitError(f"{local}: gone since the card was written; publish again")
        try:
            with _progress_bars(ctx.progress):
                api.upload_file(path_or_fileobj=local, path_in_repo=in_repo, repo_id=spec["repo_id"],
                                repo_type="model", commit_message=f"hifikit publish: {in_repo}")
        except Exception as exc:  # noqa: BLE001 - HTTP, connection and validation errors: one line, resumable
            raise _hub_error(spec["repo_id"], f"uploading {in_repo}", exc) from None
        done.append(in_repo)
    return StepOutput(result={"uploaded": done})


# --- the job ----------------------------------------------------------------------------------------


def check_token(repo_id: str) -> str:
    """The user the token belongs to; one line when there is no token or the Hub refuses it."""
    hf, _ = _hf()
    token = hf.get_token()
    if not token:
        raise HifikitError("no Hugging Face token: set HF_TOKEN or run 'hf auth login'")
    try:
        who = _api().whoami(token=token)
    except Exception as exc:  # noqa: BLE001 - HTTP and connection errors: one line
        raise _hub_error(repo_id, "checking the token", exc) from None
    return str(who.get("name", ""))


def publish(opts: PublishOptions, *, conn: sqlite3.Connection | None = None,
            progress: bool | None = None) -> PublishResult:
    """Write the folder's model card and upload the folder to opts.repo_id as one tracked run."""
    conn = conn or db.connect()
    check_repo_id(opts.repo_id)
    files = gguf_files(opts.directory)
    jobs.check_positive(split_bytes=opts.split_bytes)
    for i in opts.runs or []:
        jobs.get_run(conn, int(i))
    target = atomic.check_writable(Path(opts.directory) / CARD)
    if opts.dry_run:
        card = build_card(conn, opts, files)
        atomic.write_text(target, card.text)
        return PublishResult(None, str(Path(opts.directory).resolve()), opts.repo_id, str(target.resolve()),
                             card.metadata, card.files, card.notes, [], None, True)
    check_token(opts.repo_id)
    tool = split_tool()
    names = [f.name for f in files if split_decision(f.stat().st_size, opts.split_bytes, tool)[1]]
    spec = {"directory": str(Path(opts.directory).resolve()), "repo_id": opts.repo_id,
            "runs": [int(i) for i in opts.runs] if opts.runs else None, "private": opts.private,
            "base_model": opts.base_model, "license": opts.license, "quantized_by": opts.quantized_by,
            "split_bytes": opts.split_bytes}
    steps = [jobs.StepSpec("card", "publish-card", spec),
             jobs.StepSpec("repo", "publish-repo", {"repo_id": opts.repo_id, "private": opts.private})]
    steps += [jobs.StepSpec(f"upload-{n}", "publish-upload", {"repo_id": opts.repo_id, "file": n})
              for n in [*names, CARD]]
    run = jobs.start("publish", spec, steps, progress=progress, conn=conn)
    return PublishResult.from_run(run)
