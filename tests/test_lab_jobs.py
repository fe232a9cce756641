"""Runs database and resumable jobs: migrations, exactly-once steps, SIGKILL + resume."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from hifikit import db, gguf_io, jobs
from hifikit.errors import HifikitError


def test_migrations_apply_once_in_wal_mode(hifikit_home):
    conn = db.connect()
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    names = [r[0] for r in conn.execute("SELECT name FROM migrations ORDER BY name")]
    assert names == [name for name, _ in db.MIGRATIONS]
    conn.close()
    again = db.connect()
    assert db.migrate(again) == []
    assert {"runs", "steps", "measurements", "artifacts", "kld_refs"} <= {
        r[0] for r in again.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert (hifikit_home / "runs.db").is_file()


def test_file_hash_cache_follows_changes(tmp_path):
    conn = db.connect()
    f = tmp_path / "a.bin"
    f.write_bytes(b"one")
    first = db.file_sha256(conn, f)
    assert first == db.sha256_file(f)
    f.write_bytes(b"two!")
    assert db.file_sha256(conn, f) != first


@pytest.fixture
def counting_kind(tmp_path, monkeypatch):
    """A step kind that writes a file atomically and can be told to fail once."""
    from hifikit import atomic, kinds
    calls: list[str] = []

    def write(ctx, spec):
        calls.append(spec["out"])
        if spec.get("fail_flag") and Path(spec["fail_flag"]).exists():
            Path(spec["fail_flag"]).unlink()
            raise HifikitError("planned failure")
        atomic.write_text(Path(spec["out"]), spec["text"])
        return jobs.StepOutput({"out": spec["out"]}, [db.Measurement("chars", len(spec["text"]))],
                               [db.Artifact(spec["out"], "text")])

    monkeypatch.setitem(kinds.STEP_KINDS, "test-write", write)
    return calls


def test_failed_step_resumes_without_redoing_done_steps(tmp_path, counting_kind):
    flag = tmp_path / "fail-once"
    flag.touch()
    steps = [jobs.StepSpec(f"s{i}", "test-write", {"out": str(tmp_path / f"{i}.txt"), "text": "x" * i,
                                                   **({"fail_flag": str(flag)} if i == 2 else {})})
             for i in range(4)]
    with pytest.raises(HifikitError, match=r"planned failure.*runs resume"):
        jobs.start("test", {}, steps)
    conn = db.connect()
    run_id = conn.execute("SELECT MAX(id) FROM runs").fetchone()[0]
    run = jobs.get_run(conn, run_id)
    assert run["status"] == "failed" and "planned failure" in run["error"]
    assert [s["status"] for s in run["steps"]] == ["done", "done", "pending", "pending"]
    assert not (tmp_path / "2.txt").exists()
    done = jobs.resume(run_id)
    assert done["status"] == "done"
    assert [s["completions"] for s in done["steps"]] == [1, 1, 1, 1]
    assert [s["attempts"] for s in done["steps"]] == [1, 1, 2, 1]
    assert [Path(c).name for c in counting_kind] == ["0.txt", "1.txt", "2.txt", "2.txt", "3.txt"]
    assert conn.execute("SELECT COUNT(*) FROM measurements WHERE run_id=?", (run_id,)).fetchone()[0] == 4


def _wait_for_done_steps(path: Path, run_cmd: str, n: int, proc: subprocess.Popen, timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"job ended before it could be killed: {proc.stderr.read()}")
        if path.exists():
            try:
                conn = sqlite3.connect(path, timeout=1)
                row = conn.execute("SELECT r.id, (SELECT COUNT(*) FROM steps s WHERE s.run_id=r.id AND "
                                   "s.status='done') FROM runs r WHERE r.command=? ORDER BY r.id DESC LIMIT 1",
                                   (run_cmd,)).fetchone()
                conn.close()
                if row and row[1] >= n:
                    return int(row[0])
            except sqlite3.OperationalError:
                pass
        time.sleep(0.02)
    raise AssertionError("job did not reach the kill point in time")


def test_sigkill_mid_job_then_resume(cli, tiny_model, tiny_text, tmp_path, hifikit_home):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    types = ["Q3_K_M", "Q4_K_M", "Q5_K_M"]
    argv = cli.argv("compare", "--ref", tiny_model, "--text", tiny_text, "--ctx", 128, "--chunks", 2,
                    "--threads", 2, "--out-dir", out_dir, *[a for t in types for a in ("--quant", t)], "--json")
    proc = subprocess.Popen(argv, env=cli.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        run_id = _wait_for_done_steps(hifikit_home / "runs.db", "compare", 2, proc)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL

    conn = db.connect()
    before = jobs.get_run(conn, run_id)
    done_before = [s["name"] for s in before["steps"] if s["status"] == "done"]
    assert 2 <= len(done_before) < len(before["steps"]), "the kill must land mid-way"
    # whatever a killed step left is hidden (.NAME.partial-PID.gguf); every visible GGUF is complete
    print(f"\nafter SIGKILL: {sorted(f.name for f in out_dir.iterdir())}")
    for f in out_dir.iterdir():
        if not f.name.startswith("."):
            gguf_io.read_info(f)
    print(f"\nkilled run {run_id} after {len(done_before)}/{len(before['steps'])} steps: {done_before}")

    res = cli("runs", "resume", run_id, "--json")
    print(res.stderr.strip())
    after = jobs.get_run(conn, run_id)
    assert after["status"] == "done"
    assert all(s["status"] == "done" and s["completions"] == 1 for s in after["steps"])
    assert all(s["attempts"] == 1 for s in after["steps"] if s["name"] in done_before)
    # artifacts intact: recorded hashes match the files, no partial files left
    artifacts = conn.execute("SELECT path, sha256, size FROM artifacts WHERE run_id=?", (run_id,)).fetchall()
    assert sorted(Path(a["path"]).name for a in artifacts) == sorted(f"{tiny_model.stem}-{t}.gguf" for t in types)
    for a in artifacts:
        assert db.sha256_file(a["path"]) == a["sha256"] and os.path.getsize(a["path"]) == a["size"]
    assert not [f for f in out_dir.iterdir() if f.name.startswith(".")]
    table = json.loads(res.stdout)["models"]
    assert [Path(r["model"]).name for r in table][1:] == [f"{tiny_model.stem}-{t}.gguf" for t in types]
    print("\n".join(f"{s['idx']} {s['name']:16s} attempts={s['attempts']} completions={s['completions']}"
                    for s in after["steps"]))


def test_partials_of_live_writers_are_kept(tmp_path):
    from hifikit import atomic
    target = tmp_path / "m.gguf"
    dead = tmp_path / f".m{atomic.PARTIAL_TAG}999999999.gguf"
    live = tmp_path / f".m{atomic.PARTIAL_TAG}1.gguf"  # pid 1 is always alive
    dead.write_bytes(b"x")
    live.write_bytes(b"x")
    assert atomic.stale_partials(target) == [dead]
    with atomic.output_file(target) as tmp:
        assert tmp.name.startswith(".m.partial-") and tmp.suffix == ".gguf"
        tmp.write_bytes(b"done")
    assert target.read_bytes() == b"done" and not dead.exists() and live.exists()
    with pytest.raises(HifikitError):
        with atomic.output_file(tmp_path / "n.gguf") as tmp:
            tmp.write_bytes(b"half")
            raise HifikitError("tool died")
    assert not (tmp_path / "n.gguf").exists() and not list(tmp_path.glob(".n*"))


def test_progress_bar_draws_only_when_enabled():
    import io
    from hifikit.progress import Progress
    from hifikit.runner import watch_chunks

    text = "perplexity: calculating perplexity over 4 chunks, n_ctx=128\n[1]5.1,[2]5.0,"
    assert watch_chunks(text) == (2, 4)
    buf = io.StringIO()
    bar = Progress("eval", enabled=True, stream=buf)
    bar.update(*watch_chunks(text))
    bar.close()
    assert "2/4" in buf.getvalue() and buf.getvalue().endswith("\n")
    quiet = io.StringIO()
    Progress("eval", stream=quiet).update(1, 4)  # StringIO is not a TTY
    assert quiet.getvalue() == ""


def test_step_kinds_are_one_explicit_list(tmp_path):
    import sys

    from hifikit import demo, steps
    from hifikit.sweep import steps as sweep_steps

    # importing a module that defines kinds registers nothing, and importing jobs imports none of them
    code = ("import sys, hifikit.jobs, hifikit.steps; "
            "print(*[m in sys.modules for m in ('hifikit.kinds', 'hifikit.demo', 'hifikit.sweep.steps')])")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE)
    assert proc.stdout.split() == ["False", "False", "False"], proc.stderr
    kinds = jobs.step_kinds()
    assert kinds["quantize"] is steps.quantize and kinds["knees"] is sweep_steps.knees
    assert kinds["demo-source"] is demo.source_step
    with pytest.raises(HifikitError, match="unknown step kind 'nope'"):
        jobs.create_run(db.connect(), "test", {}, [jobs.StepSpec("a", "nope", {})])


def test_pool_workers_die_with_their_parent(tmp_path):
    """runner.worker_pool: the prctl that tools and pool workers share; a killed parent leaves no worker."""
    import sys

    code = """if True:
        import os, sys, time
        from hifikit import runner
        pool = runner.worker_pool(1)
        print(pool.submit(os.getpid).result(), flush=True)
        pool.submit(time.sleep, 600)
        time.sleep(600)
    """
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        worker = int(proc.stdout.readline())
        assert worker != proc.pid and Path(f"/proc/{worker}").exists()
        proc.kill()  # the parent alone, not its process group
        proc.wait()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and Path(f"/proc/{worker}/status").exists() and \
                "zombie" not in Path(f"/proc/{worker}/status").read_text():
            time.sleep(0.05)
        status = Path(f"/proc/{worker}/status")
        assert not status.exists() or "zombie" in status.read_text(), "the pool worker outlived its parent"
    finally:
        proc.kill()
        proc.wait()
