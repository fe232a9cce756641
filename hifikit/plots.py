"""The plotting helpers every plot of hifikit uses (matplotlib's object API, no pyplot).

``figure()`` makes a Figure on its own Agg canvas, so drawing a plot neither
switches the process's matplotlib backend nor opens pyplot's global figure
list: a notebook or a GUI that imports hifikit keeps its own. ``save_png`` writes
one atomically, ``png_bytes`` returns one for embedding, ``split_layer`` is the
(layer, tensor kind) of a tensor name that the type maps and grids are laid out
by.
"""
from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

from . import atomic


def figure(**kwargs: Any):
    """A matplotlib Figure (figsize=, dpi=, ...) drawn by its own Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def save_png(fig, path: Path, dpi: float | None = None, **kwargs: Any) -> Path:
    """Write the figure as a PNG atomically (temp name + rename), creating its folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic.output_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi or fig.dpi, **kwargs)
    return path


def png_bytes(fig, dpi: float = 100) -> bytes:
    """The figure as PNG bytes (cropped to what is drawn)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


_BLK_RE = re.compile(r"^blk\.(\d+)\.(.+?)(?:\.weight)?$")


def split_layer(name: str) -> tuple[int | None, str]:
    """(layer, kind) of a tensor name: blk.3.ffn_down.weight -> (3, "ffn_down"), output.weight -> (None, "output")."""
    m = _BLK_RE.match(name)
    if m:
        return int(m.group(1)), m.group(2)
    return None, name.removesuffix(".weight")
