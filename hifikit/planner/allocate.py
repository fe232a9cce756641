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
    stage: list[str]           # per item: "minimum", "hull", "fill", "exchange", "spare" or "branch"

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
             tie: float = 0.0) -> Allocation:
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
    large = [i for span, i in spans[:BRANCH_ITEMS] if span >= BRANCH_SHARE * capacity]
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
