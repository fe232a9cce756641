"""A minimal Hugging Face Hub on 127.0.0.1 for offline tests of `hifikit fetch` and `hifikit publish`.

Serves the endpoints huggingface_hub's snapshot_download uses: repo info
(``/api/models/{repo}/revision/{rev}``), the tree listing, and
``/{repo}/resolve/{rev}/{file}`` (HEAD and GET). Repos are dicts of
filename -> bytes; ``gated`` repos answer 401 with X-Error-Code GatedRepo.

For uploads (huggingface_hub 1.x/2.x: HfApi.whoami, create_repo, upload_file),
it serves ``GET /api/whoami-v2``, ``POST /api/repos/create``,
``POST /api/validate-yaml`` (a README's front matter), ``POST /api/models/{repo}/preupload/{rev}``
and ``POST /api/models/{repo}/commit/{rev}``.
Preupload answers "regular" for every file, so the content travels base64 in the
commit's NDJSON (no LFS or Xet storage to fake); a file whose content the repo
already has gets its git blob oid back, so huggingface_hub skips it as the Hub
does. With ``tokens`` given, only those bearer tokens may write (others: 401).
``fail_commit`` names files whose next commit answers 500 (an upload cut off).
"""
from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse


def git_oid(data: bytes) -> str:
    """The git blob id of a file's content (what the Hub reports as a regular file's oid)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class FakeHub:
    def __init__(self, repos: dict[str, dict[str, bytes]], gated: set[str] = frozenset(),
                 tokens: set[str] | None = None) -> None:
        self.repos = repos
        self.gated = set(gated)
        self.commits = {r: hashlib.sha1(r.encode()).hexdigest() for r in repos}
        self.requests: list[str] = []
        self.tokens = tokens              # None: any token may write
        self.private: dict[str, bool] = {}
        self.fail_commit: set[str] = set()
        self.commit_log: list[list[str]] = []   # the files of each commit
        self.validated: list = []               # the model cards' metadata, as validate-yaml read it
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_HEAD(self) -> None:
                self._serve(body=False)

            def do_GET(self) -> None:
                self._serve(body=True)

            def do_POST(self) -> None:
                path = unquote(urlparse(self.path).path)
                hub.requests.append(f"POST {path}")
                data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if not self._authorized():
                    self._send(401, b'{"error":"Invalid credentials in Authorization header"}',
                               {"Content-Type": "application/json"})
                    return
                if path == "/api/repos/create":
                    req = json.loads(data)
                    repo = f"{req.get('organization') or 'user'}/{req['name']}"
                    if repo in hub.repos:   # as the Hub: 409 with the repo's url (create_repo(exist_ok=True) reads it)
                        self._send(409, json.dumps({"error": "You already created this model repo",
                                                    "url": f"{hub.endpoint}/{repo}"}).encode(),
                                   {"Content-Type": "application/json"})
                        return
                    hub.repos[repo] = {}
                    hub.commits[repo] = hashlib.sha1(repo.encode()).hexdigest()
                    hub.private[repo] = bool(req.get("private")) or req.get("visibility") == "private"
                    self._json({"url": f"{hub.endpoint}/{repo}", "name": repo})
                    return
                if path == "/api/validate-yaml":
                    self._validate_yaml(json.loads(data)["content"])
                    return
                m = re.match(r"^/api/models/([^/]+/[^/]+)/(preupload|commit)/([^/]+)$", path)
                if m and self._error(m.group(1), True):
                    return
                if m and m.group(2) == "preupload":
                    files = hub.repos[m.group(1)]
                    out = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                            "oid": git_oid(files[f["path"]]) if f["path"] in files else None}
                           for f in json.loads(data)["files"]]
                    self._json({"files": out})
                    return
                if m:
                    repo = m.group(1)
                    ops = [json.loads(line) for line in data.splitlines() if line.strip()]
                    if any(op["key"] not in ("header", "file") for op in ops):
                        self._send(400, b'{"error":"the fake Hub takes regular files only"}')
                        return
                    names = [op["value"]["path"] for op in ops if op["key"] == "file"]
                    cut = hub.fail_commit & set(names)
                    if cut:
                        hub.fail_commit -= cut
                        self._send(500, b'{"error":"upload interrupted"}', {"Content-Type": "application/json"})
                        return
                    for op in ops:
                        if op["key"] == "file":
                            hub.repos[repo][op["value"]["path"]] = base64.b64decode(op["value"]["content"])
                    hub.commits[repo] = hashlib.sha1((hub.commits[repo] + ",".join(names)).encode()).hexdigest()
                    hub.commit_log.append(names)
                    self._json({"commitUrl": f"{hub.endpoint}/{repo}/commit/{hub.commits[repo]}",
                                "commitOid": hub.commits[repo], "pullRequestUrl": None})
                    return
                self._send(404, b"", {})

            def _validate_yaml(self, card: str) -> None:
                """The model card's front matter must be YAML mapping with a list of string tags."""
                import yaml

                errors = []
                m = re.match(r"^---\n(.*?)\n---\n", card, re.S)
                try:
                    meta = yaml.safe_load(m.group(1)) if m else {}
                except yaml.YAMLError as exc:
                    meta, errors = None, [{"message": f"invalid YAML: {exc}"}]
                if meta is not None and not isinstance(meta, dict):
                    errors.append({"message": "metadata must be a mapping"})
                elif isinstance(meta, dict) and not all(isinstance(t, str) for t in meta.get("tags") or []):
                    errors.append({"message": '"tags" must be an array of strings'})
                hub.validated.append(meta)
                self._send(400 if errors else 200, json.dumps({"errors": errors, "warnings": []}).encode(),
                           {"Content-Type": "application/json"})

            def _authorized(self) -> bool:
                auth = self.headers.get("Authorization") or ""
                token = auth[7:] if auth.startswith("Bearer ") else None
                return token is not None if hub.tokens is None else token in hub.tokens

            def _json(self, value) -> None:
                self._send(200, json.dumps(value).encode(), {"Content-Type": "application/json"})

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
                    self._send(404, b'{"error":"Repository not found"}',
                               {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"}, body)
                    return True
                if repo in hub.gated:
                    self._send(401, b'{"error":"gated"}',
                               {"X-Error-Code": "GatedRepo", "X-Error-Message": "Access to this repo is restricted"},
                               body)
                    return True
                return False

            def _serve(self, body: bool) -> None:
                path = unquote(urlparse(self.path).path)
                hub.requests.append(f"{self.command} {path}")
                if path == "/api/whoami-v2":
                    if not self._authorized():
                        self._send(401, b'{"error":"Invalid credentials in Authorization header"}',
                                   {"Content-Type": "application/json"}, body)
                        return
                    self._send(200, json.dumps({"type": "user", "name": "user", "auth": {"accessToken": {
                        "role": "write"}}}).encode(), {"Content-Type": "application/json"}, body)
                    return
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
