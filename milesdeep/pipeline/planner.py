"""Cut planning: from per-sample class probabilities to the cuts Miles Deep would make.

`plan_cuts` reproduces `findTheCuts` in Miles Deep's `cut_movie.cpp` exactly, quirks included,
because users compare our .tag files and cut lengths with the original's:

- A cut starts at a sample whose winner (argmax) is a target with probability >= min_score.
- The starting sample itself is never counted in the cut's score or coverage; every later
  sample whose winner is a target is counted (even below min_score), including samples in the
  trailing gap that is then trimmed off the cut, so coverage can exceed 1.
- A miss (winner not a target, or probability < min_score) grows the gap; a hit resets it.
  The cut closes when the gap exceeds max_gap or at the last sample, and ends `gap` samples
  before the closing sample (the last sample never counts as a gap sample). The closing sample
  cannot start a new cut.
- A closed cut is kept if start < end - min_cut (strictly: it spans at least min_cut + 2
  samples) and coverage >= min_coverage. A cut opened at the very last sample is dropped.
- score = (sum of counted probabilities) / (counted samples); 0 / 0 gives None (the original
  printed nan). Sums and ratios are float32, as the original's `float`, so every threshold
  compares identically.

Samples are counted in sample indices; at Miles Deep's one sample per second they are seconds.
`PlanParams.for_rate` turns second-valued min_cut / max_gap into samples for other rates.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from milesdeep.errors import MilesDeepError
from milesdeep.pipeline.atomic import write_text_atomic

CUT_PLAN_FORMAT = "milesdeep.cutplan"
CUT_PLAN_VERSION = 1


@dataclass(frozen=True)
class PlanParams:
    """Miles Deep's cutting options (-u -g -s -v) with its documented defaults.

    min_cut and max_gap are counted in samples (seconds at one sample per second).
    """

    min_cut: int = 4
    max_gap: int = 2
    min_score: float = 0.5
    min_coverage: float = 0.4

    def __post_init__(self) -> None:
        for name in ("min_cut", "max_gap"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise MilesDeepError(f"{name} must be a whole number >= 0 (got {value!r})")
        for name in ("min_score", "min_coverage"):
            value = getattr(self, name)
            if not isinstance(value, (int, float, np.floating)) or not 0.0 <= value <= 1.0:
                raise MilesDeepError(f"{name} must be a number from 0 to 1 (got {value!r})")
        # Plain Python numbers, whatever was passed (NumPy scalars do not serialise to JSON).
        for name, kind in (("min_cut", int), ("max_gap", int), ("min_score", float),
                           ("min_coverage", float)):
            object.__setattr__(self, name, kind(getattr(self, name)))

    def for_rate(self, rate: float) -> PlanParams:
        """The same options with min_cut and max_gap converted from seconds to samples at
        `rate` samples per second (identity at 1 sample/s, Miles Deep's rate)."""
        if not rate > 0:
            raise MilesDeepError(f"the sampling rate must be > 0 (got {rate!r})")
        return PlanParams(int(round(self.min_cut * rate)), int(round(self.max_gap * rate)),
                          self.min_score, self.min_coverage)


@dataclass(frozen=True)
class Cut:
    """Samples start..end, end inclusive. score is None where the original divided 0 by 0."""

    label: str
    start: int
    end: int
    score: float | None
    coverage: float

    @property
    def size(self) -> int:
        return self.end - self.start + 1


def winners_and_scores(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the index of the highest probability (the first on ties, as std::max_element)
    and that probability as float32."""
    probs = np.asarray(probs, dtype=np.float32)
    if probs.ndim != 2:
        raise ValueError(f"probabilities must be (samples, classes), got shape {probs.shape}")
    if probs.shape[0] == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    winners = np.argmax(probs, axis=1)
    scores = probs[np.arange(probs.shape[0]), winners]
    return winners.astype(np.int64), scores.astype(np.float32)


def plan_cuts(winners: np.ndarray | Sequence[int], scores: np.ndarray | Sequence[float],
              targets: Iterable[int], params: PlanParams = PlanParams(),
              label: str = "") -> tuple[list[Cut], int]:
    """Miles Deep's `findTheCuts`: the cuts where any of `targets` wins, and their total size
    in samples. See the module docstring for the rules."""
    winners = np.asarray(winners)
    scores = np.asarray(scores, dtype=np.float32)
    if winners.shape != scores.shape or winners.ndim != 1:
        raise ValueError(f"winners {winners.shape} and scores {scores.shape} must be equal 1-D")
    target_ids = np.fromiter((int(t) for t in targets), dtype=np.int64)
    # Plain Python lists: indexing them in the loop is much faster than indexing arrays, and a
    # float32 widened to a Python float compares with another widened float32 exactly.
    hit = np.isin(winners, target_ids).tolist()
    vals = scores.tolist()
    threshold = float(np.float32(params.min_score))
    min_coverage = np.float32(params.min_coverage)
    min_cut, max_gap = int(params.min_cut), int(params.max_gap)
    last = len(vals) - 1

    cuts: list[Cut] = []
    total = 0
    start = -1  # -1: no cut open
    gap = 0
    counted = 0
    val_sum = np.float32(0.0)
    for i in range(last + 1):
        if start < 0:
            if hit[i] and vals[i] >= threshold:
                start, gap, counted, val_sum = i, 0, 0, np.float32(0.0)
            continue
        if hit[i]:
            counted += 1
            val_sum = np.float32(val_sum + np.float32(vals[i]))
        if hit[i] and vals[i] >= threshold and i < last:
            gap = 0
            continue
        if i < last:
            gap += 1
        if gap <= max_gap and i < last:
            continue
        end = i - gap
        if start < end - min_cut:
            size = end - start + 1
            coverage = np.float32(counted) / np.float32(size)
            if coverage >= min_coverage:
                score = None if counted == 0 else float(val_sum / np.float32(counted))
                cuts.append(Cut(label, start, end, score, float(coverage)))
                total += size
        start = -1
    return cuts, total


def plan_all_labels(probs: np.ndarray, labels: Sequence[str],
                    params: PlanParams = PlanParams()) -> list[Cut]:
    """Every label planned as its own target (Miles Deep's -a / .tag mode), sorted by start.

    Starts never tie across labels (a sample has one winner), so the order is unambiguous."""
    probs = _check_probs(probs, labels)
    winners, scores = winners_and_scores(probs)
    cuts: list[Cut] = []
    for index, name in enumerate(labels):
        cuts.extend(plan_cuts(winners, scores, [index], params, name)[0])
    cuts.sort(key=lambda c: c.start)
    return cuts


def seconds_per_label(cuts: Iterable[Cut], labels: Sequence[str]) -> list[int]:
    """Total size of each label's cuts (the .tag file's second line, after the total)."""
    totals = dict.fromkeys(labels, 0)
    for cut in cuts:
        totals[cut.label] += cut.size
    return [totals[name] for name in labels]


def plan_union(probs: np.ndarray, labels: Sequence[str], target_labels: Iterable[str],
               params: PlanParams = PlanParams()) -> tuple[list[Cut], int]:
    """Miles Deep's edit semantics: one cut list where a sample is a hit if its winner is any
    of `target_labels`. The cuts are labelled with the targets joined by '+'."""
    probs = _check_probs(probs, labels)
    names = list(dict.fromkeys(target_labels))
    if not names:
        raise MilesDeepError("no target labels given; choose from: " + ", ".join(labels))
    unknown = [n for n in names if n not in labels]
    if unknown:
        raise MilesDeepError(f"unknown label(s) {', '.join(unknown)}; the model's labels are: "
                             + ", ".join(labels))
    winners, scores = winners_and_scores(probs)
    targets = [list(labels).index(n) for n in names]
    return plan_cuts(winners, scores, targets, params, "+".join(names))


def _check_probs(probs: np.ndarray, labels: Sequence[str]) -> np.ndarray:
    probs = np.asarray(probs, dtype=np.float32)
    if probs.ndim != 2 or probs.shape[1] != len(labels):
        raise ValueError(f"probabilities {probs.shape} do not match {len(labels)} labels")
    return probs


@dataclass
class CutPlan:
    """The plan handed to the edit stage and the exporters; round-trips through JSON.

    Sample i covers [i / rate, (i + 1) / rate) seconds; `duration` is the video's length.
    `targets` names the labels an edit keeps or removes (empty for a tag-only plan).
    """

    labels: tuple[str, ...]
    rate: float
    duration: float
    params: PlanParams
    cuts: list[Cut]
    targets: tuple[str, ...] = field(default=())

    @property
    def total_samples(self) -> int:
        return sum(c.size for c in self.cuts)

    def span_seconds(self, cut: Cut) -> tuple[float, float]:
        """The cut as [start, end) in seconds, clipped to the video's duration.

        (Miles Deep itself cut `-ss start -t (end - start)`, dropping the cut's last second.)"""
        end = (cut.end + 1) / self.rate
        return cut.start / self.rate, min(end, self.duration) if self.duration > 0 else end

    def to_json(self) -> str:
        return json.dumps({
            "format": CUT_PLAN_FORMAT,
            "version": CUT_PLAN_VERSION,
            "labels": list(self.labels),
            "rate": self.rate,
            "duration": self.duration,
            "params": asdict(self.params),
            "targets": list(self.targets),
            "cuts": [asdict(c) for c in self.cuts],
        }, indent=1)

    @classmethod
    def from_json(cls, text: str, source: str | Path | None = None) -> CutPlan:
        """Parse `to_json` output; a malformed plan raises MilesDeepError naming `source`."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise MilesDeepError(f"not a cut plan (invalid JSON: {e})", source) from None
        if not isinstance(data, dict) or data.get("format") != CUT_PLAN_FORMAT:
            raise MilesDeepError("not a milesdeep cut plan (no 'format' field)", source)
        if data.get("version") != CUT_PLAN_VERSION:
            raise MilesDeepError(f"cut plan version {data.get('version')!r} is not supported "
                                 f"(this milesdeep reads version {CUT_PLAN_VERSION})", source)
        try:
            labels = tuple(str(x) for x in data["labels"])
            plan = cls(labels=labels, rate=float(data["rate"]), duration=float(data["duration"]),
                       params=PlanParams(**data["params"]),
                       cuts=[_cut_from(c) for c in data["cuts"]],
                       targets=tuple(str(x) for x in data.get("targets", [])))
        except (KeyError, TypeError, ValueError) as e:
            raise MilesDeepError(f"malformed cut plan ({type(e).__name__}: {e})",
                                 source) from None
        if not (plan.rate > 0 and math.isfinite(plan.rate)):
            raise MilesDeepError(f"malformed cut plan (rate {plan.rate})", source)
        return plan


def _cut_from(data: dict[str, Any]) -> Cut:
    score = data["score"]
    cut = Cut(label=str(data["label"]), start=int(data["start"]), end=int(data["end"]),
              score=None if score is None else float(score), coverage=float(data["coverage"]))
    if cut.start < 0 or cut.end < cut.start:
        raise ValueError(f"cut {cut.start}..{cut.end} is empty or negative")
    return cut


def write_cut_plan(path: str | Path, plan: CutPlan, overwrite: bool = True) -> Path:
    return write_text_atomic(Path(path), plan.to_json() + "\n", overwrite)


def read_cut_plan(path: str | Path) -> CutPlan:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise MilesDeepError(f"cannot read the cut plan ({e.strerror})", path) from None
    except UnicodeDecodeError:
        raise MilesDeepError("not a cut plan (not UTF-8 text)", path) from None
    return CutPlan.from_json(text, path)
