"""A minimal Hugging Face Hub on 127.0.0.1 for offline tests of `hifikit fetch`.

Serves the endpoints huggingface_hub's snapshot_download uses: repo info
(``/api/models/{repo}/revision/{rev}``), the tree listing, and
``/{repo}/resolve/{rev}/{file}`` (HEAD and GET). Repos are dicts of
filename -> bytes; ``gated`` repos answer 401 with X-Error-Code GatedRepo.
"""
from __future__ import annotations

import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse


class FakeHub:
    def __init__(self, repos: dict[str, dict[str, bytes]], gated: set[str] = frozenset()) -> None:
        self.repos = repos
        self.gated = set(gated)
        self.commits = {r: hashlib.sha1(r.encode()).hexdigest() for r in repos}
        self.requests: list[str] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_HEAD(self) -> None:
                self._serve(body=False)

            def do_GET(self) -> None:
                self._serve(body=True)

            def _send(self, code: int, data: bytes = b"", headers: dict | None = None, body: bool = True) -> None:
                self.send_response(code)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def _error(self, repo: str, body: bool) -> bool:
                if repo not in hub.repos:
                    self._send(404, b'{"error":"Repository not found"}', {"X-Error-Code": "RepoNotFound",
                                                                        "X-Error-Message": "Repository not found"}, body)
                    return True
                if repo in hub.gated:
                    self._send(401, b'{"error":"gated"}', {"X-Error-Code": "GatedRepo",
                                                          "X-Error-Message": "Access to this repo is restricted"}, body)
                    return True
                return False

            def _serve(self, body: bool) -> None:
                path = unquote(urlparse(self.path).path)
                hub.requests.append(f"{self.command} {path}")
                m = re.match(r"^/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?/?$", path)
                if m:
                    repo = m.group(1)
                    if self._error(repo, body):
                        return
                    files = hub.repos[repo]
                    info = {"id": repo, "modelId": repo, "sha": hub.commits[repo], "private": False,
                            "siblings": [{"rfilename": f, "size": len(d)} for f, d in files.items()]}
                    self._send(200, json.dumps(info).encode(), {"Content-Type": "application/json"}, body)
                    return
                m = re.match(r"^/api/models/([^/]+/[^/]+)/tree/([^/]+)(?:/(.*))?$", path)
                if m:
                    repo = m.group(1)
                    if self._error(repo, body):
                        return
                    tree = [{"type": "file", "path": f, "size": len(d), "oid": hashlib.sha1(d).hexdigest()}
                            for f, d in hub.repos[repo].items()]
                    self._send(200, json.dumps(tree).encode(), {"Content-Type": "application/json"}, body)
                    return
                m = re.match(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", path)
                if m:
                    repo, _, name = m.groups()
                    if self._error(repo, body):
                        return
                    data = hub.repos[repo].get(name)
                    if data is None:
                        self._send(404, b"", {"X-Error-Code": "EntryNotFound"}, body)
                        return
                    self._send(200, data, {"X-Repo-Commit": hub.commits[repo],
                                           "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
                                           "Content-Type": "application/octet-stream"}, body)
                    return
                self._send(404, b"", {}, body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> "FakeHub":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
