"""Cut planning: Miles Deep's own vectors, plus hand-worked cases that run without shared/."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from milesdeep.errors import MilesDeepError
from milesdeep.pipeline.planner import (
    Cut,
    CutPlan,
    PlanParams,
    plan_all_labels,
    plan_cuts,
    plan_union,
    read_cut_plan,
    seconds_per_label,
    winners_and_scores,
    write_cut_plan,
)

VECTORS = Path(__file__).resolve().parents[2] / "shared" / "vectors" / "miles_deep_cuts.jsonl"


def _vector_cases() -> list:
    if not VECTORS.is_file():
        return [pytest.param(None, marks=pytest.mark.skip(reason=f"{VECTORS} not present"))]
    lines = VECTORS.read_text().splitlines()
    return [pytest.param(json.loads(line), id=f"case{n}") for n, line in enumerate(lines)]


@pytest.mark.parametrize("case", _vector_cases())
def test_reproduces_miles_deep_vector(case: dict) -> None:
    params = PlanParams(case["min_cut"], case["max_gap"], case["min_score"], case["min_coverage"])
    cuts, total = plan_cuts(case["winners"], case["scores"], case["targets"], params)
    assert total == case["total_seconds"]
    assert [(c.start, c.end) for c in cuts] == [(e["start"], e["end"]) for e in case["cuts"]]
    for got, want in zip(cuts, case["cuts"], strict=True):
        # The vectors print 6 decimals of the float32 results.
        if want["score"] is None:
            assert got.score is None
        else:
            assert got.score == pytest.approx(want["score"], abs=1e-6)
        assert got.coverage == pytest.approx(want["coverage"], abs=1e-6)


def plan(winners: list[int], scores: float | list[float] = 0.9, targets: tuple[int, ...] = (1,),
         **params: float) -> tuple[list[tuple[int, int]], list[Cut], int]:
    if not isinstance(scores, list):
        scores = [scores] * len(winners)
    cuts, total = plan_cuts(np.array(winners), np.array(scores, dtype=np.float32), targets,
                            PlanParams(**params))
    return [(c.start, c.end) for c in cuts], cuts, total


def test_basic_cut_is_trimmed_at_the_gap_and_skips_its_first_second() -> None:
    # Start at 1; 2..6 are counted (5 hits, not 6: the first second is never counted); the
    # third miss (i=9) exceeds max_gap=2 and the cut ends before the gap, at 6.
    spans, cuts, total = plan([0, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0])
    assert spans == [(1, 6)] and total == 6
    assert cuts[0].coverage == pytest.approx(5 / 6, abs=1e-7)
    assert cuts[0].score == pytest.approx(0.9, abs=1e-6)


def test_min_cut_is_strict() -> None:
    # A kept cut must satisfy start < end - min_cut: six samples pass with min_cut=4...
    # (four trailing misses: the third exceeds max_gap before the last sample is reached)
    assert plan([1] * 6 + [0] * 4)[0] == [(0, 5)]
    # ...five do not.
    assert plan([1] * 5 + [0] * 4) == ([], [], 0)
    assert plan([1] * 5 + [0] * 4, min_cut=3)[0] == [(0, 4)]


def test_gaps_up_to_max_gap_are_bridged() -> None:
    spans, cuts, total = plan([1, 1, 1, 0, 0, 1, 1, 1, 0, 0, 0, 0])
    assert spans == [(0, 7)] and total == 8
    assert cuts[0].coverage == pytest.approx(5 / 8)  # 1, 2, 5, 6, 7
    # One sample more of gap splits it (both halves are then too short to keep).
    assert plan([1, 1, 1, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0])[0] == []


def test_last_sample_closes_without_counting_as_gap() -> None:
    # Ending on hits: the cut runs to the last sample.
    assert plan([0, 1, 1, 1, 1, 1, 1])[0] == [(1, 6)]
    # Ending on misses: the last miss is not a gap sample, so the cut keeps one miss (7).
    spans, cuts, total = plan([0, 1, 1, 1, 1, 1, 1, 0, 0])
    assert spans == [(1, 7)] and total == 7
    assert cuts[0].coverage == pytest.approx(5 / 7)


def test_only_hit_is_the_first_second_gives_a_none_score() -> None:
    # Start at 1, the last sample (a miss) closes at end 2 with no counted hit: 0 / 0.
    spans, cuts, total = plan([0, 1, 0], min_cut=0, min_coverage=0.0)
    assert spans == [(1, 2)] and total == 2
    assert cuts[0].score is None and cuts[0].coverage == 0.0
    # With any coverage required it is dropped.
    assert plan([0, 1, 0], min_cut=0)[0] == []


def test_hits_below_min_score_in_the_trimmed_gap_still_count_coverage_above_one() -> None:
    scores = [0.9] * 6 + [0.1] * 3 + [0.9] * 3
    spans, cuts, total = plan([1] * 12, scores)
    # 1..8 are counted (8 hits, sum 4.8), the cut is 0..5 (6 samples); the second run 9..11
    # ends at the last sample and is too short.
    assert spans == [(0, 5)] and total == 6
    assert cuts[0].coverage == pytest.approx(8 / 6, abs=1e-6)
    assert cuts[0].score == pytest.approx(0.6, abs=1e-6)


def test_cut_opened_on_the_last_sample_is_dropped_and_empty_input() -> None:
    assert plan([0, 0, 1], min_cut=0, min_coverage=0.0)[0] == []
    assert plan([], targets=(0,)) == ([], [], 0)


def test_thresholds_compare_as_float32() -> None:
    # float32(0.7) < 0.7 in float64: a float64 comparison would reject every sample.
    assert plan([1] * 8, 0.7, min_score=0.7)[0] == [(0, 7)]
    # Coverage 7/10 in float32 equals float32(0.7) exactly and passes min_coverage=0.7.
    winners = [1, 1, 0, 1, 1, 0, 1, 1, 1, 1, 0, 0, 0, 0]
    spans, cuts, _ = plan(winners, min_coverage=0.7)
    assert spans == [(0, 9)] and cuts[0].coverage == float(np.float32(0.7))
    assert plan(winners, min_coverage=0.71)[0] == []


def test_score_is_a_float32_running_sum() -> None:
    # Chosen so that summing in float64 and rounding once gives a different float32 average.
    scores = [0.96, 0.91, 0.94, 0.83, 0.62, 0.88, 0.61]
    _, cuts, _ = plan([1] * 7, scores)
    acc = np.float32(0)
    for s in scores[1:]:
        acc = np.float32(acc + np.float32(s))
    assert cuts[0].score == float(acc / np.float32(6))
    once = np.float32(sum(float(np.float32(s)) for s in scores[1:])) / np.float32(6)
    assert cuts[0].score != float(once)


def test_several_targets_are_one_hit_set() -> None:
    winners = [1, 2, 1, 2, 1, 2, 1, 2, 0, 0, 0, 0]
    assert plan(winners, targets=(1, 2))[0] == [(0, 7)]
    # Alone, target 1 still bridges its one-sample gaps: hits 2, 4, 6 over 0..6.
    spans, cuts, _ = plan(winners, targets=(1,))
    assert spans == [(0, 6)] and cuts[0].coverage == pytest.approx(3 / 7)


def test_winners_take_the_first_maximum() -> None:
    probs = np.array([[0.2, 0.4, 0.4], [0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    winners, scores = winners_and_scores(probs)
    assert winners.tolist() == [1, 0, 2]
    assert scores.dtype == np.float32
    assert scores.tolist() == pytest.approx([0.4, 0.7, 0.8])


def _probs(winners: list[int], classes: int, p: float = 0.9) -> np.ndarray:
    probs = np.full((len(winners), classes), (1 - p) / (classes - 1), dtype=np.float32)
    probs[np.arange(len(winners)), winners] = p
    return probs


def test_plan_all_labels_sorts_every_labels_cuts_by_start() -> None:
    winners = [2] * 8 + [0] * 7 + [1] * 9 + [2] * 6
    labels = ["a", "b", "c"]
    cuts = plan_all_labels(_probs(winners, 3), labels)
    assert [(c.label, c.start, c.end) for c in cuts] == [
        ("c", 0, 7), ("a", 8, 14), ("b", 15, 23), ("c", 24, 29)]
    assert seconds_per_label(cuts, labels) == [7, 9, 14]


def test_plan_union_by_label_names() -> None:
    winners = [0] * 3 + [1, 2] * 5 + [0] * 4
    cuts, total = plan_union(_probs(winners, 3), ["other", "x", "y"], ["x", "y"])
    assert [(c.label, c.start, c.end) for c in cuts] == [("x+y", 3, 12)] and total == 10
    with pytest.raises(MilesDeepError, match="unknown label.*other, x, y"):
        plan_union(_probs(winners, 3), ["other", "x", "y"], ["z"])


def test_params_are_validated_and_scale_with_rate() -> None:
    with pytest.raises(MilesDeepError, match="min_cut"):
        PlanParams(min_cut=-1)
    with pytest.raises(MilesDeepError, match="min_score"):
        PlanParams(min_score=1.5)
    assert PlanParams().for_rate(1.0) == PlanParams()
    params = PlanParams(np.int64(3), np.int32(1), np.float32(0.5), np.float64(0.25))
    # Stored as plain numbers, so the plan serialises (json cannot write NumPy scalars).
    assert CutPlan.from_json(CutPlan((), 1.0, 0.0, params, []).to_json()).params == params
    assert type(params.min_cut) is int and type(params.min_score) is float
    assert PlanParams(4, 2).for_rate(2.0) == PlanParams(8, 4)


def test_cut_plan_json_round_trip(tmp_path: Path) -> None:
    plan_ = CutPlan(("a", "b"), 2.0, 61.5, PlanParams(3, 1, 0.6, 0.5),
                    [Cut("a", 0, 9, 0.75, 0.9), Cut("b", 20, 22, None, 0.0)], targets=("b",))
    assert CutPlan.from_json(plan_.to_json()) == plan_
    path = write_cut_plan(tmp_path / "plan.json", plan_)
    assert read_cut_plan(path) == plan_
    assert plan_.span_seconds(plan_.cuts[0]) == (0.0, 5.0)
    assert plan_.total_samples == 13


def test_cut_plan_rejects_other_versions_and_garbage(tmp_path: Path) -> None:
    data = json.loads(CutPlan(("a",), 1.0, 10.0, PlanParams(), []).to_json())
    data["version"] = 99
    with pytest.raises(MilesDeepError, match="version 99"):
        CutPlan.from_json(json.dumps(data), "p.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(MilesDeepError, match="bad.json.*invalid JSON"):
        read_cut_plan(bad)
    data["version"] = 1
    data["cuts"] = [{"label": "a", "start": 5, "end": 2, "score": 1, "coverage": 1}]
    with pytest.raises(MilesDeepError, match="malformed"):
        CutPlan.from_json(json.dumps(data))
