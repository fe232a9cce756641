"""Strategy files: a plan as YAML a person reads and edits, checked before it is applied.

Layout (one tensor per block, candidates on one line each, sizes in bytes)::

    format: hifikit-strategy/1
    model: /path/model-f16.gguf
    target: {kind: match, value: Q3_K_M}
    budget_bytes: 241961664
    predicted: {bytes: 241960000, mib: 230.75, bpw: 7.02, error: 1.234, lower_bound: 1.230}
    sweep: {run: 3, mode: proxy, error_scale: none}
    base_ftype: Q8_0
    imatrix: null
    tensors:
      blk.0.attn_q.weight:
        type: q8_0
        reason: best error per byte
        candidates: {q4_0: [368640, 0.0123], q5_0: [450560, 0.0061], q8_0: [696320, 0.0002]}
    fixed:
      blk.0.attn_norm.weight: f32

Only ``type`` (and ``fixed`` entries) are read back to quantize; everything
else is information. ``check`` validates an edited file against the model.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from .. import atomic, ggml, gguf_io, jobs
from . import filesize
from ..errors import HifikitError
from ..quant_rules import check_imatrix, requires_imatrix, resolve_type

if TYPE_CHECKING:  # plan.py writes strategies through this module
    from .plan import Plan

FORMAT = "hifikit-strategy/1"
HEADER = ("# hifikit strategy: one ggml type per tensor. Edit a tensor's 'type:' (or a 'fixed:' entry),\n"
          "# then 'hifikit plan --check FILE' validates it and 'hifikit quantize IN OUT --strategy FILE'\n"
          "# applies it. candidates: type: [bytes of the tensor's data, its predicted error contribution].\n")
UNQUANTIZED_BASES = ("F32", "F16", "BF16", "COPY")


def _num(x: float) -> str:
    if x == 0 or not math.isfinite(x):
        return repr(float(x))
    return f"{x:.6g}"


def _scalar(value: Any) -> str:
    """One YAML scalar, quoted only when it has to be."""
    return yaml.safe_dump(value, default_flow_style=True, width=1 << 16).strip().removesuffix("\n...").strip()


def _flow_scalar(value: Any) -> str:
    """One YAML scalar inside a flow mapping ({a: x, b: y}), where a comma must be quoted too."""
    return yaml.safe_dump([value], default_flow_style=True, width=1 << 16).strip()[1:-1]


def render(plan: Plan) -> str:
    lines = [HEADER.rstrip("\n"), f"format: {FORMAT}", f"model: {_scalar(plan.model)}",
             f"target: {{kind: {plan.target.kind}, value: {_scalar(plan.target.value)}}}",
             f"budget_bytes: {plan.budget}",
             f"predicted: {{bytes: {plan.predicted_bytes}, mib: {plan.predicted_bytes / 2**20:.3f}, "
             f"bpw: {plan.bpw:.4f}, error: {_num(plan.predicted_error)}, lower_bound: {_num(plan.lower_bound)}}}",
             f"sweep: {{run: {plan.run_id}, mode: {plan.mode}, error_scale: {plan.error_scale}}}",
             f"base_ftype: {plan.base_ftype}", f"imatrix: {_scalar(plan.imatrix)}"]
    if plan.speed:
        sp = plan.speed
        limits = ", ".join("null" if v is None else _num(v) for v in sp["limits"])
        lines.append(f"speed: {{pp_seconds: {_num(sp['pp_seconds'])}, tg_seconds: {_num(sp['tg_seconds'])}, "
                     f"n_prompt: {sp['n_prompt']}, pp_tps: {sp['pp_tps']:.2f}, tg_tps: {sp['tg_tps']:.2f}, "
                     f"limits: [{limits}], source: {_flow_scalar(sp['source'])}}}")
        ref = sp.get("reference")
        if ref:
            # what a relative limit (--max-slowdown) was measured against: the ftype's predicted times
            lines.append(f"speed_reference: {{ftype: {ref['ftype']}, pp_seconds: {_num(ref['pp_seconds'])}, "
                         f"tg_seconds: {_num(ref['tg_seconds'])}}}")
    lines.append("tensors:")
    for t in plan.tensors:
        cands = ", ".join(f"{o.type}: [{o.nbytes}, {_num(o.weighted)}]" for o in sorted(t.options, key=lambda o: o.cost))
        lines += [f"  {_scalar(t.name)}:", f"    type: {t.type}", f"    reason: {_scalar(t.reason)}"]
        if t.knee:
            lines.append(f"    knee: {t.knee}")
        lines.append(f"    candidates: {{{cands}}}")
    lines.append("fixed:" if plan.fixed else "fixed: {}")
    for name, type_name in plan.fixed.items():
        lines.append(f"  {_scalar(name)}: {type_name}")
    return "\n".join(lines) + "\n"


def write(plan: Plan, path: Path) -> None:
    atomic.write_text(Path(path), render(plan))


@dataclasses.dataclass
class Strategy:
    path: str
    model: str | None
    budget: int | None
    base_ftype: str
    imatrix: str | None
    types: dict[str, str]                       # every tensor named in 'tensors' and 'fixed'
    candidates: dict[str, dict[str, tuple[int, float]]]
    raw: dict[str, Any]


def load(path: Path | str) -> Strategy:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise HifikitError(f"{path}: cannot read ({exc.strerror})") from exc
    return loads(text, path)


def loads(text: str, path: Path | str = "<strategy>") -> Strategy:
    """A strategy from its YAML text; path names it in errors (and is its Strategy.path)."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise HifikitError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise HifikitError(f"{path}: not a hifikit strategy (expected 'format: {FORMAT}')")
    tensors = doc.get("tensors") or {}
    fixed = doc.get("fixed") or {}
    if not isinstance(tensors, dict) or not isinstance(fixed, dict):
        raise HifikitError(f"{path}: 'tensors' and 'fixed' must be mappings of tensor names")
    types: dict[str, str] = {}
    cands: dict[str, dict[str, tuple[int, float]]] = {}
    for name, entry in tensors.items():
        if not isinstance(entry, dict) or "type" not in entry:
            raise HifikitError(f"{path}: tensor {name}: expected a mapping with a 'type:' entry")
        types[str(name)] = str(entry["type"])
        c = entry.get("candidates") or {}
        if isinstance(c, dict):
            cands[str(name)] = {str(k): (int(v[0]), float(v[1])) for k, v in c.items()
                                if isinstance(v, (list, tuple)) and len(v) == 2}
    for name, type_name in fixed.items():
        if str(name) in types:
            raise HifikitError(f"{path}: tensor {name} is both in 'tensors' and in 'fixed'")
        types[str(name)] = str(type_name)
    budget = doc.get("budget_bytes")
    return Strategy(str(path), doc.get("model"), int(budget) if budget is not None else None,
                    str(doc.get("base_ftype") or "Q8_0"), doc.get("imatrix"), types, cands, doc)


@dataclasses.dataclass
class CheckResult:
    errors: list[str]
    warnings: list[str]
    bytes: int | None
    budget: int | None
    error: float | None          # predicted error of the edited types (None if one has no candidate entry)

    @property
    def ok(self) -> bool:
        return not self.errors


def check(strategy: Strategy, layout: filesize.FileLayout, imatrix_keys: filesize.ImatrixKeys | None = None
          ) -> CheckResult:
    """Every problem of an (edited) strategy against the model, each naming its tensor."""
    errors: list[str] = []
    warnings: list[str] = []
    lib = ggml.load()
    known = {t.name.lower(): t.name for t in lib.types()}
    slots = {t.name: t for t in layout.tensors}
    if strategy.base_ftype.upper() in UNQUANTIZED_BASES:
        errors.append(f"base_ftype {strategy.base_ftype}: llama-quantize applies per-tensor types only with a "
                      "quantized base ftype (e.g. Q8_0)")
    resolved: dict[str, str] = {}
    for name, type_name in strategy.types.items():
        slot = slots.get(name)
        if slot is None:
            errors.append(f"{name}: no such tensor in {layout.path}")
            continue
        canonical = known.get(type_name.lower())
        if canonical is None:
            errors.append(f"{name}: unknown type '{type_name}' (this build knows: {', '.join(sorted(known.values()))})")
            continue
        if not slot.quantizable:
            if canonical != slot.source_type:
                errors.append(f"{name}: llama-quantize does not quantize this tensor (norms, 1-D and a few named "
                              f"tensors keep their type); it stays {slot.source_type}, not {canonical}")
            resolved[name] = slot.source_type
            continue
        block = lib.type_by_name(canonical).block_size
        if slot.row_length % block:
            errors.append(f"{name}: {canonical} does not fit its rows: {slot.row_length} is not a multiple of the "
                          f"block size {block} (llama-quantize would silently use a fallback type)")
            continue
        if requires_imatrix(name, canonical, strategy.base_ftype) and not strategy.imatrix:
            errors.append(f"{name}: {canonical} needs an importance matrix and the strategy has no 'imatrix:'")
        mismatch = _shape_mismatch(slot, strategy.candidates.get(name, {}), known)
        if mismatch:
            errors.append(f"{name}: the strategy's candidates are sized for another shape ({mismatch}; this model's "
                          f"tensor is {'x'.join(map(str, slot.shape))}): a strategy of another model?")
        resolved[name] = canonical
    missing = [t.name for t in layout.tensors if t.quantizable and t.name not in strategy.types]
    for name in missing:
        errors.append(f"{name}: missing from the strategy (every quantizable tensor needs a type, "
                      "in 'tensors' or in 'fixed')")
    size = None
    predicted_error: float | None = None
    if not missing and all(n in resolved for n in strategy.types):
        types = {t.name: resolved.get(t.name, t.source_type) for t in layout.tensors}
        size = filesize.file_size(layout, types, imatrix_keys)
        if strategy.budget is not None and size > strategy.budget:
            errors.append(f"over budget: the file would be {size} bytes, {size - strategy.budget} more than "
                          f"budget_bytes {strategy.budget} ({(size - strategy.budget) / 2**20:.3f} MiB)")
        predicted_error = 0.0
        for name, type_name in resolved.items():
            if name not in strategy.candidates:
                continue
            cand = {k.lower(): v for k, v in strategy.candidates[name].items()}
            if type_name.lower() in cand:
                predicted_error += cand[type_name.lower()][1]
            else:
                warnings.append(f"{name}: {type_name} was not among its measured candidates: no predicted error")
                predicted_error = math.nan
        if math.isnan(predicted_error):
            predicted_error = None
    return CheckResult(errors, warnings, size, strategy.budget, predicted_error)


def _shape_mismatch(slot: filesize.TensorSlot, candidates: dict[str, tuple[int, float]], known: dict[str, str]
                    ) -> str | None:
    """The first candidate whose bytes this tensor's shape does not give (a strategy planned for another model)."""
    lib = ggml.load()
    for type_name, (nbytes, _) in candidates.items():
        canonical = known.get(type_name.lower())
        if canonical is None:
            continue
        t = lib.type_by_name(canonical)
        actual = t.row_size(slot.row_length) * slot.n_rows if slot.row_length % t.block_size == 0 else None
        if actual != nbytes:
            return (f"{canonical}: {nbytes} bytes in the strategy, " +
                    (f"{actual} here" if actual is not None else f"its blocks do not fit rows of {slot.row_length}"))
    return None


def overrides(strategy: Strategy, layout: filesize.FileLayout) -> list[tuple[str, str]]:
    """(anchored, escaped regex, type) for llama-quantize --tensor-type-file: every quantizable tensor."""
    out = []
    for slot in layout.tensors:
        if not slot.quantizable or slot.name not in strategy.types:
            continue
        if slot.name != slot.name.lower():
            # quantize.cpp lower-cases the pattern before compiling it
            raise HifikitError(f"{slot.name}: llama-quantize lower-cases --tensor-type patterns, so a tensor name "
                               "with capitals cannot be matched exactly")
        if any(c.isspace() for c in slot.name) or "=" in slot.name:
            raise HifikitError(f"{slot.name}: a name with spaces or '=' cannot go into a --tensor-type-file")
        out.append((regex_for(slot.name), strategy.types[slot.name]))
    return out


def regex_for(name: str) -> str:
    """^name$ with every regex metacharacter escaped (ECMAScript syntax, as std::regex reads it)."""
    special = set(r"\^$.|?*+()[]{}")
    return "^" + "".join("\\" + c if c in special else c for c in name) + "$"


def tensor_type_file(pairs: list[tuple[str, str]]) -> str:
    """The --tensor-type-file text: whitespace-separated PATTERN=TYPE tokens, one per line."""
    return "".join(f"{pattern}={type_name}\n" for pattern, type_name in pairs)


def quantize_step(src: Path, out: Path, s: Strategy, layout: filesize.FileLayout, threads: int | None,
                  expect_bytes: int | None = None, predicted_error: float | None = None,
                  name: str = "quantize") -> jobs.StepSpec:
    """A quantize step applying strategy s: --tensor-type-file with one anchored pattern per tensor, and
    every tensor's type checked in the written file (steps.py)."""
    pairs = overrides(s, layout)
    spec = {"input": str(src), "output": str(Path(out).resolve()), "ftype": resolve_type(s.base_ftype),
            "threads": threads, "tensor_types": pairs, "strategy": s.path,
            "expect_types": {n: t for n, t in s.types.items()
                             if any(slot.name == n and slot.quantizable for slot in layout.tensors)}}
    if s.imatrix:
        spec["imatrix"] = str(Path(s.imatrix).resolve())
    if expect_bytes is not None:
        spec["expect_bytes"] = expect_bytes
        spec["predicted_error"] = predicted_error
    return jobs.StepSpec(name, "quantize", spec)


@dataclasses.dataclass
class StrategyCheck:
    """`hifikit plan --check`: a strategy file checked against a model."""
    file: str
    model: str
    result: CheckResult

    @property
    def ok(self) -> bool:
        return self.result.ok


def check_file(path: Path | str, model: Path | str | None = None) -> StrategyCheck:
    """Check a strategy file against model (default: its 'model:' entry); every problem names its tensor."""
    s = load(path)
    model_arg = model or s.model
    if model_arg is None:
        raise HifikitError(f"{path}: no 'model:' entry; give the model: hifikit plan --check FILE MODEL")
    layout = filesize.FileLayout.read(gguf_io.check_model(model_arg))
    ikeys = None
    if s.imatrix:
        gguf_io.check_file(s.imatrix)
        ikeys = filesize.ImatrixKeys.from_file(s.imatrix, str(s.imatrix))
    return StrategyCheck(str(path), str(Path(layout.path)), check(s, layout, ikeys))


def prepare(path: Path | str, model: Path, imatrix: Path | None = None
            ) -> tuple[Strategy, filesize.FileLayout, CheckResult]:
    """A strategy to apply to model, with imatrix (when given) as its importance matrix, checked; one error
    line (pointing at 'hifikit plan --check') when the check fails."""
    s = load(path)
    if imatrix is not None:
        check_imatrix(imatrix)
        if s.imatrix and Path(s.imatrix).resolve() != Path(imatrix).resolve():
            raise HifikitError(f"--imatrix {imatrix} differs from the strategy's imatrix {s.imatrix}")
        s.imatrix = str(Path(imatrix).resolve())
    layout = filesize.FileLayout.read(model)
    ikeys = filesize.ImatrixKeys.from_file(s.imatrix, str(Path(s.imatrix).resolve())) if s.imatrix else None
    res = check(s, layout, ikeys)
    if not res.ok:
        raise HifikitError(f"{path}: {len(res.errors)} error(s): " + "; ".join(res.errors[:5])
                           + (" ..." if len(res.errors) > 5 else "") + f" (see 'hifikit plan --check {path}')")
    return s, layout, res
