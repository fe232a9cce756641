#!/usr/bin/env python3
"""Does a 16-slot Q4_K_HIFI earn its bits? (issue 4: "add a 16-slot Q4_K variant only if
measured KL divergence per bit puts it on the Pareto front").

The experiment, on the tensors of a real model that can take K-quants:

1. every such tensor is quantized -> dequantized with Q4_K, Q4_K_HIFI (8 slots),
   Q4_K_HIFI with 16 slots, Q5_K, Q5_K_HIFI and Q6_K through the built libggml-base
   (the 16-slot variant through a second libggml-base built with HIFI_OUTLIERS=16,
   see --lib16), and its relative squared weight error is recorded;
2. for each variant a copy of the F16 reference gets those tensors replaced by their
   images (every other tensor stays F16), and `hifikit eval` measures mean KL
   divergence against the reference on a text.

Only tensors whose source file stored them off the Q4_K grid are used (--source-type):
the Gemma 3 270M reference was dequantized from a Q4_K_M file, where re-quantizing a
Q4_K-stored tensor to Q4_K is nearly lossless and would favour every Q4_K variant.

    # a libggml-base with 16 slots, from the prepared source tree of a pip build:
    cp -a build/<tag>/llama.cpp-src /tmp/s16 && \
      sed -i 's/^#define HIFI_OUTLIERS 8$/#define HIFI_OUTLIERS 16/' /tmp/s16/ggml/src/ggml-common.h
    cmake -S /tmp/s16 -B /tmp/s16/build -G Ninja -DBUILD_SHARED_LIBS=ON -DLLAMA_BUILD_TOOLS=OFF \
      -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF && ninja -C /tmp/s16/build ggml-base
    python3 bench/outlier_slots.py --ref gemma-f16.gguf --source gemma-q4_k_m.gguf \
      --lib16 /tmp/s16/build/bin --text eval.txt --chunks 40 --out /tmp/slots
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hifikit import gguf_io  # noqa: E402

# (label, ggml type name, needs the 16-slot library)
VARIANTS = (
    ("q4_K", "q4_K", False),
    ("q4_K_hifi", "q4_K_hifi", False),
    ("q4_K_hifi16", "q4_K_hifi", True),
    ("q5_K", "q5_K", False),
    ("q5_K_hifi", "q5_K_hifi", False),
    ("q6_K", "q6_K", False),
)


def eligible(ref: Path, source: Path, pattern: str, source_type: str) -> list[str]:
    stored = {t.name: t.type for t in gguf_io.read_info(source).tensors}
    names = []
    for t in gguf_io.read_info(ref).tensors:
        if re.search(pattern, t.name) and t.shape[0] % 256 == 0 and stored.get(t.name, "").lower() == source_type:
            names.append(t.name)
    return names


def write_images(ref: Path, names: list[str], type_name: str, out: Path) -> dict:
    """Worker: quantize -> dequantize each tensor with the libggml-base of HIFIKIT_LIB_DIR."""
    from hifikit import ggml

    lib = ggml.load()
    qtype = lib.type_by_name(type_name)
    reader = gguf_io.open_reader(ref)
    tensors = {t.name: t for t in reader.tensors}
    sse = ssx = 0.0
    nbytes = nelem = 0
    images = {}
    for name in names:
        x = np.array(tensors[name].data, dtype=np.float32)
        x = x.reshape(-1, x.shape[-1])
        blob = lib.quantize(qtype.id, x)
        if not lib.validate(qtype.id, blob):
            raise SystemExit(f"{name}: {type_name} output fails ggml_validate_row_data")
        y = lib.dequantize(qtype.id, blob, x.shape[1])
        sse += float(((x.astype(np.float64) - y) ** 2).sum())
        ssx += float((x.astype(np.float64) ** 2).sum())
        nbytes += len(blob)
        nelem += x.size
        images[name] = y.astype(np.float16)
    np.savez(out, **images)
    return {"type_size": qtype.type_size, "bpw": 8.0 * nbytes / nelem, "rel_sq_error": sse / ssx, "bytes": nbytes}


def patched_model(ref: Path, images: Path, out: Path) -> None:
    """A copy of the F16 reference with the listed tensors' data overwritten in place."""
    tmp = out.with_suffix(".tmp")
    shutil.copyfile(ref, tmp)
    reader = gguf_io.open_reader(ref)
    offsets = {t.name: (int(t.data_offset), int(t.n_bytes)) for t in reader.tensors}
    with np.load(images) as data, open(tmp, "r+b") as f:
        for name in data.files:
            offset, size = offsets[name]
            raw = data[name].tobytes()
            assert len(raw) == size, (name, len(raw), size)
            f.seek(offset)
            f.write(raw)
    os.replace(tmp, out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ref", type=Path, required=True, help="F16 reference GGUF")
    p.add_argument("--source", type=Path, required=True, help="the quantized file the reference came from")
    p.add_argument("--source-type", default="q6_k", help="use tensors stored in this type in --source")
    p.add_argument("--pattern", default=r"ffn_down\.weight$")
    p.add_argument("--lib16", type=Path, required=True, help="dir of a libggml-base built with HIFI_OUTLIERS=16")
    p.add_argument("--text", type=Path, required=True)
    p.add_argument("--chunks", type=int, default=40)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--worker", nargs=3, metavar=("TYPE", "NAMES_JSON", "OUT_NPZ"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.worker:
        type_name, names_json, out_npz = args.worker
        print(json.dumps(write_images(args.ref, json.loads(Path(names_json).read_text()), type_name, Path(out_npz))))
        return 0

    args.out.mkdir(parents=True, exist_ok=True)
    names = eligible(args.ref, args.source, args.pattern, args.source_type)
    if not names:
        raise SystemExit("no eligible tensors")
    names_json = args.out / "tensors.json"
    names_json.write_text(json.dumps(names))
    print(f"{len(names)} tensors: {', '.join(names)}", file=sys.stderr)
    rows = []
    for label, type_name, needs16 in VARIANTS:
        env = dict(os.environ)
        if needs16:
            env["HIFIKIT_LIB_DIR"] = str(args.lib16)
        npz = args.out / f"{label}.npz"
        proc = subprocess.run([sys.executable, __file__, "--ref", str(args.ref), "--source", str(args.source),
                               "--lib16", str(args.lib16), "--text", str(args.text), "--out", str(args.out),
                               "--worker", type_name, str(names_json), str(npz)],
                              env=env, check=True, capture_output=True, text=True)
        weight = json.loads(proc.stdout)
        model = args.out / f"{label}.gguf"
        if not model.exists():
            patched_model(args.ref, npz, model)
        evaluation = subprocess.run(["hifikit", "eval", str(model), "--ref", str(args.ref), "--text", str(args.text),
                                     "--chunks", str(args.chunks), "--json"],
                                    check=True, capture_output=True, text=True)
        kld = json.loads(evaluation.stdout)
        rows.append({"variant": label, **weight, "eval": kld})
        print(json.dumps(rows[-1]["variant"]), weight, file=sys.stderr)
    (args.out / "results.json").write_text(json.dumps(rows, indent=1))
    print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
