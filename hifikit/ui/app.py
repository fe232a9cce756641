"""The ASGI app of ``hifikit ui``: pages, a JSON API over the library, and the guard in front of both.

Every handler parses its input, calls the library (or tasks.Launcher, which
runs library jobs in processes of their own) and returns JSON or a page; a
HifikitError becomes one line ``{"error": ...}`` with status 400 (404 for an
unknown run), and nothing is written. The guard (security.judge) runs before
every request, static files included.
"""
from __future__ import annotations

import collections
import json
import logging
import re
import sqlite3
import threading
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any, Awaitable, Callable

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import atomic, db, gguf_io, jobs, report
from ..errors import HifikitError
from ..planner import strategy as strategy_mod
from ..planner.plan import Target, make_target
from ..planner.session import PlanSession
from ..planner.speed import SpeedLimits
from ..quant_rules import resolve_type
from ..sweep import curves
from . import payloads
from .security import COOKIE, Policy, judge
from .tasks import AlreadyRunning, Launcher

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
STATIC = {"ui.js": "text/javascript", "ui.css": "text/css"}
MAX_BODY = 1 << 20
SESSIONS_KEPT = 4


class Guard:
    """ASGI middleware: security.judge on every HTTP request; the token from a URL is kept in a cookie."""

    def __init__(self, app: ASGIApp, policy: Policy) -> None:
        self.app, self.policy = app, policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        cookies: dict[str, str] = {}
        if "cookie" in headers:
            jar = SimpleCookie()
            try:
                jar.load(headers["cookie"])
            except Exception:  # a malformed cookie header is no token
                jar = SimpleCookie()
            cookies = {k: m.value for k, m in jar.items()}
        verdict = judge(self.policy, scope["method"], headers, scope.get("query_string", b"").decode("latin-1"),
                        cookies)
        if not verdict.allowed:
            log.warning("refused %s %s: %s", scope["method"], scope["path"], verdict.reason)
            await JSONResponse({"error": verdict.reason}, status_code=verdict.status)(scope, receive, send)
            return
        if not verdict.set_cookie:
            await self.app(scope, receive, send)
            return
        cookie = f"{COOKIE}={self.policy.token}; Path=/; HttpOnly; SameSite=Strict"

        async def send_with_cookie(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []),
                                                  (b"set-cookie", cookie.encode("latin-1"))]}
            await send(message)
        await self.app(scope, receive, send_with_cookie)


class LockedSession:
    """A planner session with its own database connection, used by one request at a time (requests run in
    the thread pool; a session and its connection are not thread-safe)."""

    def __init__(self, session: PlanSession) -> None:
        self.session = session
        self.lock = threading.Lock()

    def __enter__(self) -> PlanSession:
        self.lock.acquire()
        return self.session

    def __exit__(self, *exc: object) -> None:
        self.lock.release()


class State:
    """What one server keeps between requests: the policy, the job launcher and a few planner sessions."""

    def __init__(self, policy: Policy, launcher: Launcher) -> None:
        self.policy, self.launcher = policy, launcher
        self._sessions: collections.OrderedDict[tuple, LockedSession] = collections.OrderedDict()
        self._lock = threading.Lock()
        self.templates = Environment(loader=FileSystemLoader(HERE / "templates"),
                                     autoescape=select_autoescape(["html"]))

    def conn(self) -> sqlite3.Connection:
        return db.connect()

    def session(self, model: Path, run: int | None, mode: str | None, imatrix: Path | None) -> LockedSession:
        """A planner session per (model, sweep run, mode, imatrix), the last few kept: an edit re-plans in it."""
        key = (str(model), run, mode, str(imatrix) if imatrix else None)
        with self._lock:
            s = self._sessions.get(key)
            if s is not None:
                self._sessions.move_to_end(key)
                return s
        s = LockedSession(PlanSession.open(db.connect(shared=True), model, from_run=run, mode=mode,
                                           imatrix=imatrix))
        with self._lock:
            self._sessions[key] = s
            while len(self._sessions) > SESSIONS_KEPT:
                self._sessions.popitem(last=False)
        return s


Handler = Callable[[Request], Awaitable[Response]]


def api(fn: Callable[[Request, State, dict[str, Any]], Any]) -> Handler:
    """A JSON endpoint: the handler's value as JSON, a HifikitError as one line with status 400/404/409.

    Handlers are plain functions run in the thread pool (they read files and plan), given the parsed
    JSON body of a POST ({} for a GET)."""
    async def endpoint(request: Request) -> Response:
        state: State = request.app.state.ui
        try:
            data = await body(request) if request.method == "POST" else {}
            value = await run_in_threadpool(fn, request, state, data)
        except AlreadyRunning as exc:
            return JSONResponse({"error": str(exc), "job": exc.job.to_json()}, status_code=409)
        except HifikitError as exc:
            message = str(exc).splitlines()[0]
            status = 404 if message.startswith("no run with id") or message.startswith("no job") else 400
            return JSONResponse({"error": message}, status_code=status)
        if isinstance(value, Response):
            return value
        return JSONResponse(json.loads(json.dumps(value, default=str)))
    return endpoint


async def body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if len(raw) > MAX_BODY:
        raise HifikitError(f"request body over {MAX_BODY} bytes")
    try:
        data = json.loads(raw or b"{}")
    except ValueError as exc:
        raise HifikitError(f"request body is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise HifikitError("request body must be a JSON object")
    return data


def int_of(value: Any, name: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError) as exc:
        raise HifikitError(f"{name}: not a whole number: {value!r}") from exc


def existing_file(state: State, value: Any, name: str) -> Path:
    if not value:
        raise HifikitError(f"{name}: give a file")
    path = state.policy.inside_roots(str(value))
    if not path.is_file():
        raise HifikitError(f"{name}: {path}: no such file")
    return path


def new_file(state: State, value: Any, name: str, suffixes: tuple[str, ...]) -> Path:
    if not value:
        raise HifikitError(f"{name}: give a file name")
    path = state.policy.inside_roots(str(value))
    if path.suffix.lower() not in suffixes:
        raise HifikitError(f"{name}: {path.name}: the name must end in {' or '.join(suffixes)}")
    if not path.parent.is_dir():
        raise HifikitError(f"{name}: {path.parent}: no such folder")
    return path


# --- pages -------------------------------------------------------------------------------------------------

def page(name: str) -> Handler:
    async def endpoint(request: Request) -> Response:
        state: State = request.app.state.ui
        html = state.templates.get_template(f"{name}.html").render(
            page=name, query=dict(request.query_params), roots=[str(r) for r in state.policy.roots])
        return HTMLResponse(html)
    return endpoint


async def static(request: Request) -> Response:
    name = request.path_params["name"]
    if name == "plotly.min.js":
        import plotly  # the charting library's own bundled build: served locally, works offline
        return FileResponse(Path(plotly.__file__).parent / "package_data" / "plotly.min.js",
                            media_type="text/javascript")
    if name not in STATIC:
        return JSONResponse({"error": f"no static file {name!r}"}, status_code=404)
    return FileResponse(HERE / "static" / name, media_type=STATIC[name])


# --- runs --------------------------------------------------------------------------------------------------

def list_runs(request: Request, state: State, data: dict[str, Any]) -> Any:
    limit = int_of(request.query_params.get("limit", "50"), "limit")
    conn = state.conn()
    return {"runs": [payloads.run_summary(conn, r) for r in jobs.list_runs(conn, max(1, min(limit, 500)))],
            "jobs": [j.to_json() for j in state.launcher.list(conn)[:20]]}


def get_run(request: Request, state: State, data: dict[str, Any]) -> Any:
    return payloads.run_detail(state.conn(), int_of(request.path_params["run"], "run"))


def cancel_run(request: Request, state: State, data: dict[str, Any]) -> Any:
    return state.launcher.cancel(int_of(request.path_params["run"], "run"), state.conn())


def resume_run(request: Request, state: State, data: dict[str, Any]) -> Any:
    conn = state.conn()
    run_id = int_of(request.path_params["run"], "run")
    run = jobs.get_run(conn, run_id)
    if run["status"] == "done" and all(s["status"] == "done" for s in run["steps"]):
        raise HifikitError(f"run {run_id} is done: nothing to resume")
    return state.launcher.start("resume", {"run": run_id}, conn).to_json()


def run_curves(request: Request, state: State, data: dict[str, Any]) -> Any:
    conn = state.conn()
    run_id = int_of(request.path_params["run"], "run")
    jobs.get_run(conn, run_id)
    modes = curves.run_modes(conn, run_id)
    if not modes:
        raise HifikitError(f"run {run_id} has no sweep curves")
    mode = request.query_params.get("mode") or None
    chosen = None
    if request.query_params.get("strategy"):
        chosen = strategy_mod.load(existing_file(state, request.query_params["strategy"], "strategy")).types
    return payloads.curves_json(curves.load_sweep(conn, run_id, mode), chosen)


def artifact(request: Request, state: State, data: dict[str, Any]) -> Any:
    conn = state.conn()
    run = jobs.run_record(conn, int_of(request.path_params["run"], "run"))
    index = int_of(request.path_params["index"], "artifact")
    if not 0 <= index < len(run["artifacts"]):
        raise HifikitError(f"run {run['id']} has no artifact {index}")
    path = Path(run["artifacts"][index]["path"]).resolve()
    home = db.home().resolve()
    if not (home in path.parents or any(r == path or r in path.parents for r in state.policy.roots)):
        raise HifikitError(f"{path}: outside the folders this UI may use")
    if not path.is_file():
        raise HifikitError(f"{path}: no longer exists")
    return FileResponse(path, filename=path.name)


def get_job(request: Request, state: State, data: dict[str, Any]) -> Any:
    return state.launcher.get(request.path_params["key"], state.conn()).to_json()


# --- models and sweeps -------------------------------------------------------------------------------------

def list_models(request: Request, state: State, data: dict[str, Any]) -> Any:
    """GGUF files directly in the roots and one folder down, and the models of `hifikit fetch` runs."""
    found: dict[str, dict[str, Any]] = {}
    for root in state.policy.roots:
        for pattern in ("*.gguf", "*/*.gguf"):
            for p in sorted(root.glob(pattern))[:200]:
                if p.is_file() and not p.name.endswith(".imatrix.gguf"):
                    found[str(p.resolve())] = {"path": str(p.resolve()), "size": p.stat().st_size, "from": "folder",
                                               "usable": True}
    conn = state.conn()
    for row in conn.execute("SELECT a.path, a.run_id FROM artifacts a JOIN runs r ON r.id = a.run_id "
                            "WHERE r.command='fetch' AND a.kind='gguf' ORDER BY a.id DESC LIMIT 200"):
        path = Path(row["path"])
        if path.is_file():
            try:
                state.policy.inside_roots(path)
                usable, where = True, f"hifikit fetch (run {row['run_id']})"
            except HifikitError:   # listed, so the user knows which --root would open it
                usable, where = False, f"hifikit fetch (run {row['run_id']}), outside the roots: add --root"
            found.setdefault(str(path.resolve()), {"path": str(path.resolve()), "size": path.stat().st_size,
                                                   "from": where, "usable": usable})
    return {"models": list(found.values())}


def _sweeps_of(conn: sqlite3.Connection, path: Path) -> list[dict[str, Any]]:
    """The analyze runs of this model, newest first (their arguments are read before the runs are)."""
    out = []
    for row in conn.execute("SELECT id, args FROM runs WHERE command='analyze' ORDER BY id DESC LIMIT 200"):
        try:
            args = json.loads(row["args"])
        except ValueError:
            continue
        if isinstance(args, dict) and args.get("model") and Path(args["model"]).resolve() == path:
            out.append(payloads.run_summary(conn, jobs.get_run(conn, row["id"])) | {"mode": args.get("mode")})
    return out


def get_model(request: Request, state: State, data: dict[str, Any]) -> Any:
    path = existing_file(state, request.query_params.get("path"), "model")
    gguf_io.check_file(path)
    return payloads.model_json(path) | {"sweeps": _sweeps_of(state.conn(), path)}


def get_sweeps(request: Request, state: State, data: dict[str, Any]) -> Any:
    """What the model page polls: its sweeps only (the tensors and the grid check are read once)."""
    path = existing_file(state, request.query_params.get("model"), "model")
    return {"sweeps": _sweeps_of(state.conn(), path)}


def start_sweep(request: Request, state: State, data: dict[str, Any]) -> Any:
    model = existing_file(state, data.get("model"), "model")
    gguf_io.tensor_index(model)   # a corrupt file fails here, before a job exists
    mode = data.get("mode") or "proxy"
    if mode not in (*curves.MODES, curves.CALIBRATED):
        raise HifikitError(f"unknown mode '{mode}' (expected proxy, measured or calibrated)")
    payload: dict[str, Any] = {"model": str(model), "mode": mode}
    types = data.get("types")
    if types:
        if isinstance(types, str):
            types = [t.strip() for t in types.split(",") if t.strip()]
        payload["types"] = [resolve_type(t) for t in types]
    if data.get("tensors"):
        try:
            re.compile(str(data["tensors"]))
        except re.error as exc:
            raise HifikitError(f"tensors: not a regular expression: {exc}") from exc
        payload["tensors"] = str(data["tensors"])
    if mode != "proxy":
        payload["text"] = str(existing_file(state, data.get("text"), "text"))
        payload["ctx"] = int_of(data.get("ctx") or 512, "ctx")
        if data.get("chunks"):
            payload["chunks"] = int_of(data["chunks"], "chunks")
    elif data.get("text"):
        raise HifikitError("a text is for a measured or calibrated sweep (proxy mode reads only the weights)")
    return state.launcher.start("analyze", payload, state.conn()).to_json()


# --- the strategy editor -----------------------------------------------------------------------------------

def _plan_inputs(state: State, data: dict[str, Any]):
    model = existing_file(state, data.get("model"), "model")
    run = int_of(data["run"], "run") if data.get("run") not in (None, "") else None
    imatrix = existing_file(state, data["imatrix"], "imatrix") if data.get("imatrix") else None
    session = state.session(model, run, data.get("mode") or None, imatrix)
    target = data.get("target") or {}
    kind, value = target.get("kind", "match"), target.get("value")
    if kind not in ("bpw", "size", "match") or value in (None, ""):
        raise HifikitError("target: give kind bpw, size or match and its value")
    tgt = make_target(**{kind: str(value)})
    limits = None
    if data.get("max_slowdown") not in (None, ""):
        try:
            slowdown = float(data["max_slowdown"])
        except (TypeError, ValueError) as exc:
            raise HifikitError(f"max slowdown: not a number: {data['max_slowdown']!r}") from exc
        machine = data.get("costs_machine") or None
        if machine is not None and not (isinstance(machine, str) and machine.isalnum()):
            raise HifikitError(f"costs machine: not a fingerprint: {machine!r}")
        limits = SpeedLimits(max_slowdown=slowdown, fingerprint=machine)
    pins = data.get("pins") or {}
    if not isinstance(pins, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in pins.items()):
        raise HifikitError("pins: give an object of tensor name -> type")
    return session, tgt, limits, pins


def make_plan(request: Request, state: State, data: dict[str, Any]) -> Any:
    locked, target, limits, pins = _plan_inputs(state, data)
    with locked as session:
        return _replan(session, data, target, limits, pins)


def _replan(session: PlanSession, data: dict[str, Any], target: Target, limits: SpeedLimits | None,
            pins: dict[str, str]) -> Any:
    try:
        plan = session.plan(target, pins, speed_limits=limits)
    except HifikitError as exc:
        # an edit the budget cannot take: say why, with what the edited file would be
        current = data.get("types") if isinstance(data.get("types"), dict) else {}
        out: dict[str, Any] = {"error": str(exc).splitlines()[0]}
        if current:
            try:
                out["assessment"] = payloads.assessment_json(session.assess({**current, **pins}, target, limits))
            except HifikitError:
                pass   # the edit itself is malformed: the error says why
        return JSONResponse(out, status_code=400)
    check = session.assess(plan.types, target, limits)
    return payloads.plan_json(plan) | {"check": payloads.assessment_json(check), "pins": pins}


def cost_machines(request: Request, state: State, data: dict[str, Any]) -> Any:
    """The machines the runs database has speed costs of (`hifikit costs`), for the editor's speed budget."""
    from .. import costs
    return {"machines": [{"fingerprint": m.fingerprint, "label": m.label, "backend": m.backend,
                          "threads": m.threads} for m in costs.machines(state.conn())]}


def save_strategy(request: Request, state: State, data: dict[str, Any]) -> Any:
    locked, target, limits, pins = _plan_inputs(state, data)
    out = new_file(state, data.get("path"), "path", (".yaml", ".yml"))
    with locked as session:
        plan = session.plan(target, pins, speed_limits=limits)
        text = session.strategy_text(plan)
    atomic.write_text(out, text)
    return {"path": str(out), "predicted_bytes": plan.predicted_bytes, "predicted_error": plan.predicted_error}


def load_strategy(request: Request, state: State, data: dict[str, Any]) -> Any:
    path = existing_file(state, data.get("path"), "path")
    model = existing_file(state, data["model"], "model") if data.get("model") else None
    checked = strategy_mod.check_file(path, model)
    s = strategy_mod.load(path)
    return {"path": str(path), "model": checked.model, "types": s.types, "ok": checked.result.ok,
            "errors": checked.result.errors, "warnings": checked.result.warnings, "bytes": checked.result.bytes}


def start_quantize(request: Request, state: State, data: dict[str, Any]) -> Any:
    model = existing_file(state, data.get("model"), "model")
    strat = existing_file(state, data.get("strategy"), "strategy")
    checked = strategy_mod.check_file(strat, model)
    if not checked.result.ok:
        raise HifikitError(f"{strat.name}: {checked.result.errors[0]}")
    output = new_file(state, data.get("output") or strat.with_suffix(".gguf"), "output", (".gguf",))
    atomic.check_writable(output)
    text = existing_file(state, data.get("text"), "text")
    payload = {"model": str(model), "strategy": str(strat), "output": str(output), "text": str(text),
               "ctx": int_of(data.get("ctx") or 512, "ctx"), "bench": bool(data.get("bench"))}
    if data.get("chunks"):
        payload["chunks"] = int_of(data["chunks"], "chunks")
    if data.get("imatrix"):
        payload["imatrix"] = str(existing_file(state, data["imatrix"], "imatrix"))
    return state.launcher.start("quantize-verify", payload, state.conn()).to_json()


# --- compare -----------------------------------------------------------------------------------------------

def _run_ids(value: str | None) -> list[int]:
    ids = [int_of(v, "runs") for v in (value or "").split(",") if v.strip()]
    if not ids:
        raise HifikitError("runs: give run ids, e.g. ?runs=3,4")
    return ids


def compare(request: Request, state: State, data: dict[str, Any]) -> Any:
    conn = state.conn()
    records = report.rows(report.load_runs(conn, _run_ids(request.query_params.get("runs"))))
    return {"rows": [payloads.row_json(r) for r in records]}


def report_download(request: Request, state: State, data: dict[str, Any]) -> Any:
    conn = state.conn()
    ids = _run_ids(request.query_params.get("runs"))
    out = db.home() / "ui" / "reports" / f"report-{'-'.join(map(str, ids))}.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    res = report.write(conn, ids, out)
    return FileResponse(res.path, filename=out.name, media_type="text/html")


def create_app(policy: Policy, launcher: Launcher | None = None) -> ASGIApp:
    """The app for one launch; every request goes through the guard first."""
    routes = [
        Route("/", page("index")), Route("/model", page("model")), Route("/run/{run:int}", page("run")),
        Route("/editor", page("editor")), Route("/compare", page("compare")),
        Route("/static/{name}", static),
        Route("/api/runs", api(list_runs)), Route("/api/runs/{run}", api(get_run)),
        Route("/api/runs/{run}/cancel", api(cancel_run), methods=["POST"]),
        Route("/api/runs/{run}/resume", api(resume_run), methods=["POST"]),
        Route("/api/runs/{run}/curves", api(run_curves)),
        Route("/api/runs/{run}/artifacts/{index}", api(artifact)),
        Route("/api/jobs/{key}", api(get_job)),
        Route("/api/models", api(list_models)), Route("/api/model", api(get_model)),
        Route("/api/sweeps", api(get_sweeps)),
        Route("/api/sweep", api(start_sweep), methods=["POST"]),
        Route("/api/plan", api(make_plan), methods=["POST"]),
        Route("/api/costs/machines", api(cost_machines)),
        Route("/api/strategy/save", api(save_strategy), methods=["POST"]),
        Route("/api/strategy/load", api(load_strategy), methods=["POST"]),
        Route("/api/quantize", api(start_quantize), methods=["POST"]),
        Route("/api/compare", api(compare)), Route("/api/report", api(report_download)),
    ]
    app = Starlette(routes=routes)
    app.state.ui = State(policy, launcher or Launcher())
    return Guard(app, policy)
