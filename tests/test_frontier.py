"""The one Pareto front and lower hull (hifikit/frontier.py) the knees, the planner, the report and the PR use."""
from __future__ import annotations

import itertools
import math
import random

from hifikit.frontier import lower_hull, nondominated, on_front, pareto_front


def test_front_by_increasing_cost():
    pts = [(10.0, 0.3), (12.0, 0.1), (11.0, 0.35), (9.0, 0.5), (13.0, 0.1), (14.0, 0.05)]
    xs, ys = zip(*pts)
    assert [pts[i] for i in pareto_front(xs, ys)] == [(9.0, 0.5), (10.0, 0.3), (12.0, 0.1), (14.0, 0.05)]


def test_front_is_strict_non_dominance():
    rng = random.Random(7)
    for _ in range(200):
        pts = [(rng.randint(0, 6), rng.randint(0, 6)) for _ in range(rng.randint(1, 8))]
        xs, ys = zip(*pts)
        brute = [not any(q[0] <= p[0] and q[1] <= p[1] and q != p for q in pts) for p in pts]
        assert on_front(xs, ys) == brute, pts
        # one index per distinct front point, by increasing cost and strictly decreasing error
        front = [pts[i] for i in pareto_front(xs, ys)]
        assert front == sorted(set(p for p, b in zip(pts, brute) if b))
        assert all(a[1] > b[1] for a, b in zip(front, front[1:]))


def test_tie_drops_gains_within_the_noise():
    xs, ys = [1, 2, 3, 4], [1.0, 0.9999, 0.5, 0.49995]
    assert pareto_front(xs, ys) == [0, 1, 2, 3]
    assert pareto_front(xs, ys, tie=1e-3) == [0, 2]
    # the cheapest point stays, whatever its error: every item of a plan needs an option
    assert pareto_front([5, 1], [0.1, math.inf]) == [1, 0]


def test_lower_hull_drops_points_on_or_above_a_chord():
    xs, ys = [0, 1, 2, 3, 4], [10.0, 6.0, 4.0, 3.5, 1.0]
    # (3, 3.5) lies above the chord from (2, 4) to (4, 1); (2, 4) is below the chord (1, 6)-(4, 1)
    assert lower_hull(xs, ys) == [0, 1, 2, 4]
    assert lower_hull([0, 1, 2], [2.0, 1.0, 0.0]) == [0, 2]            # a straight run keeps its ends
    assert lower_hull(xs, ys, [0, 2, 4]) == [0, 2, 4]                    # over a subset (a front)


def test_hull_is_convex_and_under_every_point():
    rng = random.Random(3)
    for _ in range(100):
        xs = sorted(rng.sample(range(50), rng.randint(2, 9)))
        ys = [rng.random() for _ in xs]
        h = lower_hull(xs, ys)
        assert h[0] == 0 and h[-1] == len(xs) - 1
        for a, b in itertools.pairwise(h):
            for i in range(len(xs)):
                if xs[a] <= xs[i] <= xs[b]:
                    chord = ys[a] + (ys[b] - ys[a]) * (xs[i] - xs[a]) / (xs[b] - xs[a])
                    assert ys[i] >= chord - 1e-12


def test_nondominated_in_four_dimensions_against_brute_force():
    rng = random.Random(11)
    for _ in range(200):
        pts = [tuple(rng.randint(0, 3) for _ in range(4)) for _ in range(rng.randint(1, 9))]
        keep = nondominated(pts)
        brute = [i for i, p in enumerate(pts)
                 if not any(all(a <= b for a, b in zip(q, p)) and q != p for q in pts) and p not in pts[:i]]
        assert keep == brute, pts
    # in two dimensions it keeps what pareto_front keeps
    pts = [(10.0, 0.3), (12.0, 0.1), (11.0, 0.35), (9.0, 0.5), (13.0, 0.1), (14.0, 0.05)]
    assert sorted(nondominated(pts)) == sorted(pareto_front(*zip(*pts)))
    # within the relative tolerance two points are equal: the first is kept
    assert nondominated([(1.0, 2.0), (1.0 + 1e-12, 2.0)], rel_tol=1e-9) == [0]
    assert nondominated([(1.0, 2.0), (1.0 + 1e-6, 1.0)], rel_tol=1e-9) == [0, 1]
