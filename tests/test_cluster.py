"""The measured sweep on a real local Ray cluster (hifikit.sweep.cluster): a head and a second node, each
started by `ray start --block` as a process of this module, one CPU each, on 127.0.0.1."""
from __future__ import annotations

import collections
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import ray

from conftest import hifikit_command
from hifikit import db, gguf_io, jobs, paths, runner
from hifikit.errors import HifikitError
from hifikit.sweep import cluster, curves, measured

CTX, CHUNKS = 64, 2
TENSORS = [f"blk.{i}.{k}.weight" for i in range(2) for k in ("attn_q", "ffn_down")]
TYPES = ("q3_K", "q4_K", "q8_0")
PAIRS = [(t, ty) for t in TENSORS for ty in TYPES]  # 12 pairs
TENSOR_RE = r"blk\.[01]\.(attn_q|ffn_down)\.weight"
KW = dict(ctx=CTX, chunks=CHUNKS, imatrix=None, threads=1, progress=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_cli() -> str:
    return str(Path(sys.executable).parent / "ray")


class Cluster:
    def __init__(self) -> None:
        # a short path: Ray's socket names must fit in 107 bytes
        self.tmp = Path(tempfile.mkdtemp(prefix="hkray-", dir="/tmp"))
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.procs: list[subprocess.Popen] = []
        self.env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}

    def _start(self, *args: str, log: str) -> None:
        with open(self.tmp / log, "w") as out:
            self.procs.append(subprocess.Popen([_ray_cli(), "start", "--block", "--node-ip-address", "127.0.0.1",
                                                "--num-cpus", "1", *args], stdout=out, stderr=subprocess.STDOUT,
                                               env=self.env, start_new_session=True, cwd=self.tmp))

    def start(self) -> "Cluster":
        self._start("--head", "--port", str(self.port), "--include-dashboard=false", "--dashboard-host", "127.0.0.1",
                    "--temp-dir", str(self.tmp / "t"), "--disable-usage-stats", log="head.log")
        deadline = time.monotonic() + 120
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                assert self.procs[0].poll() is None, (self.tmp / "head.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "the Ray head did not start in 120 s"
                time.sleep(0.2)
        self._start("--address", self.address, log="node.log")
        cluster.connect(self.address)
        while sum(1 for n in ray.nodes() if n["Alive"]) < 2:
            assert self.procs[1].poll() is None, (self.tmp / "node.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the second Ray node did not join in 120 s"
            time.sleep(0.2)
        return self

    def pids(self) -> set[int]:
        return {p.pid for p in self.procs}

    def stop(self) -> None:
        if ray.is_initialized():
            ray.shutdown()
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)  # `ray start --block` stops the node's processes
        for p in reversed(self.procs):
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(p.pid, signal.SIGKILL)  # whatever of the session it started is left
            except ProcessLookupError:
                pass
            p.wait()
        shutil.rmtree(self.tmp, ignore_errors=True)


@pytest.fixture(autouse=True)
def bounded():
    """No test here waits on a cluster for ever: SIGALRM after 300 s fails it (the main thread runs the driver)."""
    def expired(signum, frame):
        raise TimeoutError("a Ray cluster test ran past 300 s")

    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(300)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.fixture(scope="module")
def ray_cluster(built):
    # Ray binds its gRPC servers on every interface: token authentication with a token of this module's own,
    # in the environment of the nodes, of this process (a driver) and of the drivers it starts; nothing is
    # read from or written to ~/.ray
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_AUTH_MODE", "token")
        mp.setenv("RAY_AUTH_TOKEN", secrets.token_hex(32))
        mp.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
        mp.delenv("RAY_ADDRESS", raising=False)
        from ray._raylet import Config  # Ray read RAY_AUTH_MODE when it was imported: read it again

        Config.initialize("")
        c = Cluster()
        try:
            yield c.start()
        finally:
            c.stop()


def _new_run(conn, model: Path) -> int:
    run_id = jobs.create_run(conn, "analyze", {"model": str(model), "mode": "measured"}, [])
    with db.transaction(conn):
        for t in gguf_io.read_info(model).tensors:
            curves.store_tensor(conn, run_id, t.name, t.shape, t.n_elements, t.type)
    return run_id


def _points(conn, run_id: int) -> dict[tuple[str, str], tuple]:
    return {(r[0], r[1]): tuple(r[2:]) for r in conn.execute(
        "SELECT tensor, type, nbytes, error, error_pm FROM curve_points WHERE run_id=? AND mode='measured'",
        (run_id,))}


def _created(conn, run_id: int) -> dict[tuple[str, str], float]:
    return {(r[0], r[1]): r[2] for r in conn.execute(
        "SELECT tensor, type, created FROM curve_points WHERE run_id=? AND mode='measured'", (run_id,))}


@pytest.fixture(scope="module")
def reference(built, tiny_model, tiny_text, tmp_path_factory):
    """The single-process sweep of PAIRS (its own database)."""
    tmp = tmp_path_factory.mktemp("reference")
    conn = db.connect(tmp / "runs.db")
    run_id = _new_run(conn, tiny_model)
    measured.run_sweep(conn, run_id, tiny_model, tiny_text, PAIRS, log_path=tmp / "sweep.log", **KW)
    return _points(conn, run_id)


def test_distributed_sweep_equals_the_single_process_one(ray_cluster, reference, tiny_model, tiny_text, tmp_path):
    conn = db.connect()
    run_id = _new_run(conn, tiny_model)
    stats = cluster.run_sweep(conn, run_id, tiny_model, tiny_text, PAIRS, log_path=tmp_path / "ray.log",
                              address=ray_cluster.address, batch=3, **KW)
    assert stats.workers == 2 and stats.pairs == len(PAIRS) and stats.requeued == 0
    assert stats.batches == len(_drain(len(PAIRS), 3, 2))
    # one long-lived tool per actor that got work: several batches, at most 2 tool processes (a fast actor
    # may take every batch before the other one has started)
    assert 1 <= stats.tool_starts <= 2
    assert _points(conn, run_id) == reference
    # a second call finds everything stored and starts nothing
    again = cluster.run_sweep(conn, run_id, tiny_model, tiny_text, PAIRS, log_path=tmp_path / "ray.log",
                              address=ray_cluster.address, batch=3, **KW)
    assert again.pairs == 0 and again.batches == 0


def test_more_workers_than_the_cluster_holds(ray_cluster, reference, tiny_model, tiny_text, tmp_path):
    """4 actors of one CPU on 2 CPUs: two never start, and hold no batch (batches go to started actors only)."""
    conn = db.connect()
    run_id = _new_run(conn, tiny_model)
    stats = cluster.run_sweep(conn, run_id, tiny_model, tiny_text, PAIRS, log_path=tmp_path / "ray.log",
                              address=ray_cluster.address, batch=3, workers=4, **KW)
    assert stats.workers == 4 and stats.pairs == len(PAIRS)
    assert _points(conn, run_id) == reference


def _descendants(roots: set[int]) -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every process below `roots`."""
    procs = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue
        procs[int(d.name)] = (ppid, cmd)
    out, frontier = {}, set(roots)
    while frontier:
        nxt = {pid for pid, (ppid, _) in procs.items() if ppid in frontier and pid not in out}
        out.update({pid: procs[pid] for pid in nxt})
        frontier = nxt
    return out


@pytest.mark.parametrize("victim", ["actor", "tool"])
def test_a_killed_worker_loses_only_its_batch(ray_cluster, reference, tiny_model, tiny_text, tmp_path, victim):
    """SIGKILL an actor process (it is replaced) or only the llama-sensitivity it runs (the actor stays)."""
    conn = db.connect()
    run_id = _new_run(conn, tiny_model)
    killed: list[int] = []
    # what actors leave in the nodes' temp folder (the test's nodes share this machine's)
    left_before = set(Path(tempfile.gettempdir()).glob("hifikit-sens*"))
    stop = threading.Event()

    def killer() -> None:
        # the first actor whose tool runs, once the driver has stored a point: SIGKILL the actor or its tool
        probe = db.connect()
        deadline = time.monotonic() + 120
        while not stop.is_set() and time.monotonic() < deadline:
            if _created(probe, run_id):
                below = _descendants(ray_cluster.pids())
                for pid, (ppid, cmd) in below.items():
                    if "llama-sensitivity" in cmd and "SensitivityWorker" in below.get(ppid, (0, ""))[1]:
                        target = ppid if victim == "actor" else pid
                        os.kill(target, signal.SIGKILL)
                        killed.append(target)
                        return
            time.sleep(0.01)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    try:
        stats = cluster.run_sweep(conn, run_id, tiny_model, tiny_text, PAIRS, log_path=tmp_path / "ray.log",
                                  address=ray_cluster.address, batch=6, **KW)
    finally:
        stop.set()
        t.join()
    assert killed, "no worker was killed: the sweep finished first"
    assert stats.replaced == (1 if victim == "actor" else 0) and 0 < stats.requeued < len(PAIRS), stats
    # the two first tools, and at most one more for the killed one's batch
    assert 2 <= stats.tool_starts <= 3, stats
    assert stats.pairs == len(PAIRS)
    rows = conn.execute("SELECT COUNT(*) FROM curve_points WHERE run_id=? AND mode='measured'", (run_id,)).fetchone()
    assert rows[0] == len(PAIRS)
    assert _points(conn, run_id) == reference
    assert "worker lost" in (tmp_path / "ray.log").read_text()
    # the killed actor's stderr file was unlinked from the start: nothing of it, nor of the others, is left
    assert set(Path(tempfile.gettempdir()).glob("hifikit-sens*")) == left_before


def test_a_killed_driver_resumes_with_runs_resume(ray_cluster, reference, tiny_model, tiny_text, tmp_path):
    argv = [*hifikit_command(), "analyze", str(tiny_model), "--mode", "measured", "--text", str(tiny_text),
            "--ctx", str(CTX), "--chunks", str(CHUNKS), "--threads", "1", "--tensors", TENSOR_RE,
            "--types", *TYPES, "--ray", ray_cluster.address, "--batch", "2"]
    driver = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=dict(os.environ),
                              cwd=tmp_path)
    conn = db.connect()
    deadline = time.monotonic() + 180
    try:
        while True:
            assert driver.poll() is None, driver.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the driver stored nothing in 180 s"
            row = conn.execute("SELECT id FROM runs WHERE command='analyze' ORDER BY id DESC").fetchone()
            if row and len(_created(conn, row[0])) >= 3:
                break
            time.sleep(0.02)
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    run_id = row[0]
    before = _created(conn, run_id)
    assert 3 <= len(before) < len(PAIRS), "the sweep finished before the driver could be killed"

    proc = subprocess.run([*hifikit_command(), "runs", "resume", str(run_id), "--json"], capture_output=True,
                          text=True, env=dict(os.environ), cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    after = _created(conn, run_id)
    assert set(after) == set(PAIRS)
    rows = conn.execute("SELECT COUNT(*) FROM curve_points WHERE run_id=? AND mode='measured'", (run_id,)).fetchone()
    assert rows[0] == len(PAIRS)
    assert all(after[k] == before[k] for k in before)  # nothing stored before the kill was measured again
    assert _points(conn, run_id) == reference
    run = jobs.get_run(conn, run_id)
    assert run["status"] == "done"
    ray_result = jobs.step_result(run, "sweep")["ray"]
    assert ray_result[-1]["pairs"] == len(PAIRS) - len(before)
    json.loads(proc.stdout)


def test_ray_missing_and_unreachable_are_one_line(built, tiny_model, tiny_text, monkeypatch):
    from hifikit.sweep.analyze import AnalyzeOptions, analyze

    opts = AnalyzeOptions(tiny_model, "measured", list(TYPES), TENSOR_RE, text=tiny_text, ctx=CTX, chunks=CHUNKS,
                          ray=f"127.0.0.1:{_free_port()}")
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    with pytest.raises(HifikitError, match=r"^--ray 127\.0\.0\.1:\d+: no Ray cluster reachable there") as err:
        analyze(opts)
    assert "\n" not in str(err.value)
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(HifikitError, match=r"^--ray needs Ray, which is not installed: pip install "
                                           r"'hifikit\[cluster\]'$"):
        analyze(opts)
    with pytest.raises(HifikitError, match="--batch is for --mode measured or calibrated"):
        analyze(AnalyzeOptions(tiny_model, "proxy", ray="auto", batch=4))
    with pytest.raises(HifikitError, match="--batch and --workers are for --ray"):
        analyze(AnalyzeOptions(tiny_model, "proxy", workers=2))
    assert db.connect().execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 0


def test_proxy_sweep_on_ray_equals_the_local_one(ray_cluster, tiny_model):
    from hifikit.sweep.analyze import AnalyzeOptions, analyze

    def points(res, field):
        return {(c.tensor, p.type): getattr(p, field) for c in res.sweep.curves for p in c.points}

    # token_embd: 8 M weights, two work units (CHUNK_ELEMENTS) summed in the order they finish
    opts = dict(types=list(TYPES), tensors=TENSOR_RE + "|token_embd")
    local = analyze(AnalyzeOptions(tiny_model, "proxy", threads=1, **opts))
    remote = analyze(AnalyzeOptions(tiny_model, "proxy", ray=ray_cluster.address, **opts))
    assert remote.figures["workers"] == 2 and remote.figures["points"] == len(PAIRS) + len(TYPES)
    assert points(remote, "nbytes") == points(local, "nbytes")
    assert points(remote, "error") == pytest.approx(points(local, "error"), rel=1e-12)


class _FakeRay:
    def __init__(self, resources: dict[str, float]) -> None:
        self.resources = resources

    def cluster_resources(self) -> dict[str, float]:
        return self.resources


def _drain(n: int, size: int, workers: int) -> list[list[tuple[str, str]]]:
    """The batches the driver cuts from a queue of n pairs when nothing is re-queued."""
    queue = collections.deque((f"blk.{i}.ffn_down.weight", "q4_K") for i in range(n))
    out = []
    while queue:
        out.append(cluster._next_batch(queue, size, workers))
    return out


@pytest.mark.parametrize("n, size, workers", [(96, 32, 2), (64, 32, 2), (97, 16, 2), (12, 3, 4), (5, 16, 2),
                                              (3, 16, 8), (100, 7, 3)])
def test_batches_shrink_to_one_pair_at_the_end(n, size, workers):
    got = _drain(n, size, workers)
    assert [p for b in got for p in b] == [(f"blk.{i}.ffn_down.weight", "q4_K") for i in range(n)]
    sizes = [len(b) for b in got]
    assert max(sizes) <= size and sizes == sorted(sizes, reverse=True)
    # once no more than 2 x workers pairs are left, they go one at a time
    left = n
    for size_now in sizes:
        assert size_now == 1 or left > 2 * workers
        left -= size_now
    if n >= 4 * workers * size:
        assert sizes[0] == size


def _finish_spread(costs: list[float], starts: list[float], cut) -> float:
    """Actors that start at `starts` and each take the next batch (`cut(queue)`) when idle, the pairs costing
    `costs`: how far apart their last pairs end."""
    queue = collections.deque((f"t{i}", "q4_K") for i in range(len(costs)))
    cost = {(f"t{i}", "q4_K"): c for i, c in enumerate(costs)}
    free = list(starts)
    while queue:
        w = free.index(min(free))
        free[w] += sum(cost[p] for p in cut(queue))
    return max(free) - min(free)


@pytest.mark.parametrize("seed", range(5))
def test_actors_end_within_about_a_pair_of_each_other(seed):
    """One actor starts late (a model load on a busy node), the pairs cost 1 to 3 s: the actors still finish
    within two pairs of each other. Even batches cut up front (as before) do not."""
    rng = np.random.default_rng(seed)
    costs = list(rng.uniform(1.0, 3.0, 96))
    starts = [0.0, float(rng.uniform(5.0, 15.0))]
    assert _finish_spread(costs, starts, lambda q: cluster._next_batch(q, 32, 2)) <= 2 * 3.0
    # the check can fail: 4 even batches of 24 pairs of 2 s, one actor 10 s late, end 10 s apart
    even = [2.0] * 96
    assert _finish_spread(even, [0.0, 10.0], lambda q: [q.popleft() for _ in range(min(24, len(q)))]) == 10.0
    assert _finish_spread(even, [0.0, 10.0], lambda q: cluster._next_batch(q, 32, 2)) <= 2.0


def test_actors_reserve_a_gpu_and_offload_where_the_cluster_has_gpus():
    n, opts = cluster.worker_options(_FakeRay({"CPU": 64.0, "GPU": 8.0}), 4, None)
    assert n == 8 and opts["num_gpus"] == 1 and opts["num_cpus"] == 4
    assert cluster.tool_ngl(opts, None) == measured.ALL_LAYERS
    assert cluster.tool_ngl(opts, 10) == 10
    n, opts = cluster.worker_options(_FakeRay({"CPU": 8.0}), 2, None)
    assert n == 4 and "num_gpus" not in opts
    assert cluster.tool_ngl(opts, None) is None  # the tool's default: every weight on the CPU
    assert cluster.tool_ngl(opts, 0) == 0


def test_baseline_sweep_on_ray_equals_the_single_process_one(ray_cluster, reference, tiny_model, tiny_text, tmp_path):
    """On a Q8_0 baseline (docs/scale.md): the actors get the driver's reference file's bytes and measure what the
    single-process sweep on the baseline measures."""
    q8 = tmp_path / "tiny-Q8_0.gguf"
    subprocess.run([str(paths.binary("llama-quantize")), str(tiny_model), str(q8), "Q8_0", "1"], check=True,
                   capture_output=True, env=runner.tool_env(), timeout=600)
    ref = measured.write_reference(tiny_model, tiny_text, tmp_path / "ref.bin", ctx=CTX, chunks=CHUNKS, threads=1,
                                   log_path=tmp_path / "ref.log")
    conn = db.connect()
    local = _new_run(conn, tiny_model)
    measured.run_sweep(conn, local, tiny_model, tiny_text, PAIRS, log_path=tmp_path / "local.log", baseline=q8,
                       reference=ref, **KW)
    on_ray = _new_run(conn, tiny_model)
    stats = cluster.run_sweep(conn, on_ray, tiny_model, tiny_text, PAIRS, log_path=tmp_path / "ray.log",
                              address=ray_cluster.address, batch=3, baseline=q8, reference=ref, **KW)
    assert stats.pairs == len(PAIRS) and stats.requeued == 0
    assert _points(conn, on_ray) == _points(conn, local)
    # and they are the baseline's figures, not the F16 model's: q8_0 of any tensor is the Q8_0 file itself
    q8_figures = {v[1] for (t, ty), v in _points(conn, on_ray).items() if ty == "q8_0"}
    assert len(q8_figures) == 1 and not q8_figures & {v[1] for (t, ty), v in reference.items() if ty == "q8_0"}
    assert "baseline " + str(q8) in (tmp_path / "ray.log").read_text()
