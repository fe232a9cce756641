"""What the local web server lets through: a per-launch token, its own Host, its own Origin, chosen roots.

The server starts jobs and writes files, so a page of any other site open in
the same browser must not be able to drive it (the model is Jupyter's local
server):

- **token**: a random secret made at launch and printed with the URL. Every
  request carries it, as ``?token=`` (the URL that is printed; it is then kept
  in a ``SameSite=Strict`` HttpOnly cookie), an ``Authorization: token …`` or
  an ``X-Hifikit-Token`` header. Compared in constant time.
- **Host**: a request whose Host header is not the address the server is bound
  to (``127.0.0.1:PORT``, ``localhost:PORT``, ``[::1]:PORT`` for loopback) is
  refused, which defeats DNS rebinding: a foreign name that resolves to
  127.0.0.1 still carries its own name in Host.
- **Origin**: a state-changing request (POST, PUT, PATCH, DELETE) with an
  Origin header must come from the server's own origin (CSRF); one without an
  Origin is accepted only when its token came in a header, which a foreign page
  cannot set on a cross-site request.
- **roots**: every path a request names is resolved (symbolic links
  included) and must lie under one of the folders the user chose at launch.
"""
from __future__ import annotations

import dataclasses
import hmac
import logging
import secrets
from pathlib import Path
from typing import Iterable
from urllib.parse import parse_qs, urlsplit

from ..errors import HifikitError
from ..net import is_loopback

log = logging.getLogger(__name__)

COOKIE = "hifikit_token"
HEADER = "x-hifikit-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def new_token() -> str:
    return secrets.token_hex(24)


@dataclasses.dataclass(frozen=True)
class Policy:
    """The checks of one server launch."""
    host: str                          # the address bound
    port: int
    token: str
    roots: tuple[Path, ...]            # folders whose files requests may name (resolved)

    @classmethod
    def make(cls, host: str, port: int, roots: Iterable[Path | str], token: str | None = None) -> "Policy":
        resolved = tuple(dict.fromkeys(Path(r).expanduser().resolve() for r in roots))
        if not resolved:
            raise HifikitError("give at least one --root folder the UI may read and write under")
        for r in resolved:
            if not r.is_dir():
                raise HifikitError(f"--root {r}: not a folder")
        return cls(host, port, token or new_token(), resolved)

    @property
    def allowed_hosts(self) -> frozenset[str]:
        """Host header values of requests meant for this server."""
        names = {self.host}
        if is_loopback(self.host):
            names |= {"127.0.0.1", "localhost", "[::1]"}
        out = set()
        for n in names:
            n = f"[{n}]" if ":" in n and not n.startswith("[") else n
            out |= {f"{n}:{self.port}".lower()}
            if self.port == 80:
                out.add(n.lower())
        return frozenset(out)

    @property
    def allowed_origins(self) -> frozenset[str]:
        return frozenset(f"http://{h}" for h in self.allowed_hosts)

    def url(self, path: str = "/") -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{path}?token={self.token}"

    def token_ok(self, given: str | None) -> bool:
        return bool(given) and hmac.compare_digest(given.encode(), self.token.encode())

    def inside_roots(self, path: Path | str) -> Path:
        """The resolved path, or a HifikitError when it is outside every root."""
        raw = str(path)
        if not raw or "\x00" in raw:
            raise HifikitError("a path is needed")
        p = Path(raw).expanduser()
        resolved = (p if p.is_absolute() else self.roots[0] / p).resolve()
        for root in self.roots:
            if resolved == root or root in resolved.parents:
                return resolved
        raise HifikitError(f"{raw}: outside the folders this UI may use ({', '.join(map(str, self.roots))})")


@dataclasses.dataclass(frozen=True)
class Verdict:
    allowed: bool
    status: int = 200
    reason: str = ""
    set_cookie: bool = False           # the token came in the query: keep it in the cookie


def judge(policy: Policy, method: str, headers: dict[str, str], query: str, cookies: dict[str, str]) -> Verdict:
    """Whether one request may go on (headers with lower-case names)."""
    host = headers.get("host", "").lower()
    if host not in policy.allowed_hosts:
        return Verdict(False, 403, f"Host {host or '(none)'} is not this server's address")
    from_query = (parse_qs(query).get("token") or [None])[0]
    auth = headers.get("authorization", "")
    from_header = headers.get(HEADER) or (auth[6:].strip() if auth.lower().startswith("token ") else None)
    from_cookie = cookies.get(COOKIE)
    token_ok = any(policy.token_ok(t) for t in (from_query, from_header, from_cookie))
    if not token_ok:
        return Verdict(False, 403, "missing or wrong token: open the URL hifikit ui printed")
    if method.upper() not in SAFE_METHODS:
        origin = headers.get("origin")
        if origin is not None:
            parts = urlsplit(origin)
            if f"{parts.scheme}://{parts.netloc}".lower() not in policy.allowed_origins:
                return Verdict(False, 403, f"Origin {origin} is not this server's")
        elif not policy.token_ok(from_header):
            return Verdict(False, 403, "a state-changing request needs an Origin header or its token in a header")
    return Verdict(True, set_cookie=policy.token_ok(from_query) and not policy.token_ok(from_cookie))
