"""The measured speed cost model: what each tensor costs in each candidate type, on this machine.

A *case* is one weight op as llama.cpp runs it in inference: MUL_MAT of an [ne0, ne1] weight
with n activation columns, or GET_ROWS of n rows (the token embedding). ``llama-costs``
(native/tools/costs) times a list of cases on a backend, with the weights in the buffer type
llama.cpp's loader picks (repacked layouts, llamafile sgemm and all), and prints one JSON line
per case; :func:`measure` stores each line in the ``costs`` table as it arrives, keyed by the
machine's fingerprint (CPU model and features or GPU, build and patch series, backend, threads),
so a killed run loses nothing already measured and a second run measures nothing stored.

Which ops a tensor runs follows llama.cpp's graph as llama-bench drives it
(:func:`tensor_ops`): every weight runs MUL_MAT over each micro-batch of the prompt and once per
generated token; the output projection (or a tied token embedding) and the last block's FFN run
only on the rows that produce logits (one per prompt in llama-bench); the token embedding runs
GET_ROWS for every token.

Prediction (:func:`predict`): per prompt and per generated token, the sum of the tensors' costs
plus a constant for everything that is not a weight op (attention, norms, activations, the
graph's own overhead), fitted once per model shape from llama-bench on a reference file
(:func:`fit_constant`) and stored with the costs.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
import math
import re
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from . import db, gguf_io, paths, quant_rules, runner
from .errors import HifikitError, ToolFailedError

log = logging.getLogger(__name__)

OPS = ("mul_mat", "get_rows")
# llama-bench's defaults: logical batch and micro-batch
N_BATCH = 2048
N_UBATCH = 512
DEFAULT_BATCH = 512
DEFAULT_GEN = 128
DEFAULT_WORKING_SET_MIB = 512
DEFAULT_REPETITIONS = 5
EXPORT_FORMAT = "hifikit-costs"
EXPORT_VERSION = 1

_BLOCK_RE = re.compile(r"^blk\.(\d+)\.")
_NO_AMX = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"


class MissingCostError(HifikitError):
    """A case the prediction needs is not in the cost table."""


@dataclasses.dataclass(frozen=True, order=True)
class Case:
    op: str        # mul_mat | get_rows
    type: str      # ggml_type_name spelling: q4_K, q3_K_hifi, f16
    ne0: int       # row length
    ne1: int       # rows
    n: int         # MUL_MAT: activation columns (tokens); GET_ROWS: rows fetched

    def arg(self) -> str:
        """The case as llama-costs reads it."""
        return f"{self.op}:{self.type}:{self.ne0}:{self.ne1}:{self.n}"


@dataclasses.dataclass(frozen=True)
class Machine:
    """Where costs were measured; ``fingerprint`` is the hash of ``description``."""
    fingerprint: str
    backend: str
    threads: int
    description: dict[str, Any]   # device, cpu, cpu_features, buffer_types, working_set_mib, build

    @property
    def label(self) -> str:
        return f"{self.description.get('device_description') or self.backend}, {self.backend}, {self.threads} threads"


@dataclasses.dataclass(frozen=True)
class Cost:
    case: Case
    seconds: float            # median over the repetitions
    seconds_min: float
    seconds_max: float
    repetitions: int
    copies: int
    buffer_type: str          # where llama.cpp would keep the weight: CPU, CPU_REPACK, AMX, CUDA0, ...
    device: str


@dataclasses.dataclass(frozen=True)
class Constant:
    """Time llama-bench spends outside the weight ops, on one model shape, prompt and generation length."""
    signature: str            # model_signature(): architecture, tensor names and shapes
    n_prompt: int
    n_gen: int
    pp_seconds: float         # per prompt of n_prompt tokens
    tg_seconds: float         # per generated token
    reference: str            # the file llama-bench ran
    reference_sha256: str
    measured_pp_tps: float
    measured_tg_tps: float
    summed_pp_seconds: float  # the reference's weight ops, from the cost table
    summed_tg_seconds: float
    repetitions: int

    @property
    def negative(self) -> bool:
        return self.pp_seconds < 0 or self.tg_seconds < 0

    @property
    def rest(self) -> tuple[float, float]:
        """Per prompt and per token, what a prediction adds to the weight ops. A negative part (llama-bench
        ran the reference faster than its summed op costs: a tiny model, or a noisy machine) is taken as 0:
        a negative rest would make any speed limit look reachable."""
        return max(self.pp_seconds, 0.0), max(self.tg_seconds, 0.0)


@dataclasses.dataclass
class CostTable:
    """Every cost and constant stored for one machine."""
    machine: Machine
    costs: dict[Case, Cost]
    constants: list[Constant]

    def seconds(self, case: Case) -> float:
        try:
            return self.costs[case].seconds
        except KeyError:
            raise MissingCostError(f"no cost for {case.arg()} on {self.machine.fingerprint} "
                                   f"({self.machine.label}): run 'hifikit costs MODEL' with that type") from None

    def constant(self, signature: str, n_prompt: int, n_gen: int) -> Constant:
        for c in self.constants:
            if (c.signature, c.n_prompt, c.n_gen) == (signature, n_prompt, n_gen):
                return c
        have = ", ".join(f"pp{c.n_prompt}/tg{c.n_gen}" for c in self.constants if c.signature == signature)
        raise MissingCostError(f"no constant for this model at pp{n_prompt}/tg{n_gen} on {self.machine.fingerprint}"
                               + (f" (stored: {have})" if have else "")
                               + ": run 'hifikit costs MODEL' with --batch/--gen")


# ---- which ops each tensor runs ------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class TensorOps:
    """The weight ops of one tensor: (op, n, times) per prompt and per generated token."""
    tensor: str
    ne0: int
    ne1: int
    type: str                                  # its type in the file it was read from
    prompt: tuple[tuple[str, int, int], ...]
    gen: tuple[tuple[str, int, int], ...]

    def cases(self, type_name: str) -> list[Case]:
        return sorted({Case(op, type_name, self.ne0, self.ne1, n) for op, n, _ in (*self.prompt, *self.gen)})


@dataclasses.dataclass(frozen=True)
class ModelOps:
    path: str
    architecture: str | None
    signature: str
    n_prompt: int
    tensors: list[TensorOps]

    def tensor(self, name: str) -> TensorOps:
        for t in self.tensors:
            if t.tensor == name:
                return t
        raise HifikitError(f"{self.path}: no planned tensor {name}")


def ubatches(n_prompt: int, n_batch: int = N_BATCH, n_ubatch: int = N_UBATCH) -> list[list[int]]:
    """The micro-batch sizes of a prompt, per llama_decode call (llama-bench's test_prompt)."""
    if n_prompt <= 0:
        raise HifikitError(f"the prompt length must be positive, got {n_prompt}")
    calls = []
    left = n_prompt
    while left > 0:
        chunk = min(left, n_batch)
        calls.append([min(n_ubatch, chunk - i) for i in range(0, chunk, n_ubatch)])
        left -= chunk
    return calls


def model_signature(index: gguf_io.TensorIndex) -> str:
    """The model's shape, not its types: files quantized from one model share it."""
    h = hashlib.sha256((index.architecture or "").encode())
    for t in sorted(index.tensors, key=lambda t: t.name):
        h.update(f"\n{t.name}:{'x'.join(map(str, t.shape))}".encode())
    return h.hexdigest()[:16]


def _counted(items: Iterable[tuple[str, int]]) -> tuple[tuple[str, int, int], ...]:
    counts: dict[tuple[str, int], int] = {}
    for key in items:
        counts[key] = counts.get(key, 0) + 1
    return tuple((op, n, k) for (op, n), k in sorted(counts.items()))


def tensor_ops(model: Path | str | gguf_io.TensorIndex, n_prompt: int = DEFAULT_BATCH) -> ModelOps:
    """The weight ops of every tensor llama-quantize would quantize, for a prompt of n_prompt tokens."""
    index = model if isinstance(model, gguf_io.TensorIndex) else gguf_io.tensor_index(model)
    names = {t.id: t.name for t in _ggml_types()}
    quantizable = [t for t in index.tensors if quant_rules.allows_quantization(t.name, t.shape, index.architecture)]
    blocks = [int(m.group(1)) for t in index.tensors if (m := _BLOCK_RE.match(t.name))]
    last = f"blk.{max(blocks)}." if blocks else None
    tied = not any(t.name == "output.weight" for t in index.tensors)
    calls = ubatches(n_prompt)
    every_ubatch = [u for call in calls for u in call]
    out = []
    for t in quantizable:
        if len(t.shape) > 2 and any(d > 1 for d in t.shape[2:]):
            raise HifikitError(f"{index.path}: {t.name} has shape {list(t.shape)}; expert tensors (MUL_MAT_ID) "
                               "are not in the cost model yet")
        ne0, ne1 = t.shape[0], t.shape[1]
        if t.name == "token_embd.weight":
            prompt = [("get_rows", u) for u in every_ubatch]
            gen = [("get_rows", 1)]
            if tied:  # the output projection reads the same weights, on the rows that produce logits
                prompt += [("mul_mat", 1)] * len(calls)
                gen += [("mul_mat", 1)]
        elif t.name == "output.weight" or (last and t.name.startswith(last + "ffn_")):
            # after the last layer's attention only the output rows go on (inp_out_ids in src/models/*.cpp):
            # one per llama_decode call in llama-bench
            prompt, gen = [("mul_mat", 1)] * len(calls), [("mul_mat", 1)]
        else:
            prompt, gen = [("mul_mat", u) for u in every_ubatch], [("mul_mat", 1)]
        out.append(TensorOps(t.name, ne0, ne1, names.get(t.type_id, str(t.type_id)), _counted(prompt), _counted(gen)))
    if not out:
        raise HifikitError(f"{index.path}: no tensor that llama-quantize would quantize")
    return ModelOps(index.path, index.architecture, model_signature(index), n_prompt, out)


def _ggml_types():
    from . import ggml
    return ggml.load().types()


def candidate_types(model: Path | str, types: Sequence[str] | None = None) -> dict[str, list[str]]:
    """Per tensor, the candidate types of the sweep's proxy.candidates() (block size divides the row length)."""
    from .sweep import proxy  # the sweep loads libggml; only the planning of cases needs it
    return {c.tensor: list(c.types) for c in proxy.candidates(model, types)}


def cases_for(ops: ModelOps, types_by_tensor: Mapping[str, Iterable[str]]) -> list[Case]:
    """Every distinct case the tensors need in the given types."""
    by_name = {t.tensor: t for t in ops.tensors}
    out: set[Case] = set()
    for name, types in types_by_tensor.items():
        if name not in by_name:
            continue
        for type_name in types:
            out.update(by_name[name].cases(type_name))
    return sorted(out)


# ---- per-tensor costs and prediction -------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class TensorCost:
    pp_seconds: float    # per prompt
    tg_seconds: float    # per generated token


@dataclasses.dataclass
class ModelCosts:
    """Per tensor and type, what it adds to a prompt and to a generated token, on one machine."""
    machine: Machine
    signature: str
    n_prompt: int
    tensors: dict[str, dict[str, TensorCost]]

    def cost(self, tensor: str, type_name: str) -> TensorCost:
        try:
            return self.tensors[tensor][type_name]
        except KeyError:
            known = ", ".join(self.tensors.get(tensor, {})) or "none"
            raise MissingCostError(f"no cost for {tensor} as {type_name} (costed types: {known})") from None


@dataclasses.dataclass(frozen=True)
class Prediction:
    pp_seconds: float    # one prompt of n_prompt tokens
    tg_seconds: float    # one generated token
    n_prompt: int

    @property
    def pp_tps(self) -> float:
        return self.n_prompt / self.pp_seconds

    @property
    def tg_tps(self) -> float:
        return 1.0 / self.tg_seconds

    def __iter__(self):
        """``pp_seconds, tg_seconds = predict(...)``"""
        return iter((self.pp_seconds, self.tg_seconds))


def tensor_cost(t: TensorOps, type_name: str, table: CostTable) -> TensorCost:
    pp = sum(k * table.seconds(Case(op, type_name, t.ne0, t.ne1, n)) for op, n, k in t.prompt)
    tg = sum(k * table.seconds(Case(op, type_name, t.ne0, t.ne1, n)) for op, n, k in t.gen)
    return TensorCost(pp, tg)


def model_costs(ops: ModelOps, table: CostTable,
                types_by_tensor: Mapping[str, Iterable[str]] | None = None) -> ModelCosts:
    """Per tensor, per type: seconds added per prompt and per token.

    With ``types_by_tensor`` every listed type must be costed (MissingCostError otherwise); without
    it, every type the table has all cases for.
    """
    out: dict[str, dict[str, TensorCost]] = {}
    stored = {c.type for c in table.costs}
    for t in ops.tensors:
        per: dict[str, TensorCost] = {}
        if types_by_tensor is not None:
            for type_name in types_by_tensor.get(t.tensor, ()):
                per[type_name] = tensor_cost(t, type_name, table)
        else:
            for type_name in sorted(stored):
                try:
                    per[type_name] = tensor_cost(t, type_name, table)
                except MissingCostError:
                    continue
        out[t.tensor] = per
    return ModelCosts(table.machine, ops.signature, ops.n_prompt, out)


def predict(types_by_tensor: Mapping[str, str], costs: ModelCosts, constant: Constant) -> Prediction:
    """Seconds per prompt and per generated token of a file with these tensor types.

    The sum over the model's costed tensors (each must be in ``types_by_tensor``) plus the constant.
    """
    if constant.signature != costs.signature or constant.n_prompt != costs.n_prompt:
        raise HifikitError(f"the constant (model {constant.signature}, pp{constant.n_prompt}) does not belong to "
                           f"these costs (model {costs.signature}, pp{costs.n_prompt})")
    weights = summed(types_by_tensor, costs)
    if constant.negative:
        log.warning("the cost model's constant is negative (%.4g s per prompt, %.4g s per token): the op costs "
                    "exceed llama-bench's time on %s; taken as 0", constant.pp_seconds, constant.tg_seconds,
                    Path(constant.reference).name)
    pp, tg = constant.rest
    return Prediction(pp + weights.pp_seconds, tg + weights.tg_seconds, costs.n_prompt)


def summed(types_by_tensor: Mapping[str, str], costs: ModelCosts) -> TensorCost:
    """The weight ops alone: the sum of the tensors' costs in these types."""
    missing = [t for t in costs.tensors if t not in types_by_tensor]
    if missing:
        raise HifikitError(f"no type given for {len(missing)} tensor(s): {', '.join(missing[:5])}")
    pp = tg = 0.0
    for tensor in costs.tensors:
        c = costs.cost(tensor, types_by_tensor[tensor])
        pp += c.pp_seconds
        tg += c.tg_seconds
    return TensorCost(pp, tg)


def file_types(path: Path | str) -> dict[str, str]:
    """{tensor: ggml type name} from a GGUF header."""
    names = {t.id: t.name for t in _ggml_types()}
    return {t.name: names.get(t.type_id, str(t.type_id)) for t in gguf_io.tensor_index(path).tensors}


def predict_file(path: Path | str, costs: ModelCosts, constant: Constant) -> Prediction:
    """predict() for a GGUF file, its tensor types read from the header."""
    index = gguf_io.tensor_index(path)
    if model_signature(index) != costs.signature:
        raise HifikitError(f"{path} is not a file of the model these costs were made for")
    types = file_types(path)
    return predict({t: types[t] for t in costs.tensors}, costs, constant)


# ---- the machine -----------------------------------------------------------------------------------

def _build_facts() -> dict[str, Any]:
    try:
        info = paths.build_info()
    except HifikitError:
        return {}
    # the kernels themselves: a changed native/ file changes these libraries, not the manifest's names
    libraries = {}
    for stem in ("ggml-base", "ggml-cpu", "ggml-cuda"):
        try:
            libraries[stem] = db.sha256_file(paths.library(stem))[:16]
        except HifikitError:
            continue
    return {"llama_cpp_commit": info.get("llama_cpp_commit"),
            "patches": [[p.get("name"), p.get("sha256")] if isinstance(p, dict) else [p, None]
                        for p in info.get("patches", [])],
            "native": info.get("native", []),
            "options": info.get("build", {}),
            "libraries": libraries}


def fingerprint(description: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:16]


def describe(backend: str = "CPU", threads: int | None = None, working_set_mib: int = DEFAULT_WORKING_SET_MIB,
             repack: bool = True) -> Machine:
    """This machine as llama-costs sees it (the device, the CPU and its ggml features) plus the build.

    ``repack=False`` leaves out the CPU's extra buffer types, as ``llama-bench --repack 0``.
    """
    args = ["--device-info", "--device", backend, "--working-set", str(working_set_mib), "--repack", str(int(repack))]
    if threads:
        args += ["--threads", str(threads)]
    res = runner.run_tool("llama-costs", args)
    line = _json_lines(res.stdout)
    if not line:
        raise HifikitError("llama-costs --device-info printed no device line")
    dev = line[0]
    description = {
        "backend": dev["device"], "device_description": dev["description"], "cpu": dev["cpu"],
        "cpu_features": dev.get("cpu_features", {}), "buffer_types": dev.get("buffer_types", []),
        "threads": int(dev["threads"]), "working_set_mib": int(dev["working_set_mib"]),
        "repack": bool(dev.get("repack", True)), "build": _build_facts(),
    }
    return Machine(fingerprint(description), dev["device"], int(dev["threads"]), description)


def _json_lines(text: str) -> list[dict[str, Any]]:
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


# ---- the database ----------------------------------------------------------------------------------

def store_machine(conn: sqlite3.Connection, machine: Machine) -> None:
    conn.execute("INSERT OR IGNORE INTO cost_machines (fingerprint, backend, threads, description, created) "
                 "VALUES (?,?,?,?,?)",
                 (machine.fingerprint, machine.backend, machine.threads,
                  json.dumps(machine.description, sort_keys=True), time.time()))


def store_cost(conn: sqlite3.Connection, fp: str, cost: Cost, run_id: int | None = None,
               replace: bool = True) -> bool:
    verb = "INSERT OR REPLACE" if replace else "INSERT OR IGNORE"
    c = cost.case
    cur = conn.execute(
        f"{verb} INTO costs (fingerprint, op, type, ne0, ne1, n, seconds, seconds_min, seconds_max, repetitions, "
        "copies, buffer_type, device, run_id, created) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (fp, c.op, c.type, c.ne0, c.ne1, c.n, cost.seconds, cost.seconds_min, cost.seconds_max, cost.repetitions,
         cost.copies, cost.buffer_type, cost.device, run_id, time.time()))
    return cur.rowcount > 0


def store_constant(conn: sqlite3.Connection, fp: str, c: Constant, run_id: int | None = None,
                   replace: bool = True) -> bool:
    verb = "INSERT OR REPLACE" if replace else "INSERT OR IGNORE"
    cur = conn.execute(
        f"{verb} INTO cost_constants (fingerprint, signature, n_prompt, n_gen, pp_seconds, tg_seconds, reference, "
        "reference_sha256, measured_pp_tps, measured_tg_tps, summed_pp_seconds, summed_tg_seconds, repetitions, "
        "run_id, created) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (fp, c.signature, c.n_prompt, c.n_gen, c.pp_seconds, c.tg_seconds, c.reference, c.reference_sha256,
         c.measured_pp_tps, c.measured_tg_tps, c.summed_pp_seconds, c.summed_tg_seconds, c.repetitions, run_id,
         time.time()))
    return cur.rowcount > 0


def stored_cases(conn: sqlite3.Connection, fp: str, run_id: int | None = None) -> set[Case]:
    """The cases stored for a machine (measured by ``run_id`` only, when given)."""
    where, args = ("fingerprint=?", (fp,)) if run_id is None else ("fingerprint=? AND run_id=?", (fp, run_id))
    return {Case(r["op"], r["type"], r["ne0"], r["ne1"], r["n"]) for r in conn.execute(
        f"SELECT op, type, ne0, ne1, n FROM costs WHERE {where}", args)}


def machines(conn: sqlite3.Connection) -> list[Machine]:
    return [_machine(r) for r in conn.execute("SELECT * FROM cost_machines ORDER BY created")]


def _machine(row: sqlite3.Row) -> Machine:
    return Machine(row["fingerprint"], row["backend"], row["threads"], json.loads(row["description"]))


def load_table(conn: sqlite3.Connection, fp: str) -> CostTable:
    """Every cost and constant of one machine (a fingerprint, or a unique prefix of one)."""
    rows = conn.execute("SELECT * FROM cost_machines WHERE fingerprint LIKE ?", (fp + "%",)).fetchall()
    if len(rows) != 1:
        known = ", ".join(m.fingerprint for m in machines(conn)) or "none"
        raise HifikitError(f"{'no' if not rows else 'more than one'} cost machine '{fp}' in the runs database "
                           f"(stored: {known}; 'hifikit costs MODEL' measures, '--import FILE' adds one)")
    machine = _machine(rows[0])
    costs = {}
    for r in conn.execute("SELECT * FROM costs WHERE fingerprint=?", (machine.fingerprint,)):
        case = Case(r["op"], r["type"], r["ne0"], r["ne1"], r["n"])
        costs[case] = Cost(case, r["seconds"], r["seconds_min"], r["seconds_max"], r["repetitions"], r["copies"],
                           r["buffer_type"], r["device"])
    constants = [Constant(r["signature"], r["n_prompt"], r["n_gen"], r["pp_seconds"], r["tg_seconds"], r["reference"],
                          r["reference_sha256"], r["measured_pp_tps"], r["measured_tg_tps"], r["summed_pp_seconds"],
                          r["summed_tg_seconds"], r["repetitions"])
                 for r in conn.execute("SELECT * FROM cost_constants WHERE fingerprint=? ORDER BY created",
                                       (machine.fingerprint,))]
    return CostTable(machine, costs, constants)


def for_model(conn: sqlite3.Connection, model: Path | str, *, fingerprint: str | None = None,
              backend: str = "CPU", threads: int | None = None, n_prompt: int = DEFAULT_BATCH,
              n_gen: int = DEFAULT_GEN, types_by_tensor: Mapping[str, Iterable[str]] | None = None,
              working_set_mib: int = DEFAULT_WORKING_SET_MIB, repack: bool = True) -> tuple[ModelCosts, Constant]:
    """A model's per-tensor, per-type costs and its constant from the runs database, measuring nothing.

    The machine is ``fingerprint`` (e.g. an imported one) or, without it, this machine as
    :func:`describe` sees it with these backend/threads/working set/repack settings.
    """
    if fingerprint is None:
        fingerprint = describe(backend, threads, working_set_mib, repack).fingerprint
    table = load_table(conn, fingerprint)
    ops = tensor_ops(model, n_prompt)
    return model_costs(ops, table, types_by_tensor), table.constant(ops.signature, n_prompt, n_gen)


# ---- measuring -------------------------------------------------------------------------------------

@dataclasses.dataclass
class MeasureStats:
    cases: int          # asked for
    measured: int       # run now
    reused: int         # already stored
    seconds: float


def _cost_from_line(rec: Mapping[str, Any]) -> Cost:
    case = Case(rec["op"], rec["type"], int(rec["ne0"]), int(rec["ne1"]), int(rec["n"]))
    return Cost(case, rec["us"] * 1e-6, rec["us_min"] * 1e-6, rec["us_max"] * 1e-6, int(rec["repetitions"]),
                int(rec["copies"]), rec["buffer_type"], rec["device"])


def measure(conn: sqlite3.Connection, machine: Machine, cases: Sequence[Case], *,
            repetitions: int = DEFAULT_REPETITIONS, run_id: int | None = None, work_dir: Path | None = None,
            log_path: Path | None = None, progress=None, remeasure: bool = False) -> MeasureStats:
    """Time every case not yet stored for this machine; each result is committed as llama-costs prints it.

    ``remeasure`` times the cases again (e.g. on a quieter machine), replacing the stored ones, except
    those this run (``run_id``) already replaced: a resumed remeasuring run still redoes nothing.
    """
    start = time.monotonic()
    store_machine(conn, machine)
    if not remeasure:
        done = stored_cases(conn, machine.fingerprint)
    else:
        done = stored_cases(conn, machine.fingerprint, run_id) if run_id is not None else set()
    todo = [c for c in cases if c not in done]
    if not todo:
        return MeasureStats(len(cases), 0, len(cases), 0.0)
    work_dir = work_dir or db.home() / "cache" / "costs"
    work_dir.mkdir(parents=True, exist_ok=True)
    cases_file = work_dir / f"cases-{machine.fingerprint}.txt"
    cases_file.write_text("".join(c.arg().replace(":", " ") + "\n" for c in todo))
    args = ["--cases", cases_file, "--device", machine.backend, "--threads", str(machine.threads),
            "--working-set", str(machine.description["working_set_mib"]), "--repetitions", str(repetitions),
            "--repack", str(int(machine.description.get("repack", True)))]
    wanted = set(todo)
    count = [0]

    def on_line(line: str) -> None:
        if not line.startswith("{"):
            return
        rec = json.loads(line)
        if "op" not in rec:  # the device line: the machine must be the one the run started on
            seen = {**machine.description, "backend": rec["device"], "device_description": rec["description"],
                    "cpu": rec["cpu"], "cpu_features": rec.get("cpu_features", {}),
                    "buffer_types": rec.get("buffer_types", []), "threads": int(rec["threads"]),
                    "repack": bool(rec.get("repack", True)), "build": _build_facts()}
            if fingerprint(seen) != machine.fingerprint:
                raise HifikitError(f"llama-costs runs on another machine or build than {machine.fingerprint} "
                                   f"({machine.label}); start a new 'hifikit costs' run here")
            return
        cost = _cost_from_line(rec)
        if cost.case not in wanted:
            raise HifikitError(f"llama-costs answered a case it was not asked: {cost.case.arg()}")
        store_cost(conn, machine.fingerprint, cost, run_id)
        count[0] += 1
        if progress is not None:
            progress(len(cases) - len(todo) + count[0], len(cases))

    res = runner.run_tool("llama-costs", args, log_path=log_path, on_line=on_line, check=False)
    if res.returncode == -signal.SIGILL:
        raise HifikitError(
            f"llama-costs died of SIGILL after {count[0]} of {len(todo)} cases (kept): the build uses an instruction "
            "this CPU does not run, and llama.cpp's own tools crash on the same op (e.g. a VM that advertises AMX "
            f"but faults on its tile instructions). Rebuild without it (CMAKE_ARGS=\"-DCMAKE_C_FLAGS='{_NO_AMX}' "
            f"-DCMAKE_CXX_FLAGS='{_NO_AMX}'\" pip install ...) or measure with --no-repack")
    if res.returncode != 0:
        lines = [line for line in runner.strip_prefixes(res.stderr).splitlines() if line.strip()]
        where = f" (log: {log_path})" if log_path else ""
        raise ToolFailedError(f"llama-costs failed with exit code {res.returncode}: "
                              f"{lines[-1] if lines else 'no output'}{where}")
    if count[0] != len(todo):
        raise HifikitError(f"llama-costs timed {count[0]} of {len(todo)} cases")
    return MeasureStats(len(cases), count[0], len(cases) - len(todo), time.monotonic() - start)


def fit_constant(conn: sqlite3.Connection, machine: Machine, reference: Path, n_prompt: int, n_gen: int, *,
                 repetitions: int = 3, run_id: int | None = None, log_path: Path | None = None,
                 refit: bool = False) -> tuple[Constant, bool]:
    """The constant of this model shape: llama-bench on ``reference`` minus its summed weight-op costs.

    Returns (constant, fitted_now); a stored one is reused unless ``refit``.
    """
    from . import parsers

    index = gguf_io.tensor_index(reference)
    ops = tensor_ops(index, n_prompt)
    table = load_table(conn, machine.fingerprint)
    if not refit:
        try:
            return table.constant(ops.signature, n_prompt, n_gen), False
        except MissingCostError:
            pass
    weights = summed({t.tensor: t.type for t in ops.tensors},
                     model_costs(ops, table, {t.tensor: [t.type] for t in ops.tensors}))
    args: list[Any] = ["-m", reference, "-p", str(n_prompt), "-n", str(n_gen), "-r", str(repetitions),
                       "-t", str(machine.threads), "-o", "json", *bench_args(machine)]
    res = runner.run_tool("llama-bench", args, log_path=log_path)
    rows = parsers.parse_bench_json(res.stdout)
    pp = next((r for r in rows if r.n_prompt == n_prompt and not r.n_gen), None)
    tg = next((r for r in rows if r.n_gen == n_gen and not r.n_prompt), None)
    if pp is None or tg is None:
        raise HifikitError(f"llama-bench gave no pp{n_prompt} and tg{n_gen} rows for {reference}")
    constant = Constant(ops.signature, n_prompt, n_gen, n_prompt / pp.avg_ts - weights.pp_seconds,
                        1.0 / tg.avg_ts - weights.tg_seconds, str(Path(reference).resolve()),
                        db.file_sha256(conn, reference), pp.avg_ts, tg.avg_ts, weights.pp_seconds, weights.tg_seconds,
                        repetitions)
    if constant.pp_seconds < 0 or constant.tg_seconds < 0:
        log.warning("the weight ops of %s sum to more than llama-bench measured (constant pp %.4g s, tg %.4g s): "
                    "the costs overestimate this machine's inference", reference, constant.pp_seconds,
                    constant.tg_seconds)
    store_constant(conn, machine.fingerprint, constant, run_id)
    return constant, True


def bench_args(machine: Machine) -> list[str]:
    """llama-bench options that run as the costs were measured: the backend (no GPU for CPU costs in a
    GPU build) and, where the costs left them out, no extra CPU buffer types."""
    try:
        gpu_build = bool(paths.build_info().get("build", {}).get("GGML_CUDA"))
    except HifikitError:
        gpu_build = False
    out = [] if machine.description.get("repack", True) else ["--repack", "0"]
    if machine.backend.upper() == "CPU":
        return out + (["-dev", "none", "-ngl", "0"] if gpu_build else [])
    return out + ["-dev", machine.backend, "-ngl", "99"]


# ---- export / import -------------------------------------------------------------------------------

def export_tables(tables: Sequence[CostTable]) -> dict[str, Any]:
    return {"format": EXPORT_FORMAT, "version": EXPORT_VERSION,
            "exported": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "machines": [{"fingerprint": t.machine.fingerprint, "backend": t.machine.backend,
                          "threads": t.machine.threads, "description": t.machine.description,
                          "costs": [{**dataclasses.asdict(c.case), **{k: v for k, v in dataclasses.asdict(c).items()
                                                                      if k != "case"}}
                                    for c in sorted(t.costs.values(), key=lambda c: c.case)],
                          "constants": [dataclasses.asdict(c) for c in t.constants]} for t in tables]}


def write_export(path: Path, tables: Sequence[CostTable]) -> Path:
    from . import atomic

    atomic.write_text(path, json.dumps(export_tables(tables), indent=1) + "\n")
    return path


def read_export(path: Path | str) -> list[CostTable]:
    """The cost tables of an exported file (no database needed)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise HifikitError(f"cannot read the costs file {path}: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != EXPORT_FORMAT:
        raise HifikitError(f"{path} is not a hifikit costs file (no \"format\": \"{EXPORT_FORMAT}\")")
    if data.get("version") != EXPORT_VERSION:
        raise HifikitError(f"{path}: costs file version {data.get('version')}, this hifikit reads {EXPORT_VERSION}")
    tables = []
    try:
        for m in data["machines"]:
            machine = Machine(m["fingerprint"], m["backend"], int(m["threads"]), dict(m["description"]))
            if fingerprint(machine.description) != machine.fingerprint:
                raise HifikitError(f"{path}: machine {machine.fingerprint} does not match its description "
                                   "(edited file?)")
            costs = {}
            for c in m["costs"]:
                case = Case(c["op"], c["type"], int(c["ne0"]), int(c["ne1"]), int(c["n"]))
                if case.op not in OPS:
                    raise HifikitError(f"{path}: unknown op {case.op!r}")
                costs[case] = Cost(case, float(c["seconds"]), float(c["seconds_min"]), float(c["seconds_max"]),
                                   int(c["repetitions"]), int(c["copies"]), c["buffer_type"], c["device"])
            constants = [Constant(**k) for k in m.get("constants", [])]
            tables.append(CostTable(machine, costs, constants))
    except (KeyError, TypeError, ValueError) as exc:
        raise HifikitError(f"{path}: malformed costs file ({exc!r})") from exc
    return tables


@dataclasses.dataclass
class ImportStats:
    machines: list[str]
    costs_added: int
    costs_kept: int       # already stored here: the local measurement stays
    constants_added: int
    constants_kept: int


def import_file(conn: sqlite3.Connection, path: Path | str) -> ImportStats:
    tables = read_export(path)
    stats = ImportStats([t.machine.fingerprint for t in tables], 0, 0, 0, 0)
    with db.transaction(conn):
        for t in tables:
            store_machine(conn, t.machine)
            for c in t.costs.values():
                if store_cost(conn, t.machine.fingerprint, c, replace=False):
                    stats.costs_added += 1
                else:
                    stats.costs_kept += 1
            for k in t.constants:
                if store_constant(conn, t.machine.fingerprint, k, replace=False):
                    stats.constants_added += 1
                else:
                    stats.constants_kept += 1
    return stats


def check_batch(n: int, what: str) -> None:
    if n <= 0 or not math.isfinite(n):
        raise HifikitError(f"{what} must be positive, got {n}")
