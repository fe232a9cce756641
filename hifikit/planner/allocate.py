"""Multiple-choice knapsack: one option per item, least total error within a byte capacity.

``allocate(items, capacity)`` is a pure function of numbers (no model, no file),
so it is tested against brute force. Each item is a list of options
``(bytes, error)``. The steps:

1. Drop dominated options (more bytes and no less error than another).
2. Start every item at its smallest option; fail if even that does not fit.
3. Greedy along each item's lower convex hull, best error decrease per byte
   first (the Lagrangian relaxation's path); a step that does not fit is
   skipped, the other items go on.
4. Exact fill: the single move (any item to any option) with the largest error
   decrease that still fits, repeated.
5. Pair exchange: one item up, another down, together within the capacity,
   the pair that lowers the error most; then fill again. Repeated until no
   move helps.
6. With a tie (errors closer than it are noise), steps 1-5 ignore noise-level
   gains; the bytes still left are then spent by the fill of step 4 on the
   smallest errors, ties included (stage "spare").
7. Branching: steps 2-6 run again for every combination of options of the
   few large items (an option span of 5 % of the capacity or more), those held
   fixed, and a better result than step 6's is kept (stage "branch"). A large step (a tied
   embedding at three quarters of the file) is then weighed against the many
   small steps it displaces, which the greedy walk of step 3 cannot do. A
   combination whose Lagrangian bound (the dual's value plus the reduced costs
   of its options at the dual's multiplier) is above the best result so far
   cannot beat it and is not solved.

The Lagrangian dual ``max_l sum_i min_j (e_ij + l b_ij) - l C`` is a lower
bound on the optimum, so ``error - bound`` bounds how far a result can be from
the optimum; it is returned with the result.

The implementation works on padded (items x options) arrays made once per call
(``_Tables``, whose fronts and hulls are found for every item at once, a column at a
time), so a thousand items re-plan in well under 200 ms (bench/replan.py):
the greedy walk of step 3 takes the hull steps in the order a heap of each item's
next step pops them, all of them up to the first that does not fit at once; the
exchange of step 5 finds the pair matrix's first least entry without the matrix
(``_best_pair``); the dual bound is found by bisection over its breaks (it is
concave) and evaluated exactly at the breaks around its maximum. Each gives the
same choice as the plain loops it replaced, ties broken in the same order.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Sequence

import numpy as np

from ..errors import HifikitError
from ..frontier import lower_hull, pareto_front

EPS = 1e-15
MAX_PAIRS = 4_000_000     # above this many (up, down) pairs, exchanges go one step along each front
# branching on large items: those whose options span at least this share of the capacity, at most
# BRANCH_ITEMS of them and MAX_BRANCHES combinations of their options
BRANCH_SHARE = 0.05
BRANCH_ITEMS = 3
MAX_BRANCHES = 256
SMALL_PAIRS = 20_000      # up to this many pairs, an exchange scores the pair matrix; above, _best_pair


@dataclasses.dataclass
class Allocation:
    choice: list[int]          # per item, the index of its chosen option (in the caller's order)
    bytes: int
    error: float
    lower_bound: float         # Lagrangian dual bound on the optimal error
    stage: list[str]           # per item: "minimum", "hull", "fill", "exchange", "spare", "branch" or "time"

    @property
    def gap(self) -> float:
        return max(0.0, self.error - self.lower_bound)


def _pareto(options: Sequence[tuple[int, float]], tie: float = 0.0) -> list[int]:
    """Indices of the non-dominated options, by increasing bytes (and decreasing error).

    An option must lower the error by more than tie to be kept (errors closer than
    that are measurement noise: more bytes for nothing), and by more than the float
    noise of the errors (EPS of the largest) in any case.
    """
    errors = [o[1] for o in options]
    noise = EPS * max([1.0, *(abs(e) for e in errors if math.isfinite(e))])
    return pareto_front([o[0] for o in options], errors, max(tie, noise))


def _hull(options: Sequence[tuple[int, float]], front: list[int]) -> list[int]:
    """The lower convex hull of the Pareto front (bytes up, error down)."""
    return lower_hull([o[0] for o in options], [o[1] for o in options], front)


def dual_bound(items: Sequence[Sequence[tuple[int, float]]], capacity: int) -> float:
    """max over l >= 0 of sum_i min_j (e_ij + l b_ij) - l C (a lower bound on the optimum)."""
    return _dual_bound(_Tables(items, 0.0), capacity)


def _dual_bound(t: "_Tables", capacity: int) -> float:
    return _dual(t, capacity)[0]


def _dual(t: "_Tables", capacity: int) -> tuple[float, float]:
    """dual_bound on prepared tables, and the l that reaches it. The dual is concave in l and piecewise
    linear with its breaks at the hulls' slopes, so its maximum over them is found by bisection; the dual
    is then evaluated exactly as the sum over items, in their order, at the breaks around it."""
    hull, size = t.full_hull()
    slopes = np.zeros(0)
    if hull.shape[1] > 1:
        rows = np.arange(t.n)[:, None]
        a, b = np.maximum(hull[:, :-1], 0), np.maximum(hull[:, 1:], 0)
        seg = np.arange(hull.shape[1] - 1)[None, :] < (size - 1)[:, None]
        db = t.nbytes[rows, b] - t.nbytes[rows, a]
        seg &= db > 0
        slopes = (t.err[rows, a][seg] - t.err[rows, b][seg]) / db[seg]
    lam = np.unique(np.concatenate([[0.0], slopes]))
    cache: dict[int, float] = {}

    def value(k: int) -> float:
        if k not in cache:
            per_item = np.min(t.err + lam[k] * t.nbytes_f, axis=1)
            total = -lam[k] * capacity
            for v in per_item.tolist():
                total += v
            cache[k] = float(total)
        return cache[k]

    lo, hi = 0, len(lam) - 1
    while hi - lo > 2:
        mid = (lo + hi) // 2
        if value(mid) < value(mid + 1):
            lo = mid + 1
        else:
            hi = mid + 1
    window = range(max(0, lo - 3), min(len(lam), hi + 4))
    k = max([0, *window], key=lambda k: (value(k), -k))
    return value(k), float(lam[k])


class _Tables:
    """The items as padded arrays (by option index) and their fronts and hulls, made once per allocate.

    The fronts and hulls are made for all items at once, a column of the padded arrays at a time (the
    loops of frontier.pareto_front and frontier.lower_hull, one step for every item together): the same
    indices, ties broken the same way."""

    def __init__(self, items: Sequence[Sequence[tuple[int, float]]], tie: float,
                 arrays: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> None:
        """arrays: (nbytes, err, counts) already padded (int64 bytes, float errors, inf beyond counts)."""
        self.items = items
        if arrays is None:
            n, m = len(items), max((len(o) for o in items), default=0)
            self.nbytes = np.zeros((n, m), dtype=np.int64)
            self.err = np.full((n, m), np.inf)
            for i, opts in enumerate(items):
                self.nbytes[i, :len(opts)] = [o[0] for o in opts]
                self.err[i, :len(opts)] = [o[1] for o in opts]
            self.counts = np.array([len(o) for o in items], dtype=np.int64)
        else:
            self.nbytes, self.err, self.counts = arrays
            n, m = self.nbytes.shape
        self.n = n
        self.nbytes_f = self.nbytes.astype(np.float64)
        self.present = np.arange(m)[None, :] < self.counts[:, None]
        finite = self.present & np.isfinite(self.err)
        # the float noise of each item's errors (see _pareto)
        self.noise = EPS * np.maximum(1.0, np.max(np.where(finite, np.abs(self.err), 1.0), axis=1, initial=1.0))
        # the options by (bytes, error), the given order breaking ties (sorted() is stable, so is lexsort)
        big = np.iinfo(np.int64).max
        self.order = np.lexsort((self.err, np.where(self.present, self.nbytes, big)), axis=-1)
        front_pad = self._front(np.maximum(tie, self.noise))
        full_pad = front_pad if tie == 0 else self._front(self.noise)
        hull_pad, hull_len = self._hull(front_pad)
        self._full_pad = full_pad
        self._full_hull = (hull_pad, hull_len) if tie == 0 else None
        self.hull_pad, self.hull_len = hull_pad, hull_len
        self.front_table = _FrontTable(front_pad, n)
        self.full_table = self.front_table if tie == 0 else _FrontTable(full_pad, n)
        self.fronts = _rows(front_pad)
        # the hull walk's steps in the order the greedy takes them: by error decrease per byte, the item's
        # index breaking ties, an item's steps in their order (the heap of step 3, see _walk)
        if hull_pad.shape[1] > 1:
            rows = np.arange(n)[:, None]
            a, b = np.maximum(hull_pad[:, :-1], 0), np.maximum(hull_pad[:, 1:], 0)
            seg_ok = np.arange(hull_pad.shape[1] - 1)[None, :] < (hull_len - 1)[:, None]
            db = self.nbytes[rows, b] - self.nbytes[rows, a]
            with np.errstate(invalid="ignore"):
                ratio = -(self.err[rows, a] - self.err[rows, b]) / np.maximum(db, 1)
            key = np.maximum.accumulate(np.where(seg_ok, ratio, -np.inf), axis=1)
            seg_item, seg_k = np.nonzero(seg_ok)
            key, seg_db = key[seg_item, seg_k], db[seg_item, seg_k]
            order = np.lexsort((seg_k, seg_item, key))
        else:
            seg_item = seg_k = seg_db = order = np.zeros(0, dtype=np.int64)
        self.seg_item = seg_item.astype(np.int64)[order]
        self.seg_k = seg_k.astype(np.int64)[order]
        self.seg_db = seg_db.astype(np.int64)[order]

    def full_hull(self) -> tuple[np.ndarray, np.ndarray]:
        """The hulls of the fronts without tie (the dual bound's), made when first asked for."""
        if self._full_hull is None:
            self._full_hull = self._hull(self._full_pad)
        return self._full_hull

    def _front(self, tol: np.ndarray) -> np.ndarray:
        """Per item the option indices of its Pareto front by increasing bytes, -1 padded (_pareto's choice)."""
        n, m = self.nbytes.shape
        rows = np.arange(n)
        keep = np.zeros((n, m), dtype=bool)
        best = np.full(n, np.inf)
        for k in range(m):
            j = self.order[:, k]
            e = self.err[rows, j]
            here = self.present[rows, j] & ((e < best - tol) if k else True)
            keep[:, k] = here
            best = np.where(here, e, best)
        width = int(keep.sum(axis=1).max(initial=0))
        out = np.full((n, width), -1, dtype=np.int64)
        r, k = np.nonzero(keep)
        pos = np.cumsum(keep, axis=1)[r, k] - 1
        out[r, pos] = self.order[r, k]
        return out

    def _hull(self, front: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The lower convex hull of each padded front (frontier.lower_hull's monotone chain), -1 padded,
        and the hulls' lengths."""
        n, w = front.shape
        rows = np.arange(n)
        stack = np.full((n, max(w, 1)), -1, dtype=np.int64)
        size = np.zeros(n, dtype=np.int64)
        for k in range(w):
            i = front[:, k]
            active = i >= 0
            si = np.maximum(i, 0)
            while True:
                test = active & (size >= 2)
                if not test.any():
                    break
                o = stack[rows, np.maximum(size - 2, 0)]
                a = stack[rows, np.maximum(size - 1, 0)]
                o, a = np.maximum(o, 0), np.maximum(a, 0)
                bo, ba, bi = self.nbytes[rows, o], self.nbytes[rows, a], self.nbytes[rows, si]
                eo, ea, ei = self.err[rows, o], self.err[rows, a], self.err[rows, si]
                with np.errstate(invalid="ignore"):
                    cross = (ba - bo) * (ei - eo) - (ea - eo) * (bi - bo)
                pop = test & (cross <= 0)
                if not pop.any():
                    break
                size = size - pop
            stack[rows[active], size[active]] = i[active]
            size = size + active
        width = int(size.max(initial=0))
        stack = stack[:, :width]
        return np.where(np.arange(width)[None, :] < size[:, None], stack, -1), size


def _rows(padded: np.ndarray) -> list[list[int]]:
    """A -1 padded array's rows as lists."""
    lengths = (padded >= 0).sum(axis=1).tolist()
    return [row[:k] for row, k in zip(padded.tolist(), lengths)]


class _FrontTable:
    """Per item its front's option indices by increasing bytes (-1: padding)."""

    def __init__(self, front: np.ndarray, n: int) -> None:
        self.opt = front
        self.present = self.opt >= 0
        self.safe = np.where(self.present, self.opt, 0)
        self.rows = np.arange(n)[:, None]


def allocate(items: Sequence[Sequence[tuple[int, float]]], capacity: int, max_rounds: int = 10000,
             tie: float = 0.0, branch: bool = True, bound: bool = True) -> Allocation:
    """Choose one option per item; options within tie of a cheaper one's error are never bought.

    Large items (an option span of at least BRANCH_SHARE of the capacity, at most BRANCH_ITEMS of
    them) are branched on: the procedure runs again once per combination of their options, fixed,
    and a result better than the plain run's is kept. The greedy walk alone cannot trade one large
    step (a tied embedding that is three quarters of the file) against many small ones.
    Without bound the lower bound is not computed (nan).
    """
    if not items:
        return Allocation([], 0, 0.0, 0.0, [])
    for i, opts in enumerate(items):
        if not opts:
            raise HifikitError(f"item {i} has no option")
    return _allocate(_Tables(items, tie), capacity, max_rounds, tie, branch, bound)


def _allocate(t: _Tables, capacity: int, max_rounds: int, tie: float, branch: bool, bound: bool) -> Allocation:
    """allocate on prepared tables (their items may be absent: only the arrays are read)."""
    fronts = t.fronts
    first = np.array([f[0] for f in fronts], dtype=np.int64)
    last = np.array([f[-1] for f in fronts], dtype=np.int64)
    rows = np.arange(t.n)
    low = t.nbytes[rows, first].tolist()
    floor = sum(low)
    if floor > capacity:
        raise HifikitError(f"the budget ({capacity} bytes) is below the smallest possible size ({floor} bytes)")
    span = (t.nbytes[rows, last] - t.nbytes[rows, first]).tolist()
    spans = sorted(((span[i], i) for i, front in enumerate(fronts) if len(front) > 1), reverse=True)
    large = [i for sp, i in spans[:BRANCH_ITEMS] if sp >= BRANCH_SHARE * capacity] if branch else []
    best = _solve(t, capacity, tie, {}, max_rounds)
    best_total = _total(t, best[0])
    combos = list(itertools.product(*(fronts[i] for i in large))) if large else []
    dual = _dual(t, capacity) if combos or bound else (math.nan, 0.0)
    if combos:
        # a branch's error is at least the dual at l with its items fixed (the dual's value plus their
        # options' reduced costs at l): a branch that cannot beat the best so far is not solved
        lam = dual[1]
        reduced = t.err + lam * t.nbytes_f
        reduced = reduced - np.min(reduced, axis=1, keepdims=True)
        margin = 1e-9 * (1.0 + abs(dual[0]) + abs(lam * capacity))
    for combo in combos[:MAX_BRANCHES]:
        fixed = dict(zip(large, combo))
        if floor + sum(int(t.nbytes[i, j]) - low[i] for i, j in fixed.items()) > capacity:
            continue
        if dual[0] + sum(float(reduced[i, j]) for i, j in fixed.items()) > best_total + margin:
            continue
        choice, stage, used = _solve(t, capacity, tie, fixed, max_rounds)
        total = _total(t, choice)
        if total < best_total - EPS * max(1.0, abs(best_total)):
            for i in large:
                stage[i] = "branch"
            best, best_total = (choice, stage, used), total
    choice, stage, used = best
    return Allocation(choice, used, best_total, dual[0] if bound else math.nan, stage)


def _total(t: _Tables, choice: list[int]) -> float:
    """The summed error of a choice, added in the items' order (as the plain sum over the items did)."""
    return sum(t.err[np.arange(t.n), choice].tolist())


def _solve(t: _Tables, capacity: int, tie: float, fixed: dict[int, int], max_rounds: int
           ) -> tuple[list[int], list[str], int]:
    """Steps 2-6 with the items in `fixed` held at their given option."""
    held = np.zeros(t.n, dtype=bool)
    held[list(fixed)] = True
    choice = [fixed[i] if i in fixed else front[0] for i, front in enumerate(t.fronts)]
    stage = ["minimum"] * t.n
    used = int(t.nbytes[np.arange(t.n), choice].sum())
    used = _walk(t, held, choice, stage, used, capacity)

    # 4./5. exact fill and pair exchanges over all non-dominated options
    ch = np.array(choice, dtype=np.int64)
    for _ in range(max_rounds):
        if _fill(t, t.front_table, held, ch, stage, capacity - used):
            used = int(t.nbytes[np.arange(len(ch)), ch].sum())
            continue
        if _exchange(t, t.front_table, held, ch, stage, capacity - used):
            used = int(t.nbytes[np.arange(len(ch)), ch].sum())
            continue
        break
    if tie > 0:
        # the decisions above ignore noise-level gains; bytes left over once nothing else
        # pays are still the caller's budget: spend them on the smallest errors, ties included
        while _fill(t, t.full_table, held, ch, stage, capacity - used, label="spare"):
            used = int(t.nbytes[np.arange(len(ch)), ch].sum())
    return [int(c) for c in ch], stage, used


def _walk(t: _Tables, held: np.ndarray, choice: list[int], stage: list[str], used: int, capacity: int) -> int:
    """3. The greedy walk along the hulls, best error decrease per byte first; a step that does not fit ends
    its item's walk. The steps come in the order a heap of each item's next step would pop them: by key
    (the item's running maximum of -decrease per byte), then item, then step. All steps up to the first
    that does not fit are taken at once; after it only steps no larger than the bytes then left can fit."""
    keep = ~held[t.seg_item]
    seg_item, seg_k, seg_db = t.seg_item[keep], t.seg_k[keep], t.seg_db[keep]
    pos = np.zeros(t.n, dtype=np.int64)
    cum = used + np.cumsum(seg_db)
    over = np.nonzero(cum > capacity)[0]
    first = int(over[0]) if len(over) else len(seg_db)
    if first:
        np.add.at(pos, seg_item[:first], 1)
        used = int(cum[first - 1])
    if first < len(seg_db):
        slack = capacity - used
        rest = np.nonzero(seg_db[first + 1:] <= slack)[0] + first + 1
        pos_l = pos.tolist()
        for s_i, s_k, s_db in zip(seg_item[rest].tolist(), seg_k[rest].tolist(), seg_db[rest].tolist()):
            if pos_l[s_i] == s_k and s_db <= slack:
                pos_l[s_i] += 1
                slack -= s_db
        pos = np.array(pos_l, dtype=np.int64)
        used = capacity - slack
    for i in np.nonzero(pos)[0].tolist():
        choice[i] = int(t.hull_pad[i, int(pos[i])])
        stage[i] = "hull"
    return used


def _moves(t: _Tables, table: _FrontTable, held: np.ndarray, choice: np.ndarray
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every (item, option) move from the current choice, as (items x front) arrays: whether it is a move,
    the option, delta bytes, delta error and the step along the front."""
    rows = np.arange(len(choice))
    b0, e0 = t.nbytes[rows, choice], t.err[rows, choice]
    db = t.nbytes[table.rows, table.safe] - b0[:, None]
    de = t.err[table.rows, table.safe] - e0[:, None]
    valid = table.present & (table.opt != choice[:, None]) & ~held[:, None]
    return valid, table.opt, db, de, table.opt == choice[:, None]


def _fill(t: _Tables, table: _FrontTable, held: np.ndarray, choice: np.ndarray, stage: list[str], slack: int,
          label: str = "fill") -> bool:
    valid, opt, db, de, _ = _moves(t, table, held, choice)
    ok = valid & (db <= slack) & (de < 0)
    if not ok.any():
        return False
    k = int(np.argmin(np.where(ok, de, np.inf)))
    i, c = divmod(k, opt.shape[1])
    choice[i] = int(opt[i, c])
    stage[i] = label
    return True


def _exchange(t: _Tables, table: _FrontTable, held: np.ndarray, choice: np.ndarray, stage: list[str],
              slack: int) -> bool:
    valid, opt, db, de, here = _moves(t, table, held, choice)
    up_m = valid & (db > 0) & (de < 0)
    down_m = valid & (db < 0)
    if int(up_m.sum()) * int(down_m.sum()) > MAX_PAIRS:
        # large models: only one step along each item's front, up or down
        col = np.arange(opt.shape[1])[None, :]
        cur = np.argmax(here, axis=1)[:, None]
        up_m &= col == cur + 1
        down_m &= col == cur - 1
    up, down = np.nonzero(up_m.ravel())[0], np.nonzero(down_m.ravel())[0]
    if not len(up) or not len(down):
        return False
    width = opt.shape[1]
    it_u, it_d = up // width, down // width
    db_u, db_d = db.ravel()[up], db.ravel()[down]
    de_u, de_d = de.ravel()[up], de.ravel()[down]
    if len(up) * len(down) <= SMALL_PAIRS:
        total_b = db_u[:, None] + db_d[None, :]
        total_e = de_u[:, None] + de_d[None, :]
        score = np.where((total_b <= slack) & (it_u[:, None] != it_d[None, :]), total_e, np.inf)
        k = int(np.argmin(score))
        u, d = divmod(k, len(down))
        best = score[u, d]
    else:
        u, d, best = _best_pair(it_u, db_u, de_u, it_d, db_d, de_d, slack)
    if not np.isfinite(best) or best >= -EPS * max(1.0, abs(float(de_u.min()))):
        return False
    for idx in (up[u], down[d]):
        i, c = divmod(int(idx), width)
        choice[i] = int(opt[i, c])
        stage[i] = "exchange"
    return True


def _best_pair(it_u, db_u, de_u, it_d, db_d, de_d, slack: int) -> tuple[int, int, float]:
    """The first (u, d), in row-major order, of least de_u + de_d with db_u + db_d <= slack and different items:
    what the argmin over the pair matrix gives, without the matrix. Rounded addition is monotone, so a row's
    least sum is de_u plus the least de_d it may pair with (over the downs sorted by bytes: the best two of
    different items of each prefix); the first row reaching the least sum is then searched alone."""
    order = np.argsort(db_d, kind="stable")
    sorted_db = db_d[order]
    best1 = np.empty(len(order))
    item1 = np.empty(len(order), dtype=np.int64)
    best2 = np.empty(len(order))
    v1, i1, v2 = math.inf, -1, math.inf
    for k, (v, item) in enumerate(zip(de_d[order].tolist(), it_d[order].tolist())):
        if item == i1:
            v1 = min(v1, v)
        elif v < v1:
            v1, i1, v2 = v, item, v1
        elif v < v2:
            v2 = v
        best1[k], item1[k], best2[k] = v1, i1, v2
    last = np.searchsorted(sorted_db, slack - db_u, side="right") - 1
    at = np.maximum(last, 0)
    partner = np.where(item1[at] != it_u, best1[at], best2[at])
    rows = np.where(last >= 0, de_u + partner, np.inf)
    u = int(np.argmin(rows))
    best = float(rows[u])
    if not np.isfinite(best):
        return u, 0, best
    cand = np.where((db_u[u] + db_d <= slack) & (it_d != it_u[u]), de_u[u] + de_d, np.inf)
    d = int(np.argmin(cand))
    return u, d, float(cand[d])


# --- more budgets than bytes: time limits through Lagrange multipliers ---------------------------------

BISECT_STEPS = 24          # per multiplier from a cold start: brackets the smallest one that meets its limit to 2^-24
ROUNDS = 3                 # coordinate rounds over the limits
WARM_STEP = 1e-3           # from a warm start: the first bracket, relative to the multiplier given
WARM_TOL = 1e-3            # ... and the bracket's width, relative, at which the search stops


@dataclasses.dataclass
class LimitedAllocation(Allocation):
    totals: tuple[float, ...] = ()          # the chosen options' summed costs, one per limit
    limits: tuple[float, ...] = ()
    multipliers: tuple[float, ...] = ()     # the Lagrange multipliers that met the limits
    feasible: bool = True                   # False: no multiplier met every limit (the closest result)


def allocate_limited(items: Sequence[Sequence[tuple[int, float]]], capacity: int,
                     costs: Sequence[Sequence[Sequence[float]]], limits: Sequence[float], tie: float = 0.0,
                     start: Sequence[float] | None = None) -> LimitedAllocation:
    """Least total error within the byte capacity and within each limit on a summed cost.

    costs[i][j][k]: option j of item i costs this much of resource k (seconds per prompt, per token);
    limits[k]: at most this much of resource k in total. The byte budget stays exact (allocate); each
    limit is met through a Lagrange multiplier mu_k on its cost, the options' error becoming
    e + sum_k mu_k c_k: the smallest mu_k that meets limit k is searched, one limit after another,
    for ROUNDS rounds. From a cold start a multiplier is bisected BISECT_STEPS times in a bracket from
    0; start (the multipliers of a similar problem, e.g. the previous edit's) brackets each one within
    WARM_STEP of its start and narrows the bracket by false position (Illinois) to WARM_TOL. Then single
    moves that lower the true error and keep every budget are applied (the exact fill, with every
    resource). The lower bound is the best Lagrangian dual over the multipliers tried:
    max sum_i min_j (e + mu.c + l b) - l C - mu.L.
    """
    k = len(limits)
    if any(len(opts) != len(cs) or any(len(c) != k for c in cs) for opts, cs in zip(items, costs)) or \
            len(costs) != len(items):
        raise HifikitError("every option needs one cost per limit")
    n = len(items)
    m = max((len(o) for o in items), default=0)
    nbytes = np.zeros((n, m), dtype=np.int64)
    err = np.full((n, m), np.inf)
    cost = np.zeros((n, m, k))
    for i, (opts, cs) in enumerate(zip(items, costs)):
        nbytes[i, :len(opts)] = [o[0] for o in opts]
        err[i, :len(opts)] = [o[1] for o in opts]
        if cs:
            cost[i, :len(cs)] = np.asarray(cs, dtype=np.float64).reshape(len(cs), k)
    counts = np.array([len(o) for o in items], dtype=np.int64)
    lim = np.asarray(limits, dtype=np.float64)
    rows = np.arange(n)

    def totals(choice: list[int]) -> np.ndarray:
        # added in the items' order, as a plain sum over them
        return np.cumsum(cost[rows, choice], axis=0)[-1] if n else np.zeros(k)

    def tables(mu: np.ndarray) -> _Tables:
        return _Tables(items, tie, (nbytes, err + cost @ mu, counts))

    solved: dict[tuple, Allocation] = {}

    def solve(mu: np.ndarray, branch: bool = False) -> Allocation:
        # the search runs the plain walk; the final solve branches on the large items too
        key = (tuple(mu.tolist()), branch)
        if key not in solved:
            solved[key] = _allocate(tables(mu), capacity, 10000, tie, branch, False)
        return solved[key]

    def ok(a: Allocation) -> bool:
        return bool(np.all(totals(a.choice) <= lim * (1 + 1e-12)))

    def over(mu: np.ndarray, r: int) -> float:
        """How far the plain solve at mu is over limit r (<= 0: within)."""
        return float(totals(solve(mu).choice)[r] - limits[r])

    bounds: list[float] = []

    def bound(mu: np.ndarray) -> float:
        return _dual_bound(tables(mu), capacity) - float(mu @ lim)

    best = allocate(items, capacity, tie=tie)
    bounds.append(best.lower_bound)
    mu = np.zeros(k)
    warm = start is not None and len(start) == k and all(math.isfinite(x) and x >= 0 for x in start)
    if warm:
        mu = np.asarray(start, dtype=np.float64).copy()
    if not ok(best):
        # the scale of a multiplier: error per unit of the resource, from the spread of both
        spread_e = max((max(e for _, e in opts) - min(e for _, e in opts)) for opts in items) or 1.0
        for _ in range(ROUNDS):
            for r in range(k):
                if warm and mu[r] > 0:
                    mu[r] = _warm_search(mu, r, over)
                    if ok(solve(mu)):
                        break      # from a warm start, stop once every limit holds (the solve is cached)
                    continue
                spread_c = max(float(np.ptp(cost[i, :counts[i], r])) for i in range(n)) or 1.0
                lo, hi = 0.0, spread_e / spread_c
                trial = mu.copy()
                trial[r] = hi
                grow = 0
                while over(trial, r) > 0 and grow < 40:
                    hi *= 4.0
                    trial[r] = hi
                    grow += 1
                for _ in range(BISECT_STEPS):
                    mid = 0.5 * (lo + hi)
                    trial[r] = mid
                    if over(trial, r) > 0:
                        lo = mid
                    else:
                        hi = mid
                mu[r] = hi
            bounds.append(bound(mu))
            if ok(solve(mu)):
                break
        best = solve(mu, branch=True)
        if not ok(best):
            best = solve(mu)
    else:
        mu = np.zeros(k)
    choice = np.array(best.choice, dtype=np.int64)
    stage = list(best.stage)
    feasible = ok(best) or _repair(nbytes, err, cost, counts, choice, stage, capacity, lim)
    if feasible:
        _fill_limited(nbytes, err, cost, counts, choice, stage, capacity, lim)
    choice_l = [int(c) for c in choice]
    used = int(nbytes[rows, choice].sum())
    return LimitedAllocation(choice_l, used, sum(err[rows, choice].tolist()), max(bounds), stage,
                             tuple(float(x) for x in totals(choice_l)), tuple(float(x) for x in limits),
                             tuple(float(x) for x in mu), feasible)


def _warm_search(mu: np.ndarray, r: int, over) -> float:
    """The smallest multiplier r (the others as in mu) whose plain solve meets limit r, from mu[r]: a bracket
    [lo, hi] (over at lo, within at hi) grown from WARM_STEP of mu[r], then false position with the Illinois
    rule until it is WARM_TOL of hi wide; hi. A lo of 0 is taken as over, as the cold bisection takes it."""
    x0 = float(mu[r])
    trial = mu.copy()

    def f(x: float) -> float:
        trial[r] = x
        return over(trial, r)

    f0, step = f(x0), WARM_STEP * x0
    if f0 > 0:
        lo, flo = x0, f0
        hi, fhi = x0 + step, f(x0 + step)
        while fhi > 0 and step < 1e12 * x0:
            lo, flo = hi, fhi
            step *= 4.0
            hi, fhi = x0 + step, f(x0 + step)
        if fhi > 0:
            return hi
    else:
        hi, fhi = x0, f0
        lo = max(x0 - step, 0.0)
        flo = f(lo) if lo > 0 else math.inf
        while flo <= 0:
            hi, fhi = lo, flo
            step *= 4.0
            lo = max(x0 - step, 0.0)
            flo = f(lo) if lo > 0 else math.inf
    side = 0
    while hi - lo > WARM_TOL * hi:
        if math.isfinite(flo) and flo > fhi:
            x = hi - fhi * (hi - lo) / (fhi - flo)
            # keep x inside the bracket, and away from its ends
            x = min(max(x, lo + 0.05 * (hi - lo)), hi - 0.05 * (hi - lo))
        else:
            x = 0.5 * (lo + hi)
        fx = f(x)
        if fx > 0:
            lo, flo = x, fx
            if side == -1:
                fhi *= 0.5
            side = -1
        else:
            hi, fhi = x, fx
            if side == 1:
                flo *= 0.5
            side = 1
    return hi


def _repair(nbytes, err, cost, counts, choice: np.ndarray, stage: list[str], capacity: int,
            limits: np.ndarray) -> bool:
    """From a result over some limit: the single moves that cut the (relative) excess most per unit of error
    added, within the byte budget, until every limit holds; False if no move helps any more."""
    n, m = nbytes.shape
    rows = np.arange(n)
    present = np.arange(m)[None, :] < counts[:, None]
    while True:
        spent = np.cumsum(cost[rows, choice], axis=0)[-1]
        excess = np.maximum(spent / limits - 1.0, 0.0)
        if not excess.any():
            return True
        used = int(nbytes[rows, choice].sum())
        b0, e0, c0 = nbytes[rows, choice], err[rows, choice], cost[rows, choice]
        valid = present & (np.arange(m)[None, :] != choice[:, None]) & (used + nbytes - b0[:, None] <= capacity)
        cut = np.sum(np.minimum((c0[:, None, :] - cost) / limits, excess), axis=2)
        valid &= cut > 0
        with np.errstate(invalid="ignore", divide="ignore"):
            score = np.maximum(err - e0[:, None], 0.0) / np.where(valid, cut, 1.0)
        score = np.where(valid & (score < np.inf), score, np.inf)
        kbest = int(np.argmin(score))
        if not np.isfinite(score.flat[kbest]):
            return False
        i, j = divmod(kbest, m)
        choice[i] = j
        stage[i] = "time"


def _fill_limited(nbytes, err, cost, counts, choice: np.ndarray, stage: list[str], capacity: int,
                  limits: np.ndarray) -> None:
    """The exact fill with every resource: the single move with the largest error decrease that keeps the
    byte budget and every limit, repeated."""
    n, m = nbytes.shape
    rows = np.arange(n)
    present = np.arange(m)[None, :] < counts[:, None]
    while n:
        used = int(nbytes[rows, choice].sum())
        spent = np.cumsum(cost[rows, choice], axis=0)[-1]
        b0, e0, c0 = nbytes[rows, choice], err[rows, choice], cost[rows, choice]
        gain = err - e0[:, None]
        ok = present & (gain < 0) & (used + nbytes - b0[:, None] <= capacity)
        ok &= np.all(spent + cost - c0[:, None, :] <= limits * (1 + 1e-12), axis=2)
        if not ok.any():
            return
        kbest = int(np.argmin(np.where(ok, gain, np.inf)))
        i, j = divmod(kbest, m)
        choice[i] = j
        stage[i] = "fill"
