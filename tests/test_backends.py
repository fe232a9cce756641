"""Backends without HIFI kernels must not claim the HIFI types in their supports_op.

Checked on the sources the series produces (patches applied to copies of the files they
touch; nothing is built), so a refresh or a rebase that drops a guard fails here. See
docs/backends.md for the audit these checks keep true.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from hifikit import upstream

REPO = Path(__file__).resolve().parent.parent
PATCHES = REPO / "patches"
NATIVE = REPO / "native"

METAL = "ggml/src/ggml-metal/ggml-metal-device.m"
SYCL = "ggml/src/ggml-sycl/ggml-sycl.cpp"
CUDA = "ggml/src/ggml-cuda/ggml-cuda.cu"
GGML_H = "ggml/include/ggml.h"


@pytest.fixture(scope="module")
def patched(pristine, tmp_path_factory) -> Path:
    """The files the series touches, patched (plus the backend sources read below)."""
    tree = tmp_path_factory.mktemp("patched")
    series = upstream.load_series(PATCHES)
    touched = {fp.path for p in series for fp in p.files} | {METAL, SYCL, CUDA, GGML_H}
    for rel in touched:
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(pristine / rel, tree / rel)
    for patch in series:
        upstream.apply_patch(tree, patch)
    return tree


def hifi_types(ggml_h: str) -> list[str]:
    return re.findall(r"^\s*(GGML_TYPE_Q\d_K_HIFI)\s*=", ggml_h, re.M)


def function_body(source: str, name: str) -> str:
    """The text between the braces of the definition of function `name`."""
    m = re.search(rf"^[\w \t\*]*\b{name}\s*\([^;{{]*\)\s*{{", source, re.M)
    assert m, f"no definition of {name}"
    depth, start = 0, m.end() - 1
    for i in range(start, len(source)):
        depth += {"{": 1, "}": -1}.get(source[i], 0)
        if depth == 0:
            return source[start + 1:i]
    raise AssertionError(f"unbalanced braces in {name}")


def case_block(body: str, op: str) -> str:
    """The statements of `case op:` up to the next case label of the same switch level."""
    m = re.search(rf"^([ \t]*)case {op}:[ \t]*$", body, re.M)
    assert m, f"no case {op}"
    nxt = re.compile(rf"^{m.group(1)}(case \w+:|default:)", re.M)
    end = nxt.search(body, m.end())
    return body[m.end():end.start() if end else len(body)]


def rejection_conditions(block: str) -> list[str]:
    """The conditions of every `if (...) { return false; }` in block, whitespace collapsed."""
    conds = []
    for m in re.finditer(r"\bif\s*\(", block):
        depth, i = 1, m.end()
        while depth:
            depth += {"(": 1, ")": -1}.get(block[i], 0)
            i += 1
        if re.match(r"\s*{\s*return false;\s*}", block[i:]):
            conds.append(" ".join(block[m.end():i - 1].split()))
    return conds


def missing_guards(tree: Path, types: list[str]) -> list[str]:
    """Every (backend, op, type) for which the guard is absent; empty when all are there."""
    missing = []

    metal = (tree / METAL).read_text()
    mm = rejection_conditions(function_body(metal, "ggml_metal_supports_mul_mat_op"))
    get_rows = " ".join(case_block(function_body(metal, "ggml_metal_device_supports_op"),
                                   "GGML_OP_GET_ROWS").split())
    for t in types:
        if not any(f"op->src[0]->type == {t}" in c for c in mm):
            missing.append(f"metal MUL_MAT/MUL_MAT_ID {t}")
        if f"op->src[0]->type != {t}" not in get_rows:
            missing.append(f"metal GET_ROWS {t}")

    sycl = function_body((tree / SYCL).read_text(), "do_ggml_backend_sycl_device_supports_op")
    mm = rejection_conditions(case_block(sycl, "GGML_OP_MUL_MAT_ID"))
    set_rows = rejection_conditions(case_block(sycl, "GGML_OP_SET_ROWS"))
    cpy = rejection_conditions(case_block(sycl, "GGML_OP_CPY"))
    for t in types:
        if not any(f"src0_type == {t}" in c for c in mm):
            missing.append(f"sycl MUL_MAT/MUL_MAT_ID {t}")
        if not any(f"op->type == {t}" in c for c in set_rows):
            missing.append(f"sycl SET_ROWS {t}")
        for side in ("src0_type", "src1_type"):
            if not any(f"{side} == {t}" in c for c in cpy):
                missing.append(f"sycl CPY {side} {t}")
    return missing


def test_the_series_has_four_hifi_types(patched):
    assert hifi_types((patched / GGML_H).read_text()) == [
        "GGML_TYPE_Q3_K_HIFI", "GGML_TYPE_Q4_K_HIFI", "GGML_TYPE_Q5_K_HIFI", "GGML_TYPE_Q6_K_HIFI"]


def test_metal_and_sycl_reject_every_hifi_type(patched):
    types = hifi_types((patched / GGML_H).read_text())
    assert missing_guards(patched, types) == []


def test_the_checks_see_a_missing_guard(pristine, patched):
    """On upstream's own sources (no guards) every check reports its guard missing."""
    types = hifi_types((patched / GGML_H).read_text())
    missing = missing_guards(pristine, types)
    assert len(missing) == len(types) * 2 + len(types) * 4
    assert "metal GET_ROWS GGML_TYPE_Q5_K_HIFI" in missing


def test_cuda_claims_hifi_only_where_it_has_kernels(patched):
    """CUDA lists the HIFI types for MUL_MAT/MUL_MAT_ID and GET_ROWS, nowhere else."""
    types = hifi_types((patched / GGML_H).read_text())
    body = function_body((patched / CUDA).read_text(), "ggml_backend_cuda_device_supports_op")
    for op in ("GGML_OP_MUL_MAT_ID", "GGML_OP_GET_ROWS"):
        block = case_block(body, op)
        for t in types:
            assert re.search(rf"^\s*case {t}:\s*$", block, re.M), (op, t)
    for op in ("GGML_OP_SET_ROWS", "GGML_OP_CPY", "GGML_OP_GET_ROWS_BACK", "GGML_OP_CONCAT"):
        assert "HIFI" not in case_block(body, op), op
    assert body.count("_K_HIFI") == 2 * len(types)


def test_docs_cover_every_backend_of_the_pin(pristine):
    """docs/backends.md names every ggml/src/ggml-* backend directory of the pinned tree."""
    doc = (REPO / "docs" / "backends.md").read_text()
    backends = sorted(p.name for p in (pristine / "ggml" / "src").glob("ggml-*") if p.is_dir())
    assert backends, "no backend directories in the pristine tree"
    assert [b for b in backends if f"`{b}`" not in doc] == []
