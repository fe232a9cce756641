#!/usr/bin/env python3
"""How long a strategy editor waits for a re-plan: PlanSession.plan after single pin edits, 1,000 tensors.

The model is made in memory (no GGUF, no runs database, no llama-quantize): a tied embedding of
VOCAB x EMBD rows, LAYERS layers of attn_q/k/v/output and ffn_gate/up/down (all rows multiples of
256, so every type fits) with their F32 norms, and per tensor a curve over ten types, error
w x 2^-bpw x a per-type factor (the legacy types a little worse than the K-quants at the same bits)
x noise, w log-normal per tensor. The embedding's options span more than 5 % of the budget, so the
allocation branches on it, as it does on Gemma 3 270M. The speed budget is made up as well: seconds
per prompt ~ weights x a per-type compute cost, per token ~ bytes read; its limits are a few percent
under the unlimited plan's times, so they bind.

Each edit pins one more tensor (a random planned one) to the candidate one step above or below its
type in the current plan, then times ``session.plan(target, pins)``; the median and max over the
edits are printed against the 200 ms goal, without and with the speed limits.

    python3 bench/replan.py [--layers 143] [--edits 20] [--bpw 4.8] [--seed 0] [--json]
"""
from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hifikit import ggml  # noqa: E402
from hifikit.errors import HifikitError  # noqa: E402
from hifikit.planner import filesize  # noqa: E402
from hifikit.planner import plan as planner  # noqa: E402
from hifikit.planner.session import PlanSession  # noqa: E402
from hifikit.planner.speed import SpeedLimits  # noqa: E402
from hifikit.sweep import curves  # noqa: E402

GOAL_MS = 200.0
TYPES = ("q2_K", "q3_K", "iq4_xs", "q4_0", "q4_K", "q5_0", "q5_K", "q6_K", "q8_0", "f16")
# error at equal bits per weight, relative to the K-quants
TYPE_FACTOR = {"q4_0": 1.35, "q5_0": 1.3, "q8_0": 1.0, "iq4_xs": 0.95, "f16": 1.0}
# compute per weight for a prompt (relative): the K-quants' unpacking costs more than q8_0's
PP_COST = {"q2_K": 1.3, "q3_K": 1.4, "iq4_xs": 1.5, "q4_0": 1.0, "q4_K": 1.2, "q5_0": 1.2, "q5_K": 1.3,
           "q6_K": 1.3, "q8_0": 0.8, "f16": 1.1}


def synthetic_model(layers: int, embd: int, ff: int, kv: int, vocab: int, seed: int
                    ) -> tuple[curves.Sweep, filesize.FileLayout]:
    lib = ggml.load()
    rng = random.Random(seed)
    slots: list[filesize.TensorSlot] = []

    def add(name: str, shape: tuple[int, ...], quantizable: bool) -> None:
        slots.append(filesize.TensorSlot(name, shape, "f16" if quantizable else "f32", math.prod(shape), quantizable))

    add("token_embd.weight", (embd, vocab), True)
    for b in range(layers):
        add(f"blk.{b}.attn_norm.weight", (embd,), False)
        for name, shape in (("attn_q", (embd, embd)), ("attn_k", (embd, kv)), ("attn_v", (embd, kv)),
                            ("attn_output", (embd, embd))):
            add(f"blk.{b}.{name}.weight", shape, True)
        add(f"blk.{b}.ffn_norm.weight", (embd,), False)
        for name, shape in (("ffn_gate", (embd, ff)), ("ffn_up", (embd, ff)), ("ffn_down", (ff, embd))):
            add(f"blk.{b}.{name}.weight", shape, True)
    add("output_norm.weight", (embd,), False)
    kv_sizes = {"general.architecture": 40, "llama.block_count": 30, "tokenizer.ggml.tokens": 12 * vocab,
                "tokenizer.ggml.scores": 4 * vocab + 32, "tokenizer.ggml.token_type": 4 * vocab + 32}
    layout = filesize.FileLayout("<synthetic>", kv_sizes, slots)
    tensor_curves = []
    for slot in slots:
        if not slot.quantizable:
            continue
        w = rng.lognormvariate(0.0, 1.0) * (3.0 if "ffn_down" in slot.name or "attn_v" in slot.name else 1.0)
        points = []
        for name in TYPES:
            t = lib.type_by_name(name)
            err = w * 2.0 ** -t.bits_per_weight * TYPE_FACTOR.get(name, 1.0) * rng.uniform(0.9, 1.1)
            points.append(curves.CurvePoint(t.name, t.row_size(slot.row_length) * slot.n_rows, err))
        tensor_curves.append(curves.TensorCurve(slot.name, slot.shape, slot.n_elements, slot.source_type, points))
    return curves.Sweep(0, "calibrated", tensor_curves), layout


def made_up_costs(layout: filesize.FileLayout):
    lib = ggml.load()
    slots = {s.name: s for s in layout.tensors}

    def seconds(tensor: str, type_name: str) -> tuple[float, float]:
        slot = slots[tensor]
        if not slot.quantizable:
            return 0.0, 0.0
        t = lib.type_by_name(type_name)
        nbytes = t.row_size(slot.row_length) * slot.n_rows
        return 2e-11 * slot.n_elements * PP_COST.get(t.name, 1.0), nbytes / 50e9
    return seconds


def edits(session: PlanSession, target: planner.Target, n: int, seed: int,
          speed_limits: SpeedLimits | None) -> tuple[list[float], int]:
    """Milliseconds of session.plan after each of n single pin edits, and how many edits were refused."""
    rng = random.Random(seed)
    pins: dict[str, str] = {}
    current = session.plan(target, pins, speed_limits)
    times, refused = [], 0
    while len(times) < n:
        tensor = rng.choice(session.tensors)
        opts = session.candidates(tensor)
        types = [o.type for o in opts]
        k = types.index(current.types[tensor]) + rng.choice((-1, 1))
        if not 0 <= k < len(types):
            continue
        trial = {**pins, tensor: types[k]}
        t0 = time.perf_counter()
        try:
            p = session.plan(target, trial, speed_limits)
        except HifikitError:
            refused += 1
            continue
        finally:
            elapsed = 1e3 * (time.perf_counter() - t0)
        times.append(elapsed)
        pins, current = trial, p
    return times, refused


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=143)
    ap.add_argument("--embd", type=int, default=2048)
    ap.add_argument("--ff", type=int, default=5632)
    ap.add_argument("--kv", type=int, default=512)
    ap.add_argument("--vocab", type=int, default=151936)
    ap.add_argument("--edits", type=int, default=20)
    ap.add_argument("--bpw", default="4.8")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    sweep, layout = synthetic_model(args.layers, args.embd, args.ff, args.kv, args.vocab, args.seed)
    seconds = made_up_costs(layout)
    limits_of: dict[str, tuple[float, float]] = {}

    def speed_budgets(limits: SpeedLimits, match: str | None) -> planner.SpeedBudget:
        return planner.SpeedBudget(seconds, (0.0, 0.0), limits_of["limits"], "made-up costs", 512)

    t0 = time.perf_counter()
    session = PlanSession.from_memory(sweep, layout, {}, speed_budgets=speed_budgets)
    open_ms = 1e3 * (time.perf_counter() - t0)
    target = planner.make_target(bpw=args.bpw)
    t0 = time.perf_counter()
    free = session.plan(target)
    first_ms = 1e3 * (time.perf_counter() - t0)
    pp, tg = planner.SpeedBudget(seconds, (0.0, 0.0), (None, None), "", 512).total(free.types)
    limits_of["limits"] = (0.97 * pp, 0.97 * tg)
    emb = layout.tensor("token_embd.weight")
    span = session.candidates(emb.name)[-1].cost - session.candidates(emb.name)[0].cost
    capacity = session.budget(target) - free.meta_bytes - free.fixed_bytes

    rows = []
    # the SpeedLimits only switch the made-up budget on: its limits are 3 % under the free plan's times
    for label, limits in (("no speed limit", None), ("pp and tg limits (-3 %)", SpeedLimits(min_tg=1.0))):
        times, refused = edits(session, target, args.edits, args.seed + 1, limits)
        rows.append({"case": label, "edits": len(times), "refused": refused,
                     "median_ms": statistics.median(times), "max_ms": max(times)})
    out = {"tensors": len(session.tensors), "types": len(TYPES), "budget_bytes": session.budget(target),
           "embedding_span_share": span / capacity, "open_ms": open_ms, "first_plan_ms": first_ms,
           "goal_ms": GOAL_MS, "rows": rows}
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"{out['tensors']} planned tensors x {len(TYPES)} types, target {args.bpw} bpw "
          f"({out['budget_bytes'] / 2**20:.1f} MiB); the embedding's options span "
          f"{100 * out['embedding_span_share']:.1f} % of the tensors' budget")
    print(f"session from memory (candidates, knees): {open_ms:.0f} ms; first plan {first_ms:.0f} ms")
    print(f"{'case':<26} {'edits':>5} {'median ms':>10} {'max ms':>8} {'max / goal':>10}")
    for r in rows:
        print(f"{r['case']:<26} {r['edits']:>5} {r['median_ms']:>10.1f} {r['max_ms']:>8.1f} "
              f"{r['max_ms'] / GOAL_MS:>10.2f}" + (f"  ({r['refused']} edits refused)" if r["refused"] else ""))
    print(f"goal: {GOAL_MS:.0f} ms per re-plan")
    return 0


if __name__ == "__main__":
    sys.exit(main())
