"""The rules of a tree's .editorconfig (and .ecrc excludes), checked on given files.

Upstream CI runs editorconfig-checker (a Go program; its PyPI wrapper downloads
the binary at install time). This implements the properties the llama.cpp tree
sets: end_of_line, insert_final_newline, trim_trailing_whitespace, charset and
indent_style (indent_size is disabled by the tree's .ecrc, as here).
"""
from __future__ import annotations

import configparser
import dataclasses
import json
import re
from pathlib import Path


@dataclasses.dataclass
class Violation:
    path: str
    line: int
    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.rule}: {self.message}"


def glob_to_regex(pattern: str) -> str:
    """EditorConfig glob -> regex on the path relative to the .editorconfig directory."""
    out, i = "", 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**", i):
            out += ".*"
            i += 2
            continue
        if c == "*":
            out += "[^/]*"
        elif c == "?":
            out += "[^/]"
        elif c == "{":
            end = pattern.find("}", i)
            if end < 0:
                out += re.escape(c)
            else:
                out += "(?:" + "|".join(re.escape(p) for p in pattern[i + 1:end].split(",")) + ")"
                i = end
        elif c == "[":
            end = pattern.find("]", i)
            if end < 0:
                out += re.escape(c)
            else:
                body = pattern[i + 1:end]
                out += "[" + ("^" + body[1:] if body.startswith("!") else body) + "]"
                i = end
        else:
            out += re.escape(c)
        i += 1
    if "/" not in pattern:
        return r"(?:.*/)?" + out + r"\Z"
    return out.lstrip("/") + r"\Z"


def properties(tree: Path, rel: str) -> dict[str, str]:
    """The effective properties of a file (later sections win; 'unset' removes)."""
    parser = configparser.ConfigParser(interpolation=None, strict=False, delimiters=("=",),
                                       comment_prefixes=("#", ";"), inline_comment_prefixes=None)
    parser.optionxform = str.lower  # type: ignore[method-assign]
    text = (tree / ".editorconfig").read_text()
    # configparser needs a section before the first key (root = true)
    parser.read_string("[__preamble__]\n" + text)
    props: dict[str, str] = {}
    for name in parser.sections():
        if name == "__preamble__":
            continue
        if re.match(glob_to_regex(name), rel):
            for key, value in parser.items(name):
                props[key] = value.strip().lower()
    return {k: v for k, v in props.items() if v != "unset"}


def excluded(tree: Path, rel: str) -> bool:
    ecrc = tree / ".ecrc"
    if not ecrc.is_file():
        return False
    return any(re.search(p, rel) for p in json.loads(ecrc.read_text()).get("Exclude", []))


def check_file(tree: Path, rel: str) -> list[Violation]:
    props = properties(tree, rel)
    data = (tree / rel).read_bytes()
    found: list[Violation] = []
    if props.get("charset") == "utf-8":
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as exc:
            found.append(Violation(rel, data[:exc.start].count(b"\n") + 1, "charset", "not valid UTF-8"))
    if props.get("insert_final_newline") == "true" and data and not data.endswith(b"\n"):
        found.append(Violation(rel, data.count(b"\n") + 1, "insert_final_newline", "no newline at end of file"))
    lines = data.split(b"\n")
    in_block_comment = False
    for n, line in enumerate(lines, 1):
        if props.get("end_of_line") == "lf" and line.endswith(b"\r"):
            found.append(Violation(rel, n, "end_of_line", "CRLF line ending"))
        body = line.rstrip(b"\r")
        if props.get("trim_trailing_whitespace") == "true" and body != body.rstrip(b" \t"):
            found.append(Violation(rel, n, "trim_trailing_whitespace", "trailing whitespace"))
        indent = body[:len(body) - len(body.lstrip(b" \t"))]
        style = props.get("indent_style")
        if style == "space" and b"\t" in indent:
            found.append(Violation(rel, n, "indent_style", "tab in indentation (indent_style = space)"))
        elif style == "tab" and indent.startswith(b" ") and not (in_block_comment and body.lstrip().startswith(b"*")):
            found.append(Violation(rel, n, "indent_style", "space indentation (indent_style = tab)"))
        stripped = body.strip()
        if stripped.startswith(b"/*") and b"*/" not in stripped:
            in_block_comment = True
        elif b"*/" in stripped:
            in_block_comment = False
    return found


def check(tree: Path, files: list[str]) -> list[Violation]:
    if not (tree / ".editorconfig").is_file():
        return []
    found: list[Violation] = []
    for rel in files:
        if (tree / rel).is_file() and not excluded(tree, rel):
            found += check_file(tree, rel)
    return found
