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
