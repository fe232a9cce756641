"""Quantizing with the bundled llama-quantize: its types, the steps that run it, the checks before.

The functions here build the ``quantize`` steps of jobs (steps.py runs them);
the CLI, the demo and the planner share them.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from . import gguf_io, jobs, parsers, paths, runner
from .errors import HifikitError


def quant_options() -> dict[str, dict]:
    """name -> {ftype, desc}, as the llama-quantize of the build in use lists them (asked once per binary)."""
    exe = paths.binary("llama-quantize")
    return dict(_quant_options(str(exe.resolve()), exe.stat().st_mtime_ns))


@lru_cache(maxsize=4)
def _quant_options(exe: str, mtime_ns: int) -> dict[str, dict]:
    res = runner.run_tool("llama-quantize", ["--help"], check=False)
    return parsers.parse_quant_options(res.stdout + res.stderr)


def resolve_type(name: str) -> str:
    options = quant_options()
    for known in options:
        if known.lower() == name.lower():
            return known
    raise HifikitError(f"unknown quantization type '{name}'; this build accepts: {', '.join(options)}")


def resolve_hifi(variant: str) -> str:
    hifi = [n for n in quant_options() if "HIFI" in n.upper()]
    if not hifi:
        raise HifikitError("this build has no HIFI quantization types (llama-quantize lists none)")
    if variant:
        return resolve_type(variant if "HIFI" in variant.upper() else f"{variant}_HIFI")
    medium = [n for n in hifi if n.upper().endswith("_M")]
    return (medium or hifi)[0]


def make_step(src: Path, out: Path, ftype: str, imatrix: Path | None, threads: int | None,
              name: str = "quantize") -> jobs.StepSpec:
    spec = {"input": str(src), "output": str(out.resolve()), "ftype": ftype, "threads": threads}
    if imatrix:
        spec["imatrix"] = str(imatrix.resolve())
    return jobs.StepSpec(name, "quantize", spec)


def check_imatrix(path: Path | None) -> None:
    if path is None:
        return
    kind = gguf_io.general_type(path)
    if kind != "imatrix":
        raise HifikitError(f"{path}: not an imatrix GGUF (general.type is {kind!r})")


def strategy_step(src: Path, out: Path, s, layout, threads: int | None, expect_bytes: int | None = None,
                  predicted_error: float | None = None) -> jobs.StepSpec:
    """A quantize step applying strategy s: --tensor-type-file with one anchored pattern per tensor."""
    from .planner import strategy as strat

    pairs = strat.overrides(s, layout)
    spec = {"input": str(src), "output": str(out.resolve()), "ftype": resolve_type(s.base_ftype),
            "threads": threads, "tensor_types": pairs, "strategy": s.path,
            "expect_types": {name: t for name, t in s.types.items()
                             if any(slot.name == name and slot.quantizable for slot in layout.tensors)}}
    if s.imatrix:
        spec["imatrix"] = str(Path(s.imatrix).resolve())
    if expect_bytes is not None:
        spec["expect_bytes"] = expect_bytes
        spec["predicted_error"] = predicted_error
    return jobs.StepSpec("quantize", "quantize", spec)
