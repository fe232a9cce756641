"""The pinned llama.cpp source: find it, verify it, patch it.

This module runs in two places: inside the CMake configure step (before
hifikit is installed, as ``python hifikit/upstream.py prepare``) and from the
installed package. It therefore uses the standard library only and no
relative imports.

Resolution order for the pristine tree:
  1. ``HIFIKIT_LLAMA_CPP_DIR`` (a pristine tree at the pin, used as is);
  2. the user cache (``$XDG_CACHE_HOME/hifikit``, default ``~/.cache/hifikit``);
  3. ``python -m pip download`` of the llama-cpp-python sdist into that cache,
     so the user's pip configuration (index, proxy, certificates) applies.
The sdist's sha256 is checked before anything is extracted.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Iterator

LLAMA_CPP_COMMIT = "0c1e57098bba43ac29e6e3b677cdceebdd22334f"
SDIST_PROJECT = "llama-cpp-python"
SDIST_VERSION = "0.3.36"
SDIST_FILENAME = "llama_cpp_python-0.3.36.tar.gz"
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
SDIST_TREE_PREFIX = "llama_cpp_python-0.3.36/vendor/llama.cpp/"
# the sdist keeps the submodule's git metadata: its HEAD names the vendored commit
SDIST_SUBMODULE_HEAD = "llama_cpp_python-0.3.36/.git/modules/vendor/llama.cpp/HEAD"

REPO_ROOT = Path(__file__).resolve().parent.parent
MANIFEST_NAME = "hifikit-source.json"
# a tree extracted from the sdist carries this file (never copied into a patched or exported tree)
PRISTINE_MARKER = ".hifikit-pristine"


class UpstreamError(RuntimeError):
    """A problem with the pinned source that the user can act on."""


# --------------------------------------------------------------------------
# locating and verifying the pristine tree


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "hifikit"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _cached_tree_dir(cache: Path) -> Path:
    return cache / f"llama.cpp-{LLAMA_CPP_COMMIT[:12]}"


def _download_sdist(cache: Path) -> Path:
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=cache))
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
           "--disable-pip-version-check", "-d", str(tmp),
           f"{SDIST_PROJECT}=={SDIST_VERSION}"]
    print(f"hifikit: downloading {SDIST_PROJECT}=={SDIST_VERSION} sdist (llama.cpp source) with pip",
          file=sys.stderr)
    # Inside `pip install .` the build runs in pip's isolated environment, whose PYTHONPATH hides
    # the interpreter's own site-packages (and pip with them). The user's pip configuration
    # (PIP_* variables, pip.conf) is kept; only the isolation is undone for this child.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONNOUSERSITE", "PIP_BUILD_TRACKER")}
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        got = tmp / SDIST_FILENAME
        if proc.returncode != 0 or not got.is_file():
            tail = "\n".join(proc.stdout.strip().splitlines()[-5:])
            raise UpstreamError(
                f"could not download {SDIST_PROJECT}=={SDIST_VERSION} with pip; set "
                f"HIFIKIT_LLAMA_CPP_DIR to a llama.cpp tree at {LLAMA_CPP_COMMIT} or put "
                f"{SDIST_FILENAME} in {cache}\n{tail}")
        target = cache / SDIST_FILENAME
        os.replace(got, target)
        return target
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _extract_tree(sdist: Path, dest: Path) -> None:
    """Extract vendor/llama.cpp from the sdist into dest, atomically."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest.parent))
    try:
        with tarfile.open(sdist, "r:gz") as tar:
            try:
                commit = tar.extractfile(SDIST_SUBMODULE_HEAD).read().decode().strip()
            except (KeyError, AttributeError):
                commit = ""
            if commit != LLAMA_CPP_COMMIT:
                raise UpstreamError(f"{sdist} vendors llama.cpp {commit or '(unknown)'}, expected {LLAMA_CPP_COMMIT}")
            members = []
            for member in tar.getmembers():
                if not member.name.startswith(SDIST_TREE_PREFIX):
                    continue
                rel = member.name[len(SDIST_TREE_PREFIX):]
                # the submodule's gitdir pointer is meaningless outside the sdist
                if not rel or rel == ".git":
                    continue
                member.name = rel
                members.append(member)
            if not members:
                raise UpstreamError(f"{sdist} holds no {SDIST_TREE_PREFIX} tree")
            tar.extractall(tmp, members=members, filter="data")
        (tmp / PRISTINE_MARKER).write_text(json.dumps(
            {"commit": LLAMA_CPP_COMMIT, "sdist_sha256": SDIST_SHA256}) + "\n")
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def pristine_tree(download: bool = True) -> Path:
    """Return a pristine llama.cpp tree at the pin, fetching it if allowed."""
    explicit = os.environ.get("HIFIKIT_LLAMA_CPP_DIR")
    if explicit:
        path = Path(explicit).expanduser().resolve()
        if not (path / "ggml" / "include" / "ggml.h").is_file():
            raise UpstreamError(f"HIFIKIT_LLAMA_CPP_DIR={explicit} is not a llama.cpp source tree")
        return path
    cache = cache_dir()
    tree = _cached_tree_dir(cache)
    if (tree / PRISTINE_MARKER).is_file():
        return tree
    sdist = cache / SDIST_FILENAME
    if not sdist.is_file():
        if not download:
            raise UpstreamError(
                f"no pinned llama.cpp source found: set HIFIKIT_LLAMA_CPP_DIR or build once with network access "
                f"(expected {sdist})")
        sdist = _download_sdist(cache)
    digest = sha256_file(sdist)
    if digest != SDIST_SHA256:
        raise UpstreamError(
            f"{sdist} has sha256 {digest}, expected {SDIST_SHA256}; delete it to download it again")
    _extract_tree(sdist, tree)
    return tree


# --------------------------------------------------------------------------
# the patch series


@dataclasses.dataclass
class Patch:
    name: str
    path: Path
    header: dict[str, str]
    files: list["FilePatch"]

    @property
    def description(self) -> str:
        return self.header.get("Description", "").split("\n", 1)[0]


@dataclasses.dataclass
class Hunk:
    old_start: int
    old_lines: list[bytes]
    new_lines: list[bytes]


@dataclasses.dataclass
class FilePatch:
    path: str
    hunks: list[Hunk]


def read_series(patches_dir: Path) -> list[str]:
    series = patches_dir / "series"
    if not series.is_file():
        return []
    names = []
    for line in series.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            names.append(line)
    return names


def parse_header(text: str) -> dict[str, str]:
    """DEP-3 fields up to the '---' line; continuation lines start with a space."""
    fields: dict[str, str] = {}
    key = None
    for line in text.splitlines():
        if line.startswith(" ") and key:
            fields[key] += "\n" + ("" if line[1:] == "." else line[1:])
        elif ":" in line:
            key, value = line.split(":", 1)
            key = key.strip()
            fields[key] = value.strip()
    return fields


_HUNK_RE = re.compile(rb"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


def parse_patch(path: Path) -> Patch:
    data = path.read_bytes()
    lines = data.splitlines(keepends=True)
    header_end = next((i for i, l in enumerate(lines) if l.rstrip(b"\r\n") == b"---"), None)
    if header_end is None:
        raise UpstreamError(f"{path.name}: no '---' line ends the patch header")
    header = parse_header(b"".join(lines[:header_end]).decode())
    if not header.get("Description"):
        raise UpstreamError(f"{path.name}: the header has no Description")
    files: list[FilePatch] = []
    i = header_end + 1
    current: FilePatch | None = None
    while i < len(lines):
        line = lines[i]
        if line.startswith(b"--- "):
            if i + 1 >= len(lines) or not lines[i + 1].startswith(b"+++ "):
                raise UpstreamError(f"{path.name}: '---' without '+++' at line {i + 1}")
            old = line[4:].split(b"\t")[0].strip().decode()
            new = lines[i + 1][4:].split(b"\t")[0].strip().decode()
            if old == "/dev/null" or new == "/dev/null":
                raise UpstreamError(f"{path.name}: creates or deletes {old} -> {new}; "
                                    "new files belong in native/, deleting upstream files is not allowed")
            if not new.startswith("b/"):
                raise UpstreamError(f"{path.name}: expected a/ b/ prefixes, got {new}")
            current = FilePatch(new[2:], [])
            files.append(current)
            i += 2
            continue
        m = _HUNK_RE.match(line)
        if m:
            if current is None:
                raise UpstreamError(f"{path.name}: hunk before any file header at line {i + 1}")
            old_count = int(m.group(2) or b"1")
            new_count = int(m.group(4) or b"1")
            old_lines: list[bytes] = []
            new_lines: list[bytes] = []
            i += 1
            while (len(old_lines) < old_count or len(new_lines) < new_count) and i < len(lines):
                body = lines[i]
                tag, rest = body[:1], body[1:]
                if tag == b" " or body in (b"\n", b"\r\n"):
                    rest = rest if tag == b" " else body
                    old_lines.append(rest)
                    new_lines.append(rest)
                elif tag == b"-":
                    old_lines.append(rest)
                elif tag == b"+":
                    new_lines.append(rest)
                elif tag == b"\\":
                    pass
                else:
                    raise UpstreamError(f"{path.name}: malformed hunk line {i + 1}")
                i += 1
                # "\ No newline at end of file" refers to the line just read
                if i < len(lines) and lines[i].startswith(b"\\"):
                    prev = body[:1]
                    target = new_lines if prev == b"+" else old_lines
                    target[-1] = target[-1].rstrip(b"\r\n")
                    if prev == b" ":
                        new_lines[-1] = new_lines[-1].rstrip(b"\r\n")
                    i += 1
            if len(old_lines) != old_count or len(new_lines) != new_count:
                raise UpstreamError(f"{path.name}: truncated hunk in {current.path}")
            current.hunks.append(Hunk(int(m.group(1)), old_lines, new_lines))
            continue
        i += 1
    if not files:
        raise UpstreamError(f"{path.name}: contains no file changes")
    return Patch(path.name, path, header, files)


def load_series(patches_dir: Path) -> list[Patch]:
    patches = []
    for name in read_series(patches_dir):
        path = patches_dir / name
        if not path.is_file():
            raise UpstreamError(f"patches/series names {name}, which does not exist")
        patches.append(parse_patch(path))
    return patches


def apply_patch(tree: Path, patch: Patch) -> None:
    """Apply strictly: every hunk must match at its stated line, no offset, no fuzz."""
    for fp in patch.files:
        target = tree / fp.path
        if not target.is_file():
            raise UpstreamError(f"{patch.name}: {fp.path} does not exist in the tree")
        lines = target.read_bytes().splitlines(keepends=True)
        shift = 0  # lines added minus removed by earlier hunks of this file
        for hunk in fp.hunks:
            start = hunk.old_start - 1 + shift if hunk.old_lines else hunk.old_start + shift
            if lines[start:start + len(hunk.old_lines)] != hunk.old_lines:
                raise UpstreamError(
                    f"{patch.name}: hunk at {fp.path}:{hunk.old_start} does not apply exactly "
                    "(offset and fuzz are refused)")
            lines[start:start + len(hunk.old_lines)] = hunk.new_lines
            shift += len(hunk.new_lines) - len(hunk.old_lines)
        target.write_bytes(b"".join(lines))


def native_files(native_dir: Path) -> list[str]:
    if not native_dir.is_dir():
        return []
    return sorted(str(p.relative_to(native_dir)) for p in native_dir.rglob("*") if p.is_file())


def overlay_native(tree: Path, native_dir: Path, pristine: Path) -> None:
    for rel in native_files(native_dir):
        if (pristine / rel).exists():
            raise UpstreamError(f"native/{rel} would replace an upstream file; change it with a patch instead")
        dest = tree / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(native_dir / rel, dest)


def _walk(root: Path) -> Iterator[str]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != ".git"]
        for name in filenames:
            yield os.path.relpath(os.path.join(dirpath, name), root)


def build_patched_tree(out: Path, patches_dir: Path, native_dir: Path,
                       pristine: Path | None = None) -> dict:
    """Make out a patched copy of the pristine tree; return its manifest.

    Files whose content does not change keep their mtime, so an incremental
    build after editing one patch recompiles only what that patch touches.
    """
    pristine = pristine or pristine_tree()
    series = load_series(patches_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=out.parent))
    try:
        shutil.copytree(pristine, staging, dirs_exist_ok=True, symlinks=True,
                        ignore=shutil.ignore_patterns(".git", PRISTINE_MARKER))
        for patch in series:
            apply_patch(staging, patch)
        overlay_native(staging, native_dir, pristine)
        manifest = {
            "llama_cpp_commit": LLAMA_CPP_COMMIT,
            "sdist": SDIST_FILENAME,
            "sdist_sha256": SDIST_SHA256,
            "patches": [{"name": p.name, "description": p.description,
                         "sha256": sha256_file(p.path)} for p in series],
            "native": native_files(native_dir),
        }
        (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
        _sync(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


def _sync(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    wanted = set(_walk(src))
    for rel in wanted:
        s, d = src / rel, dst / rel
        if s.is_symlink():
            if d.is_symlink() and os.readlink(s) == os.readlink(d):
                continue
            d.unlink(missing_ok=True)
            d.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(os.readlink(s), d)
            continue
        if d.is_file() and not d.is_symlink() and d.stat().st_size == s.stat().st_size \
                and d.read_bytes() == s.read_bytes():
            continue
        d.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(s, d)
    for rel in set(_walk(dst)) - wanted:
        (dst / rel).unlink()


def check_series(patches_dir: Path, native_dir: Path, pristine: Path | None = None) -> list[Patch]:
    """Apply the series to a throw-away copy of the files it touches."""
    pristine = pristine or pristine_tree()
    series = load_series(patches_dir)
    touched = {fp.path for p in series for fp in p.files}
    with tempfile.TemporaryDirectory(prefix="hifikit-check-") as tmp:
        tree = Path(tmp)
        for rel in touched:
            if not (pristine / rel).is_file():
                raise UpstreamError(f"series touches {rel}, which is not in the pristine tree")
            (tree / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(pristine / rel, tree / rel)
        for patch in series:
            apply_patch(tree, patch)
        overlay_native(tree, native_dir, pristine)
    listed = set(read_series(patches_dir))
    stray = sorted(p.name for p in patches_dir.glob("*.patch") if p.name not in listed)
    if stray:
        raise UpstreamError(f"patch files not in patches/series: {', '.join(stray)}")
    return series


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="upstream.py", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="write the patched source tree")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--patches", type=Path, default=REPO_ROOT / "patches")
    p.add_argument("--native", type=Path, default=REPO_ROOT / "native")
    sub.add_parser("pristine", help="print the pristine tree's path (fetching it if needed)")
    args = parser.parse_args(argv)
    try:
        if args.command == "prepare":
            manifest = build_patched_tree(args.out, args.patches, args.native)
            print(f"hifikit: llama.cpp {LLAMA_CPP_COMMIT[:12]} + {len(manifest['patches'])} patches "
                  f"+ {len(manifest['native'])} native files -> {args.out}", file=sys.stderr)
        else:
            print(pristine_tree())
    except UpstreamError as exc:
        print(f"hifikit: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
