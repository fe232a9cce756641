"""Sweeps on a Ray cluster: actors feed pairs to a long-lived ``llama-sensitivity``; proxy chunks are tasks.

``run_sweep`` is ``measured.run_sweep`` spread over a cluster. The driver (this
process) keeps a queue of the pairs not stored yet
(``measured.pending_pairs``), a tensor's pairs together
(``measured.group_by_tensor``), and hands the next batch of them to whichever
actor is idle; batches shrink as the queue does (``_next_batch``), so the
actors end together. Each actor keeps one ``llama-sensitivity --pairs -`` process for its
whole life (the model is loaded and the reference pass computed once per
actor, not per batch), writes it one pair at a time on its stdin and yields
each result line as the tool prints it (a Ray streaming generator), so results
reach the driver pair by pair; a tool that died is started again at the next
batch. Only the driver writes the runs database, in the same table and rows
as the single-process sweep (``curves.store_points``, mode ``measured``).

Baseline: with ``baseline`` (a Q8_0 file of the model, say) each actor's tool
loads the baseline and reads the swept tensors' values from the model file;
the model's reference distributions (``reference``, written once by the
driver) travel to the actors through the object store, their bytes written
into an unlinked temp file of each actor (the tool opens it as /dev/fd/N):
no node needs the driver's run folder, and a killed actor leaves no file.

Offload: on a cluster with GPUs each actor reserves one (``num_gpus=1``, Ray
sets its CUDA_VISIBLE_DEVICES) and runs the tool with every layer on it
(``-ngl all``) unless ``ngl`` says otherwise; ``device`` is passed as the
tool's ``--device``.

Failures:

- an actor that dies (its process or node killed, out of memory) loses only
  the pair it was measuring; the pairs of its batch it had not reported go
  back to the front of the queue and a new actor takes the dead one's place;
- a tool killed by a signal on a live actor is the same, and the actor starts
  a new tool for its next batch;
- a tool that fails on its own (a bad pair, a missing file) fails the sweep
  with its error line, as the single-process sweep does;
- a batch retried MAX_ATTEMPTS times fails the sweep;
- a killed driver takes its actors with it (they are not detached); the run
  resumes with ``hifikit runs resume ID``, which measures only what is not
  stored.

``proxy_results`` runs the proxy sweep's work units (proxy._Task, a chunk of
rows of one tensor) as Ray tasks (``hifikit analyze --mode proxy --ray``);
proxy.run_proxy stores each tensor's points when its units are in, as it does
with a local process pool. A task whose worker dies is retried by Ray.

Ray is imported only here, and only when a cluster sweep runs
(``pip install 'hifikit[cluster]'``). The model, the text and the imatrix
must be readable at the same paths on every node (a shared file system), and
hifikit with its built tools installed on every node.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import logging
import math
import os
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

from .. import db, paths, runner
from ..errors import HifikitError
from ..progress import Progress
from . import curves, measured

log = logging.getLogger(__name__)

DEFAULT_BATCH = 16
MAX_ATTEMPTS = 3
INSTALL_HINT = "pip install 'hifikit[cluster]'"


@dataclasses.dataclass
class ClusterStats:
    pairs: int              # pairs measured by this call
    batches: int            # batches handed to actors (re-queued ones counted again)
    workers: int            # actors started at first
    requeued: int           # pairs re-queued after a worker died
    replaced: int           # actors started in place of dead ones
    seconds: float
    address: str            # the --ray address
    tool_starts: int = 0    # llama-sensitivity processes started (one per actor, plus one per restart)


class ToolKilled(RuntimeError):
    """The tool on an actor died of a signal: its batch is re-queued (not a problem of the pairs)."""


@dataclasses.dataclass(frozen=True)
class ToolConfig:
    """What an actor's llama-sensitivity is started with (the same for its whole life)."""
    model: str
    text: str
    ctx: int
    chunks: int
    imatrix: str | None
    threads: int
    ngl: int | None = None      # -ngl (None: the tool's default, 0; measured.ALL_LAYERS: all)
    device: str | None = None   # --device
    baseline: str | None = None  # the model the tool loads, `model` then its --source (measured.tool_args)


@dataclasses.dataclass(frozen=True)
class ToolStart:
    """Yielded by SensitivityWorker.measure when it starts a tool process (the driver counts them)."""
    pid: int
    host: str


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise HifikitError(f"--ray needs Ray, which is not installed: {INSTALL_HINT}") from None
    return ray


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """A plain TCP connect first: ray.init waits a long time on an address nobody listens on."""
    target = address.split("://", 1)[-1]
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise HifikitError(f"--ray {address!r}: expected auto or HOST:PORT (the head's GCS port, default 6379)")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise HifikitError(f"--ray {address}: no Ray cluster reachable there ({exc.strerror or exc}); "
                           f"start one with 'ray start --head' or give the head's HOST:PORT") from None


def connect(address: str) -> Any:
    """Ray, connected to the cluster at `address` (``auto``: the one RAY_ADDRESS or a local head names)."""
    ray = import_ray()
    if ray.is_initialized():
        return ray
    if address != "auto":
        _check_reachable(address)
    # Ray puts the driver's working directory on its workers' import path: a hifikit source checkout
    # there (a developer's, or CI's) would shadow the installed package, which has the binaries; every
    # path a sweep sends is absolute, so the driver connects from a folder that holds no package
    here = os.getcwd()
    neutral = db.home()
    neutral.mkdir(parents=True, exist_ok=True)
    os.chdir(neutral)
    try:
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING,
                 configure_logging=True)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        if address == "auto" and isinstance(exc, ConnectionError):
            raise HifikitError("--ray auto: no running Ray cluster found (set RAY_ADDRESS, give the head's "
                               "HOST:PORT, or start one with 'ray start --head')") from None
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise HifikitError(f"--ray {address}: cannot connect to a Ray cluster ({first})") from None
    finally:
        os.chdir(here)
    return ray


class SensitivityWorker:
    """The actor: one long-lived ``llama-sensitivity --pairs -``, fed one pair at a time; yields each result."""

    def __init__(self, config: ToolConfig, reference: bytes | None = None) -> None:
        self.config = config
        self.proc: subprocess.Popen | None = None
        self.err: Any = None            # the tool's stderr, an unlinked temp file
        self.busy = False               # a pair was written and its result not read
        self.starts = 0
        # the model's reference distributions (a baseline sweep), from the driver: an unlinked temp file too,
        # which the tool opens as /dev/fd/N. Nothing of the actor is left on the node's disk when it is killed
        self.reference: Any = None
        if reference is not None:
            self.reference = tempfile.TemporaryFile(prefix="hifikit-sens-ref-")
            self.reference.write(reference)
            self.reference.flush()

    def node(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "host": socket.gethostname()}

    def _start(self) -> subprocess.Popen:
        c = self.config
        fds = (self.reference.fileno(),) if self.reference is not None else ()
        args = measured.tool_args(Path(c.model), Path(c.text), "-", ctx=c.ctx, chunks=c.chunks,
                                  imatrix=Path(c.imatrix) if c.imatrix else None, threads=c.threads, ngl=c.ngl,
                                  device=c.device, baseline=Path(c.baseline) if c.baseline else None,
                                  reference=Path(f"/dev/fd/{fds[0]}") if fds else None)
        self.starts += 1
        self.err = tempfile.TemporaryFile("w+", prefix="hifikit-sens-err-", encoding="utf-8", errors="replace")
        # the tool dies with this process (PR_SET_PDEATHSIG): a killed actor leaves no tool computing
        self.proc = subprocess.Popen(
            [str(paths.binary(measured.TOOL)), *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self.err, text=True, bufsize=1, env=runner.tool_env(), pass_fds=fds,
            preexec_fn=functools.partial(runner.die_with_parent, int(signal.SIGKILL), os.getpid()))
        self.busy = False
        return self.proc

    def _stop(self, timeout: float = 10.0) -> int | None:
        """End of input for the tool (it exits by itself), killed if it does not within `timeout`."""
        proc, self.proc = self.proc, None
        rc = None
        if proc is not None:
            try:
                proc.stdin.close()
            except OSError:
                pass
            try:
                rc = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                rc = proc.wait()
            proc.stdout.close()
        if self.err is not None:
            self.err.close()
            self.err = None
        return rc

    def _died(self) -> None:
        """The tool ended while a pair was in flight: ToolKilled for a signal, else its error line."""
        proc = self.proc
        rc = proc.wait()
        self.err.seek(0)
        stderr = self.err.read()
        self._stop()
        if rc < 0:
            raise ToolKilled(f"{measured.TOOL} was killed by signal {-rc}")
        raise HifikitError(f"{measured.TOOL} failed with exit code {rc} on {socket.gethostname()}: "
                           f"{runner._error_line('', stderr)}")

    def measure(self, pairs: list[tuple[str, str]]) -> Iterator[tuple[str, str, int, float, float, float] | ToolStart]:
        for tensor, type_name in pairs:
            measured.check_pair(tensor, type_name)
        if self.proc is not None and (self.busy or self.proc.poll() is not None):
            # it died between batches, or a result of an abandoned batch is still to come: a fresh tool
            self._stop(timeout=0.0)
        if self.proc is None:
            proc = self._start()
            yield ToolStart(proc.pid, socket.gethostname())
        proc = self.proc
        for tensor, type_name in pairs:
            self.busy = True
            line = ""
            try:
                proc.stdin.write(f"{tensor}\t{type_name}\n")
                proc.stdin.flush()
                while not line.startswith("{"):  # the JSON result line (nothing else goes to stdout)
                    line = proc.stdout.readline()
                    if not line:
                        break
            except (BrokenPipeError, OSError):
                line = ""
            if not line:
                self._died()
            self.busy = False
            parsed = measured.parse_line(line)
            if parsed is None or parsed[0] != tensor or parsed[1].type.lower() != type_name.lower():
                self._stop(timeout=0.0)
                raise HifikitError(f"{measured.TOOL} answered {line.strip()[:200]!r} to the pair {tensor} {type_name}")
            p = parsed[1]
            yield tensor, p.type, p.nbytes, p.error, p.error_pm, p.seconds

    def close(self) -> int | None:
        """End the tool cleanly (end of its input); its exit status."""
        rc = self._stop()
        if self.reference is not None:
            self.reference.close()
            self.reference = None
        return rc


def _next_batch(queue: collections.deque, size: int, workers: int) -> list[tuple[str, str]]:
    """The next batch for an idle actor, from the front of the queue of pairs: at most `size` pairs and at most
    half of one worker's share of what is left ("factoring", a guided self-scheduling), so batches shrink to
    one pair at the end and the actors finish within about a pair of each other, whether they started at
    different times (one waits for a free node) or their pairs cost different times (a 262144-row embedding
    against a small projection). Small batches cost little: an actor's tool outlives its batches. (Pairs cut
    into even batches up front left one actor measuring alone for the time the other had started late.)"""
    n = max(1, min(size, math.ceil(len(queue) / (2 * workers))))
    return [queue.popleft() for _ in range(min(n, len(queue)))]


def worker_options(ray: Any, threads: int, workers: int | None) -> tuple[int, dict[str, Any]]:
    """How many actors and the options of each: one GPU each where the cluster has GPUs, else `threads` CPUs."""
    res = ray.cluster_resources()
    gpus = int(res.get("GPU", 0))
    opts: dict[str, Any] = {"num_cpus": threads, "max_restarts": 0, "scheduling_strategy": "SPREAD"}
    if gpus:
        opts["num_gpus"] = 1
        fit = gpus
    else:
        fit = max(1, int(res.get("CPU", 1)) // threads)
    return (workers or fit), opts


def tool_ngl(opts: dict[str, Any], ngl: int | None) -> int | None:
    """The tool's -ngl on an actor of these options: `ngl` if given, else every layer when it holds a GPU."""
    if ngl is not None:
        return ngl
    return measured.ALL_LAYERS if opts.get("num_gpus") else None


def run_sweep(conn, run_id: int, model: Path, text: Path, pairs: list[tuple[str, str]], *, ctx: int, chunks: int,
              imatrix: Path | None, threads: int | None, log_path: Path, progress: bool | None, address: str,
              batch: int = DEFAULT_BATCH, workers: int | None = None, ngl: int | None = None,
              device: str | None = None, baseline: Path | None = None,
              reference: Path | None = None) -> ClusterStats:
    """Measure every pair not stored yet for this run on the Ray cluster at `address`; the driver stores each
    result as it arrives. With a baseline, the actors' tools load it and read the reference distributions of
    `reference` (measured.tool_args), whose bytes go to each actor."""
    start = time.monotonic()
    todo = measured.group_by_tensor(measured.pending_pairs(conn, run_id, pairs))
    n_all = len({(t, ty.lower()) for t, ty in pairs})
    n_done = n_all - len(todo)
    if not todo:
        log.info("measured sweep of run %d: all %d pairs already stored", run_id, n_all)
        return ClusterStats(0, 0, 0, 0, 0, 0.0, address)
    ray = connect(address)
    from ray.exceptions import RayActorError, RayTaskError, WorkerCrashedError

    lost_errors: tuple[type, ...] = (RayActorError, WorkerCrashedError)
    try:
        from ray.exceptions import ActorUnavailableError, NodeDiedError
        lost_errors += (ActorUnavailableError, NodeDiedError)
    except ImportError:  # older Ray
        pass
    threads = threads or 1
    n_workers, opts = worker_options(ray, threads, workers)
    queue = collections.deque(todo)     # the pairs to measure, in order (batches are cut as actors ask)
    n_workers = min(n_workers, len(queue))
    actor_cls = ray.remote(SensitivityWorker)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    wanted = {(t, ty.lower()) for t, ty in todo}
    stored: set[tuple[str, str]] = set()
    attempts: collections.Counter[tuple[str, str]] = collections.Counter()
    stats = ClusterStats(0, 0, n_workers, 0, 0, 0.0, address)
    # batches go only to actors that have started: a call queued on an actor the cluster cannot place
    # would hold its batch for ever
    starting: dict[Any, Any] = {}
    idle: list[Any] = []
    inflight: dict[Any, tuple[Any, list[tuple[str, str]]]] = {}

    config = ToolConfig(str(model), str(text), ctx, chunks, str(imatrix) if imatrix else None, threads,
                        tool_ngl(opts, ngl), device, str(baseline) if baseline else None)
    if baseline is not None and reference is None:
        raise HifikitError("a sweep on a baseline needs the model's reference distributions (write_reference)")
    # put once, a top-level argument of each actor: Ray hands every actor the bytes themselves
    reference_ref = ray.put(reference.read_bytes()) if reference is not None else None

    def new_actor() -> None:
        actor = actor_cls.options(**opts).remote(config, reference_ref)
        starting[actor.node.remote()] = actor

    for _ in range(n_workers):
        new_actor()
    failed_starts = 0
    waiting_since = time.monotonic()
    bar = Progress("measured sweep (ray)", enabled=progress)
    bar.update(n_done, n_all)

    with open(log_path, "a", encoding="utf-8") as logf:
        def note(msg: str) -> None:
            log.info("%s", msg)
            logf.write(msg + "\n")
            logf.flush()

        note(f"# measured sweep of run {run_id} on Ray: {len(todo)} of {n_all} pairs, batches of <= {batch}, "
             f"{n_workers} workers, {opts}, -ngl {config.ngl}, --device {config.device}"
             + (f", baseline {config.baseline}" if config.baseline else ""))
        try:
            while queue or inflight:  # (actors still starting are not work: they are killed at the end)
                while idle and queue:
                    actor, todo_batch = idle.pop(), _next_batch(queue, batch, n_workers)
                    for p in todo_batch:
                        attempts[(p[0], p[1].lower())] += 1
                    gen = actor.measure.options(num_returns="streaming").remote(todo_batch)
                    inflight[gen] = (actor, list(todo_batch))
                    stats.batches += 1
                ready, _ = ray.wait([*inflight, *starting], num_returns=1, timeout=5.0)
                if not inflight and not ready and time.monotonic() - waiting_since > 60:
                    note(f"# waiting for Ray workers to start ({len(starting)} pending): does the cluster have "
                         f"free resources {({k: v for k, v in opts.items() if k.startswith('num_')})}?")
                    waiting_since = time.monotonic()
                for ref in ready:
                    if ref in starting:
                        actor = starting.pop(ref)
                        try:
                            ray.get(ref)
                        except (*lost_errors, RayTaskError) as exc:
                            failed_starts += 1
                            if failed_starts > MAX_ATTEMPTS * n_workers:
                                raise HifikitError(f"Ray workers failed to start {failed_starts} times (last: "
                                                   f"{type(exc).__name__}: {str(exc).strip()[:200]})") from None
                            new_actor()
                            stats.replaced += 1
                            continue
                        idle.append(actor)
                        waiting_since = time.monotonic()
                        continue
                    gen = ref
                    actor, left = inflight[gen]
                    try:
                        rec = ray.get(next(gen))
                    except StopIteration:
                        del inflight[gen]
                        if left:
                            raise HifikitError(f"{measured.TOOL} finished without measuring {len(left)} pair(s), "
                                               f"e.g. {left[0][0]} {left[0][1]}")
                        idle.append(actor)
                        continue
                    except (*lost_errors, RayTaskError) as exc:
                        del inflight[gen]
                        killed = isinstance(exc, lost_errors) or isinstance(exc, ToolKilled) or \
                            isinstance(getattr(exc, "cause", None), ToolKilled)
                        if not killed:
                            cause = getattr(exc, "cause", None) or exc
                            raise HifikitError(str(cause).strip().splitlines()[-1]) from None
                        tired = [p for p in left if attempts[(p[0], p[1].lower())] >= MAX_ATTEMPTS]
                        if tired:
                            raise HifikitError(f"{len(left)} pair(s), e.g. {tired[0][0]} {tired[0][1]}, failed "
                                               f"{MAX_ATTEMPTS} times on Ray workers (last: "
                                               f"{type(exc).__name__})") from None
                        note(f"# worker lost ({type(exc).__name__}): {len(left)} pair(s) of its batch re-queued")
                        queue.extendleft(reversed(left))
                        stats.requeued += len(left)
                        if isinstance(exc, lost_errors):
                            ray.kill(actor, no_restart=True)
                            new_actor()
                            stats.replaced += 1
                        else:
                            idle.append(actor)
                        continue
                    if isinstance(rec, ToolStart):
                        stats.tool_starts += 1
                        continue
                    tensor, type_name, nbytes, kld, kld_pm, seconds = rec
                    key = (tensor, type_name.lower())
                    if key not in wanted or key in stored:
                        raise HifikitError(f"{measured.TOOL} reported a pair that was not asked for: "
                                           f"{tensor} {type_name}")
                    with db.transaction(conn):
                        curves.store_points(conn, run_id, measured.MODE, tensor,
                                            [curves.CurvePoint(type_name, nbytes, kld, kld_pm, seconds)])
                    stored.add(key)
                    left[:] = [p for p in left if (p[0], p[1].lower()) != key]
                    logf.write(f"{tensor}\t{type_name}\t{kld!r}\n")
                    stats.pairs += 1
                    bar.update(n_done + len(stored), n_all)
        finally:
            bar.close()
            for gen in inflight:
                try:
                    ray.cancel(gen, force=True)
                except Exception:  # noqa: BLE001 - best effort on the way out
                    pass
            # idle actors end their tools cleanly (end of input); then every actor goes
            try:
                ray.get([a.close.remote() for a in idle], timeout=15)
            except Exception:  # noqa: BLE001 - best effort on the way out: the tools die with their actors
                pass
            for actor in idle + list(starting.values()) + [a for a, _ in inflight.values()]:
                try:
                    ray.kill(actor, no_restart=True)
                except Exception:  # noqa: BLE001
                    pass
    missing = wanted - stored
    if missing:
        tensor, type_name = sorted(missing)[0]
        raise HifikitError(f"the Ray sweep finished without measuring {len(missing)} pair(s), e.g. {tensor} "
                           f"{type_name} (log: {log_path})")
    stats.seconds = time.monotonic() - start
    return stats


def proxy_results(tasks: list, address: str, workers: int | None = None) -> Iterator:
    """The proxy sweep's work units (proxy._Task) as Ray tasks, one CPU each; their results as they finish.

    At most `workers` tasks are in flight (default: the cluster's CPUs), so the driver's memory stays
    bounded. A task whose worker dies is retried by Ray (up to MAX_ATTEMPTS runs); the caller
    (proxy.run_proxy) stores a tensor's points when all its units are in, as with a local pool.
    """
    from . import proxy

    ray = connect(address)
    limit = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
    remote = ray.remote(num_cpus=1, max_retries=MAX_ATTEMPTS - 1, scheduling_strategy="SPREAD")(proxy._measure)
    pending = collections.deque(tasks)
    inflight: list[Any] = []
    try:
        while pending or inflight:
            while pending and len(inflight) < limit:
                inflight.append(remote.remote(pending.popleft()))
            ready, inflight = ray.wait(inflight, num_returns=1)
            for ref in ready:
                yield ray.get(ref)
    finally:
        for ref in inflight:
            ray.cancel(ref, force=True)
