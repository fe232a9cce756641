"""PNG plots of a plan (matplotlib, no pyplot)."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .. import ggml
from ..plots import figure, save_png, split_layer

if TYPE_CHECKING:  # plan.py and front.py draw with this module
    from .front import FrontResult
    from .plan import Plan


def strategy_overview(plan: Plan, path: Path) -> Path:
    """Type per layer x tensor kind (a grid coloured by bits per weight); non-layer tensors in a top row."""
    import numpy as np

    lib = ggml.load()
    bpw = {t.name: t.bits_per_weight for t in lib.types()}
    planned = {t.name: t.type for t in plan.tensors}
    cells: dict[tuple[str, str], str] = {}
    kinds: list[str] = []
    layers: set[int] = set()
    for name, type_name in {**plan.fixed, **planned}.items():
        if name not in planned and (name.endswith("norm.weight") or type_name in ("f32",)):
            continue  # norms and other unquantized tensors carry no decision
        layer, kind = split_layer(name)
        row = "global" if layer is None else str(layer)
        if layer is not None:
            layers.add(layer)
        if kind not in kinds:
            kinds.append(kind)
        cells[(row, kind)] = type_name
    rows = ["global"] + [str(i) for i in sorted(layers)]
    rows = [r for r in rows if any((r, k) in cells for k in kinds)]
    kinds.sort(key=lambda k: (not any(("global", k) == key for key in cells), k))
    grid = np.full((len(rows), len(kinds)), np.nan)
    for (r, k), t in cells.items():
        grid[rows.index(r), kinds.index(k)] = bpw.get(t, np.nan)
    fig_w = max(6.0, 1.1 * len(kinds) + 2)
    fig_h = max(3.0, 0.32 * len(rows) + 1.6)
    fig = figure(figsize=(fig_w, fig_h))
    ax = fig.subplots()
    im = ax.imshow(grid, aspect="auto", cmap="viridis", interpolation="nearest")
    for (r, k), t in cells.items():
        ax.text(kinds.index(k), rows.index(r), t, ha="center", va="center", fontsize=7,
                color="white" if bpw.get(t, 0) < np.nanmean(grid) else "black")
    ax.set_xticks(range(len(kinds)), kinds, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=7)
    ax.set_ylabel("layer")
    fig.colorbar(im, ax=ax, label="bits per weight of the type")
    ax.set_title(f"{Path(plan.model).name}: target {plan.target.kind} {plan.target.value}, "
                 f"{plan.predicted_bytes / 2**20:.2f} MiB, predicted error {plan.predicted_error:.4g}", fontsize=9)
    fig.tight_layout()
    return save_png(fig, path, dpi=110)


def front_plot(res: FrontResult, path: Path) -> Path:
    """Predicted error against file size of the front's points, coloured by predicted generation speed
    (with the cost model); the reference ftype's size (and speed) as a dashed line."""
    fig = figure(figsize=(7.0, 4.6))
    ax = fig.subplots()
    mib = [p.predicted_bytes / 2**20 for p in res.points]
    err = [p.predicted_error for p in res.points]
    if res.n_prompt is not None:
        sc = ax.scatter(mib, err, c=[p.tg_tps for p in res.points], cmap="viridis", s=36, edgecolors="black",
                        linewidths=0.4, zorder=3)
        fig.colorbar(sc, ax=ax, label="predicted tg t/s")
        title = f"{Path(res.model).name}: front over bytes, pp{res.n_prompt} and tg time, error"
    else:
        ax.plot(mib, err, "o-", ms=5, zorder=3)
        title = f"{Path(res.model).name}: front over bytes and error (no cost model)"
    ref = res.reference
    if ref:
        label = ref["ftype"] + (f" (pred. tg {ref['tg_tps']:.1f} t/s)" if "tg_tps" in ref else "")
        ax.axvline(ref["bytes"] / 2**20, color="grey", ls="--", lw=1, label=label)
        ax.legend(fontsize=8)
    positive = [e for e in err if e > 0]
    if positive and len(positive) == len(err):
        ax.set_yscale("log")
    elif positive:
        # a lossless point (error 0, every tensor kept) has no place on a log axis: linear below the least error
        ax.set_yscale("symlog", linthresh=min(positive))
        ax.set_ylim(bottom=0)
    ax.set_xlabel("predicted file size (MiB)")
    ax.set_ylabel(f"predicted error ({res.mode} curves)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_png(fig, path, dpi=110)
