"""From planned cuts to the time ranges an edit keeps.

Times are exact `Fraction` seconds so that ranges add up, compare and convert to stream ticks
without rounding drift. A range is half-open: [start, end).

A cut planned as samples start..end (end inclusive) keeps [start / rate, (end + 1) / rate):
the time from the start sample to the end of the end sample. (Miles Deep cut
`-ss start -t (end - start)` and so dropped the last sample.)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Protocol


class SampleSpan(Protocol):
    """Anything with inclusive sample indices `start` and `end` (planner.Cut, say)."""

    start: int
    end: int


@dataclass(frozen=True, order=True)
class TimeRange:
    """[start, end) in seconds."""

    start: Fraction
    end: Fraction

    @property
    def duration(self) -> Fraction:
        return self.end - self.start

    def __str__(self) -> str:
        return f"{format_time(self.start)}-{format_time(self.end)}"


def seconds(value: float | int | Fraction | str) -> Fraction:
    """An exact Fraction for a user or float value (floats are snapped to microseconds)."""
    if isinstance(value, Fraction):
        return value
    if isinstance(value, int):
        return Fraction(value)
    return Fraction(value).limit_denominator(1_000_000)


def format_time(t: Fraction | float) -> str:
    """h:mm:ss.mmm for summaries."""
    ms = round(float(t) * 1000)
    sign = "-" if ms < 0 else ""
    ms = abs(ms)
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{sign}{h}:{m:02d}:{s:02d}.{ms:03d}"


def merge(ranges: Iterable[TimeRange]) -> list[TimeRange]:
    """Sorted union: overlapping or touching ranges become one; empty ranges vanish."""
    out: list[TimeRange] = []
    for r in sorted(r for r in ranges if r.end > r.start):
        if out and r.start <= out[-1].end:
            if r.end > out[-1].end:
                out[-1] = TimeRange(out[-1].start, r.end)
        else:
            out.append(r)
    return out


def clamp(ranges: Iterable[TimeRange], duration: Fraction | float | None) -> list[TimeRange]:
    """Ranges cut to [0, duration) (no upper bound when duration is None), then merged."""
    hi = None if duration is None else seconds(duration)
    out = []
    for r in ranges:
        start = max(r.start, Fraction(0))
        end = r.end if hi is None else min(r.end, hi)
        out.append(TimeRange(start, end))
    return merge(out)


def cuts_to_ranges(cuts: Iterable[SampleSpan], rate: float | Fraction,
                   duration: float | Fraction | None = None) -> list[TimeRange]:
    """The union of the cuts as time ranges, each [start / rate, (end + 1) / rate)."""
    r = seconds(rate)
    if r <= 0:
        raise ValueError(f"sample rate must be > 0, got {rate!r}")
    spans = [TimeRange(Fraction(c.start) / r, Fraction(c.end + 1) / r) for c in cuts]
    return clamp(spans, duration)


def complement(ranges: Sequence[TimeRange], duration: float | Fraction) -> list[TimeRange]:
    """Everything in [0, duration) that is not in `ranges` (what --remove keeps)."""
    total = seconds(duration)
    out: list[TimeRange] = []
    pos = Fraction(0)
    for r in clamp(ranges, total):
        if r.start > pos:
            out.append(TimeRange(pos, r.start))
        pos = max(pos, r.end)
    if pos < total:
        out.append(TimeRange(pos, total))
    return out


def widen(ranges: Iterable[TimeRange], margin: float | Fraction,
          duration: float | Fraction | None) -> list[TimeRange]:
    """Every range grown by `margin` seconds on both sides, clamped to the video and merged."""
    m = seconds(margin)
    if m < 0:
        raise ValueError(f"margin must be >= 0, got {margin!r}")
    return clamp((TimeRange(r.start - m, r.end + m) for r in ranges), duration)


def total(ranges: Iterable[TimeRange]) -> Fraction:
    return sum((r.duration for r in ranges), Fraction(0))


def kept_ranges(cuts: Iterable[SampleSpan], rate: float | Fraction, duration: float | Fraction,
                remove: bool = False, margin: float | Fraction = 0) -> list[TimeRange]:
    """What an edit keeps: the cuts (or, with `remove`, everything else), each widened by
    `margin` seconds on both sides, clamped to the video and merged."""
    ranges = cuts_to_ranges(cuts, rate, duration)
    if remove:
        ranges = complement(ranges, duration)
    return widen(ranges, margin, duration) if margin else ranges
