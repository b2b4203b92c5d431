"""Stream-copy cuts and smart cuts on real tiny videos: durations, frames, A/V sync, safety."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from fractions import Fraction as F
from pathlib import Path

import av
import pytest

from milesdeep.errors import MilesDeepError
from milesdeep.pipeline import remux
from milesdeep.pipeline.ranges import TimeRange, complement, total
from tests import videos as V

ROOT = Path(__file__).resolve().parents[1]

# name -> (maker kwargs, fps, GOP in frames, smart cut possible here)
SOURCES = {
    "h264.mp4": (dict(fps=25, gop=25, bframes=2), 25, 25, True),
    "h264-gop50-b3.mp4": (dict(fps=25, gop=50, bframes=3), 25, 50, True),
    "h264.mkv": (dict(fps=30, gop=15, bframes=2), 30, 15, True),
    "h264.ts": (dict(fps=25, gop=25, bframes=2), 25, 25, True),
    # Every timestamp 7.3 s late, as an ffmpeg remux of an MPEG-TS capture leaves them.
    "h264-late.mkv": (dict(fps=30, gop=15, bframes=2, late=7.3), 30, 15, True),
    "wmv2.wmv": (dict(fps=25, gop=25), 25, 25, False),
}
# Boundaries on whole frames at 25 and 30 fps, away from the flashes at k + 0.6 s.
RANGES = [TimeRange(F(1, 5), F(3)), TimeRange(F(16, 5), F(4)),
          TimeRange(F(31, 5), F(46, 5)), TimeRange(F(11), F(12))]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("src")
    out = {}
    for name, (kw, *_) in SOURCES.items():
        kw = dict(kw)
        late = kw.pop("late", 0.0)
        out[name] = V.flash_beep_video(d / ("early-" * bool(late) + name), seconds=12, **kw)
        if late:
            out[name] = _shifted(out[name], d / name, late)
    return out


def _shifted(src: Path, dest: Path, seconds: float) -> Path:
    """A copy of `src` with every packet `seconds` later."""
    import av

    with av.open(str(src)) as c, av.open(str(dest), "w") as out:
        streams = {s.index: out.add_stream_from_template(s) for s in c.streams}
        for p in c.demux():
            if p.dts is None and p.pts is None:
                continue
            shift = round(F(seconds) / p.time_base)
            p.pts = None if p.pts is None else p.pts + shift
            p.dts = None if p.dts is None else p.dts + shift
            p.stream = streams[p.stream.index]
            out.mux(p)
    return dest


def sync_errors(path: Path) -> tuple[list[float], list[float], list[float]]:
    """(flash times, beep onsets, per-beep distance to the nearest flash)."""
    flashes, beeps = V.flash_times(path), V.beep_onsets(path)
    errors = [min((abs(b - f) for f in flashes), default=1e9) for b in beeps]
    return flashes, beeps, errors


def expected_codes(plan: remux.EditPlan, fps: int) -> list[int]:
    out: list[int] = []
    for s in plan.spans:
        a = plan.index.seconds(s.start) * fps
        b = plan.index.seconds(s.end) * fps
        out += range(round(a), round(b))
    return out


@pytest.mark.parametrize("precise", [False, True], ids=["keyframes", "precise"])
@pytest.mark.parametrize("name", list(SOURCES))
def test_cut_durations_frames_and_sync(sources: dict[str, Path], tmp_path: Path, name: str,
                                       precise: bool) -> None:
    src = sources[name]
    _, fps, gop, smart = SOURCES[name]
    before = sha(src)
    index = remux.index_media(src)
    result = remux.cut_video(index, RANGES, tmp_path, precise=precise)
    out = result.outputs[0]
    plan = result.plans[0]
    assert out.name == f"{src.stem}.cut{'.mkv' if src.suffix == '.mkv' else src.suffix}"
    assert plan.precise == (precise and smart)
    if precise and not smart:
        assert any("cutting at keyframes instead" in n for n in plan.notes)

    durations = V.stream_durations(out)
    planned = total(RANGES)
    if plan.precise:  # exactly the planned time, frame for frame
        assert durations["video"] == pytest.approx(float(planned), abs=1e-6)
    else:  # each range starts at most one GOP early and ends within one GOP
        assert 0 <= durations["video"] - float(planned) <= len(RANGES) * gop / fps
        for report in plan.reports():
            first, last = report.planned[0], report.planned[-1]
            assert first.start - F(gop, fps) <= report.actual.start <= first.start
            assert last.end <= report.actual.end <= last.end + F(gop, fps)
    assert durations["video"] == pytest.approx(float(plan.duration), abs=1e-6)
    assert abs(durations["audio"] - durations["video"]) < 0.1

    # Every output frame is the source frame the plan says, in order, decoded without a
    # warning (a splice with wrong parameter sets or references would show up here).
    assert V.read_frame_codes(out) == expected_codes(plan, fps)
    assert V.decode_warnings(out) == []

    # A/V sync: every beep within one frame of its flash, and a beep for every flash.
    flashes, beeps, errors = sync_errors(out)
    assert len(flashes) == len(beeps) >= 7
    assert max(errors) <= 1 / fps
    assert sha(src) == before


def test_the_sync_check_catches_an_offset(tmp_path: Path) -> None:
    """The same measurement on a source whose beeps are 3 frames late must fail the test."""
    src = V.flash_beep_video(tmp_path / "late.mp4", seconds=4, beep_offset=3 / 25)
    _, _, errors = sync_errors(src)
    assert len(errors) == 4 and min(errors) > 1 / 25


@pytest.mark.parametrize("audio", ["mp3", "pcm_s16le"])
def test_an_avi_with_b_frames_keeps_its_sync(tmp_path: Path, audio: str) -> None:
    """AVI stores no times, and FFmpeg moved the first decode time (below 0 with B-frames) up
    to 0 in every stream, which AVI's audio cannot follow: each edit put the pictures another
    frame (40 ms) late. The output keeps the source's offset, within half an audio packet."""
    src = V.flash_beep_video(tmp_path / "v.avi", seconds=12, fps=25, gop=25,
                             codecs=("mpeg4", audio))
    before = _offsets(src)
    assert max(before) - min(before) < 0.002  # one steady offset (a frame, as encoded)
    out = remux.cut_video(remux.index_media(src), RANGES, tmp_path / "out").outputs[0]
    after = _offsets(out)
    assert len(after) >= 7
    half_packet = (1152 if audio == "mp3" else 1024) / 48000 / 2  # as `encode_video` writes
    assert max(abs(a - before[0]) for a in after) <= half_packet + 0.001


@pytest.mark.parametrize("precise", [False, True], ids=["keyframes", "precise"])
@pytest.mark.parametrize("bframes", [0, 3])
def test_a_variable_frame_rate_mp4_cut_ends_where_the_kept_time_does(
        tmp_path: Path, precise: bool, bframes: int) -> None:
    """The MP4 track lasts from the first decode time to the last plus the last packet's
    duration; a copied packet brought its source's decode-time step, which with irregular
    frame times and B-frames is not the time left: the track ended up to 100 ms off."""
    import numpy as np

    from tests.testdata import encode_frames, solid

    steps = np.random.default_rng(1).integers(20, 121, size=200)
    times = [int(t) for t in np.cumsum([0, *steps]) if t < 6000]
    frames = [solid((10 + 30 * (i % 8), 100, 100)) for i in range(len(times))]
    src = encode_frames(tmp_path / "vfr.mp4", frames, times, gop=10,
                        options={"bf": str(bframes)})
    result = remux.cut_video(remux.index_media(src), [TimeRange(F(1), F(3))],
                             tmp_path / "out", precise=precise)
    (plan,) = result.plans
    with av.open(str(result.outputs[0])) as c:
        vs = c.streams.video[0]
        assert float(vs.duration * vs.time_base) == pytest.approx(float(plan.duration),
                                                                  abs=0.0015)


def test_an_av1_video_is_cut_by_stream_copy(tmp_path: Path) -> None:
    """FFmpeg decodes AV1 with libdav1d, a name no encoder has: making the output stream by
    that name failed every AV1 edit (an internal error)."""
    try:
        av.Codec("libsvtav1", "w")
    except av.codec.codec.UnknownCodecError:
        pytest.skip("this FFmpeg build has no AV1 encoder")
    src = V.flash_beep_video(tmp_path / "v.mkv", seconds=4, fps=25, gop=25, size=(160, 96),
                             codecs=("libsvtav1", "libopus"))
    index = remux.index_media(src)
    out = remux.cut_video(index, [TimeRange(F(1), F(3))], tmp_path / "out").outputs[0]
    assert V.read_frame_codes(out) == list(range(25, 75))
    d = V.stream_durations(out)
    assert d["video"] == pytest.approx(2.0) and abs(d["audio"] - 2.0) < 0.05


def _offsets(path: Path) -> list[float]:
    """Each beep's time minus its nearest flash's (signed)."""
    flashes = V.flash_times(path)
    return [b - min(flashes, key=lambda f: abs(b - f)) for b in V.beep_onsets(path)]


@pytest.mark.parametrize("precise", [False, True], ids=["keyframes", "precise"])
def test_remove_and_keep_cover_the_whole_video(sources: dict[str, Path], tmp_path: Path,
                                               precise: bool) -> None:
    src = sources["h264.mp4"]
    index = remux.index_media(src)
    kept = remux.cut_video(index, RANGES, tmp_path / "kept", precise=precise)
    rest_ranges = complement(RANGES, index.duration)
    rest = remux.cut_video(index, rest_ranges, tmp_path / "rest", precise=precise)
    a = V.read_frame_codes(kept.outputs[0])
    b = V.read_frame_codes(rest.outputs[0])
    n = 12 * 25
    assert set(a) | set(b) == set(range(n))
    if precise:  # frame-accurate: each frame exactly once
        assert sorted(a + b) == list(range(n))


def test_pieces_each_play(sources: dict[str, Path], tmp_path: Path) -> None:
    src = sources["h264.mp4"]
    index = remux.index_media(src)
    result = remux.cut_video(index, RANGES, tmp_path, pieces=True, precise=True)
    assert [p.relative_to(tmp_path).as_posix() for p in result.outputs] == [
        f"{src.stem}.cut/{src.stem}.cut.{i}.mp4" for i in range(1, len(RANGES) + 1)]
    for path, r in zip(result.outputs, RANGES):
        codes = V.read_frame_codes(path)
        assert codes == list(range(round(r.start * 25), round(r.end * 25)))
        d = V.stream_durations(path)
        assert d["video"] == pytest.approx(float(r.duration), abs=1e-6)
        assert abs(d["audio"] - d["video"]) < 0.1


def test_existing_output_needs_overwrite(sources: dict[str, Path], tmp_path: Path) -> None:
    index = remux.index_media(sources["h264.mp4"])
    target = tmp_path / "h264.cut.mp4"
    target.write_bytes(b"keep me")
    with pytest.raises(MilesDeepError, match="--overwrite"):
        remux.cut_video(index, RANGES, tmp_path)
    assert target.read_bytes() == b"keep me"
    remux.cut_video(index, RANGES, tmp_path, overwrite=True)
    assert V.read_frame_codes(target)


def test_interrupt_in_process_leaves_nothing(sources: dict[str, Path], tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    index = remux.index_media(sources["h264.mp4"])
    calls = {"n": 0}
    real = remux._mux

    def interrupted(output, packet) -> None:  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 50:
            raise KeyboardInterrupt
        real(output, packet)

    monkeypatch.setattr(remux, "_mux", interrupted)
    with pytest.raises(KeyboardInterrupt):
        remux.cut_video(index, RANGES, tmp_path)
    assert list(tmp_path.iterdir()) == []  # no final file, no temporary left behind


def test_killed_mid_write_leaves_no_final_file(sources: dict[str, Path],
                                               tmp_path: Path) -> None:
    """SIGKILL (no cleanup possible) while packets are being written: the final path must not
    exist; only a hidden .part file may remain."""
    src = sources["h264.mp4"]
    script = textwrap.dedent(f"""
        import sys, time
        from fractions import Fraction as F
        from pathlib import Path
        from milesdeep.pipeline import remux
        from milesdeep.pipeline.ranges import TimeRange
        real, n = remux._mux, [0]
        def slow(output, packet):
            n[0] += 1
            if n[0] == 20:
                print("writing", flush=True)
                time.sleep(60)
            real(output, packet)
        remux._mux = slow
        index = remux.index_media(Path({str(src)!r}))
        remux.cut_video(index, [TimeRange(F(0), F(10))], Path({str(tmp_path)!r}))
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"writing"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    time.sleep(0.05)
    assert not (tmp_path / "h264.cut.mp4").exists()
    assert all(p.name.startswith(".") and ".part" in p.name for p in tmp_path.iterdir())


def test_unreadable_video_is_a_user_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all" * 10)
    with pytest.raises(MilesDeepError, match="bad.mp4"):
        remux.index_media(bad)


def test_parameter_sets_are_restored_after_a_reencoded_run(sources: dict[str, Path]) -> None:
    """A copied keyframe that follows re-encoded frames carries the original SPS/PPS."""
    index = remux.index_media(sources["h264.mp4"])
    plan = remux.plan_edit(index, RANGES, precise=True)
    items = [i for s in plan.spans for i in s.items]
    kinds = [type(i).__name__ for i in items]
    assert "EncodeItem" in kinds and "CopyItem" in kinds
    for before, item in zip(items, items[1:]):
        if isinstance(item, remux.CopyItem):
            assert item.prepend_parameter_sets == isinstance(before, remux.EncodeItem)


@pytest.mark.parametrize("precise", [False, True], ids=["keyframes", "precise"])
def test_subtitles_move_with_their_ranges(sources: dict[str, Path], tmp_path: Path,
                                          precise: bool) -> None:
    src = V.with_subtitles(sources["h264.mkv"], tmp_path / "subs.mkv",
                           [(k + 0.6, 0.3, f"second {k}") for k in range(12)])
    index = remux.index_media(src)
    result = remux.cut_video(index, RANGES, tmp_path / "out", precise=precise)
    plan, out = result.plans[0], result.outputs[0]
    expected: list[tuple[float, str]] = []
    position = F(0)
    for report in plan.reports():
        a, b = report.actual.start, report.actual.end
        expected += [(float(k + F(3, 5) - a + position), f"second {k}") for k in range(12)
                     if a <= k + F(3, 5) < b]
        position += b - a
    got = V.subtitle_cues(out)
    assert [t for _, t in got] == [t for _, t in expected]
    assert all(abs(x - y) <= 0.001 for (x, _), (y, _) in zip(got, expected))
    # Each cue still starts on its flash.
    flashes = V.flash_times(out)
    assert all(min(abs(t - f) for f in flashes) <= 1 / 30 for t, _ in got)


def test_precise_falls_back_when_timestamps_lie(tmp_path: Path) -> None:
    """ASF keeps no reordering information: H.264 with B-frames in a .wmv has packet times
    that are not the frames' times. The smart cut notices and cuts at keyframes instead."""
    src = V.flash_beep_video(tmp_path / "hb.wmv", seconds=12, codecs=("libx264", "aac"),
                             bframes=2)
    index = remux.index_media(src)
    result = remux.cut_video(index, RANGES[:1], tmp_path / "out", precise=True)
    assert not result.plans[0].precise
    assert any("--precise failed" in n for n in result.plans[0].notes)
    assert result.outputs[0].suffix == ".mkv"
    # Cut at [0, 3 s) of the stream as FFmpeg dates its start (59 ms, no frame's lying time):
    # one frame more than 3 s may come along.
    codes = V.read_frame_codes(result.outputs[0])
    assert codes == list(range(len(codes))) and len(codes) in (3 * 25, 3 * 25 + 1)


def test_smart_cut_in_mpeg_ts_seeks_back_rather_than_decoding_from_the_start(
        sources: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # An MPEG-TS seek lands past the keyframe asked for; each boundary is decoded from a seek
    # a little further back, not from the file's start (hours of decoding on a long file).
    from milesdeep.pipeline import smartcut

    calls: list[tuple[int, bool]] = []
    decode = smartcut.SegmentEncoder._decode

    def spy(self, keyframe_pts, start, stop, seek):  # noqa: ANN001, ANN202
        calls.append((keyframe_pts, seek))
        return decode(self, keyframe_pts, start, stop, seek)

    monkeypatch.setattr(smartcut.SegmentEncoder, "_decode", spy)
    result = remux.cut_video(remux.index_media(sources["h264.ts"]), RANGES, tmp_path,
                             precise=True)
    assert result.plans[0].precise
    assert len(calls) > 4
    assert sum(not seek for _, seek in calls) <= 1  # only for the boundary near the start
    assert V.read_frame_codes(result.outputs[0]) == expected_codes(result.plans[0], 25)


def _late_video(path: Path, bframes: int = 3) -> Path:
    """3 s at 25 fps whose first picture is at 7.3 s (an AVI says it starts at 0)."""
    from tests.testdata import encode_frames, solid

    frames = [solid((3 * k, 100, 50), 64, 96) for k in range(75)]
    return encode_frames(path, frames, [7300 + 40 * k for k in range(75)], gop=25,
                         options={"bf": str(bframes)})


def _trimmed_mp4(path: Path, tmp_path: Path) -> Path:
    """An MP4 that starts 0.4 s after a keyframe, as `ffmpeg -ss 2.4 -c copy` leaves one: the
    pictures before its start have negative times, decoded only as references."""
    import av

    src = _late_video(tmp_path / "src.mp4")
    with av.open(str(src)) as c, av.open(str(path), "w") as out:
        vin = c.streams.video[0]
        vout = out.add_stream_from_template(vin)
        packets = [p for p in c.demux(vin) if p.pts is not None]
        key = sorted(p.pts for p in packets if p.is_keyframe)[1]  # the keyframe at 1 s
        shift = key + round(F(2, 5) / vin.time_base)
        for p in packets[[p.pts for p in packets].index(key):]:
            p.pts, p.dts, p.stream = p.pts - shift, p.dts - shift, vout
            out.mux(p)
    return path


@pytest.mark.parametrize("kind", ["late.mkv", "late-b0.mkv", "late.mp4", "late.ts",
                                  "gap.avi", "trimmed.mp4"])
def test_the_cutter_starts_where_the_classifier_does(tmp_path: Path, kind: str) -> None:
    """Planned time 0 is the same instant for the cutter and the classifier (`probe().start`),
    else every cut lands off by the difference: 7.3 s in a Matroska file that starts late
    (its start was unknown without decoding), 7.3 s in an AVI that starts with empty frames,
    0.4 s in a trimmed MP4."""
    from milesdeep.pipeline.decode import probe

    path = tmp_path / kind
    if kind == "trimmed.mp4":
        _trimmed_mp4(path, tmp_path)
    elif kind == "gap.avi":
        _late_video(path, bframes=0)
    else:
        _late_video(path, bframes=0 if "b0" in kind else 3)
    index = remux.index_media(path)
    info = probe(path)
    assert float(index.start * index.video.time_base) == pytest.approx(info.start, abs=1e-6)
    assert float(index.duration) == pytest.approx(info.duration, abs=0.05)


def test_pictures_with_one_time_are_one_clear_error(tmp_path: Path) -> None:
    """Two MPEG-TS recordings joined byte for byte, the second's times overlapping the
    first's: a cut across the seam failed halfway with FFmpeg's 'non monotonically increasing
    dts'; it is now refused, before anything is written, naming the time."""
    from tests.testdata import encode_frames, solid

    parts = []
    for k, first in enumerate((0, 2000)):
        frames = [solid((40 * k, 90, 60), 48, 64) for _ in range(30)]
        parts.append(encode_frames(tmp_path / f"part{k}.ts", frames,
                                   [first + 100 * i for i in range(30)], gop=10,
                                   options={"bf": "2", "x264-params": "repeat-headers=1"}))
    joined = tmp_path / "joined.ts"
    joined.write_bytes(b"".join(p.read_bytes() for p in parts))
    index = remux.index_media(joined)
    with pytest.raises(MilesDeepError, match="two pictures of the video have the same time"):
        remux.cut_video(index, [TimeRange(F(1), F(4))], tmp_path / "out")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())
    # A range clear of the seam is cut as before.
    result = remux.cut_video(index, [TimeRange(F(0), F(1))], tmp_path / "out")
    assert result.outputs[0].exists()


@pytest.mark.parametrize("container", ["mp4", "ts"])
def test_precise_cuts_of_an_intra_refresh_stream_show_every_picture(tmp_path: Path,
                                                                   container: str) -> None:
    """x264 --intra-refresh marks recovery points as keyframes. A smart cut copied on from
    one after its re-encoded head, and a player could show none of the next 7 pictures (the
    refresh had not gone round); the cut now re-encodes from a whole keyframe instead."""
    import av

    from tests.testdata import encode_frames, solid

    frames = [solid((5 * k % 256, 90, 60), 48, 64) for k in range(100)]
    extra = ":repeat-headers=1" if container == "ts" else ""
    src = encode_frames(tmp_path / f"refresh.{container}", frames,
                        [100 * k for k in range(100)], gop=25,
                        options={"bf": "0", "sc_threshold": "0",
                                 "x264-params": "intra-refresh=1:keyint=25" + extra})
    index = remux.index_media(src)
    assert sum(index.video.key) > 1 and sum(index.video.whole) == 1
    result = remux.cut_video(index, [TimeRange(F(2), F(6))], tmp_path / "out", precise=True)
    assert any("recovery points" in n for n in result.plans[0].notes)
    with av.open(str(result.outputs[0])) as c:
        shown = [round(float(f.pts * f.time_base), 3) for f in c.decode(video=0)]
    assert len(shown) == 40  # every picture from 2 s to 6 s


def test_keyframe_cuts_of_an_intra_refresh_stream_start_a_keyframe_early(
        tmp_path: Path) -> None:
    """A keyframe cut copied from a recovery point, and players showed none of the range's
    pictures until the refresh had gone round; it now starts at the keyframe before."""
    import av

    from tests.testdata import encode_frames, solid

    frames = [solid((5 * k % 256, 90, 60), 48, 64) for k in range(100)]
    src = encode_frames(tmp_path / "refresh.mp4", frames, [100 * k for k in range(100)],
                        gop=25, options={"bf": "0", "sc_threshold": "0",
                                         "x264-params": "intra-refresh=1:keyint=25"})
    index = remux.index_media(src)
    assert [index.seconds(p) for p in index.key_pts] == [0, 2.5, 5, 7.5]
    result = remux.cut_video(index, [TimeRange(F(5), F(7))], tmp_path / "out")
    (plan,) = result.plans
    assert any("intra-refresh recovery point" in n for n in plan.notes)
    assert plan.reports()[0].actual.start == F(5, 2)
    with av.open(str(result.outputs[0])) as c:
        shown = [round(float(f.pts * f.time_base), 3) for f in c.decode(video=0)]
    # Every picture of the planned range is shown (output time 2.5 s is source 5 s).
    assert all(round(2.5 + 0.1 * k, 3) in shown for k in range(20))


def test_precise_reencoding_keeps_interlacing_and_the_pixel_shape(tmp_path: Path) -> None:
    """The re-encoded pictures of a smart cut came out progressive with square pixels, while
    the copied ones were interlaced with 16:11 pixels: one stream mixing both."""
    import numpy as np

    path = tmp_path / "tff.mp4"
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=25)
        vs.width, vs.height, vs.pix_fmt = 160, 96, "yuv420p"
        vs.codec_context.sample_aspect_ratio = F(16, 11)
        vs.codec_context.gop_size = 25
        vs.options = {"preset": "veryfast", "bf": "0", "sc_threshold": "0",
                      "x264-params": "interlaced=1:tff=1"}
        for i in range(100):
            rgb = np.zeros((96, 160, 3), np.uint8)
            V.draw_code(rgb, i)
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = i
            for p in vs.encode(frame):
                out.mux(p)
        for p in vs.encode():
            out.mux(p)
    result = remux.cut_video(remux.index_media(path), [TimeRange(F(1, 2), F(3))],
                             tmp_path / "out", precise=True)
    assert result.plans[0].precise
    with av.open(str(result.outputs[0])) as c:
        vs = c.streams.video[0]
        seen = {(f.interlaced_frame, str(vs.codec_context.sample_aspect_ratio))
                for f in c.decode(vs)}
    assert seen == {(True, "16/11")}


def _timecoded(path: Path, tc: str | None, rate: F, n: int = 60, gop: int = 15) -> Path:
    """Coded frames 0..n-1 at `rate` whose video stream starts at timecode `tc` (FFmpeg's MOV
    muxer makes that a tmcd track, its Matroska muxer a tag)."""
    import av
    import numpy as np

    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=rate)
        vs.width, vs.height, vs.pix_fmt = 160, 64, "yuv420p"
        vs.codec_context.gop_size = gop
        vs.options = {"preset": "veryfast", "sc_threshold": "0", "bf": "0"}
        if tc is not None:
            vs.metadata["timecode"] = tc
        for i in range(n):
            rgb = np.zeros((64, 160, 3), np.uint8)
            V.draw_code(rgb, i)
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts, frame.time_base = i, 1 / rate
            for p in vs.encode(frame):
                out.mux(p)
        for p in vs.encode():
            out.mux(p)
    return path


def _timecodes(path: Path) -> set[str]:
    """Every start timecode FFmpeg reads back from the file (any stream, any spelling)."""
    import av

    with av.open(str(path)) as c:
        metas = [c.metadata, *(s.metadata for s in c.streams)]
        return {v for m in metas for k, v in m.items() if k.lower() == "timecode"}


@pytest.mark.parametrize("name,tc,rate,want", [
    ("a.mov", "01:00:00:00", F(25), ["01:00:00:15", "01:00:01:05"]),
    # Drop-frame at 29.97: minute 1 has no frames ;00 and ;01, so 15 frames after 00:00:59;15
    # is 00:01:00;02.
    ("b.mp4", "00:00:59;15", F(30000, 1001), ["00:01:00;02", "00:01:00;17"]),
    ("c.mkv", "10:00:00:00", F(30), ["10:00:00:15", "10:00:01:00"]),
])
def test_the_start_timecode_moves_to_each_piece_s_start(tmp_path: Path, name: str, tc: str,
                                                        rate: F, want: list[str]) -> None:
    src = _timecoded(tmp_path / name, tc, rate, n=60, gop=15)
    assert _timecodes(src) == {tc}
    index = remux.index_media(src)
    assert index.skipped == []  # the tmcd track is written anew, not "left out"
    # Keyframes every 15 frames: pieces start at frames 15 and 30 (rate-independent).
    a, b = F(15) / rate, F(30) / rate
    result = remux.cut_video(index, [TimeRange(a, a + 10 / rate), TimeRange(b, b + 10 / rate)],
                             tmp_path / "out", pieces=True)
    for path, start, frame in zip(result.outputs, want, (15, 30)):
        assert V.read_frame_codes(path)[0] == frame
        assert _timecodes(path) == {start}


def test_no_timecode_in_gives_none_out(tmp_path: Path) -> None:
    src = _timecoded(tmp_path / "n.mov", None, F(25), n=30)
    out = remux.cut_video(remux.index_media(src), [TimeRange(F(3, 5), F(1))], tmp_path / "o")
    assert _timecodes(out.outputs[0]) == set()


@pytest.mark.parametrize("tc,rate,frames,want", [
    ("01:00:00:00", F(25), 75, "01:00:03:00"),
    ("23:59:59:24", F(25), 1, "00:00:00:00"),  # hours wrap at 24, as FFmpeg's do
    ("01:00:00;00", F(30000, 1001), 1800, "01:01:00;02"),
    ("00:09:59;29", F(30000, 1001), 1, "00:10:00;00"),  # every tenth minute keeps ;00
    ("01:00:00;00", F(60000, 1001), 3600, "01:01:00;04"),
    ("01:00:00:00", F(30000, 1001), 1800, "01:01:00:00"),  # ':' is non-drop, whatever the rate
    ("01:00:00;00", F(25), 25, "01:00:01:00"),  # no drop-frame at 25
    ("1:2:3:4", F(25), 1, None),  # not a timecode: nothing is written
])
def test_timecode_arithmetic_is_ffmpeg_s(tc: str, rate: F, frames: int, want: str | None) -> None:
    from milesdeep.pipeline.timecode import from_frames, shifted, to_frames

    assert shifted(tc, rate, frames) == want
    for n in range(0, 120_000, 997):  # drop-frame numbering round-trips
        assert to_frames(from_frames(n, F(30000, 1001), True), F(30000, 1001)) == (n, True)


def _tagged(src: Path, dest: Path) -> Path:
    """`src` with a title, a language on its audio and three chapters (0-4, 4-8, 8-12 s)."""
    import av

    with av.open(str(src)) as c, av.open(str(dest), "w") as out:
        out.metadata["title"] = "A title"
        streams = {s.index: out.add_stream_from_template(s) for s in c.streams}
        for s in c.streams:
            if s.type == "audio":
                streams[s.index].metadata["language"] = "fra"
        out.set_chapters([{"id": k + 1, "start": 4000 * k, "end": 4000 * (k + 1),
                           "time_base": F(1, 1000), "metadata": {"title": f"part {k + 1}"}}
                          for k in range(3)])
        for p in c.demux():
            if p.dts is None and p.pts is None:
                continue
            p.stream = streams[p.stream.index]
            out.mux(p)
    return dest


@pytest.mark.parametrize("name", ["h264.mp4", "h264.mkv"])
def test_tags_and_chapters_carry_over(sources: dict[str, Path], tmp_path: Path,
                                      name: str) -> None:
    """Title and languages as `ffmpeg -c copy` keeps them; each chapter that keeps some time
    runs, on the output's timeline, from its first kept moment to its last."""
    import av

    src = _tagged(sources[name], tmp_path / name)
    index = remux.index_media(src)
    # Keep 1-3 s and 6-11 s: part 1 keeps 2 s, part 2 the 2 s from 6 s, part 3 all of 8-11.
    result = remux.cut_video(index, [TimeRange(F(1), F(3)), TimeRange(F(6), F(11))],
                             tmp_path / "out")
    plan = result.plans[0]
    assert "chapters: 3 of 3 kept, moved to the output's times" in plan.notes
    assert index.skipped == []  # an MP4's chapter text track is not "left out"
    cut = [float(plan.index.seconds(s.start)) for s in plan.spans]  # keyframe starts
    ends = [float(plan.index.seconds(s.end)) for s in plan.spans]
    with av.open(str(result.outputs[0])) as c:
        assert c.metadata.get("title") == "A title"
        assert [s.metadata.get("language") for s in c.streams if s.type == "audio"] == ["fra"]
        chapters = [(float(ch["start"] * ch["time_base"]), float(ch["end"] * ch["time_base"]),
                     ch["metadata"]["title"]) for ch in c.chapters()]
    first = ends[0] - cut[0]  # the first range's length in the output
    want = [(0.0, min(4, ends[0]) - cut[0], "part 1"),
            (first + max(4, cut[1]) - cut[1], first + 8 - cut[1], "part 2"),
            (first + 8 - cut[1], first + ends[1] - cut[1], "part 3")]
    assert [t for *_, t in chapters] == ["part 1", "part 2", "part 3"]
    for (a, b, _), (wa, wb, _) in zip(chapters, want):
        assert abs(a - wa) < 2e-3 and abs(b - wb) < 2e-3, (chapters, want)
    # A piece holds only the chapters it keeps time of.
    pieces = remux.cut_video(index, [TimeRange(F(9), F(11))], tmp_path / "p", pieces=True)
    with av.open(str(pieces.outputs[0])) as c:
        assert [ch["metadata"]["title"] for ch in c.chapters()] == ["part 3"]


def test_an_mxf_start_timecode_moves_too(tmp_path: Path) -> None:
    """MXF keeps its timecode on the container, where the muxer looks first: a copied one
    would win over the moved one."""
    import av
    import numpy as np

    src = tmp_path / "t.mxf"
    with av.open(str(src), "w") as out:
        out.metadata["timecode"] = "10:00:00:00"
        vs = out.add_stream("mpeg2video", rate=25)
        vs.width, vs.height, vs.pix_fmt = 160, 64, "yuv420p"
        vs.codec_context.gop_size = 10
        for i in range(50):
            rgb = np.zeros((64, 160, 3), np.uint8)
            V.draw_code(rgb, i)
            for p in vs.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                out.mux(p)
        for p in vs.encode():
            out.mux(p)
    assert _timecodes(src) == {"10:00:00:00"}
    result = remux.cut_video(remux.index_media(src), [TimeRange(F(1), F(2))], tmp_path / "o")
    first = V.read_frame_codes(result.outputs[0])[0]
    assert first > 0
    assert _timecodes(result.outputs[0]) == {f"10:00:00:{first:02d}"}


def test_an_open_gop_stream_is_cut_at_keyframes_with_a_note(tmp_path: Path) -> None:
    """x264 --open-gop: the keyframes after the first are I pictures, not IDR. A precise cut
    copied on at one after its re-encoded start, and FFmpeg's decoder dropped pictures there
    (10 of 51, silently); it now cuts at keyframes, saying why, and a joint of two ranges
    says that players lose pictures there."""
    import av

    from tests.testdata import encode_frames, solid

    frames = [solid((3 * k % 256, 90, 60), 48, 64) for k in range(100)]
    src = encode_frames(tmp_path / "open.mp4", frames, [40 * k for k in range(100)], gop=25,
                        options={"bf": "3", "x264-params": "open-gop=1:keyint=25:min-keyint=25"})
    index = remux.index_media(src)
    later = [r for k, r in zip(index.video.key, index.video.resets) if k][1:]
    assert len(later) >= 3 and not any(later)
    one = remux.cut_video(index, [TimeRange(F(51, 25), F(3))], tmp_path / "one", precise=True)
    assert not one.plans[0].precise
    assert any("not IDR pictures" in n and "cutting at keyframes" in n for n in one.plans[0].notes)
    with av.open(str(one.outputs[0])) as c:  # every picture the plan copies, decoded
        assert sum(1 for _ in c.decode(video=0)) == round(one.plans[0].duration * 25) >= 24
    two = remux.cut_video(index, [TimeRange(F(0), F(1, 2)), TimeRange(F(3), F(7, 2))],
                          tmp_path / "two")
    assert any("at each join FFmpeg-based players lose pictures" in n
               for n in two.plans[0].notes)


def test_a_precise_range_inside_one_picture_keeps_that_picture(tmp_path: Path) -> None:
    """A slide show (a picture every 3 s): 4-6 s holds no picture start, and --precise wrote
    an empty, unreadable file and said "wrote"; it keeps the picture on screen, as a
    keyframe cut does."""
    import av

    from tests.testdata import encode_frames, solid

    frames = [solid((40 * k, 90, 60), 48, 64) for k in range(6)]
    src = encode_frames(tmp_path / "slides.mp4", frames, [3000 * k for k in range(6)], gop=1)
    result = remux.cut_video(remux.index_media(src), [TimeRange(F(4), F(6))], tmp_path / "o",
                             precise=True)
    assert result.plans[0].reports()[0].actual == TimeRange(F(3), F(6))
    with av.open(str(result.outputs[0])) as c:
        assert [f.pts * f.time_base for f in c.decode(video=0)] == [0]


def test_a_precise_matroska_cut_of_a_b_frame_stream_reads_back_with_its_reordering(
        tmp_path: Path) -> None:
    """libx264's re-encoded start declared no reordering; FFmpeg takes the stream's from that
    first SPS, so in Matroska (no stored decode times) the copied B-frame pictures after it
    read back with missing and backward decode times, and remuxing the cut into MP4 failed.
    The re-encoded SPS now declares the source's reordering."""
    from milesdeep.pipeline import smartcut
    from tests.testdata import encode_frames, solid

    frames = [solid((5 * k % 256, 90, 60), 48, 64) for k in range(100)]
    src = encode_frames(tmp_path / "b.mkv", frames, [40 * k for k in range(100)], gop=25,
                        options={"bf": "2"})
    index = remux.index_media(src)
    result = remux.cut_video(index, [TimeRange(F(13, 25), F(3))], tmp_path / "out",
                             precise=True)
    assert result.plans[0].precise
    with av.open(str(result.outputs[0])) as c:
        vs = c.streams.video[0]
        assert vs.codec_context.has_b_frames
        packets = [(p.pts, p.dts) for p in c.demux(vs) if p.size]
    with av.open(str(result.outputs[0])) as c:
        decoded = sum(1 for _ in c.decode(video=0))
    dts = [d for _, d in packets]
    assert None not in dts[2:] and dts[2:] == sorted(set(dts[2:]))
    assert decoded == len(packets) == round((F(3) - F(13, 25)) * 25)
    # The remux that failed: every packet muxes into MP4.
    with av.open(str(result.outputs[0])) as c, av.open(str(tmp_path / "again.mp4"), "w") as o:
        vin = c.streams.video[0]
        vout = o.add_stream_from_template(vin)
        for p in c.demux(vin):
            if p.dts is not None:
                p.stream = vout
                o.mux(p)
    with av.open(str(src)) as c:
        assert smartcut.source_reorder(smartcut.parse_avcc(c.streams.video[0].codec_context
                                                           .extradata)) == 2


def test_declaring_reordering_changes_nothing_else_in_the_sps() -> None:
    """libx264's SPS (no B-frames; with interlacing, scaling matrices, HRD, SAR): only
    max_num_reorder_frames (and a buffer that holds them) differ, every bit before them is
    the same, and emulation prevention survives the round trip."""
    import numpy as np

    from milesdeep.pipeline import smartcut, sps

    for params in ("", "tff=1", "cqm=jvt", "nal-hrd=vbr:vbv-maxrate=900:vbv-bufsize=1800",
                   "sar=16/11"):
        enc = av.CodecContext.create("libx264", "w")
        enc.width, enc.height, enc.pix_fmt = 64, 48, "yuv420p"
        enc.time_base, enc.max_b_frames = F(1, 25), 0
        enc.options = {"crf": "16", **({"x264-params": params} if params else {})}
        f = av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")
        f = f.reformat(format="yuv420p")
        f.pts = 0
        first = bytes([*enc.encode(f), *enc.encode(None)][0])
        nal = next(n for n in smartcut.split_annexb(first) if n[0] & 0x1F == 7)
        old, new = sps.restriction(nal), sps.restriction(sps.with_reorder(nal, 2))
        assert old is not None and new is not None and old.fields and new.fields
        assert old.fields[5] == 0 and new.fields[5] == 2 and new.fields[6] >= 2
        assert old.fields[:5] == new.fields[:5] and old.flag_at == new.flag_at
        bits = [sps._Bits(sps.unescape(n[1:])).bits[:old.flag_at]
                for n in (nal, sps.with_reorder(nal, 2))]
        assert bits[0] == bits[1], params
        assert sps.escape(sps.unescape(nal[1:])) == nal[1:]
        assert sps.with_reorder(sps.with_reorder(nal, 2), 2) == sps.with_reorder(nal, 2)
