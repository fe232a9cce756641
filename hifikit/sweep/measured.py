"""The ``measured`` sensitivity sweep: drive ``llama-sensitivity`` and store its points.

The tool loads the reference model once, computes the reference next-token
distributions once (compactly: each position's top-k tokens, the tail mass and
a few tokens drawn from the tail), then for each (tensor, type) pair puts that
tensor's quantized bytes in place under the candidate type (what a file with
only this tensor quantized computes), measures the KL divergence of the output
against the reference on llama-perplexity's positions (the second half of each
chunk, as ``hifikit eval``) and restores the weights (docs/sensitivity.md).
It prints one JSON line per finished pair; each line is stored as a curve
point as soon as it arrives, so a killed sweep loses at most the pair in
flight and a second call measures only what is missing.

On a quantized baseline (``baseline``, a Q8_0 file of the model, about half the
F16's memory) the tool loads the baseline and reads each swept tensor's values
from the model file (its ``--source``); the reference distributions are the
model's, computed once by ``write_reference`` and read from that file
(``--reference-in``). A pair then measures "the baseline everywhere, this
tensor in the candidate type" against the model (docs/scale.md).
"""
from __future__ import annotations

import json
import logging
import re
import sqlite3
from pathlib import Path
from typing import Iterable

from .. import atomic, db, ggml, gguf_io, runner
from . import curves
from ..errors import HifikitError
from ..progress import Progress

log = logging.getLogger(__name__)

MODE = "measured"
TOOL = "llama-sensitivity"

# -ngl all: every layer on the offload devices
ALL_LAYERS = -1

_PROGRESS_RE = re.compile(r"^\[\s*(\d+)/\s*(\d+)\]", re.MULTILINE)


def pending_pairs(conn: sqlite3.Connection, run_id: int, pairs: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The pairs not stored yet, in the given order, without duplicates (type names compare case-blind)."""
    done = {(t, ty.lower()) for t, ty in curves.done_points(conn, run_id, MODE)}
    out: list[tuple[str, str]] = []
    seen: set[tuple[str, str]] = set()
    for tensor, type_name in pairs:
        key = (tensor, type_name.lower())
        if key in done or key in seen:
            continue
        seen.add(key)
        out.append((tensor, type_name))
    return out


def group_by_tensor(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Keep each tensor's pairs together (the tool converts a tensor to float once per run of pairs)."""
    order: dict[str, list[str]] = {}
    for tensor, type_name in pairs:
        order.setdefault(tensor, []).append(type_name)
    return [(tensor, t) for tensor, types in order.items() for t in types]


def check_pair(tensor: str, type_name: str) -> None:
    """A pair the tool can read as one 'tensor<TAB>type' line."""
    if not tensor or not type_name or any(c in tensor + type_name for c in "\t\r\n") or tensor.startswith("#"):
        raise HifikitError(f"invalid sweep pair ({tensor!r}, {type_name!r})")


def write_pairs(path: Path, pairs: list[tuple[str, str]]) -> Path:
    for tensor, type_name in pairs:
        check_pair(tensor, type_name)
    atomic.write_text(path, "".join(f"{t}\t{ty}\n" for t, ty in pairs))
    return path


def parse_line(line: str) -> tuple[str, curves.CurvePoint] | None:
    """One JSON result line of the tool -> (tensor, point); None for anything else."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        rec = json.loads(line)
        return rec["tensor"], curves.CurvePoint(str(rec["type"]), int(rec["nbytes"]), float(rec["kld"]),
                                                float(rec["kld_pm"]), float(rec["seconds"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise HifikitError(f"{TOOL} printed a malformed result line: {line[:200]}") from exc


def tool_args(model: Path, text: Path, pairs_path: Path | str, *, ctx: int, chunks: int, imatrix: Path | None,
              threads: int | None, ngl: int | None = None, device: str | None = None, baseline: Path | None = None,
              reference: Path | None = None) -> list[str]:
    """The tool's arguments; pairs_path ``-``: the pairs come on stdin, one per line (a long-lived worker).
    ngl: layers on the offload devices (the tool's default 0: all on the CPU); device: its --device list.
    baseline: the model the tool loads, `model` then the source of the swept tensors' values; it needs
    reference, the model's reference distributions (write_reference), which the tool reads instead of
    computing them."""
    if baseline is not None and reference is None:
        raise HifikitError("a sweep on a baseline needs the model's reference distributions (write_reference)")
    if baseline is not None:
        args = ["-m", str(baseline), "--source", str(model)]
    else:
        args = ["-m", str(model)]
    if reference is not None:
        args += ["--reference-in", str(reference)]
    args += ["-f", str(text), "--pairs", str(pairs_path), "-c", str(ctx), "--chunks", str(chunks)]
    if imatrix is not None:
        args += ["--imatrix", str(imatrix)]
    if threads:
        args += ["-t", str(threads)]
    if ngl is not None:
        args += ["-ngl", "all" if ngl == ALL_LAYERS else str(ngl)]
    if device:
        args += ["--device", device]
    return args


def write_reference(model: Path, text: Path, out: Path, *, ctx: int, chunks: int, threads: int | None,
                    log_path: Path, ngl: int | None = None, device: str | None = None) -> Path:
    """The model's reference distributions on the text, written to `out` by the tool (a run with no pairs and
    --reference-out; the file appears whole or not at all). The sweep's later runs read them with the same
    ctx and chunks."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    pairs_path = out.with_name(out.name + ".pairs.tsv")
    atomic.write_text(pairs_path, "")
    try:
        runner.run_tool(TOOL, [*tool_args(model, text, pairs_path, ctx=ctx, chunks=chunks, imatrix=None,
                                          threads=threads, ngl=ngl, device=device),
                               "--reference-out", str(out)], log_path=log_path)
    finally:
        pairs_path.unlink(missing_ok=True)
    if not out.is_file():
        raise HifikitError(f"{TOOL} did not write the reference {out} (log: {log_path})")
    log.info("reference distributions of %s: %s (%d bytes)", model.name, out, out.stat().st_size)
    return out


def check_baseline(model: Path, baseline: Path) -> dict[str, int]:
    """A baseline holds the model's tensors, the same names and shapes (in any type); its bytes per tensor: the
    room a candidate has in the tensor's place."""
    ours = {t.name: t for t in gguf_io.tensor_index(model).tensors}
    theirs = {t.name: t for t in gguf_io.tensor_index(baseline).tensors}
    missing = sorted(set(ours) - set(theirs))
    extra = sorted(set(theirs) - set(ours))
    if missing or extra:
        what = f"lacks tensor {missing[0]!r}" if missing else f"has a tensor the model lacks, {extra[0]!r}"
        raise HifikitError(f"the baseline {baseline} is not a quantization of {model}: it {what} "
                           f"({len(missing)} missing, {len(extra)} extra)")
    for name, t in ours.items():
        if theirs[name].shape != t.shape:
            raise HifikitError(f"the baseline {baseline} is not a quantization of {model}: tensor {name!r} is "
                               f"{'x'.join(map(str, theirs[name].shape))} there, "
                               f"{'x'.join(map(str, t.shape))} in the model")
    types = {t.id: t for t in ggml.load().types()}
    return {name: types[t.type_id].row_size(t.shape[0]) * (t.n_elements // t.shape[0])
            for name, t in theirs.items()}


def check_offload(ngl: int | None, device: str | None) -> None:
    """--ngl is a layer count >= 0; --device a non-empty comma-separated list (the tool checks the names)."""
    if ngl is not None and (isinstance(ngl, bool) or not isinstance(ngl, int) or ngl < 0):
        raise HifikitError(f"--ngl must be a number of layers >= 0, got {ngl!r}")
    if device is not None and (not device.strip() or any(c.isspace() for c in device)):
        raise HifikitError(f"--device must be a comma-separated list of device names (or none), got {device!r}")


def run_sweep(conn: sqlite3.Connection, run_id: int, model: Path, text: Path, pairs: list[tuple[str, str]], *,
              ctx: int, chunks: int, imatrix: Path | None, threads: int | None, log_path: Path,
              progress: bool | None, ngl: int | None = None, device: str | None = None,
              baseline: Path | None = None, reference: Path | None = None) -> None:
    """Measure every pair not stored yet for this run; each result is committed as it arrives. With a
    baseline, on it (tool_args), against the reference distributions in `reference`."""
    todo = group_by_tensor(pending_pairs(conn, run_id, pairs))
    n_all = len({(t, ty.lower()) for t, ty in pairs})
    n_done = n_all - len(todo)
    if not todo:
        log.info("measured sweep of run %d: all %d pairs already stored", run_id, n_all)
        return
    log.info("measured sweep of run %d: %d of %d pairs to measure", run_id, len(todo), n_all)

    log_path.parent.mkdir(parents=True, exist_ok=True)
    pairs_path = write_pairs(log_path.parent / f"measured-pairs-{run_id}.tsv", todo)
    wanted = {(t, ty.lower()) for t, ty in todo}
    stored: set[tuple[str, str]] = set()

    def on_line(line: str) -> None:
        parsed = parse_line(line)
        if parsed is None:
            return
        tensor, point = parsed
        key = (tensor, point.type.lower())
        if key not in wanted:
            raise HifikitError(f"{TOOL} reported a pair that was not asked for: {tensor} {point.type}")
        with db.transaction(conn):
            curves.store_points(conn, run_id, MODE, tensor, [point])
        stored.add(key)

    def watcher(seen: str) -> tuple[int, int] | None:
        found = _PROGRESS_RE.findall(seen[-4096:])
        if not found:
            return None
        return n_done + int(found[-1][0]), n_all

    bar = Progress("measured sweep", enabled=progress)
    bar.update(n_done, n_all)
    runner.run_tool(TOOL, tool_args(model, text, pairs_path, ctx=ctx, chunks=chunks, imatrix=imatrix,
                                    threads=threads, ngl=ngl, device=device, baseline=baseline,
                                    reference=reference),
                    log_path=log_path, progress=bar, watcher=watcher, on_line=on_line)
    missing = wanted - stored
    if missing:
        tensor, type_name = sorted(missing)[0]
        raise HifikitError(f"{TOOL} finished without measuring {len(missing)} pair(s), e.g. {tensor} {type_name} "
                           f"(log: {log_path})")
