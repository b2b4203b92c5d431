"""Adaptive sampling: keyframes first, full decoding only where the class may change."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from milesdeep.models.bundle import load_bundle
from milesdeep.pipeline.adaptive import (
    Held,
    blind_stretches,
    plan_stretches,
    uncertain,
    walkable,
)
from milesdeep.pipeline.infer import OrtClassifier
from milesdeep.pipeline.run import RunOptions, StageTimes, classify_video
from tests.testdata import COLOURS, colour_bundle, colour_video, encode_frames, solid

# 10 fps, a keyframe every 40 frames (4 s): class changes fall inside GOPs, at odd seconds.
PATTERN = ["red"] * 5 + ["blue"] * 6 + ["green"] * 3 + ["red"] * 7 + ["gray"] * 3


@pytest.fixture(scope="module")
def colours(tmp_path_factory: pytest.TempPathFactory):
    d = tmp_path_factory.mktemp("adaptive")
    bundle = load_bundle(colour_bundle(d / "bundle"))
    return bundle, OrtClassifier(bundle, threads=1)


def fixed_gop_video(path: Path, pattern: list[str], fps: int, gop: int) -> Path:
    """Like `colour_video`, with keyframes strictly every `gop` frames (no scene-cut ones)."""
    frames = [solid(COLOURS[name]) for name in pattern for _ in range(fps)]
    pts = [round(k * 1000 / fps) for k in range(len(frames))]
    return encode_frames(path, frames, pts, gop=gop,
                         options={"sc_threshold": "0", "keyint_min": str(gop)})


@pytest.fixture(scope="module")
def long_gop_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fixed_gop_video(tmp_path_factory.mktemp("v") / "long_gop.mp4", PATTERN, 10, 40)


def labels_of(preds) -> list[str]:
    return [preds.labels[k] for k in preds.probs.argmax(axis=1)]


def run(video: Path, colours, sampling: str, **kw) -> tuple[object, StageTimes]:
    bundle, clf = colours
    times = StageTimes()
    preds = classify_video(video, bundle, clf, RunOptions(sampling=sampling, batch=8, **kw),  # type: ignore[arg-type]
                           times=times)
    return preds, times


def test_adaptive_matches_exact_with_long_gops_and_decodes_less(long_gop_video: Path,
                                                                colours) -> None:
    exact, t_exact = run(long_gop_video, colours, "exact")
    keys, _ = run(long_gop_video, colours, "keyframes")
    adaptive, t_adapt = run(long_gop_video, colours, "adaptive")
    assert labels_of(exact) == PATTERN
    # Keyframes alone get the changes wrong (each keyframe is held for 4 s) ...
    assert labels_of(keys) != PATTERN
    # ... adaptive gets every second right, with the same probabilities as exact there.
    assert labels_of(adaptive) == PATTERN
    np.testing.assert_allclose(adaptive.probs, exact.probs, atol=1e-5)
    assert adaptive.times.tolist() == exact.times.tolist()
    assert adaptive.duration == pytest.approx(exact.duration)
    # Keyframes at 0 red, 4 blue, 8 blue, 12 green, 16 red, 20 red: the GOPs at 0, 8, 12 and
    # 20 (red -> gray at 21 s, after the last keyframe) must be refined; 4..8 and 16..20 not.
    assert t_adapt.frames_decoded < t_exact.frames_decoded
    assert 0 < t_adapt.extra["refined_slots"] < len(PATTERN)
    assert t_adapt.samples < t_exact.samples + len(PATTERN) // 2


def test_adaptive_at_two_samples_per_second(long_gop_video: Path, colours) -> None:
    exact, _ = run(long_gop_video, colours, "exact", rate=2.0)
    adaptive, _ = run(long_gop_video, colours, "adaptive", rate=2.0)
    assert labels_of(adaptive) == labels_of(exact)
    assert len(adaptive.times) == 2 * len(PATTERN)


def test_constant_class_decodes_keyframes_only(tmp_path: Path, colours) -> None:
    video = colour_video(tmp_path / "blue.mp4", ["blue"] * 9, fps=10, gop=20)
    preds, times = run(video, colours, "adaptive")
    assert labels_of(preds) == ["blue"] * 9
    # Only the last GOP (8 s, slot 8 is the keyframe itself) ... which has no other slot.
    assert times.extra["refined_slots"] == 0
    assert times.frames_decoded == 5  # keyframes at 0, 2, 4, 6, 8 s


def test_uncertain_rows() -> None:
    p = np.array([[0.9, 0.1], [0.55, 0.45], [0.42, 0.58], [0.05, 0.95]], np.float32)
    assert uncertain(p, 0.1).tolist() == [False, True, True, False]
    assert uncertain(p, 0.0).tolist() == [False, False, False, False]
    # Three classes: the top score far from the runner-up but near the threshold.
    q = np.array([[0.52, 0.24, 0.24], [0.8, 0.1, 0.1]], np.float32)
    assert uncertain(q, 0.1).tolist() == [True, False]


def test_plan_stretches_disagreement_uncertainty_and_walks() -> None:
    # Keyframes every 2 s at whole seconds, 1 sample per second: slot 2k shows keyframe k.
    held = [Held(2 * k, 2, 2.0 * k) for k in range(6)]
    a, b = [0.9, 0.1], [0.1, 0.9]
    shaky = [0.55, 0.45]
    probs = np.array([a, a, b, b, shaky, a], np.float32)
    # 1|2 disagree -> slots of keyframe 1 (2..3, slot 2 is the keyframe itself: 3..4).
    # Keyframe 4 is uncertain -> stretches of keyframes 3 and 4; the last keyframe's stretch
    # is always refined; each is decoded from its own keyframe (slots 6, 8, 10 are keyframes).
    assert plan_stretches(held, probs, 1.0, 0.1) == [(3, 4, 1), (7, 8, 3), (9, 10, 4),
                                                     (11, 12, 5)]
    # With no margin only the disagreement counts (3|4: b vs shaky-a also disagree).
    assert plan_stretches(held, probs, 1.0, 0.0) == [(3, 4, 1), (7, 8, 3), (11, 12, 5)]
    # Keyframes off the sample grid: the keyframe's own slot must be decoded too.
    held2 = [Held(0, 3, 0.0), Held(3, 2, 2.5), Held(5, 2, 4.5)]
    probs2 = np.array([a, b, b], np.float32)
    assert plan_stretches(held2, probs2, 1.0, 0.0) == [(1, 3, 0), (5, 7, 2)]
    probs3 = np.array([a, b, a], np.float32)
    # Confident disagreements are walked, one stretch at a time.
    assert plan_stretches(held2, probs3, 1.0, 0.0) == [(1, 3, 0), (3, 5, 1), (5, 7, 2)]
    assert walkable(held2, probs3, 0.0).tolist() == [True, True, False]
    # With a margin, a stretch next to an uncertain keyframe is not walkable.
    held3 = [Held(2 * k, 2, 2.0 * k) for k in range(4)]
    probs4 = np.array([a, b, shaky, a], np.float32)
    assert walkable(held3, probs4, 0.1).tolist() == [True, False, False, False]
    assert plan_stretches(held3, probs4, 1.0, 0.1) == [(1, 2, 0), (3, 4, 1), (5, 6, 2),
                                                       (7, 8, 3)]
    # Pass 1 decoded everything from the last keyframe (6 s) on: those rows are exact, so
    # neither their disagreement nor their uncertainty refines them (the stretch before does).
    tail = held3[:3] + [Held(6, 1, 6.0), Held(7, 1, 7.0)]
    probs5 = np.array([a, a, a, shaky, b], np.float32)
    assert plan_stretches(tail, probs5, 1.0, 0.1, exact_from=6.0) == [(5, 6, 2)]
    assert walkable(tail, probs5, 0.1, exact_from=6.0).tolist() == [False] * 5
    # Keyframes that could not be decoded alone at 1.5 s and 4.2 s (intra refresh): the
    # stretches holding them are decoded whole, agreeing neighbours or not, and never walked.
    blind = blind_stretches(held2, [1.5, 4.2])
    assert blind.tolist() == [True, True, False]
    probs6 = np.array([a, a, b], np.float32)
    assert plan_stretches(held2, probs6, 1.0, 0.0) == [(3, 5, 1), (5, 7, 2)]
    assert plan_stretches(held2, probs6, 1.0, 0.0, blind=blind) == [(1, 3, 0), (3, 5, 1),
                                                                     (5, 7, 2)]
    assert walkable(held2, probs6, 0.0, blind=blind).tolist() == [False, False, False]
    assert blind_stretches(held2, []).tolist() == [False] * 3


@pytest.mark.parametrize("rate", [1.0, 4.0])
def test_skipping_unseen_non_reference_pictures_keeps_samples_bit_exact(tmp_path: Path,
                                                                         rate: float) -> None:
    from milesdeep.pipeline.decode import PyAVSource
    from tests.videos import flash_beep_video

    # B-frames (libx264, 2 in a row), 25 fps: most B-pictures are shown at no sample time.
    video = flash_beep_video(tmp_path / "b.mp4", seconds=6, audio=False)
    full = PyAVSource(video, rate=rate, skip_unseen=False)
    fast = PyAVSource(video, rate=rate)
    a, b = list(full), list(fast)
    assert [s.index for s in a] == [s.index for s in b] == list(range(int(6 * rate)))
    for x, y in zip(a, b):
        assert x.pts == y.pts
        assert np.array_equal(x.frame.y, y.frame.y) and np.array_equal(x.frame.uv, y.frame.uv)
    assert full.stats.frames_decoded == 150
    assert fast.stats.frames_decoded < full.stats.frames_decoded


def test_adaptive_on_b_frames_matches_exact(tmp_path: Path, colours) -> None:
    from tests.videos import two_class_video

    # Solid red ("A") against noise ("B"), B-frames, keyframes every 25 frames at 10 fps
    # (0 A, 2.5 A, 5 B, 7.5 B, 10 A, 12.5 A): both changes fall inside GOPs. (A change and
    # back inside one GOP, e.g. "AAB" between two A keyframes, is what adaptive can miss.)
    video = two_class_video(tmp_path / "ab.mp4", "AAABBBBBAAAAAA", fps=10, gop=25)
    exact, _ = run(video, colours, "exact")
    adaptive, times = run(video, colours, "adaptive")
    assert labels_of(adaptive) == labels_of(exact)
    # (Scores differ a little where a noise keyframe is held: each noise frame is different.)
    assert times.extra["refined_slots"] < len(exact.probs)


def test_adaptive_on_variable_frame_rate(tmp_path: Path, colours) -> None:
    # Irregular frame times, keyframes every 7 frames, colour changing between keyframes.
    pts = [0, 90, 400, 950, 1000, 1600, 2300, 2350, 3100, 3900, 4000, 4700, 5200, 5950, 6500,
           7400, 7450, 8000, 8800, 9500]
    names = ["red"] * 4 + ["blue"] * 6 + ["green"] * 5 + ["red"] * 5
    video = encode_frames(tmp_path / "vfr.mp4", [solid(COLOURS[n]) for n in names], pts,
                          gop=7, options={"sc_threshold": "0"})
    exact, _ = run(video, colours, "exact", rate=2.0)
    adaptive, times = run(video, colours, "adaptive", rate=2.0)
    assert labels_of(adaptive) == labels_of(exact)
    assert len(set(labels_of(exact))) == 3
    assert times.extra["keyframes"] == 3


def test_a_change_early_in_a_long_gop_stops_decoding_there(tmp_path: Path, colours) -> None:
    # Keyframes every 8 s (10 fps): red until 9 s, then blue; the stretch 8..16 is walked from
    # its keyframe and decoding stops at the first blue sample, not at the next keyframe.
    pattern = ["red"] * 9 + ["blue"] * 15
    video = fixed_gop_video(tmp_path / "early.mp4", pattern, 10, 80)
    exact, t_exact = run(video, colours, "exact")
    adaptive, times = run(video, colours, "adaptive")
    assert labels_of(exact) == pattern
    assert labels_of(adaptive) == pattern
    assert times.extra["walked_stretches"] == 1
    assert times.extra["slots_held_after_walks"] >= 4  # 11..15 never decoded
    # Keyframes (3) + the walk to 10 s (~20 frames) + the last GOP (8 s, 80 frames) at most.
    assert times.frames_decoded < 3 + 25 + 80 < t_exact.frames_decoded
    assert times.samples < 3 + 4 + 7


def test_a_two_second_stretch_between_sample_times_is_walked(tmp_path: Path, colours) -> None:
    # Keyframes every 2.5 s (10 fps), so none but the first is at a sample time and the GOP
    # from 2.5 s holds two samples to refine, 3 and 4 s (GOPs of 29.97 fps video are like
    # this). Red turns blue at 3 s: the walk stops at 3 s, and 4 s is never decoded.
    pattern = ["red"] * 3 + ["blue"] * 9
    video = fixed_gop_video(tmp_path / "offset.mp4", pattern, 10, 25)
    adaptive, times = run(video, colours, "adaptive")
    assert labels_of(adaptive) == pattern
    assert times.extra["walked_stretches"] == 1
    assert times.extra["slots_held_after_walks"] == 1


def test_the_last_gop_is_decoded_in_pass_one_not_refined(tmp_path: Path, colours) -> None:
    # Keyframes at 0, 4, 8 s (10 fps); the class changes inside the last GOP, at 10 s.
    pattern = ["red"] * 10 + ["blue"] * 2
    video = fixed_gop_video(tmp_path / "tail.mp4", pattern, 10, 40)
    adaptive, times = run(video, colours, "adaptive")
    assert labels_of(adaptive) == pattern
    # Nothing was sought back to: red at 0, 4 and 8 s agree, and slots 9..12 came with pass 1.
    assert times.extra["refined_slots"] == 0
    assert times.extra["keyframes"] == 3
    assert times.extra["tail_samples"] == 3  # 9, 10, 11 s
    assert times.frames_decoded <= 2 + 40  # two keyframes, then the last GOP once


def test_two_walks_side_by_side_match_exact(tmp_path: Path, colours) -> None:
    # Keyframes every 8 s (10 fps): red -> blue at 5 s, blue -> red at 13 s; both GOPs are
    # walked, on two decoders at once, each stopping at its change.
    pattern = ["red"] * 5 + ["blue"] * 8 + ["red"] * 11
    video = fixed_gop_video(tmp_path / "two.mp4", pattern, 10, 80)
    exact, t_exact = run(video, colours, "exact")
    adaptive, times = run(video, colours, "adaptive")
    assert labels_of(exact) == pattern
    assert labels_of(adaptive) == pattern
    assert times.extra["walked_stretches"] == 2
    assert times.extra["slots_held_after_walks"] >= 2 + 2  # 6..7 and 14..15 not decoded
    assert times.frames_decoded < t_exact.frames_decoded


def changing_every_frame_video(path: Path, fps: int, gop: int, codec: str = "libx264",
                               pix_fmt: str = "yuv420p") -> tuple[Path, list[str]]:
    """Colours changing every 1.5 s (so mid-second too), `gop` frames per keyframe; returns
    the video and the colour on screen at each whole second."""
    names = ["red", "blue", "green", "gray"]
    per = [names[(k * 2) // (3 * fps) % 4] for k in range(8 * fps)]  # 1.5 s per colour
    pts = [round(k * 1000 / fps) for k in range(len(per))]
    opts = {"sc_threshold": "0", "keyint_min": str(gop)} if codec == "libx264" else {}
    video = encode_frames(path, [solid(COLOURS[n]) for n in per], pts, codec=codec,
                          pix_fmt=pix_fmt, gop=gop, options=opts)
    return video, [per[s * fps] for s in range(8)]


@pytest.mark.parametrize("gop", [1, 5])
def test_keyframes_closer_than_the_slots_are_decoded_only_where_held(tmp_path: Path, colours,
                                                                     gop: int) -> None:
    # 10 fps with a keyframe every frame (all-intra) or every half second: each slot's picture
    # is a keyframe, so pass 1 alone is exact, and the keyframes between slots never decoded.
    video, want = changing_every_frame_video(tmp_path / f"g{gop}.mp4", 10, gop)
    exact, _ = run(video, colours, "exact")
    keys, t_keys = run(video, colours, "keyframes")
    adaptive, times = run(video, colours, "adaptive")
    assert labels_of(exact) == want
    assert labels_of(keys) == want and labels_of(adaptive) == want
    np.testing.assert_array_equal(adaptive.probs, exact.probs)
    assert times.extra["refined_slots"] == 0
    assert t_keys.frames_decoded == times.frames_decoded == 8  # one picture per slot
    assert times.extra["keyframes_skipped"] == 80 // gop - 8
    # What pass 1 keeps per keyframe is kept for the held ones only (not one per picture).
    from milesdeep.pipeline.decode import PyAVSource

    src = PyAVSource(video, mode="keyframes", exact_tail=True)
    assert len(list(src)) == 8 and len(src.stats.shown_until) == 8


def test_keyframes_between_slots_are_skipped_unless_compared(tmp_path: Path,
                                                             colours) -> None:
    # A keyframe every 3 frames at 10 fps (0, 0.3, 0.6, 0.9 s ...), colours every 1.5 s:
    # slots 0, 3 and 6 s are keyframes, exact in pass 1. Slot 1 s shows the picture after the
    # keyframe at 0.9 s that holds it, so that keyframe is compared with the next one (1.2 s,
    # classified though it holds no slot); they agree, as they do at every such slot here, so
    # nothing is refined. Keyframes that neither hold a slot nor follow one whose slot shows
    # another picture (0.3, 0.6, 1.5 s ...) are never decoded.
    video, want = changing_every_frame_video(tmp_path / "g3.mp4", 10, 3)
    exact, _ = run(video, colours, "exact")
    adaptive, times = run(video, colours, "adaptive")
    assert labels_of(exact) == labels_of(adaptive) == want
    np.testing.assert_array_equal(adaptive.probs, exact.probs)
    assert times.extra["refined_slots"] == 0
    # 8 keyframes hold slots, 5 more are compared with (after 0.9, 1.8, 3.9, 4.8 and 6.9 s).
    assert times.extra["keyframes"] == 13 and times.extra["keyframes_skipped"] == 27 - 13


def test_an_intra_only_codec_reads_only_the_pictures_of_the_slots(tmp_path: Path,
                                                                  colours) -> None:
    from milesdeep.pipeline.decode import PyAVSource

    video, want = changing_every_frame_video(tmp_path / "mjpeg.mkv", 10, 1, codec="mjpeg",
                                             pix_fmt="yuvj420p")
    exact, t_exact = run(video, colours, "exact")
    assert labels_of(exact) == want
    assert t_exact.frames_decoded == 8  # not 80: MJPEG pictures stand alone
    # The same pictures as decoding every one of them.
    every = list(PyAVSource(video, skip_unseen=False))
    for a, b in zip(PyAVSource(video), every, strict=True):
        assert a.pts == b.pts
        np.testing.assert_array_equal(a.frame.y, b.frame.y)
    adaptive, times = run(video, colours, "adaptive")
    np.testing.assert_array_equal(adaptive.probs, exact.probs)
    assert times.frames_decoded == 8


@pytest.mark.parametrize("sampling", ["adaptive", "keyframes", "exact"])
def test_sparse_slots_do_not_look_like_a_truncated_file(tmp_path: Path, colours,
                                                        sampling: str) -> None:
    # One slot every 4 s of a 7.9 s video: nothing after the 4 s slot needs decoding, but
    # the file's pictures still reach its end (only a file that really ends early warns).
    from milesdeep.batch.tag_job import decode_warnings

    video = fixed_gop_video(tmp_path / "sparse.mp4", ["red"] * 4 + ["blue"] * 4, 10, 20)
    preds, times = run(video, colours, sampling, rate=0.25)
    assert decode_warnings(0, times.extra["decoded_end"], preds.duration) == []
    assert times.extra["decoded_end"] == pytest.approx(preds.duration, abs=0.11)


@pytest.mark.parametrize("codec, fps, gop", [("libx264", 10, 25), ("libx265", 50, 130)])
def test_open_gops_give_each_keyframe_in_order(tmp_path: Path, colours, codec: str, fps: int,
                                               gop: int) -> None:
    # Open GOPs (an H.264 recovery-point I picture, an HEVC CRA) with B-frames: fed straight
    # after one another, such keyframes came out of the decoder reordered or not at all (the
    # picture at 2.6 s on screen at 0 s). Each is now decoded as a seek would: anew.
    from milesdeep.pipeline.decode import PyAVSource

    pattern = ["red"] * 3 + ["blue"] * 4 + ["green"] * 3 + ["red"] * 3 + ["gray"] * 4
    frames = [solid(COLOURS[n]) for n in pattern for _ in range(fps)]
    pts = [k * 1000 // fps for k in range(len(frames))]
    if codec == "libx264":
        options = {"bf": "3", "sc_threshold": "0", "keyint_min": str(gop),
                   "x264-params": "open-gop=1"}
    else:
        options = {"x265-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:open-gop=1:"
                                  "bframes=3:log-level=error"}
    video = encode_frames(tmp_path / "open.mp4", frames, pts, codec=codec, gop=gop,
                          options=options)
    keys = [(s.index, s.pts) for s in PyAVSource(video, mode="keyframes")]
    times = [k * gop / fps for k in range(len(frames) // gop + 1)]
    assert [round(p, 3) for _, p in keys] == [round(t, 3) for t in times]
    assert [i for i, _ in keys] == [math.ceil(t - 1e-9) for t in times]
    exact, _ = run(video, colours, "exact")
    adaptive, stats = run(video, colours, "adaptive")
    assert labels_of(adaptive) == labels_of(exact)
    assert labels_of(exact)[:len(pattern)] == pattern  # (HEVC in MP4 may last a frame more)
    np.testing.assert_allclose(adaptive.probs, exact.probs, atol=1e-5)
    assert stats.extra["refined_slots"] > 0


def test_a_keyframe_between_slots_is_still_compared(tmp_path: Path, colours) -> None:
    # Keyframes every 0.7 s at 10 fps; blue on [1.9, 2.5) s inside red. Slot 2 (2.0 s) is
    # held by the keyframe at 1.4 s (red) and the next keyframe holding a slot is at 2.8 s
    # (red); the one at 2.1 s (blue) holds no slot, but it is what tells that the class
    # changes after 1.4 s: it is classified (holding no slot) and slot 2 refined.
    names = ["red"] * 19 + ["blue"] * 6 + ["red"] * 25
    video = encode_frames(tmp_path / "gop7.mp4", [solid(COLOURS[n]) for n in names],
                          [k * 100 for k in range(len(names))], gop=7,
                          options={"sc_threshold": "0", "keyint_min": "7"})
    exact, _ = run(video, colours, "exact")
    adaptive, times = run(video, colours, "adaptive")
    assert labels_of(exact) == ["red", "red", "blue", "red", "red"]
    assert labels_of(adaptive) == labels_of(exact)
    np.testing.assert_allclose(adaptive.probs, exact.probs, atol=1e-5)
    assert times.extra["refined_slots"] >= 1


def test_the_last_keyframe_is_compared_even_off_the_slots(tmp_path: Path, colours) -> None:
    # One slot every 2 s, keyframes every 3 s (0, 3, 6, 9), red on [7, 9.5) s inside blue:
    # slot 8 s is held by the keyframe at 6 s (blue), the slot at 10 s comes from the last
    # GOP (blue), and only the keyframe at 9 s (red, on screen at no slot) shows the change.
    names = ["blue"] * 70 + ["red"] * 25 + ["blue"] * 15
    video = encode_frames(tmp_path / "tail3.mp4", [solid(COLOURS[n]) for n in names],
                          [k * 100 for k in range(len(names))], gop=30,
                          options={"sc_threshold": "0", "keyint_min": "30"})
    exact, _ = run(video, colours, "exact", rate=0.5)
    adaptive, _ = run(video, colours, "adaptive", rate=0.5)
    assert labels_of(exact) == ["blue"] * 4 + ["red", "blue"]
    assert labels_of(adaptive) == labels_of(exact)
    np.testing.assert_allclose(adaptive.probs, exact.probs, atol=1e-5)


@pytest.mark.parametrize("open_gop", ["0", "1"])
def test_refining_in_mpeg_ts_starts_at_the_keyframe(tmp_path: Path, colours,
                                                    open_gop: str) -> None:
    # MPEG-TS has no index: a seek lands near the time asked for (here after the keyframe,
    # its timestamps start at 0.2 s and the seek goes by decode time), and refining a stretch
    # failed with "no picture could be decoded". The keyframe is now found by reading on, or
    # by seeking again from further back.
    pattern = ["red"] * 1 + ["blue"] * 4 + ["green"] * 3 + ["red"] * 4
    frames = [solid(COLOURS[n]) for n in pattern for _ in range(10)]
    video = encode_frames(tmp_path / "v.ts", frames, [k * 100 for k in range(len(frames))],
                          gop=25, options={"bf": "3", "sc_threshold": "0", "keyint_min": "25",
                                           "x264-params": f"open-gop={open_gop}"})
    exact, _ = run(video, colours, "exact")
    adaptive, times = run(video, colours, "adaptive")
    assert labels_of(exact) == pattern
    assert labels_of(adaptive) == pattern
    np.testing.assert_allclose(adaptive.probs, exact.probs, atol=1e-5)
    assert times.extra["refined_slots"] >= 3  # the stretch from 0 s among them


@pytest.mark.parametrize("container", ["mp4", "ts"])
def test_an_intra_refresh_stream_is_decoded_whole_between_its_real_keyframes(
        tmp_path: Path, colours, container: str) -> None:
    # x264 --intra-refresh: one IDR picture, then a recovery point marked as a keyframe every
    # 10 frames, each a P picture that is whole only once 10 more are decoded. Decoded alone
    # they gave no picture, so the IDR's class was held for 14 s and every change was lost.
    pattern = ["red"] * 3 + ["blue"] * 4 + ["green"] * 2 + ["red"] * 3 + ["gray"] * 2
    frames = [solid(COLOURS[name]) for name in pattern for _ in range(10)]
    extra = ":repeat-headers=1" if container == "ts" else ""
    video = encode_frames(tmp_path / f"refresh.{container}", frames,
                          [100 * k for k in range(len(frames))], gop=10,
                          options={"bf": "0", "sc_threshold": "0",
                                   "x264-params": "intra-refresh=1:keyint=10" + extra})
    exact, _ = run(video, colours, "exact")
    adaptive, times = run(video, colours, "adaptive")
    assert labels_of(exact) == pattern
    assert labels_of(adaptive) == pattern
    assert times.extra["keyframes_unusable"] >= 10
    keys, _ = run(video, colours, "keyframes")  # the IDR alone, held: no damaged picture
    assert set(labels_of(keys)) == {"red"}


def test_adaptive_on_av1_matches_exact(tmp_path: Path, colours) -> None:
    # libdav1d reads skip_frame only when it opens. Pass 1's decoder, opened to skip all but
    # keyframes, gave no picture after the last keyframe, yet its slots were taken as exact
    # (the change to gray at 5 s was lost); a refinement whose first packet was skippable
    # lost every non-reference picture, the one at 2 s too (keyframes every 1.5 s).
    pattern = ["blue"] * 2 + ["red"] * 3 + ["gray"] * 2
    frames = [solid(COLOURS[name]) for name in pattern for _ in range(10)]
    video = encode_frames(tmp_path / "av1.mkv", frames, [100 * k for k in range(len(frames))],
                          codec="libsvtav1", gop=15, options={"g": "15", "preset": "12"})
    exact, _ = run(video, colours, "exact", rate=2.0)
    adaptive, times = run(video, colours, "adaptive", rate=2.0)
    assert labels_of(exact) == [name for name in pattern for _ in range(2)]
    assert labels_of(adaptive) == labels_of(exact)


def test_a_decoder_that_marks_no_keyframe_picture(tmp_path: Path, colours) -> None:
    # QuickTime RLE: the file marks its keyframe packets, but the decoder marks no picture as
    # a keyframe; keyframe sampling dropped every picture ("no picture could be decoded").
    pattern = ["red"] * 2 + ["blue"] * 2 + ["green"] * 2 + ["gray"] * 2
    frames = [solid(COLOURS[name]) for name in pattern for _ in range(5)]
    video = encode_frames(tmp_path / "rle.mov", frames, [200 * k for k in range(len(frames))],
                          codec="qtrle", pix_fmt="rgb24")
    exact, _ = run(video, colours, "exact")
    adaptive, _ = run(video, colours, "adaptive")
    keys, _ = run(video, colours, "keyframes")
    assert labels_of(exact) == labels_of(adaptive) == pattern
    assert labels_of(keys)[0] == "red" and len(keys.probs) == len(pattern)


def test_a_truncated_mp4_with_its_index_in_front_matches_exact(tmp_path: Path,
                                                               colours) -> None:
    """An MP4 cut short (a download stopped part way) whose index, at the front, lists
    packets that are not there: the last packet read is damaged, and decoding it again at the
    end of pass 1 failed. The last GOP then counted as not decoded, and pass 2 tried to
    seek to the last picture, not a keyframe ("no picture could be decoded after seeking").
    Cut at many places (where the damage shows depends on the bytes), it matches exact."""
    from fractions import Fraction

    from milesdeep.pipeline import remux
    from milesdeep.pipeline.ranges import TimeRange
    from tests import videos as V

    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (96, 160, 3), dtype=np.uint8) for _ in range(100)]
    src = V.encode_video(tmp_path / "noise.mp4", frames, 25, None, gop=25)
    whole = remux.cut_video(remux.index_media(src), [TimeRange(Fraction(0), Fraction(4))],
                            tmp_path / "front", faststart=True).outputs[0]
    data = whole.read_bytes()
    for k, frac in enumerate(np.linspace(0.3, 0.95, 27)):
        cut = tmp_path / f"cut{k}.mp4"
        cut.write_bytes(data[: int(len(data) * frac)])
        adaptive, _ = run(cut, colours, "adaptive")
        exact, _ = run(cut, colours, "exact")
        assert labels_of(adaptive) == labels_of(exact), frac
