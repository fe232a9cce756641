"""PNG plots of a plan (matplotlib, no pyplot)."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .. import ggml
from ..plots import figure, save_png, split_layer

if TYPE_CHECKING:  # plan.py draws its plans with this module
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
