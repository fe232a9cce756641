#!/usr/bin/env python3
"""llama-sensitivity: peak memory against scored positions, and the top-k reference's KLD deficit.

Runs the installed llama-sensitivity on one model and text for every (--chunks, --top-k) of the grid,
each in a fresh child whose peak RSS is read from getrusage(RUSAGE_CHILDREN), and prints, per run, the
peak RSS, the reference's own size (as the tool reports it), the mean tail mass P(R) and each pair's KLD
relative to the exact one (--top-k 0, the whole vocabulary) of the same chunks, for each
--top-k:--tail-samples configuration.

  bench/sensitivity_memory.py [--model M.gguf --text T.txt] [--pairs 'tensor:type,...'] [-c 256]
                              [--chunks 1,4,8] [--configs 0:0,64:0,64:64,...] [--json] [--no-doc]

Without --model, the synthetic test model of tests/synthetic.py (32000-token vocabulary) and its text
are written to a temporary directory. Run it with the Python of the environment hifikit is installed
in; the table goes to the sensitivity-memory section of docs/benchmarks.md (unless --no-doc or --json).
"""
from __future__ import annotations

import argparse
import json
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# the installed hifikit, before benchmd puts the checkout on sys.path
from hifikit import paths, runner  # noqa: E402

import benchmd  # noqa: E402

PROBE = ("import resource, subprocess, sys\n"
         "p = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)\n"
         "sys.stdout.write(p.stdout)\n"
         "sys.stderr.write(p.stderr)\n"
         "print('maxrss', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)\n"
         "sys.exit(p.returncode)\n")


def run(model: Path, text: Path, pairs: Path, ctx: int, chunks: int, top_k: int, samples: int, threads: int) -> dict:
    argv = [str(paths.binary("llama-sensitivity")), "-m", str(model), "-f", str(text), "--pairs", str(pairs),
            "-c", str(ctx), "--chunks", str(chunks), "--top-k", str(top_k), "--tail-samples", str(samples),
            "-t", str(threads)]
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, env=runner.tool_env())
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(f"llama-sensitivity failed: {proc.stderr.strip().splitlines()[-2:]}")
    ref = re.search(r"the top (\d+) of (\d+) tokens per position and (\d+) tail samples, ([\d.]+) MiB", proc.stderr)
    tail = re.search(r"tail mass P\(R\) beyond the top \d+: mean (\S+), max (\S+)", proc.stderr)
    rss = int(re.search(r"^maxrss (\d+)$", proc.stderr, re.MULTILINE).group(1))
    return {"chunks": chunks, "top_k": int(ref.group(1)), "n_vocab": int(ref.group(2)), "samples": int(ref.group(3)),
            "ref_mib": float(ref.group(4)),
            "tail_mean": float(tail.group(1)), "tail_max": float(tail.group(2)), "peak_rss_mib": rss / 1024,
            "wall_s": wall, "pairs": [json.loads(line) for line in proc.stdout.splitlines()]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path)
    ap.add_argument("--text", type=Path)
    ap.add_argument("--pairs", default="blk.0.ffn_down.weight:q4_K,blk.1.attn_q.weight:q8_0")
    ap.add_argument("-c", "--ctx", type=int, default=256)
    ap.add_argument("--chunks", default="1,4,8")
    ap.add_argument("--configs", default="0:0,64:0,64:64,512:0,512:64",
                    help="--top-k:--tail-samples pairs (top-k 0: the exact reference)")
    ap.add_argument("-t", "--threads", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--no-doc", action="store_true")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="sens-mem-"))
    model, text = args.model, args.text
    if model is None or text is None:
        sys.path.insert(0, str(benchmd.REPO / "tests"))
        import synthetic

        model = model or synthetic.write_model(tmp / "tiny-f16.gguf")
        text = text or synthetic.write_text(tmp / "text.txt")
    pairs = tmp / "pairs.tsv"
    pairs.write_text("".join(p.replace(":", "\t") + "\n" for p in args.pairs.split(",")))

    machine_line = benchmd.machine()
    rows = []
    for chunks in map(int, args.chunks.split(",")):
        runs = [run(model, text, pairs, args.ctx, chunks, *map(int, c.split(":")), args.threads)
                for c in args.configs.split(",")]
        exact = next((r for r in runs if r["top_k"] == r["n_vocab"]), None)
        for r in runs:
            if exact is not None:
                r["kld_vs_exact"] = [p["kld"] / e["kld"] if e["kld"] else None
                                     for p, e in zip(r["pairs"], exact["pairs"])]
            rows.append(r)
    if args.json:
        print(json.dumps({"model": str(model), "ctx": args.ctx, "runs": rows}, indent=2))
        return 0

    n_pos = args.ctx - 1 - args.ctx // 2
    lines = [f"{'chunks':>6} {'positions':>9} {'top-k':>6} {'samples':>7} {'ref MiB':>8} {'peak RSS MiB':>12} {'P(R) mean':>9} "
             f"{'P(R) max':>8}  KLD / exact KLD per pair"]
    for r in rows:
        ratios = " ".join(f"{x:.4f}" if x is not None else "-" for x in r.get("kld_vs_exact", []))
        lines.append(f"{r['chunks']:6d} {r['chunks'] * n_pos:9d} {r['top_k']:6d} {r['samples']:7d} {r['ref_mib']:8.1f} "
                     f"{r['peak_rss_mib']:12.1f} {r['tail_mean']:9.3g} {r['tail_max']:8.3g}  {ratios}")
    table = "\n".join(lines)
    print(table)
    if not args.no_doc:
        body = (f"Model `{model.name}` ({rows[0]['n_vocab']} tokens), `-c {args.ctx}` (the second half of each chunk "
                f"scored: {n_pos} positions), `-t {args.threads}`, pairs {args.pairs}. Peak RSS of each run from "
                f"getrusage(RUSAGE_CHILDREN) of a fresh child; `top-k` = the vocabulary is the exact reference "
                f"(`--top-k 0`).\n\n```\n{table}\n```\n")
        doc = benchmd.update("sensitivity-memory", "llama-sensitivity: reference memory and the top-k bound "
                             "(bench/sensitivity_memory.py)", body, machine_line)
        print(f"wrote the sensitivity-memory section of {doc}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
