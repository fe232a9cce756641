"""git, run with a fixed identity and without the user's hooks or signing."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from .. import upstream
from ..errors import HifikitError

PRISTINE_TAG = "pristine"
_CONFIG = ["-c", "commit.gpgsign=false", "-c", "tag.gpgsign=false", "-c", "core.autocrlf=false",
           "-c", "core.hooksPath=/dev/null", "-c", "gc.auto=0", "-c", "init.defaultBranch=master",
           "-c", "advice.detachedHead=false"]


def git(repo: Path, *args: str, author: tuple[str, str] = ("hifikit", "hifikit@localhost"),
        date: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, GIT_AUTHOR_NAME=author[0], GIT_AUTHOR_EMAIL=author[1],
               GIT_COMMITTER_NAME=author[0], GIT_COMMITTER_EMAIL=author[1])
    if date:
        env.update(GIT_AUTHOR_DATE=date, GIT_COMMITTER_DATE=date)
    proc = subprocess.run(["git", *_CONFIG, "-C", str(repo), *args], env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if check and proc.returncode != 0:
        msg = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
        raise HifikitError(f"git {args[0]} failed in {repo}: {' / '.join(msg[-3:])}")
    return proc


def out(repo: Path, *args: str) -> str:
    return git(repo, *args).stdout


def init_pristine(dest: Path, pristine: Path | None = None, author: tuple[str, str] = ("hifikit", "hifikit@localhost"),
                  date: str | None = None) -> Path:
    """dest = a git repository whose first commit (tag `pristine`) is the pinned tree."""
    if shutil.which("git") is None:
        raise HifikitError("git is not installed")
    pristine = pristine or upstream.pristine_tree()
    shutil.copytree(pristine, dest, symlinks=True,
                    ignore=shutil.ignore_patterns(".git", upstream.PRISTINE_MARKER))
    git(dest, "init", "-q")
    git(dest, "add", "-A", "-f", ".")
    git(dest, "commit", "-q", "-m", f"llama.cpp {upstream.LLAMA_CPP_COMMIT}", author=author, date=date)
    git(dest, "tag", PRISTINE_TAG)
    return dest
