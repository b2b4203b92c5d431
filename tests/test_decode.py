"""Sampling on the CPU: which picture each sample time gets, from real encoded videos."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from milesdeep.errors import MilesDeepError
from milesdeep.pipeline.decode import PyAVSource, probe, sample_count
from tests.badinputs import audio_only
from tests.testdata import encode_frames, mux_silence, solid

# Variable frame rate: irregular gaps, and each frame a distinct grey level.
VFR_PTS = [0, 100, 150, 700, 1000, 1900, 2050, 2990, 3000, 3500]
LEVELS = [16 + 20 * k for k in range(len(VFR_PTS))]


@pytest.fixture(scope="module")
def vfr_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("vfr") / "vfr.mp4"
    frames = [solid((v, v, v)) for v in LEVELS]
    return encode_frames(path, frames, VFR_PTS, gop=3)


def expected_frame(t: float) -> int:
    """Index of the frame on screen at t seconds (the last with pts <= t)."""
    ms = t * 1000
    return max(k for k, p in enumerate(VFR_PTS) if p <= ms + 1e-6)


@pytest.mark.parametrize("rate", [1.0, 2.0, 3.0])
def test_exact_sampling_follows_timestamps_on_vfr(vfr_video: Path, rate: float) -> None:
    src = PyAVSource(vfr_video, rate=rate)
    samples = list(src)
    assert len(samples) == sample_count(src.info.duration, rate)
    assert src.info.duration >= 3.5
    for s in samples:
        k = expected_frame(s.index / rate)
        assert s.time == pytest.approx(s.index / rate)
        assert s.pts == pytest.approx(VFR_PTS[k] / 1000, abs=1e-3)
        # The pixels are that frame's: limited-range luma of grey v is 16 + v * 219 / 255.
        want_y = 16 + LEVELS[k] * 219 / 255
        assert float(s.frame.y.mean()) == pytest.approx(want_y, abs=2.5)
    assert [s.index for s in samples] == list(range(len(samples)))


def test_keyframes_sampling_holds_each_keyframe(tmp_path: Path) -> None:
    # 10 fps CFR, a keyframe every 12 frames (1.2 s), 5 s long.
    n = 50
    frames = [solid((v % 256,) * 3) for v in range(0, 5 * n, 5)]
    path = encode_frames(tmp_path / "gop.mp4", frames, [k * 100 for k in range(n)], gop=12)
    src = PyAVSource(path, rate=1.0, mode="keyframes")
    samples = list(src)
    key_times = [s.pts for s in samples]
    # Keyframes at 0, 1.2, 2.4, 3.6 and 4.8 s; the one at 4.8 s is on screen at no sample time.
    assert key_times == pytest.approx([0.0, 1.2, 2.4, 3.6])
    # Each keyframe covers the sample times from its own up to the next keyframe's.
    covered = [(s.index, s.hold) for s in samples]
    assert covered == [(0, 2), (2, 1), (3, 1), (4, 1)]
    assert sum(h for _, h in covered) == sample_count(src.info.duration, 1.0) == 5
    for s in samples:
        for i in range(s.index, s.index + s.hold):
            assert s.pts <= i + 1e-6  # never a picture from the future
    # The decoder skipped every other frame, and the keyframe at 4.8 s is held for no slot:
    # it is never decoded.
    assert (src.stats.frames_decoded, src.stats.keyframes_skipped) == (4, 1)


def test_rotation_and_ten_bit(tmp_path: Path) -> None:
    img = solid((200, 200, 200), 32, 48)
    path = encode_frames(tmp_path / "rot10.mp4", [img] * 5, [0, 100, 200, 300, 400],
                         pix_fmt="yuv420p10le", rotation=90)
    s = next(iter(PyAVSource(path)))
    assert s.frame.rotation == 270  # 90 degrees counter-clockwise = 270 clockwise
    assert s.frame.y.dtype == np.uint16 and s.frame.uv.dtype == np.uint16
    assert s.frame.y.shape == (32, 48) and s.frame.uv.shape == (16, 24, 2)
    # P016 convention: 10-bit value in the high bits; /256 gives 8-bit units.
    assert float(s.frame.y.mean()) / 256 == pytest.approx(16 + 200 * 219 / 255, abs=2.5)


def test_odd_dimensions_give_rounded_up_chroma(tmp_path: Path) -> None:
    img = solid((10, 120, 240), 35, 41)
    path = encode_frames(tmp_path / "odd.mkv", [img] * 3, [0, 100, 200],
                         codec="ffv1", pix_fmt="yuv420p")
    s = next(iter(PyAVSource(path)))
    assert s.frame.y.shape == (35, 41) and s.frame.uv.shape == (18, 21, 2)


def test_short_video_gives_one_sample(tmp_path: Path) -> None:
    path = encode_frames(tmp_path / "short.mp4", [solid((9, 9, 9))] * 4, [0, 100, 200, 300])
    samples = list(PyAVSource(path))
    assert len(samples) == 1 and samples[0].pts == 0.0


@pytest.mark.parametrize("kind, message", [
    ("missing", "no such file"),
    ("empty", "empty"),
    ("garbage", "not a video"),
    ("audio", "no video stream"),
])
def test_bad_inputs_are_user_errors(tmp_path: Path, kind: str, message: str) -> None:
    path = tmp_path / f"{kind}.mp4"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "garbage":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif kind == "audio":
        path = audio_only(tmp_path)
    with pytest.raises(MilesDeepError, match=message) as e:
        probe(path)
    assert str(path) in str(e.value)


def test_a_probed_open_decodes_the_same_pictures(tmp_path: Path) -> None:
    from milesdeep.pipeline.decode import open_video
    from tests.videos import flash_beep_video

    # B-frames and audio: the probe that a second open skips would have decoded both.
    video = flash_beep_video(tmp_path / "b.mp4", seconds=2)

    def pictures(probed: bool) -> list[tuple[int, bytes]]:
        with open_video(video, probed=probed) as container:
            vs = container.streams.video[0]
            assert (vs.codec_context.width, vs.codec_context.height) == (160, 90)
            return [(f.pts, f.to_ndarray().tobytes()) for f in container.decode(vs)]

    full, cheap = pictures(False), pictures(True)
    assert len(full) == 50
    assert cheap == full


def test_mark_needed_until_last_ends_after_the_last_picture_a_slot_can_show() -> None:
    from types import SimpleNamespace

    from milesdeep.pipeline.decode import mark_needed

    # 10 fps in decode order with B-frames (I0 P3 B1 B2 P6 B4 B5 ...), slots at 1 per second.
    order = [0]
    for p in range(3, 60, 3):
        order += [p, p - 2, p - 1]
    packets = [SimpleNamespace(pts=p) for p in order]
    tb = Fraction(1, 10)
    every = [p.pts for p, _ in mark_needed(packets, tb, 0.0, 1.0, 0, 3)]
    assert every == order
    # Slots 0..2: the last picture any of them shows is frame 20 (2.0 s). Every packet up to it
    # in decode order comes out, none after (frames 21 and later are shown at no slot < 3).
    cut = [p.pts for p, _ in mark_needed(packets, tb, 0.0, 1.0, 0, 3, until_last=True)]
    assert cut == order[: order.index(20) + 1]
    # B-frame 20 is sent after P21, which it refers to: that packet is kept too.
    assert 21 in cut


@pytest.mark.parametrize("late", [False, True])
@pytest.mark.parametrize("bframes", [0, 3])
@pytest.mark.parametrize("fmt", ["mp4", "matroska", "mpegts", "h264", "avi"])
def test_probe_without_decoding_reads_what_a_full_probe_does(tmp_path: Path, fmt: str,
                                                             bframes: int, late: bool) -> None:
    import av

    from milesdeep.pipeline.decode import _info, open_video

    path = tmp_path / f"v.{fmt}"
    with av.open(str(path), "w", format=fmt) as out:
        vs = out.add_stream("libx264", rate=25)
        vs.width, vs.height, vs.pix_fmt = 96, 64, "yuv420p"
        vs.options = {"bf": str(bframes)}
        for k in range(30):
            f = av.VideoFrame.from_ndarray(solid((8 * k, 100, 50), 64, 96), format="rgb24")
            f.pts = k + 25 * 7 * late  # late: the first picture at 7 s
            for p in vs.encode(f):
                out.mux(p)
        for p in vs.encode():
            out.mux(p)
    with open_video(path) as container:
        full = _info(path, container)
    assert (full.width, full.height, full.codec) == (96, 64, "h264")
    # (Matroska with B-frames gave no start without decoding: 0 instead of 7 s.)
    assert probe(path) == full


def video_inside_audio(path: Path, fmt: str, bframes: int) -> Path:
    """50 pictures at 25 fps from 0.48 s (to 2.48 s), beside silent AAC from 0 to 3 s."""
    import av

    with av.open(str(path), "w", format=fmt) as out:
        vs = out.add_stream("libx264", rate=25)
        vs.width, vs.height, vs.pix_fmt = 96, 64, "yuv420p"
        vs.options = {"bf": str(bframes)}
        mux_silence(out, out.add_stream("aac", rate=48000, layout="mono"), 3 * 48000)
        for k in range(50):
            f = av.VideoFrame.from_ndarray(solid((5 * k, 100, 50), 64, 96), format="rgb24")
            f.pts = 12 + k
            for p in vs.encode(f):
                out.mux(p)
        for p in vs.encode():
            out.mux(p)
    return path


@pytest.mark.parametrize("bframes", [0, 3])
@pytest.mark.parametrize("fmt", ["matroska", "nut", "flv", "mp4", "mpegts"])
def test_a_video_inside_longer_audio_starts_and_ends_with_its_pictures(
        tmp_path: Path, fmt: str, bframes: int) -> None:
    """FFmpeg lends a stream whose start or length it did not find the file's: the audio's 0
    and 3 s. Matroska and NUT H.264 opened without decoding said the video starts at 0, so
    every cut landed 0.48 s early and snapped a GOP back; Matroska, NUT and FLV said it lasts
    until the audio ends, one sample too many."""
    import av

    from milesdeep.pipeline import remux
    from milesdeep.pipeline.decode import _info, open_video

    path = video_inside_audio(tmp_path / f"v.{fmt}", fmt, bframes)
    with av.open(str(path)) as c:  # the pictures' own times, from every packet
        vs = c.streams.video[0]
        times = sorted(p.pts for p in c.demux(vs) if p.pts is not None and p.size)
        first, last = float(times[0] * vs.time_base), float(times[-1] * vs.time_base)
    assert last - first == pytest.approx(49 / 25, abs=1e-3)
    info = probe(path)
    assert info.start == pytest.approx(first, abs=1e-6)
    assert info.duration == pytest.approx(2.0, abs=1e-3)
    with open_video(path) as container:
        assert _info(path, container) == info  # as a full probe reads it
    index = remux.index_media(path)
    assert float(index.start * index.video.time_base) == pytest.approx(first, abs=1e-6)
    assert len(list(PyAVSource(path, rate=1.0))) == 2


def late_matroska(path: Path, bframes: int = 3) -> Path:
    """3 s of 25 fps video whose first picture is at 7.3 s, in Matroska as FFmpeg writes it:
    its Duration element says about 10.3 s, the end, not the length."""
    frames = [solid((3 * k, 100, 50), 64, 96) for k in range(75)]
    return encode_frames(path, frames, [7300 + 40 * k for k in range(75)],
                         options={"bf": str(bframes)})


@pytest.mark.parametrize("duration_says", ["end", "length"])
def test_a_late_matroska_file_lasts_as_long_as_its_pictures(tmp_path: Path,
                                                            duration_says: str) -> None:
    import struct

    import av

    path = late_matroska(tmp_path / "late.mkv")
    if duration_says == "length":  # as mkvmerge writes it: rewrite the Duration (ms) to 3 s
        data = path.read_bytes()
        at = data.index(b"\x44\x89\x88") + 3  # EBML Duration, an 8-byte float
        assert struct.unpack(">d", data[at:at + 8])[0] == pytest.approx(10300, abs=50)
        path.write_bytes(data[:at] + struct.pack(">d", 3000.0) + data[at + 8:])
    with av.open(str(path)) as c:  # what FFmpeg reports: the end or the length
        said = c.duration / 1e6
    assert said == pytest.approx(10.3 if duration_says == "end" else 3.0, abs=0.05)
    info = probe(path)
    assert info.start == pytest.approx(7.3)
    assert info.duration == pytest.approx(3.0, abs=0.05)
    samples = list(PyAVSource(path, rate=1.0))
    assert [s.index for s in samples] == [0, 1, 2]


@pytest.mark.parametrize("rate", [1.0, 4.0])
def test_keyframes_with_an_exact_tail(tmp_path: Path, rate: float) -> None:
    from tests.videos import flash_beep_video

    # B-frames, 25 fps, keyframes at 0, 1, ... 5 s (the last GOP is 5..6 s).
    video = flash_beep_video(tmp_path / "b.mp4", seconds=6, gop=25, audio=False)
    exact = list(PyAVSource(video, rate=rate))
    keys = list(PyAVSource(video, rate=rate, mode="keyframes"))
    src = PyAVSource(video, rate=rate, mode="keyframes", exact_tail=True)
    tail = list(src)
    assert src.stats.exact_from == pytest.approx(5.0)
    cut = next(k for k, s in enumerate(keys) if s.pts >= 5.0 - 1e-9)
    # Before the last keyframe: what keyframe sampling gives; from it on: exact's pictures.
    assert [(s.index, s.hold, s.pts) for s in tail[:cut]] == [
        (s.index, s.hold, s.pts) for s in keys[:cut]]
    after = [s for s in exact if s.time >= 5.0 - 1e-9]
    slots = [(k, s) for s in tail[cut:] for k in range(s.index, s.index + s.hold)]
    assert [k for k, _ in slots] == [s.index for s in after]
    for (_, t), e in zip(slots, after):
        assert t.pts == e.pts
        assert np.array_equal(t.frame.y, e.frame.y) and np.array_equal(t.frame.uv, e.frame.uv)
    assert len(tail) > len(keys) if rate > 1 else len(tail) >= len(keys)


def test_an_exact_tail_too_long_to_hold_is_given_up(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import milesdeep.pipeline.decode as decode
    from tests.videos import flash_beep_video

    video = flash_beep_video(tmp_path / "b.mp4", seconds=4, gop=25, audio=False)
    keys = [(s.index, s.hold, s.pts) for s in PyAVSource(video, mode="keyframes")]
    monkeypatch.setattr(decode, "TAIL_BYTES", 10)  # less than the last GOP's packets
    src = PyAVSource(video, mode="keyframes", exact_tail=True)
    assert [(s.index, s.hold, s.pts) for s in src] == keys
    assert src.stats.exact_from is None  # adaptive then refines that stretch by seeking


@pytest.mark.parametrize("container", ["mp4", "ts"])
@pytest.mark.parametrize("codec", ["libx264", "libx265"])
def test_keyframe_resets_tells_idr_from_open_gop_keyframes(tmp_path: Path, codec: str,
                                                           container: str) -> None:
    import av

    from milesdeep.pipeline.decode import keyframe_resets

    frames = [solid((k * 9 % 256, 80, 160)) for k in range(40)]
    pts = [k * 100 for k in range(40)]
    found = {}
    for gop_kind in ("open", "closed"):
        flag = "1" if gop_kind == "open" else "0"
        options = ({"bf": "2", "sc_threshold": "0", "keyint_min": "10",
                    "x264-params": f"open-gop={flag}"} if codec == "libx264" else
                   {"x265-params": f"keyint=10:min-keyint=10:scenecut=0:open-gop={flag}:"
                                   "bframes=2:log-level=error"})
        path = encode_frames(tmp_path / f"{gop_kind}.{container}", frames, pts, codec=codec,
                             gop=10, options=options)
        with av.open(str(path)) as c:
            vs = c.streams.video[0]
            check = keyframe_resets(vs.codec_context.name, vs.codec_context.extradata)
            found[gop_kind] = [check(bytes(p)) for p in c.demux(vs) if p.size and p.is_keyframe]
    assert len(found["open"]) == len(found["closed"]) == 4
    assert found["closed"] == [True] * 4  # IDR pictures
    assert found["open"] == [True, False, False, False]  # an IDR, then recovery points / CRAs
    assert keyframe_resets("mpeg2video", None)(b"\x00\x00\x01\xb3") is None


def test_an_open_gop_stream_cut_mid_gop(tmp_path: Path) -> None:
    # A capture that starts inside a GOP: the packets before the first keyframe reach the
    # decoder (no keyframe flag seen yet), so it is open when open-GOP keyframes are met
    # (its threading can no longer be changed then: that used to raise).
    import av

    frames = [solid((k * 9 % 256, 80, 160)) for k in range(50)]
    whole = encode_frames(tmp_path / "whole.ts", frames, [k * 100 for k in range(50)],
                          gop=10, options={"bf": "2", "sc_threshold": "0", "keyint_min": "10",
                                           "x264-params": "open-gop=1:repeat-headers=1"})
    cut = tmp_path / "cut.ts"
    with av.open(str(whole)) as src, av.open(str(cut), "w") as out:
        vin = src.streams.video[0]
        vout = out.add_stream_from_template(vin)
        for k, packet in enumerate(src.demux(vin)):
            if k >= 4 and packet.size:  # from the middle of the first GOP
                packet.stream = vout
                out.mux(packet)
    samples = list(PyAVSource(cut, mode="keyframes"))
    # Keyframes every second from 0.4 s (the cut's own start is 0); the first one also stands
    # for slot 0, before it.
    assert [(s.index, round(s.pts, 1)) for s in samples] == [
        (0, 0.4), (1, 0.4), (2, 1.4), (3, 2.4), (4, 3.4)]


@pytest.mark.parametrize("container", ["mp4", "ts"])
def test_keyframe_decodable_tells_recovery_points_from_keyframes(tmp_path: Path,
                                                                 container: str) -> None:
    import av

    from milesdeep.pipeline.decode import keyframe_decodable

    frames = [solid((k * 9 % 256, 80, 160)) for k in range(40)]
    extra = ":repeat-headers=1" if container == "ts" else ""
    kinds = {"closed": ("libx264", "open-gop=0"), "open": ("libx264", "open-gop=1"),
             "refresh": ("libx264", "intra-refresh=1:keyint=10"),
             "hevc-open": ("libx265", "keyint=10:min-keyint=10:scenecut=0:open-gop=1:"
                                      "bframes=2:log-level=error")}
    found = {}
    for kind, (codec, params) in kinds.items():
        options = ({"x265-params": params + extra} if codec == "libx265" else
                   {"bf": "0" if kind == "refresh" else "2", "sc_threshold": "0",
                    "keyint_min": "10", "x264-params": params + extra})
        path = encode_frames(tmp_path / f"{kind}.{container}", frames,
                             [k * 100 for k in range(40)], codec=codec, gop=10,
                             options=options)
        with av.open(str(path)) as c:
            vs = c.streams.video[0]
            check = keyframe_decodable(vs.codec_context.name, vs.codec_context.extradata)
            found[kind] = [check(bytes(p)) for p in c.demux(vs) if p.size and p.is_keyframe]
    assert found["closed"] == found["open"] == found["hevc-open"] == [True] * 4
    # The IDR, then recovery points every 10 frames: P pictures, not decodable alone.
    assert found["refresh"][0] is True and len(found["refresh"]) >= 3
    assert set(found["refresh"][1:]) == {False}
    assert keyframe_decodable("mpeg2video", None)(b"\x00\x00\x01\xb3") is None


def test_a_tail_the_decoder_skipped_is_not_taken_as_exact(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # libdav1d keeps the skip_frame it opened with: asked to skip all but keyframes (as it
    # was, before SKIPS_PER_PACKET), it decodes no picture of the last GOP, which must then
    # not be taken as exact (adaptive refines it by seeking, with a fresh decoder).
    import milesdeep.pipeline.decode as decode

    frames = [solid((6 * k, 90, 60)) for k in range(40)]
    video = encode_frames(tmp_path / "av1.mkv", frames, [100 * k for k in range(40)],
                          codec="libsvtav1", gop=15, options={"g": "15", "preset": "12"})
    keys = [(s.index, s.hold, s.pts) for s in PyAVSource(video, rate=4.0, mode="keyframes")]
    src = PyAVSource(video, rate=4.0, mode="keyframes", exact_tail=True)
    tail = [(s.index, s.hold, s.pts) for s in src]
    assert src.stats.exact_from == pytest.approx(3.0) and tail != keys  # decoded, exact
    monkeypatch.setattr(decode, "SKIPS_PER_PACKET", decode.SKIPS_PER_PACKET | {"libdav1d"})
    src = PyAVSource(video, rate=4.0, mode="keyframes", exact_tail=True)
    assert [(s.index, s.hold, s.pts) for s in src] == keys
    assert src.stats.exact_from is None
