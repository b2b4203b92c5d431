"""Per-video outputs: the .tag file, the predictions CSV and the timeline PNG."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from milesdeep.errors import MilesDeepError
from milesdeep.pipeline.planner import Cut, plan_all_labels, seconds_per_label
from milesdeep.pipeline.plot import binned, clock, plot_timeline, tick_step
from milesdeep.pipeline.predictions import (
    Predictions,
    PredictionsWriter,
    read_predictions_csv,
    write_predictions_csv,
)
from milesdeep.pipeline.tagfile import format_tag, read_tag, write_tag

LABELS = ("other", "kiss", "walk")


def blocky_predictions(n: int = 90, rate: float = 1.0, seed: int = 0) -> Predictions:
    """Runs of one winning class, with noise, as a video of scenes would give."""
    rng = np.random.default_rng(seed)
    classes = np.repeat(rng.integers(0, len(LABELS), n // 10 + 1), 10)[:n]
    logits = rng.normal(0, 1, (n, len(LABELS)))
    logits[np.arange(n), classes] += 3
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return Predictions(LABELS, np.arange(n) / rate, probs.astype(np.float32), rate, n / rate)


def test_tag_layout() -> None:
    cuts = [Cut("b", 20, 22, None, 0.0), Cut("a", 0, 9, 0.75, 0.9),
            Cut("a", 30, 31, 0.8516, float(np.float32(4 / 3)))]
    text = format_tag("/videos/movie.mp4", ["a", "b"], [12, 3], 40, cuts)
    assert text == ("movie.mp4,a,b,\n"
                    "40,12,3,\n"
                    "label,start,end,score,coverage\n"
                    "a,0,9,0.75,0.9\n"
                    "b,20,22,nan,0\n"
                    "a,30,31,0.8516,1.33333\n")


def test_tag_round_trip_from_a_plan(tmp_path: Path) -> None:
    preds = blocky_predictions()
    cuts = plan_all_labels(preds.probs, LABELS)
    assert len({c.label for c in cuts}) >= 2
    totals = seconds_per_label(cuts, LABELS)
    path = write_tag(tmp_path / "clip.tag", "clip, take 2.mp4", LABELS, totals, len(preds.times),
                     cuts)
    tag = read_tag(path)
    assert tag.movie_file_name == "clip, take 2.mp4"
    assert tag.labels == list(LABELS)
    assert tag.total_seconds == 90 and tag.seconds_per_label == totals
    assert [(c.label, c.start, c.end) for c in tag.cuts] == [(c.label, c.start, c.end)
                                                           for c in cuts]
    for got, want in zip(tag.cuts, cuts, strict=True):
        assert got.score == pytest.approx(want.score, rel=1e-5)
        assert got.coverage == pytest.approx(want.coverage, rel=1e-5)
    assert [c.start for c in tag.cuts] == sorted(c.start for c in tag.cuts)
    assert list(tmp_path.iterdir()) == [path]  # no temporary left behind


def test_tag_rejects_labels_it_cannot_hold_and_bad_files(tmp_path: Path) -> None:
    with pytest.raises(MilesDeepError, match="comma"):
        format_tag("m.mp4", ["a,b"], [0], 1, [])
    bad = tmp_path / "bad.tag"
    bad.write_text("m.mp4,a,\n10,x,\nlabel,start,end,score,coverage\n")
    with pytest.raises(MilesDeepError, match="bad.tag.*line 2"):
        read_tag(bad)
    bad.write_text("m.mp4,a,\n10,4,\nlabel,start,end,score,coverage\nzz,0,4,0.9,1\n")
    with pytest.raises(MilesDeepError, match="line 4.*'zz'"):
        read_tag(bad)


def test_predictions_csv_round_trip_is_exact(tmp_path: Path) -> None:
    preds = blocky_predictions(n=50, rate=2.0)
    path = write_predictions_csv(tmp_path / "p.csv", preds)
    lines = path.read_text().splitlines()
    assert lines[0] == "time,other,kiss,walk" and len(lines) == 51
    assert lines[3].startswith("1.000000,")
    back = read_predictions_csv(path)
    assert back.labels == LABELS
    np.testing.assert_array_equal(back.probs, preds.probs)  # float32 bit for bit
    np.testing.assert_allclose(back.times, preds.times, atol=1e-6)
    assert back.rate == pytest.approx(2.0) and back.duration == pytest.approx(25.0)
    # So the plan made from the file is the plan made from memory.
    assert plan_all_labels(back.probs, LABELS) == plan_all_labels(preds.probs, LABELS)


def test_predictions_writer_streams_batches_and_leaves_nothing_on_failure(
        tmp_path: Path) -> None:
    preds = blocky_predictions(n=37)
    path = tmp_path / "p.csv"
    with PredictionsWriter(path, LABELS) as writer:
        for start in range(0, 37, 8):
            writer.write(preds.times[start:start + 8], preds.probs[start:start + 8])
            assert not path.exists()  # only renamed into place at the end
    assert writer.rows == 37
    np.testing.assert_array_equal(read_predictions_csv(path).probs, preds.probs)

    failed = tmp_path / "failed.csv"
    with pytest.raises(KeyboardInterrupt), PredictionsWriter(failed, LABELS) as writer:
        writer.write(preds.times[:4], preds.probs[:4])
        raise KeyboardInterrupt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.csv"]


@pytest.mark.parametrize(("content", "message"), [
    ("", "empty"),
    ("seconds,a,b\n0,0.5,0.5\n", "header"),
    ("time\n0\n", "header"),
    ("time,a,a\n0,0.5,0.5\n", "distinct"),
    ("time,a,b\n0,0.5,0.5\n1,0.5\n", "line 3: 2 fields"),
    ("time,a,b\n0,0.5,0.5\n1,high,0.5\n", "line 3: not a number"),
    ("time,a,b\n0,0.5,nan\n", "line 2: inf or nan"),
    ("time,a,b\n0,0.5,0.5\n0,0.5,0.5\n", "increase"),
    # These were taken: cut videos from times before the start, scores of -3 and 4, a gap
    # of 1e9 s that failed later as an internal error.
    ("time,a,b\n-10,0.5,0.5\n-9,0.5,0.5\n", "the first time is -10; samples start at 0"),
    ("time,a,b\n0,0.5,0.5\n1,-3,4\n", r"line 3: a score outside 0-1 \(1,-3,4\)"),
    ("time,a,b\n0,0.5,0.5\n1,1e300,0\n", "line 3: a score outside 0-1"),
    ("time,a,b\n0,0.5,0.5\n1,0.5,0.5\n3,0.5,0.5\n", "not evenly spaced"),
    ("time,a,b\n0,0.5,0.5\n1e9,0.5,0.5\n", "1e-09 samples a second; the times must give"),
])
def test_malformed_predictions_csv(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "preds.csv"
    path.write_text(content)
    with pytest.raises(MilesDeepError, match=rf"preds\.csv: .*{message}"):
        read_predictions_csv(path)


@pytest.mark.parametrize("rate", [3.0, 29.97, 30000 / 1001, 0.3, 7.0])
def test_the_rate_read_back_is_the_rate_written(tmp_path: Path, rate: float) -> None:
    """The times are written to 6 decimals; the rate estimated from them was 3.00000016 for 3,
    and whole seconds counted from it came out one short in a re-planned .tag."""
    n = 200
    preds = Predictions(("a", "b"), np.arange(n) / rate, np.full((n, 2), 0.5, np.float32),
                        rate, n / rate)
    back = read_predictions_csv(write_predictions_csv(tmp_path / "p.csv", preds))
    assert back.rate == rate


def test_a_one_row_predictions_file_takes_the_rate_given(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_text("time,a,b\n0,0.25,0.75\n")
    assert read_predictions_csv(path).rate == 1.0
    back = read_predictions_csv(path, rate=0.5)
    assert back.rate == 0.5 and back.duration == 2.0


def test_predictions_csv_from_a_spreadsheet(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_bytes(b"\xef\xbb\xbftime,a,b\r\n0,0.25,0.75\r\n0.5,1,0\r\n")
    back = read_predictions_csv(path)
    assert back.labels == ("a", "b") and back.rate == 2.0
    assert back.probs.tolist() == [[0.25, 0.75], [1.0, 0.0]]


def test_predictions_csv_with_no_rows(tmp_path: Path) -> None:
    path = write_predictions_csv(tmp_path / "p.csv",
                                 Predictions(LABELS, np.zeros(0), np.zeros((0, 3)), 1.0, 0.0))
    back = read_predictions_csv(path)
    assert back.probs.shape == (0, 3) and back.duration == 0.0


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_plot_timeline_writes_a_png(tmp_path: Path) -> None:
    preds = blocky_predictions(n=120)
    cuts = plan_all_labels(preds.probs, LABELS)
    path = plot_timeline(tmp_path / "t.png", preds, cuts, "clip.mp4")
    width, height = _png_size(path)
    assert width >= 1000 and height >= 400
    # No cuts and no samples still give a picture.
    _png_size(plot_timeline(tmp_path / "none.png", preds, [], "no cuts"))
    empty = Predictions(LABELS, np.zeros(0), np.zeros((0, 3)), 1.0, 0.0)
    _png_size(plot_timeline(tmp_path / "empty.png", empty, []))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.png", "none.png", "t.png"]


def test_clock_and_ticks() -> None:
    assert clock(0) == "00:00" and clock(75) == "01:15" and clock(3725) == "1:02:05"
    assert tick_step(60) == 5 and tick_step(600) == 60
    assert tick_step(7200) == 600 and tick_step(7201) == 900


def test_long_runs_are_binned_by_averaging() -> None:
    preds = blocky_predictions(n=1000)
    times, probs = binned(preds.times, preds.probs, 300)
    assert len(times) == 300 and probs.shape == (300, 3)
    assert times[0] == 0 and np.all(np.diff(times) > 0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    # Bins start at floor(k * 1000 / 300): the first holds samples 0, 1, 2.
    np.testing.assert_allclose(probs[0], preds.probs[:3].mean(axis=0), rtol=1e-6)
    same_t, same_p = binned(preds.times, preds.probs, 1000)
    assert same_t is preds.times and same_p is preds.probs


def test_a_ctrl_c_as_the_temporary_file_is_made_leaves_nothing(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    # KeyboardInterrupt can come right after the file exists (tests/test_batch.py's SIGINT
    # test left a .part.tag behind twice: the signal reached another thread, so masking it in
    # this one did not help).
    from milesdeep.pipeline import atomic

    real = atomic._create

    def interrupted(path: Path) -> None:
        real(path)
        raise KeyboardInterrupt

    monkeypatch.setattr(atomic, "_create", interrupted)
    with pytest.raises(KeyboardInterrupt):
        with atomic.atomic_path(tmp_path / "out.tag") as tmp:
            tmp.write_text("never")
    assert list(tmp_path.iterdir()) == []


def test_an_output_name_too_long_is_an_error_naming_it(tmp_path: Path) -> None:
    from milesdeep.pipeline.atomic import write_text_atomic

    final = tmp_path / ("x" * 300 + ".tag")
    with pytest.raises(MilesDeepError, match="cannot write the output"):
        write_text_atomic(final, "never")
    assert list(tmp_path.iterdir()) == []
