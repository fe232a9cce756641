"""Reading GGUF files: the one module that imports gguf-py.

The build installs the patched gguf-py as ``hifikit._gguf`` so that HIFI type
ids are known; a plain ``gguf`` install is the fallback (stock types only).
"""
from __future__ import annotations

from .errors import HifikitError

try:  # the patched private copy installed with the build
    from hifikit import _gguf as gguf  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - depends on the install
    try:
        import gguf  # type: ignore[no-redef]
    except ImportError:
        gguf = None  # type: ignore[assignment]

HIFI_SUFFIX = "_HIFI"


def _require_gguf():
    if gguf is None:
        raise HifikitError("the gguf package is missing: pip install gguf (or reinstall hifikit)")
    return gguf


def hifi_type_ids() -> dict[str, int]:
    """HIFI type name -> ggml type id, as the gguf-py in use knows them."""
    g = _require_gguf()
    ids = {t.name: int(t) for t in g.GGMLQuantizationType if t.name.endswith(HIFI_SUFFIX)}
    if not ids:
        raise HifikitError(f"the gguf-py in use ({g.__name__} from {g.__file__}) has no HIFI types: "
                           "install hifikit with its build so the patched copy hifikit._gguf is used")
    return ids
