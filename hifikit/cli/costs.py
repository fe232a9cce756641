"""``hifikit costs MODEL``: the measured speed cost of every candidate type of every tensor, on this machine."""
from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from .. import costs, costs_job, db
from ..sweep import proxy
from ..errors import HifikitError
from ..jobs import check_positive
from .common import add_json, progress_mode
from ..tables import table
from .output import emit_json, note, say

_BLOCK_RE = re.compile(r"^blk\.\d+\.")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("costs", help="measured time of each tensor's weight op in each candidate type "
                                     "(the speed cost model), plus llama-bench's constant")
    p.add_argument("model", type=Path, nargs="?", help="GGUF of the model (any type: only its shapes matter)")
    p.add_argument("--backend", default="CPU", help="device to measure on: CPU (default) or e.g. CUDA0 in a CUDA build")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: llama-bench's)")
    p.add_argument("--types", nargs="+", default=None, metavar="TYPE",
                   help=f"candidate types (default: {' '.join(proxy.DEFAULT_TYPES)}); the model's own "
                        "types are always costed")
    p.add_argument("--batch", type=int, default=costs.DEFAULT_BATCH,
                   help=f"prompt tokens, as llama-bench -p (default {costs.DEFAULT_BATCH})")
    p.add_argument("--gen", type=int, default=costs.DEFAULT_GEN,
                   help=f"generated tokens of the constant's llama-bench run, as -n (default {costs.DEFAULT_GEN})")
    p.add_argument("--reference", type=Path, default=None,
                   help="file of the same model that llama-bench fits the constant on (default: MODEL)")
    p.add_argument("--repetitions", type=int, default=costs.DEFAULT_REPETITIONS,
                   help=f"timed repetitions per case, the median is kept (default {costs.DEFAULT_REPETITIONS})")
    p.add_argument("--bench-repetitions", type=int, default=3, help="llama-bench -r for the constant (default 3)")
    p.add_argument("--working-set", type=int, default=costs.DEFAULT_WORKING_SET_MIB, metavar="MIB",
                   help="weight bytes each repetition streams through, so weights come from memory as in a "
                        f"whole model (default {costs.DEFAULT_WORKING_SET_MIB})")
    p.add_argument("--no-repack", action="store_true",
                   help="leave out the CPU's extra buffer types (repacked layouts, AMX), as llama-bench --repack 0")
    p.add_argument("--refit", action="store_true", help="run llama-bench for the constant even if one is stored")
    p.add_argument("--remeasure", action="store_true",
                   help="time the stored cases again (e.g. on a quieter machine), replacing them")
    p.add_argument("--machine", default=None, metavar="FINGERPRINT",
                   help="show the stored (e.g. imported) costs of that machine instead of measuring")
    p.add_argument("--export", type=Path, default=None, metavar="FILE",
                   help="write the costs (this run's machine, --machine's, or without MODEL every stored one) "
                        "to a JSON file")
    p.add_argument("--import", dest="import_file", type=Path, default=None, metavar="FILE",
                   help="add the machines and costs of an exported file to the runs database")
    add_json(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    check_positive(threads=args.threads, batch=args.batch, gen=args.gen, repetitions=args.repetitions,
                   bench_repetitions=args.bench_repetitions, working_set=args.working_set)
    conn = db.connect()
    out: dict[str, Any] = {}
    if args.import_file:
        stats = costs.import_file(conn, args.import_file)
        out["import"] = stats
        if not args.json:
            note(f"imported {args.import_file}: machines {', '.join(stats.machines)}; {stats.costs_added} costs added, "
                 f"{stats.costs_kept} already stored (kept); {stats.constants_added} constants added, "
                 f"{stats.constants_kept} kept")
    if args.model is None:
        if not (args.import_file or args.export):
            raise HifikitError("give a MODEL to measure, or --import FILE / --export FILE")
        if args.export:
            fps = [args.machine] if args.machine else [m.fingerprint for m in costs.machines(conn)]
            if not fps:
                raise HifikitError("no costs stored to export (run 'hifikit costs MODEL' first)")
            costs.write_export(args.export, [costs.load_table(conn, fp) for fp in fps])
            out["export"] = {"path": str(args.export), "machines": fps}
            if not args.json:
                note(f"wrote {args.export}: {len(fps)} machine(s)")
        if args.json:
            emit_json(out)
        return 0

    if args.machine:
        res = stored(conn, args)
    else:
        opts = costs_job.CostsOptions(args.model, args.backend, args.threads, args.types, args.batch, args.gen,
                                      args.reference, args.repetitions, args.bench_repetitions, args.working_set,
                                      args.refit, not args.no_repack, args.remeasure)
        res = costs_job.start(opts, progress=progress_mode(args))
    if args.export:
        costs.write_export(args.export, [costs.load_table(conn, res.machine.fingerprint)])
        out["export"] = {"path": str(args.export), "machines": [res.machine.fingerprint]}
        if not args.json:
            note(f"wrote {args.export}")
    _render(res, args.json, out)
    return 0


def stored(conn, args: argparse.Namespace) -> costs_job.CostsResult:
    """The model's costs from a stored machine, measuring nothing."""
    table = costs.load_table(conn, args.machine)
    opts = costs_job.CostsOptions(args.model, types=args.types, n_prompt=args.batch, n_gen=args.gen)
    ops, types, _ = costs_job.plan_cases(opts)
    mc = costs.model_costs(ops, table, None if args.types is None else types)
    constant = table.constant(ops.signature, args.batch, args.gen)
    return costs_job.CostsResult(0, args.model.resolve(), ops, table.machine, {}, constant, False, mc,
                                 costs.predict_file(args.model, mc, constant))


def show(run: dict, as_json: bool) -> None:
    """`hifikit runs resume/show` of a costs run."""
    _render(costs_job.result(run), as_json, {})


def records(res: costs_job.CostsResult) -> dict[str, Any]:
    return {"run": res.run_id or None, "model": str(res.model), "machine": res.machine, "measure": res.measure,
            "constant": res.constant, "constant_fitted": res.constant_fitted,
            "prediction": {"pp_seconds": res.prediction.pp_seconds, "tg_seconds": res.prediction.tg_seconds,
                           "pp_tps": res.prediction.pp_tps, "tg_tps": res.prediction.tg_tps,
                           "n_prompt": res.prediction.n_prompt},
            "tensors": res.model_costs.tensors}


def _render(res: costs_job.CostsResult, as_json: bool, extra: dict[str, Any]) -> None:
    if as_json:
        emit_json({**records(res), **extra})
        return
    m = res.machine
    say(f"machine {m.fingerprint}: {m.label}; buffer types {', '.join(m.description.get('buffer_types', []))}")
    if res.measure:
        say(f"cases: {res.measure['cases']} ({res.measure['measured']} measured now, {res.measure['reused']} stored "
            f"before) in {res.measure['seconds']:.1f} s; run {res.run_id}")
    k = res.constant
    fitted = "fitted now" if res.constant_fitted else "stored"
    say(f"constant, pp{k.n_prompt}/tg{k.n_gen} on {Path(k.reference).name} ({fitted}): "
        f"{k.pp_seconds * 1e3:.2f} ms per prompt, {k.tg_seconds * 1e3:.3f} ms per token outside the weight ops "
        f"(llama-bench {k.measured_pp_tps:.1f} / {k.measured_tg_tps:.2f} t/s; weight ops "
        f"{k.summed_pp_seconds * 1e3:.2f} ms / {k.summed_tg_seconds * 1e3:.3f} ms)")
    say("")
    # one row per (tensor group, type): tensors of the same shape and ops, blocks folded
    groups: dict[tuple, list[str]] = {}
    for t in res.ops.tensors:
        per = res.model_costs.tensors.get(t.tensor, {})
        key = (_BLOCK_RE.sub("blk.*.", t.tensor), t.ne0, t.ne1, t.prompt, t.gen, tuple(sorted(per)))
        groups.setdefault(key, []).append(t.tensor)
    rows = []
    for key, names in sorted(groups.items(), key=lambda kv: kv[1][0]):
        key = key[0]
        per = res.model_costs.tensors[names[0]]
        for type_name, c in sorted(per.items(), key=lambda kv: kv[1].tg_seconds):
            rows.append([key if len(names) > 1 else names[0], len(names), type_name,
                         f"{c.tg_seconds * 1e6:.1f}", f"{c.pp_seconds * 1e3:.3f}"])
    say(table(["tensor", "n", "type", "tg µs/token", f"pp{res.model_costs.n_prompt} ms/prompt"], rows,
              right=[False, True, False, True, True]))
    p = res.prediction
    say(f"\npredicted for {res.model.name} (its own types): pp{p.n_prompt} {p.pp_tps:.1f} t/s, tg {p.tg_tps:.2f} t/s")
