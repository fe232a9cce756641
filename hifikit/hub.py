"""Hugging Face downloads: GGUF repos as is, safetensors repos converted to GGUF.

Downloads go through huggingface_hub (its cache, token and HF_ENDPOINT
apply). Conversion runs the pinned llama.cpp tree's convert_hf_to_gguf.py,
installed with hifikit under hifikit/convert (or found in the pristine tree
of a source checkout); its heavy dependencies are the `hifikit[convert]` extra.

``fetch(FetchOptions(repo_id, ...)) -> FetchJobResult`` is the job of
``hifikit fetch``: a download step and a conversion step, one tracked run.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import logging
import subprocess
import sys
from pathlib import Path
from typing import Iterator, Sequence

from . import atomic, db, jobs
from .errors import HifikitError
from .upstream import UpstreamError, pristine_tree

log = logging.getLogger(__name__)

CONVERT_SCRIPT = "convert_hf_to_gguf.py"
CONVERT_MODULES = ("torch", "transformers", "safetensors", "sentencepiece")


@dataclasses.dataclass
class FetchResult:
    repo_id: str
    revision: str | None
    commit: str | None
    snapshot: str
    files: list[str]
    kind: str                 # "gguf" | "safetensors"


def _hf():
    try:
        import huggingface_hub
        from huggingface_hub import errors
    except ImportError:
        raise HifikitError("huggingface_hub is missing: pip install huggingface-hub") from None
    return huggingface_hub, errors


@contextlib.contextmanager
def _progress_bars(enabled: bool | None) -> Iterator[None]:
    """huggingface_hub's progress bars off for this download when not wanted, and as they were after it."""
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    turn_off = (enabled is False or (enabled is None and not sys.stderr.isatty())) and not are_progress_bars_disabled()
    if turn_off:
        disable_progress_bars()
    try:
        yield
    finally:
        if turn_off:
            enable_progress_bars()


def download(repo_id: str, revision: str | None = None, include: list[str] | None = None,
             progress: bool | None = None) -> FetchResult:
    hf, errors = _hf()
    try:
        with _progress_bars(progress):
            snapshot = hf.snapshot_download(repo_id, revision=revision, allow_patterns=include or None)
    except errors.GatedRepoError:
        raise HifikitError(f"{repo_id} is gated: accept its terms on the Hub, then log in "
                           "('hf auth login') or set HF_TOKEN") from None
    except errors.RevisionNotFoundError:
        raise HifikitError(f"{repo_id}: revision {revision!r} does not exist") from None
    except errors.RepositoryNotFoundError:
        raise HifikitError(f"{repo_id}: no such repository on the Hub (or it is private: log in or set "
                           "HF_TOKEN)") from None
    except errors.LocalEntryNotFoundError as exc:
        raise HifikitError(f"{repo_id}: cannot reach the Hub and nothing is cached ({_first(exc)})") from None
    except errors.HfHubHTTPError as exc:
        raise HifikitError(f"{repo_id}: download failed: {_first(exc)}") from None
    root = Path(snapshot)
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    if not files:
        raise HifikitError(f"{repo_id}: nothing matched {include or 'the repository'}")
    ggufs = [f for f in files if f.endswith(".gguf")]
    kind = "gguf" if ggufs else "safetensors" if any(f.endswith(".safetensors") for f in files) else ""
    if not kind:
        raise HifikitError(f"{repo_id}: neither GGUF nor safetensors files in {', '.join(files[:8])}")
    return FetchResult(repo_id, revision, root.name, str(root), ggufs if kind == "gguf" else files, kind)


def _first(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def convert_script() -> Path:
    """convert_hf_to_gguf.py of the pinned tree: installed copy first, then the pristine source."""
    installed = Path(__file__).resolve().parent / "convert" / CONVERT_SCRIPT
    if installed.is_file():
        return installed
    try:
        script = pristine_tree(download=False) / CONVERT_SCRIPT
    except UpstreamError as exc:
        raise HifikitError(f"{CONVERT_SCRIPT} not found: reinstall hifikit ({exc})") from None
    if not script.is_file() or not (script.parent / "conversion").is_dir():
        raise HifikitError(f"{script} (with its conversion/ package) is missing")
    return script


def missing_convert_modules() -> list[str]:
    return [m for m in CONVERT_MODULES if importlib.util.find_spec(m) is None]


def convert(snapshot: Path, output: Path, outtype: str = "f16", log_path: Path | None = None) -> Path:
    missing = missing_convert_modules()
    if missing:
        raise HifikitError(f"converting safetensors needs {', '.join(missing)}: pip install 'hifikit[convert]'")
    script = convert_script()
    with atomic.output_file(output) as tmp:
        cmd = [sys.executable, str(script), str(snapshot), "--outfile", str(tmp), "--outtype", outtype]
        with open(log_path or Path("/dev/null"), "a") as logf:
            logf.write(f"$ {' '.join(cmd)}\n")
            logf.flush()
            proc = subprocess.run(cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            tail = Path(log_path).read_text(errors="replace").strip().splitlines()[-10:] if log_path else []
            raise HifikitError(f"{CONVERT_SCRIPT} failed with exit code {proc.returncode} (log: {log_path})\n"
                               + "\n".join(tail))
    return output


def models_dir() -> Path:
    return db.home() / "models"


def converted_path(result: FetchResult, outtype: str) -> Path:
    name = result.repo_id.replace("/", "--")
    return models_dir() / name / (result.commit or "unknown") / f"{result.repo_id.split('/')[-1]}-{outtype.upper()}.gguf"


@dataclasses.dataclass
class FetchOptions:
    repo_id: str
    revision: str | None = None        # a branch, tag or commit
    include: Sequence[str] | None = None   # only files matching these globs, e.g. "*Q4_K_M.gguf"
    outtype: str = "f16"               # the GGUF type when converting safetensors: f32, f16, bf16, q8_0


@dataclasses.dataclass
class FetchJobResult:
    run_id: int
    fetched: FetchResult
    models: list[str]                  # the GGUF files: downloaded, or converted
    run: dict

    @classmethod
    def from_run(cls, run: dict) -> "FetchJobResult":
        return cls(run["id"], FetchResult(**jobs.step_result(run, "fetch")),
                   jobs.step_result(run, "convert")["models"], run)


def fetch(opts: FetchOptions, *, conn=None, progress: bool | None = None) -> FetchJobResult:
    """A model from the Hugging Face Hub (safetensors converted to GGUF), as one tracked run."""
    spec = {"repo_id": opts.repo_id, "revision": opts.revision, "include": list(opts.include) if opts.include else None}
    steps = [jobs.StepSpec("fetch", "fetch", spec), jobs.StepSpec("convert", "convert", {"outtype": opts.outtype})]
    run = jobs.start("fetch", {**spec, "outtype": opts.outtype}, steps, progress=progress, conn=conn)
    return FetchJobResult.from_run(run)
