"""Cuts -> kept time ranges: sample spans, union, complement, margins."""

from __future__ import annotations

import random
from fractions import Fraction as F

import numpy as np
import pytest

from milesdeep.pipeline.planner import Cut
from milesdeep.pipeline.ranges import (
    TimeRange,
    clamp,
    complement,
    cuts_to_ranges,
    kept_ranges,
    merge,
    total,
    widen,
)


def cut(start: int, end: int) -> Cut:
    return Cut("x", start, end, 1.0, 1.0)


def test_a_cut_keeps_its_last_sample() -> None:
    # Samples 2..5 at 1/s: seconds [2, 6) (Miles Deep's -t end-start dropped second 5).
    assert cuts_to_ranges([cut(2, 5)], 1) == [TimeRange(F(2), F(6))]
    # At 2 samples/s the same samples are [1, 3) seconds.
    assert cuts_to_ranges([cut(2, 5)], 2.0) == [TimeRange(F(1), F(3))]


def test_union_merges_touching_and_overlapping_and_clamps() -> None:
    got = cuts_to_ranges([cut(6, 7), cut(0, 1), cut(2, 3), cut(7, 12)], 1, duration=10.5)
    assert got == [TimeRange(F(0), F(4)), TimeRange(F(6), F("10.5"))]


def test_complement_and_kept_cover_the_video_once() -> None:
    kept = [TimeRange(F(1), F(2)), TimeRange(F(5), F(7))]
    rest = complement(kept, 8)
    assert rest == [TimeRange(F(0), F(1)), TimeRange(F(2), F(5)), TimeRange(F(7), F(8))]
    assert total(kept) + total(rest) == 8
    assert complement([TimeRange(F(0), F(8))], 8) == []
    assert complement([], 3) == [TimeRange(F(0), F(3))]


def test_margin_widens_clamps_and_merges() -> None:
    ranges = [TimeRange(F(1), F(2)), TimeRange(F(3), F(4)), TimeRange(F(8), F(9))]
    assert widen(ranges, F(1, 2), 9) == [TimeRange(F(1, 2), F(9, 2)), TimeRange(F(15, 2), F(9))]
    assert widen(ranges, 2, 100)[0].start == 0
    with pytest.raises(ValueError):
        widen(ranges, -1, 10)


def test_kept_ranges_remove_then_margin() -> None:
    cuts = [cut(2, 3), cut(6, 6)]
    assert kept_ranges(cuts, 1, 10) == [TimeRange(F(2), F(4)), TimeRange(F(6), F(7))]
    assert kept_ranges(cuts, 1, 10, remove=True) == [
        TimeRange(F(0), F(2)), TimeRange(F(4), F(6)), TimeRange(F(7), F(10))]
    # The margin widens what is kept: the removed cut [6, 7) shrinks to nothing at 0.5 s.
    assert kept_ranges(cuts, 1, 10, remove=True, margin=0.5) == [
        TimeRange(F(0), F(5, 2)), TimeRange(F(7, 2), F(10))]


@pytest.mark.parametrize("seed", range(20))
def test_against_a_boolean_timeline(seed: int) -> None:
    """Union, complement and margin agree with the same operations on a 0.01 s grid."""
    rng = random.Random(seed)
    duration = rng.randint(5, 40)
    cuts = sorted((a, a + rng.randint(0, 6)) for a in
                  (rng.randint(0, duration) for _ in range(rng.randint(0, 6))))
    margin = F(rng.randint(0, 150), 100)
    grid = np.zeros(duration * 100, dtype=bool)
    for a, b in cuts:
        grid[a * 100:(b + 1) * 100] = True
    remove = rng.random() < 0.5
    if remove:
        grid = ~grid
    m = int(margin * 100)
    if m:
        idx = np.flatnonzero(grid)
        widened = np.zeros_like(grid)
        for i in idx:
            widened[max(0, i - m):i + m + 1] = True
        grid = widened
    got = kept_ranges([cut(a, b) for a, b in cuts], 1, duration, remove=remove, margin=margin)
    mask = np.zeros_like(grid)
    for r in got:
        mask[int(r.start * 100):int(r.end * 100)] = True
    assert np.array_equal(mask, grid)
    assert got == merge(got) and got == clamp(got, duration)  # sorted, disjoint, in the video
