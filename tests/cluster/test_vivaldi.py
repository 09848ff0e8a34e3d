"""Vivaldi converges on a synthetic latency matrix: predicted RTTs approach measured ones."""

from __future__ import annotations

import math
import random
import statistics

from medshard.cluster.vivaldi import Coordinate, relative_error, update


def synthetic_matrix(n: int, seed: int = 7) -> list[list[float]]:
    """Sites scattered over a 200 ms-wide region, each with an access-link latency."""
    rng = random.Random(seed)
    points = [(rng.uniform(0, 200), rng.uniform(0, 200)) for _ in range(n)]
    access = [rng.uniform(0.5, 8.0) for _ in range(n)]
    return [
        [
            math.dist(points[i], points[j]) + access[i] + access[j] if i != j else 0.0
            for j in range(n)
        ]
        for i in range(n)
    ]


def median_error(coords: list[Coordinate], rtt: list[list[float]]) -> float:
    n = len(coords)
    return statistics.median(
        relative_error(coords[i].rtt_to(coords[j]), rtt[i][j])
        for i in range(n)
        for j in range(n)
        if i != j
    )


def test_coordinates_converge_below_the_error_bound() -> None:
    n = 40
    rtt = synthetic_matrix(n)
    rng = random.Random(1)
    coords = [Coordinate() for _ in range(n)]
    start = median_error(coords, rtt)
    for _round in range(300):
        for i in range(n):
            j = rng.randrange(n - 1)
            j += j >= i
            noisy = rtt[i][j] * rng.uniform(0.95, 1.05)  # measurement jitter
            update(coords[i], coords[j], noisy, rng)
    end = median_error(coords, rtt)
    assert start > 0.5
    assert end < 0.08, end
    assert statistics.median(c.error for c in coords) < 0.2  # each node knows it is settled
    assert all(c.h > 0 for c in coords)


def test_a_bad_sample_is_ignored() -> None:
    a, b = Coordinate(1.0, 2.0, 1.0, 0.3), Coordinate(10.0, 2.0, 1.0, 0.3)
    for bad in (0.0, -5.0, float("inf"), float("nan")):
        update(a, b, bad)
    assert (a.x, a.y, a.h, a.error) == (1.0, 2.0, 1.0, 0.3)
