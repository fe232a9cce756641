"""`hifikit ui` through its ASGI app: the guard (token, Host, Origin, roots) and every endpoint, bad input
included (one error line, nothing written, no job started).

Jobs started here are real: a worker process runs the library's sweep or quantize-and-verify on the
synthetic model and the runs database shows it.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

pytest.importorskip("starlette", reason="the ui extra is part of the test extra: pip install '.[test]'")

from starlette.testclient import TestClient  # noqa: E402

from hifikit import db, jobs  # noqa: E402
from hifikit.errors import HifikitError  # noqa: E402
from hifikit.planner import strategy  # noqa: E402
from hifikit.planner.plan import PlanOptions, make_target, plan  # noqa: E402
from hifikit.sweep.analyze import AnalyzeOptions, analyze  # noqa: E402
from hifikit.ui import server, tasks  # noqa: E402
from hifikit.ui.app import create_app  # noqa: E402
from hifikit.ui.security import Policy  # noqa: E402

TYPES = ("q4_0", "q5_0", "q8_0", "q4_K", "q6_K")
PORT = 8765
BASE = f"http://127.0.0.1:{PORT}"


@pytest.fixture
def root(tmp_path, tiny_model, tiny_text) -> Path:
    """The one folder the UI may use, with the model and the text in it."""
    r = tmp_path / "root"
    r.mkdir()
    (r / "tiny-f16.gguf").write_bytes(Path(tiny_model).read_bytes())   # a link out of the root is refused
    (r / "text.txt").write_text(Path(tiny_text).read_text())
    return r


@pytest.fixture
def ui(root, hifikit_home):
    policy = Policy.make("127.0.0.1", PORT, [root], token="t0ken")
    launcher = tasks.Launcher()
    client = TestClient(create_app(policy, launcher), base_url=BASE,
                        headers={"X-Hifikit-Token": "t0ken", "Origin": BASE})
    yield client, launcher, root
    launcher.stop_all()


def wait_job(client: TestClient, key: str, timeout: float = 180) -> dict:
    """Poll the job until its process ends; the run it made, as the API gives it."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = client.get(f"/api/jobs/{key}").json()
        if not job["alive"]:
            assert job["run_id"], f"the job made no run: {Path(job['log']).read_text()}"
            return client.get(f"/api/runs/{job['run_id']}").json()
        time.sleep(0.3)
    raise AssertionError(f"job {key} still running after {timeout} s")


@pytest.fixture
def swept(root, built):
    res = analyze(AnalyzeOptions(root / "tiny-f16.gguf", types=TYPES, threads=1), progress=False)
    return res.run_id


# --- the guard ---------------------------------------------------------------------------------------------

def test_every_request_needs_the_token(ui):
    client, _, _ = ui
    bare = TestClient(client.app, base_url=BASE)
    for path in ("/", "/api/runs", "/static/ui.js", "/static/plotly.min.js", "/editor"):
        r = bare.get(path)
        assert r.status_code == 403 and "token" in r.json()["error"], path
    assert bare.get("/api/runs", headers={"X-Hifikit-Token": "wrong"}).status_code == 403
    assert bare.get("/api/runs", headers={"Authorization": "token t0ken"}).status_code == 200
    # the printed URL's ?token= is kept in a strict, HttpOnly cookie, which then suffices
    r = bare.get("/?token=t0ken")
    assert r.status_code == 200 and "<html" in r.text
    cookie = r.headers["set-cookie"]
    assert "hifikit_token=t0ken" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert bare.get("/api/runs").status_code == 200


def test_a_foreign_host_header_is_refused(ui):
    client, _, _ = ui
    for host in ("evil.example:8765", "127.0.0.1:9999", "localhost.evil.example:8765", ""):
        r = client.get("/api/runs", headers={"Host": host})
        assert r.status_code == 403 and "Host" in r.json()["error"], host
    assert client.get("/api/runs", headers={"Host": "localhost:8765"}).status_code == 200


def test_state_changing_requests_need_this_origin(ui, hifikit_home):
    client, launcher, root = ui
    body = {"model": str(root / "tiny-f16.gguf")}
    for origin in ("http://evil.example", "http://127.0.0.1:9999", "null", "https://127.0.0.1:8765"):
        r = client.post("/api/sweep", json=body, headers={"Origin": origin})
        assert r.status_code == 403 and "Origin" in r.json()["error"], origin
    # a cookie alone (what a cross-site form would carry) without an Origin is not enough either
    bare = TestClient(client.app, base_url=BASE)
    bare.get("/?token=t0ken")
    assert bare.post("/api/sweep", json=body).status_code == 403
    assert launcher.list(db.connect()) == [] and jobs.list_runs(db.connect()) == []


def test_paths_stay_under_the_roots(ui, tmp_path):
    client, _, root = ui
    outside = tmp_path / "outside.gguf"
    outside.write_bytes((root / "tiny-f16.gguf").read_bytes())
    (root / "link.gguf").symlink_to(outside)
    for path in (str(outside), "../outside.gguf", str(root / ".." / "outside.gguf"), str(root / "link.gguf"),
                 "/etc/passwd"):
        r = client.get("/api/model", params={"path": path})
        assert r.status_code == 400 and "outside the folders" in r.json()["error"], path
    r = client.get("/api/model", params={"path": "tiny-f16.gguf"})   # relative: under the first root
    assert r.status_code == 200 and r.json()["n_tensors"] > 0
    assert client.get("/static/..%2fapp.py").status_code == 404
    assert client.get("/static/app.py").status_code == 404


def test_binding_a_remote_address_needs_the_flag(root):
    with pytest.raises(HifikitError, match="--allow-remote"):
        server.bind(server.UIOptions(host="0.0.0.0", port=0, roots=[root]))
    with pytest.raises(HifikitError, match="not a folder"):
        server.bind(server.UIOptions(port=0, roots=[root / "missing"]))


# --- runs, models, sweeps ----------------------------------------------------------------------------------

def test_runs_of_the_cli_are_listed_and_unknown_ones_are_404(ui, swept):
    client, _, _ = ui
    runs = client.get("/api/runs").json()["runs"]
    assert [(r["id"], r["command"], r["status"], r["progress"]) for r in runs] == [(swept, "analyze", "done", 1.0)]
    detail = client.get(f"/api/runs/{swept}").json()
    assert detail["has_curves"] and detail["steps"][0]["status"] == "done"
    r = client.get("/api/runs/999")
    assert r.status_code == 404 and r.json() == {"error": "no run with id 999 (see 'hifikit runs list')"}
    assert client.get("/api/runs/abc").status_code == 400
    curves = client.get(f"/api/runs/{swept}/curves").json()
    assert curves["mode"] == "proxy" and {p["type"] for t in curves["tensors"] for p in t["points"]} == set(TYPES)
    assert all(t["points"] == sorted(t["points"], key=lambda p: p["bytes"]) for t in curves["tensors"])
    assert client.post(f"/api/runs/{swept}/resume", json={}).status_code == 400     # done: nothing to resume
    assert client.post(f"/api/runs/{swept}/cancel", json={}).status_code == 400     # not running


def test_model_tensors_and_bad_models(ui, swept, root):
    client, _, _ = ui
    d = client.get("/api/model", params={"path": str(root / "tiny-f16.gguf")}).json()
    assert d["tensors"] and all(t["bytes"] > 0 for t in d["tensors"]) and d["sweeps"][0]["id"] == swept
    assert d["grid"]["detected"] is False
    # what the model page polls: the same sweeps, without the tensors
    assert client.get("/api/sweeps", params={"model": "tiny-f16.gguf"}).json() == {"sweeps": d["sweeps"]}
    (root / "corrupt.gguf").write_bytes(b"GGUF\x03\x00\x00\x00garbage")
    for path, words in (("missing.gguf", "no such file"), ("corrupt.gguf", "corrupt.gguf")):
        r = client.get("/api/model", params={"path": path})
        assert r.status_code == 400 and words in r.json()["error"] and "\n" not in r.json()["error"]
        r = client.post("/api/sweep", json={"model": path})
        assert r.status_code == 400
    assert client.post("/api/sweep", json={"model": "tiny-f16.gguf", "mode": "guess"}).status_code == 400
    assert client.post("/api/sweep", json={"model": "tiny-f16.gguf", "types": ["q9_9"]}).status_code == 400
    assert client.post("/api/sweep", json={"model": "tiny-f16.gguf", "text": "text.txt"}).status_code == 400
    assert client.post("/api/sweep", content=b"[1, 2]").status_code == 400
    assert client.post("/api/sweep", content=b"{not json").status_code == 400
    # GGUFs in the roots, and those `hifikit fetch` brought (usable when under a root)
    conn = db.connect()
    fetch_run = jobs.create_run(conn, "fetch", {"repo_id": "org/tiny"}, [])
    outside = root.parent / "snapshot" / "tiny-q8.gguf"
    outside.parent.mkdir()
    outside.write_bytes(b"GGUF")
    db.add_artifacts(conn, fetch_run, None, [db.Artifact(str(outside), "gguf")])
    models = {m["path"]: m for m in client.get("/api/models").json()["models"]}
    assert models[str((root / "tiny-f16.gguf").resolve())]["usable"]
    fetched = models[str(outside.resolve())]
    assert not fetched["usable"] and f"run {fetch_run}" in fetched["from"] and "--root" in fetched["from"]


def test_a_sweep_started_twice_is_one_job_and_finishes(ui, root):
    client, launcher, _ = ui
    body = {"model": "tiny-f16.gguf", "mode": "proxy", "types": list(TYPES)}
    first = client.post("/api/sweep", json=body)
    assert first.status_code == 200, first.text
    again = client.post("/api/sweep", json=body)      # another tab, while the first is alive
    assert again.status_code == 409 and again.json()["job"]["pid"] == first.json()["pid"]
    run = wait_job(client, first.json()["key"])
    assert run["command"] == "analyze" and run["status"] == "done" and run["has_curves"]
    assert len(jobs.list_runs(db.connect())) == 1


def test_cancel_then_resume_a_running_sweep(ui, root):
    client, launcher, _ = ui
    # a measured sweep (seconds per point) is long enough to be caught running
    job = client.post("/api/sweep", json={"model": "tiny-f16.gguf", "mode": "measured", "text": "text.txt",
                                          "ctx": 128, "chunks": 2, "types": ["q4_0", "q8_0"],
                                          "tensors": r"blk\.0\.attn_(q|k)"}).json()
    deadline = time.time() + 120
    run = None
    while time.time() < deadline:
        j = client.get(f"/api/jobs/{job['key']}").json()
        if j["run_id"]:
            run = client.get(f"/api/runs/{j['run_id']}").json()
            if run["status"] == "running":
                break
        assert j["alive"], Path(j["log"]).read_text()
        time.sleep(0.1)
    assert run is not None and run["can_cancel"]
    r = client.post(f"/api/runs/{run['id']}/cancel", json={})
    assert r.status_code == 200 and r.json()["signal"] == "SIGTERM"
    deadline = time.time() + 60
    while client.get(f"/api/jobs/{job['key']}").json()["alive"] and time.time() < deadline:
        time.sleep(0.2)
    stopped = client.get(f"/api/runs/{run['id']}").json()
    assert stopped["status"] == "interrupted" and stopped["can_resume"], (stopped["status"], stopped["error"])
    resumed = client.post(f"/api/runs/{run['id']}/resume", json={})
    assert resumed.status_code == 200
    done = wait_job(client, resumed.json()["key"])
    assert done["id"] == run["id"] and done["status"] == "done"
    points = client.get(f"/api/runs/{run['id']}/curves").json()["tensors"]
    assert sorted(t["tensor"] for t in points) == ["blk.0.attn_k.weight", "blk.0.attn_q.weight"]
    assert all({p["type"] for p in t["points"]} == {"q4_0", "q8_0"} for t in points)


# --- the strategy editor -----------------------------------------------------------------------------------

def plan_body(root: Path, run: int, **kw) -> dict:
    return {"model": str(root / "tiny-f16.gguf"), "run": run, "target": {"kind": "match", "value": "Q4_K_M"}, **kw}


def test_plan_is_the_cli_plan_and_pins_are_kept(ui, swept, root, tmp_path):
    client, _, _ = ui
    p = client.post("/api/plan", json=plan_body(root, swept)).json()
    ref = plan(PlanOptions(root / "tiny-f16.gguf", tmp_path / "ref.yaml", make_target(match="Q4_K_M"),
                           from_run=swept)).plan
    assert p["predicted_bytes"] == ref.predicted_bytes and p["budget"] == ref.budget
    assert {t["name"]: t["type"] for t in p["tensors"]} == {t.name: t.type for t in ref.tensors}
    assert p["check"]["errors"] == []
    # pin the largest tensor to its cheapest candidate: it keeps it, the rest is re-planned in the budget
    big = max(p["tensors"], key=lambda t: t["n_elements"])
    cheap = min(big["candidates"], key=lambda o: o["bytes"])["type"]
    assert cheap != big["type"]
    edited = client.post("/api/plan", json=plan_body(root, swept, pins={big["name"]: cheap})).json()
    got = {t["name"]: t for t in edited["tensors"]}
    assert got[big["name"]]["type"] == cheap and edited["predicted_bytes"] <= edited["budget"]
    assert edited["predicted_error"] >= p["predicted_error"] - 1e-12   # the optimum, constrained, is no better


def test_bad_edits_are_one_error_line(ui, swept, root):
    client, _, _ = ui
    p = client.post("/api/plan", json=plan_body(root, swept)).json()
    name = p["tensors"][0]["name"]
    for pins in ({name: "q2_K"}, {"blk.99.nothing.weight": "q8_0"}, {name: "not_a_type"}):
        r = client.post("/api/plan", json=plan_body(root, swept, pins=pins))
        assert r.status_code == 400 and r.json()["error"] and "\n" not in r.json()["error"], pins
    # every tensor at its largest type cannot fit Q4_K_M's size: refused, with the edited file's bytes
    biggest = {t["name"]: max(t["candidates"], key=lambda o: o["bytes"])["type"] for t in p["tensors"]}
    types = {t["name"]: t["type"] for t in p["tensors"]}
    r = client.post("/api/plan", json=plan_body(root, swept, pins=biggest, types=types))
    assert r.status_code == 400 and r.json()["assessment"]["predicted_bytes"] > p["budget"]
    for target in ({"kind": "match", "value": "Q9_Z"}, {"kind": "size", "value": "0.001"},
                   {"kind": "bpw", "value": "many"}, {"kind": "weight", "value": "1"}):
        r = client.post("/api/plan", json=plan_body(root, swept, target=target))
        assert r.status_code == 400 and "\n" not in r.json()["error"], target
    r = client.post("/api/plan", json=plan_body(root, 999))
    assert r.status_code == 400 and "run 999" in r.json()["error"]


def test_save_and_load_a_strategy(ui, swept, root, tmp_path):
    client, _, _ = ui
    p = client.post("/api/plan", json=plan_body(root, swept)).json()
    name = p["tensors"][0]["name"]
    other = next(o["type"] for o in p["tensors"][0]["candidates"] if o["type"] != p["tensors"][0]["type"])
    body = plan_body(root, swept, pins={name: other}, path=str(root / "edited.yaml"))
    r = client.post("/api/strategy/save", json=body)
    assert r.status_code == 200, r.text
    s = strategy.load(root / "edited.yaml")
    assert s.types[name] == other
    assert strategy.check_file(root / "edited.yaml", root / "tiny-f16.gguf").result.ok
    loaded = client.post("/api/strategy/load", json={"path": "edited.yaml", "model": "tiny-f16.gguf"}).json()
    assert loaded["ok"] and loaded["types"][name] == other
    for path in (str(tmp_path / "escape.yaml"), "edited.txt", "nofolder/x.yaml"):
        r = client.post("/api/strategy/save", json={**body, "path": path})
        assert r.status_code == 400, path
    assert not (tmp_path / "escape.yaml").exists() and not (root / "edited.txt").exists()


def test_quantize_and_verify_from_a_strategy(ui, swept, root):
    client, _, _ = ui
    assert client.post("/api/strategy/save", json=plan_body(root, swept, path="s.yaml")).status_code == 200
    bad = {"model": "tiny-f16.gguf", "strategy": "s.yaml", "text": "missing.txt", "ctx": 128, "chunks": 2}
    assert client.post("/api/quantize", json=bad).status_code == 400
    assert client.post("/api/quantize", json={**bad, "text": "text.txt", "output": "../x.gguf"}).status_code == 400
    assert jobs.list_runs(db.connect(), 5)[0]["id"] == swept       # nothing started
    r = client.post("/api/quantize", json={**bad, "text": "text.txt", "output": "s.gguf"})
    assert r.status_code == 200, r.text
    run = wait_job(client, r.json()["key"], timeout=300)
    assert run["status"] == "done", run["error"]
    measured = [x for x in run["rows"] if x["role"] != "reference"]
    assert len(measured) == 1 and measured[0]["kld_mean"] > 0 and (root / "s.gguf").is_file()
    assert measured[0]["file_bytes"] == (root / "s.gguf").stat().st_size
    cmp = client.get("/api/compare", params={"runs": str(run["id"])}).json()
    assert [x["kld_mean"] for x in cmp["rows"] if x["role"] != "reference"] == [measured[0]["kld_mean"]]
    rep = client.get("/api/report", params={"runs": str(run["id"])})
    assert rep.status_code == 200 and "KLD" in rep.text and "attachment" in rep.headers["content-disposition"]
    # the quantized file is an artifact of the run, downloadable by its index (never by a path)
    art = next(a for a in run["artifacts"] if Path(a["path"]).name == "s.gguf")
    got = client.get(f"/api/runs/{run['id']}/artifacts/{art['index']}")
    assert got.status_code == 200 and got.content == (root / "s.gguf").read_bytes()
    assert client.get(f"/api/runs/{run['id']}/artifacts/99").status_code == 400
    assert client.get("/api/compare", params={"runs": ""}).status_code == 400
    assert json.loads(client.get("/api/compare", params={"runs": "999"}).text)["error"].startswith("no run")


def test_hifikit_ui_prints_its_url_serves_loopback_and_stops_by_itself(cli, root):
    import subprocess
    import urllib.error
    import urllib.request

    proc = subprocess.Popen(cli.argv("ui", "--port", "0", "--root", root, "--stop-after", "30"), env=cli.env(),
                            stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        assert line.startswith("hifikit ui: serving on http://127.0.0.1:") and "?token=" in line, line
        url = line.split("serving on ")[1].strip()
        with urllib.request.urlopen(url.replace("/?", "/api/runs?"), timeout=10) as r:
            assert json.loads(r.read())["runs"] == []
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url.split("?")[0] + "api/runs", timeout=10)
        assert refused.value.code == 403
    finally:
        proc.terminate()
        proc.wait(30)
    remote = cli("ui", "--host", "0.0.0.0", "--port", "0", "--root", root, check=False)
    assert remote.returncode == 1 and "--allow-remote" in remote.stderr and remote.stderr.count("\n") == 1


def test_pages_static_files_jobs_and_cost_machines(ui, swept):
    client, _, _ = ui
    for page, path in (("index", "/"), ("model", "/model?path=tiny-f16.gguf"), ("run", f"/run/{swept}"),
                       ("editor", f"/editor?model=tiny-f16.gguf&run={swept}"), ("compare", "/compare?runs=1")):
        r = client.get(path)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html"), path
        assert '<script src="/static/plotly.min.js">' in r.text and f'data-page="{page}"' in r.text
    js = client.get("/static/plotly.min.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript") and len(js.content) > 1e6
    assert client.get("/static/ui.js").text.startswith("// hifikit ui")
    # no cost model stored yet; an unknown job is 404, a malformed key too
    assert client.get("/api/costs/machines").json() == {"machines": []}
    assert client.get("/api/jobs/0123abcd").status_code == 404
    assert client.get("/api/jobs/..%2f..").status_code == 404
    r = client.post("/api/plan", json=plan_body(Path("."), swept, model="tiny-f16.gguf", max_slowdown="fast"))
    assert r.status_code == 400 and "max slowdown" in r.json()["error"]
    r = client.post("/api/plan", json=plan_body(Path("."), swept, model="tiny-f16.gguf", max_slowdown="1.0"))
    assert r.status_code == 400 and "hifikit costs" in r.json()["error"]
