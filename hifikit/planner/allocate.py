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
   small steps it displaces, which the greedy walk of step 3 cannot do.

The Lagrangian dual ``max_l sum_i min_j (e_ij + l b_ij) - l C`` is a lower
bound on the optimum, so ``error - bound`` bounds how far a result can be from
the optimum; it is returned with the result.
"""
from __future__ import annotations

import dataclasses
import heapq
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
    slopes = {0.0}
    for opts in items:
        front = _pareto(opts)
        hull = _hull(opts, front)
        for a, b in zip(hull, hull[1:]):
            db = opts[b][0] - opts[a][0]
            if db > 0:
                slopes.add((opts[a][1] - opts[b][1]) / db)
    lam = np.array(sorted(slopes))
    total = -lam * capacity
    for opts in items:
        b = np.array([o[0] for o in opts], dtype=np.float64)
        e = np.array([o[1] for o in opts], dtype=np.float64)
        total += np.min(e[None, :] + lam[:, None] * b[None, :], axis=1)
    return float(total.max())


def allocate(items: Sequence[Sequence[tuple[int, float]]], capacity: int, max_rounds: int = 10000,
             tie: float = 0.0, branch: bool = True) -> Allocation:
    """Choose one option per item; options within tie of a cheaper one's error are never bought.

    Large items (an option span of at least BRANCH_SHARE of the capacity, at most BRANCH_ITEMS of
    them) are branched on: the procedure runs again once per combination of their options, fixed,
    and a result better than the plain run's is kept. The greedy walk alone cannot trade one large
    step (a tied embedding that is three quarters of the file) against many small ones.
    """
    if not items:
        return Allocation([], 0, 0.0, 0.0, [])
    for i, opts in enumerate(items):
        if not opts:
            raise HifikitError(f"item {i} has no option")
    fronts = [_pareto(opts, tie) for opts in items]
    floor = sum(items[i][front[0]][0] for i, front in enumerate(fronts))
    if floor > capacity:
        raise HifikitError(f"the budget ({capacity} bytes) is below the smallest possible size ({floor} bytes)")
    spans = sorted(((items[i][front[-1]][0] - items[i][front[0]][0], i) for i, front in enumerate(fronts)
                    if len(front) > 1), reverse=True)
    large = [i for span, i in spans[:BRANCH_ITEMS] if span >= BRANCH_SHARE * capacity] if branch else []
    best = _solve(items, fronts, capacity, tie, {}, max_rounds)
    combos = list(itertools.product(*(fronts[i] for i in large))) if large else []
    for combo in combos[:MAX_BRANCHES]:
        fixed = dict(zip(large, combo))
        if floor + sum(items[i][j][0] - items[i][fronts[i][0]][0] for i, j in fixed.items()) > capacity:
            continue
        choice, stage, used = _solve(items, fronts, capacity, tie, fixed, max_rounds)
        if _total(items, choice) < _total(items, best[0]) - EPS * max(1.0, abs(_total(items, best[0]))):
            for i in large:
                stage[i] = "branch"
            best = (choice, stage, used)
    choice, stage, used = best
    return Allocation(choice, used, _total(items, choice), dual_bound(items, capacity), stage)


def _total(items, choice: list[int]) -> float:
    return sum(items[i][c][1] for i, c in enumerate(choice))


def _solve(items, fronts, capacity: int, tie: float, fixed: dict[int, int], max_rounds: int
           ) -> tuple[list[int], list[str], int]:
    """Steps 2-6 with the items in `fixed` held at their given option."""
    free = [front if i not in fixed else [fixed[i]] for i, front in enumerate(fronts)]
    hulls = [_hull(opts, front) for opts, front in zip(items, free)]
    choice = [front[0] for front in free]
    stage = ["minimum"] * len(items)
    used = sum(items[i][c][0] for i, c in enumerate(choice))

    # 3. greedy along the hulls
    pos = [0] * len(items)
    heap: list[tuple[float, int]] = []

    def push(i: int) -> None:
        h = hulls[i]
        if pos[i] + 1 < len(h):
            a, b = items[i][h[pos[i]]], items[i][h[pos[i] + 1]]
            heapq.heappush(heap, (-(a[1] - b[1]) / max(b[0] - a[0], 1), i))

    for i in range(len(items)):
        push(i)
    while heap:
        _, i = heapq.heappop(heap)
        h = hulls[i]
        nxt = h[pos[i] + 1]
        delta = items[i][nxt][0] - items[i][choice[i]][0]
        if used + delta <= capacity:
            used += delta
            choice[i] = nxt
            pos[i] += 1
            stage[i] = "hull"
            push(i)
        # a step that does not fit ends this item's hull walk; the fill below may still move it

    # 4./5. exact fill and pair exchanges over all non-dominated options
    for _ in range(max_rounds):
        if _fill(items, free, choice, stage, capacity - used):
            used = sum(items[i][c][0] for i, c in enumerate(choice))
            continue
        if _exchange(items, free, choice, stage, capacity - used):
            used = sum(items[i][c][0] for i, c in enumerate(choice))
            continue
        break
    if tie > 0:
        # the decisions above ignore noise-level gains; bytes left over once nothing else
        # pays are still the caller's budget: spend them on the smallest errors, ties included
        full = [_pareto(opts) if i not in fixed else [fixed[i]] for i, opts in enumerate(items)]
        while _fill(items, full, choice, stage, capacity - used, label="spare"):
            used = sum(items[i][c][0] for i, c in enumerate(choice))
    return choice, stage, used


def _moves(items, fronts, choice) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every (item, option) move from the current choice: item index, option index, delta bytes, delta error."""
    it, op, db, de = [], [], [], []
    for i, front in enumerate(fronts):
        b0, e0 = items[i][choice[i]]
        for j in front:
            if j != choice[i]:
                it.append(i)
                op.append(j)
                db.append(items[i][j][0] - b0)
                de.append(items[i][j][1] - e0)
    return np.array(it, dtype=np.int64), np.array(op, dtype=np.int64), np.array(db, dtype=np.int64), \
        np.array(de, dtype=np.float64)


def _fill(items, fronts, choice, stage, slack: int, label: str = "fill") -> bool:
    it, op, db, de = _moves(items, fronts, choice)
    if not len(it):
        return False
    ok = (db <= slack) & (de < 0)
    if not ok.any():
        return False
    k = int(np.argmin(np.where(ok, de, np.inf)))
    choice[it[k]] = int(op[k])
    stage[it[k]] = label
    return True


def _exchange(items, fronts, choice, stage, slack: int) -> bool:
    it, op, db, de = _moves(items, fronts, choice)
    up = np.nonzero((db > 0) & (de < 0))[0]
    down = np.nonzero(db < 0)[0]
    if len(up) * len(down) > MAX_PAIRS:
        # large models: only one step along each item's front, up or down
        rank = {(i, j): r for i, front in enumerate(fronts) for r, j in enumerate(front)}
        step = np.array([rank[(int(i), int(j))] - rank[(int(i), choice[int(i)])] for i, j in zip(it, op)])
        up = up[step[up] == 1]
        down = down[step[down] == -1]
    if not len(up) or not len(down):
        return False
    total_b = db[up][:, None] + db[down][None, :]
    total_e = de[up][:, None] + de[down][None, :]
    ok = (total_b <= slack) & (it[up][:, None] != it[down][None, :])
    score = np.where(ok, total_e, np.inf)
    k = int(np.argmin(score))
    u, d = divmod(k, len(down))
    best = score[u, d]
    if not np.isfinite(best) or best >= -EPS * max(1.0, abs(float(de[up].min()))):
        return False
    for idx in (up[u], down[d]):
        choice[it[idx]] = int(op[idx])
        stage[it[idx]] = "exchange"
    return True


# --- more budgets than bytes: time limits through Lagrange multipliers ---------------------------------

BISECT_STEPS = 24          # per multiplier: brackets the smallest one that meets its limit to 2^-24
ROUNDS = 3                 # coordinate rounds over the limits


@dataclasses.dataclass
class LimitedAllocation(Allocation):
    totals: tuple[float, ...] = ()          # the chosen options' summed costs, one per limit
    limits: tuple[float, ...] = ()
    multipliers: tuple[float, ...] = ()     # the Lagrange multipliers that met the limits
    feasible: bool = True                   # False: no multiplier met every limit (the closest result)


def allocate_limited(items: Sequence[Sequence[tuple[int, float]]], capacity: int,
                     costs: Sequence[Sequence[Sequence[float]]], limits: Sequence[float], tie: float = 0.0
                     ) -> LimitedAllocation:
    """Least total error within the byte capacity and within each limit on a summed cost.

    costs[i][j][k]: option j of item i costs this much of resource k (seconds per prompt, per token);
    limits[k]: at most this much of resource k in total. The byte budget stays exact (allocate); each
    limit is met through a Lagrange multiplier mu_k on its cost, the options' error becoming
    e + sum_k mu_k c_k: the smallest mu_k that meets limit k is bisected, one limit after another,
    for ROUNDS rounds. Then single moves that lower the true error and keep every budget are
    applied (the exact fill, with every resource). The lower bound is the best Lagrangian dual over
    the multipliers tried: max sum_i min_j (e + mu.c + l b) - l C - mu.L.
    """
    k = len(limits)
    if any(len(opts) != len(cs) or any(len(c) != k for c in cs) for opts, cs in zip(items, costs)) or \
            len(costs) != len(items):
        raise HifikitError("every option needs one cost per limit")
    cost = [np.asarray(cs, dtype=np.float64).reshape(len(cs), k) for cs in costs]

    def totals(choice: list[int]) -> np.ndarray:
        return sum((cost[i][c] for i, c in enumerate(choice)), np.zeros(k))

    def solve(mu: np.ndarray, branch: bool = False) -> Allocation:
        # the search runs the plain walk; the final solve branches on the large items too
        shifted = [[(b, e + float(cost[i][j] @ mu)) for j, (b, e) in enumerate(opts)] for i, opts in enumerate(items)]
        return allocate(shifted, capacity, tie=tie, branch=branch)

    def ok(a: Allocation) -> bool:
        return bool(np.all(totals(a.choice) <= np.asarray(limits) * (1 + 1e-12)))

    bounds: list[float] = []

    def bound(mu: np.ndarray) -> float:
        shifted = [[(b, e + float(cost[i][j] @ mu)) for j, (b, e) in enumerate(opts)] for i, opts in enumerate(items)]
        return dual_bound(shifted, capacity) - float(mu @ np.asarray(limits))

    mu = np.zeros(k)
    best = allocate(items, capacity, tie=tie)
    bounds.append(best.lower_bound)
    if not ok(best):
        # the scale of a multiplier: error per unit of the resource, from the spread of both
        spread_e = max((max(e for _, e in opts) - min(e for _, e in opts)) for opts in items) or 1.0
        for _ in range(ROUNDS):
            for r in range(k):
                spread_c = max(float(np.ptp(c[:, r])) for c in cost) or 1.0
                lo, hi = 0.0, spread_e / spread_c
                trial = mu.copy()
                trial[r] = hi
                grow = 0
                while totals(solve(trial).choice)[r] > limits[r] and grow < 40:
                    hi *= 4.0
                    trial[r] = hi
                    grow += 1
                for _ in range(BISECT_STEPS):
                    mid = 0.5 * (lo + hi)
                    trial[r] = mid
                    if totals(solve(trial).choice)[r] > limits[r]:
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
    choice, stage = list(best.choice), list(best.stage)
    feasible = ok(best) or _repair(items, cost, choice, stage, capacity, np.asarray(limits, dtype=np.float64))
    if feasible:
        _fill_limited(items, cost, choice, stage, capacity, np.asarray(limits))
    used = sum(items[i][c][0] for i, c in enumerate(choice))
    return LimitedAllocation(choice, used, _total(items, choice), max(bounds), stage,
                             tuple(float(x) for x in totals(choice)), tuple(float(x) for x in limits),
                             tuple(float(x) for x in mu), feasible)


def _repair(items, cost, choice: list[int], stage: list[str], capacity: int, limits: np.ndarray) -> bool:
    """From a result over some limit: the single moves that cut the (relative) excess most per unit of error
    added, within the byte budget, until every limit holds; False if no move helps any more."""
    while True:
        spent = sum((cost[i][c] for i, c in enumerate(choice)), np.zeros(len(limits)))
        excess = np.maximum(spent / limits - 1.0, 0.0)
        if not excess.any():
            return True
        used = sum(items[i][c][0] for i, c in enumerate(choice))
        best = (np.inf, -1, -1)
        for i, opts in enumerate(items):
            b0, e0 = opts[choice[i]]
            for j, (b, e) in enumerate(opts):
                if j == choice[i] or used + b - b0 > capacity:
                    continue
                cut = float(np.sum(np.minimum((cost[i][choice[i]] - cost[i][j]) / limits, excess)))
                if cut <= 0:
                    continue
                score = max(e - e0, 0.0) / cut
                if score < best[0]:
                    best = (score, i, j)
        if best[1] < 0:
            return False
        choice[best[1]] = best[2]
        stage[best[1]] = "time"


def _fill_limited(items, cost, choice: list[int], stage: list[str], capacity: int, limits: np.ndarray) -> None:
    """The exact fill with every resource: the single move with the largest error decrease that keeps the
    byte budget and every limit, repeated."""
    while True:
        used = sum(items[i][c][0] for i, c in enumerate(choice))
        spent = sum((cost[i][c] for i, c in enumerate(choice)), np.zeros(len(limits)))
        best = (0.0, -1, -1)
        for i, opts in enumerate(items):
            b0, e0 = opts[choice[i]]
            for j, (b, e) in enumerate(opts):
                gain = e - e0
                if gain >= best[0] or used + b - b0 > capacity:
                    continue
                if np.any(spent + cost[i][j] - cost[i][choice[i]] > limits * (1 + 1e-12)):
                    continue
                best = (gain, i, j)
        if best[1] < 0:
            return
        choice[best[1]] = best[2]
        stage[best[1]] = "fill"
