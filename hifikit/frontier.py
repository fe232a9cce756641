"""Pareto fronts and lower convex hulls of (cost, error) points: the one copy every part uses.

The knees of a sweep's curves (sweep/knee.py), the planner's allocation
(planner/allocate.py), the HIFI standing of ``hifikit analyze``, the report's
KLD-vs-size plot and the PR's tables all ask the same two questions of points
where less is better on both axes: which points no other point beats
(``pareto_front``), and which of those are efficient, i.e. on the lower convex
hull (``lower_hull``).
"""
from __future__ import annotations

import math
from typing import Sequence


def pareto_front(costs: Sequence[float], errors: Sequence[float], tie: float = 0.0) -> list[int]:
    """Indices of the points no other point beats, by increasing cost (and strictly decreasing error).

    Of points with the same cost and error the first given is kept. A point is kept only when its error
    is below the error of every cheaper kept point by more than ``tie`` (closer errors are noise: more
    cost for nothing). With tie 0, a point is on the front exactly when no other point is at most as
    costly and as wrong and better on one of the two, or it equals a kept point (see ``on_front``).
    """
    if len(costs) != len(errors):
        raise ValueError("pareto_front needs as many errors as costs")
    order = sorted(range(len(costs)), key=lambda i: (costs[i], errors[i]))
    keep: list[int] = []
    best = math.inf
    for i in order:
        if not keep or errors[i] < best - tie:
            keep.append(i)
            best = errors[i]
    return keep


def on_front(costs: Sequence[float], errors: Sequence[float]) -> list[bool]:
    """Per point, whether no other point beats it (duplicates of a front point are on it too)."""
    front = {(costs[i], errors[i]) for i in pareto_front(costs, errors)}
    return [(c, e) in front for c, e in zip(costs, errors)]


def lower_hull(costs: Sequence[float], errors: Sequence[float], indices: Sequence[int] | None = None) -> list[int]:
    """The lower convex hull (monotone chain) of the points at `indices`, given by increasing cost.

    indices defaults to every point, in the given order (which must be by increasing cost). A point on
    or above the segment of its neighbours is dropped, so a straight run keeps only its ends.
    """
    hull: list[int] = []
    for i in (range(len(costs)) if indices is None else indices):
        while len(hull) >= 2:
            o, a = hull[-2], hull[-1]
            cross = (costs[a] - costs[o]) * (errors[i] - errors[o]) - (errors[a] - errors[o]) * (costs[i] - costs[o])
            if cross <= 0:  # a lies on or above the segment o -> i
                hull.pop()
            else:
                break
        hull.append(i)
    return hull


def nondominated(points: Sequence[Sequence[float]], rel_tol: float = 0.0) -> list[int]:
    """Indices of the points (any number of coordinates, less is better on each) that no other point
    dominates, in the given order. q dominates p when q is at most p on every coordinate and below it on
    one; coordinates within ``rel_tol`` of each other (relative to the larger magnitude) count as equal.
    Of equal points the first given is kept."""
    def le(a: float, b: float) -> bool:
        return a <= b + rel_tol * max(abs(a), abs(b))

    def lt(a: float, b: float) -> bool:
        return not le(b, a)

    keep: list[int] = []
    for i, p in enumerate(points):
        dominated = False
        for j, q in enumerate(points):
            if j == i or not all(le(a, b) for a, b in zip(q, p)):
                continue
            # q is at most p everywhere: it dominates p if better somewhere, or if it is an equal point given first
            if any(lt(a, b) for a, b in zip(q, p)) or j < i:
                dominated = True
                break
        if not dominated:
            keep.append(i)
    return keep
