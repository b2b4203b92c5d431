"""The bad-input catalogue: small files that real video libraries contain, one maker each.

Every maker writes into a directory and returns the path it made. Videos carry one solid
colour per second (the colours of `tests.testdata.COLOURS`, which the tiny colour classifier
recognises), so a test can check that a damaged or unusual file that *can* be classified gets
the right label for each second, not merely some output.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from tests.testdata import COLOURS, encode_frames, mux_silence, solid

PATTERN = ("red", "blue", "green")  # one colour per second


def colour_frames(pattern: Sequence[str], fps: int, size: tuple[int, int]
                  ) -> tuple[list[np.ndarray], list[int]]:
    """RGB frames and their times (ms) for `pattern`, `fps` frames a second, size (w, h)."""
    w, h = size
    frames, pts = [], []
    for s, name in enumerate(pattern):
        for k in range(fps):
            frames.append(solid(COLOURS[name], h, w))
            pts.append(round((s * fps + k) * 1000 / fps))
    return frames, pts


def plain(path: Path, pattern: Sequence[str] = PATTERN, fps: int = 5,
          size: tuple[int, int] = (64, 48), **kw: object) -> Path:
    frames, pts = colour_frames(pattern, fps, size)
    return encode_frames(path, frames, pts, gop=fps, **kw)  # type: ignore[arg-type]


def zero_byte(d: Path) -> Path:
    path = d / "empty.mp4"
    path.write_bytes(b"")
    return path


def random_bytes(d: Path) -> Path:
    path = d / "random.mp4"
    path.write_bytes(np.random.default_rng(7).bytes(20_000))
    return path


def _cut_half(src: Path, dst: Path) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) // 2])
    src.unlink()
    return dst


def truncated_mp4(d: Path) -> Path:
    """An MP4 cut at 50%: its index (moov) is written last, so nothing is left to read."""
    src = plain(d / "whole.mp4", PATTERN * 2)
    return _cut_half(src, d / "truncated-mp4.mp4")


def truncated_mkv(d: Path) -> Path:
    """A Matroska file cut at 50%: the first half of the pictures is still there (the
    frames are textured so that the half holds pictures, not just headers)."""
    frames, pts = colour_frames(["red"] * 3 + ["blue"] * 3, 10, (64, 48))
    rng = np.random.default_rng(5)
    for f in frames:
        f += rng.integers(0, 24, f.shape, dtype=np.uint8) * (f < 200)
    src = encode_frames(d / "whole.mkv", frames, pts, gop=10)
    return _cut_half(src, d / "truncated-mkv.mkv")


def corrupt_middle(d: Path) -> Path:
    """An MP4 whose middle third has 16 random bytes every 200: the index still finds every
    packet, but packets there fail to decode; the first and last seconds are intact."""
    pattern = ["red"] * 3 + ["blue"] * 3 + ["green"] * 3
    path = plain(d / "corrupt.mp4", pattern, fps=10)
    data = bytearray(path.read_bytes())
    n = len(data)
    rng = np.random.default_rng(3)
    for off in range(n // 3, 2 * n // 3, 200):
        data[off: off + 16] = rng.bytes(16)
    path.write_bytes(bytes(data))
    return path


def audio_only(d: Path) -> Path:
    path = d / "audio only.mp4"
    with av.open(str(path), "w") as out:
        st = out.add_stream("aac", rate=48000)
        st.layout = "mono"
        mux_silence(out, st, 48000)
    return path


def still_image(d: Path) -> Path:
    """A PNG under a video's name (FFmpeg reads it as a one-picture "video")."""
    from PIL import Image

    path = d / "still.mp4"
    Image.fromarray(solid(COLOURS["red"], 48, 64)).save(path, format="PNG")
    return path


def _with_cover(path: Path, video: Callable[[Path], Path] | None) -> Path:
    """Audio (and `video`'s video, if given) with a cover picture: an MJPEG stream marked as
    an attached picture, one packet, as music files and some downloads carry one."""
    import io

    from PIL import Image

    jpeg = io.BytesIO()
    Image.new("RGB", (64, 48), (0, 0, 255)).save(jpeg, "JPEG")
    parts = path.parent / f".{path.stem} parts"  # removed: only `path` is left in the folder
    parts.mkdir()
    tone = audio_only(parts)
    if video is not None:
        video = video(parts)
    with av.open(str(path), "w") as out:
        cover = out.add_stream("mjpeg", rate=1)
        cover.width, cover.height, cover.pix_fmt = 64, 48, "yuvj420p"
        cover.disposition = av.stream.Disposition.attached_pic
        sources = [av.open(str(tone))] + ([av.open(str(video))] if video else [])
        copies = {(k, s.index): out.add_stream_from_template(s)
                  for k, c in enumerate(sources) for s in c.streams}
        packet = av.Packet(jpeg.getvalue())
        packet.stream, packet.pts, packet.dts, packet.time_base = cover, 0, 0, Fraction(1, 1)
        out.mux(packet)
        for k, c in enumerate(sources):
            for packet in c.demux():
                if packet.size:
                    packet.stream = copies[(k, packet.stream.index)]
                    out.mux(packet)
            c.close()
    shutil.rmtree(parts)
    return path


def audio_with_cover(d: Path) -> Path:
    return _with_cover(d / "audio with cover.mp4", None)


def video_with_cover(d: Path) -> Path:
    """PATTERN's video with a blue cover picture (classifying the cover gives all blue)."""
    return _with_cover(d / "video with cover.mp4", lambda p: plain(p / "plain.mp4", PATTERN))


def short(d: Path) -> Path:
    """0.4 s of video: one sample."""
    frames, _ = colour_frames(["blue"], 10, (64, 48))
    return encode_frames(d / "short.mp4", frames[:4], [0, 100, 200, 300])


def variable_frame_rate(d: Path) -> Path:
    """Irregular frame times; frame k is on screen until frame k+1."""
    times = [0, 100, 150, 700, 1000, 1900, 2050, 2990, 3000, 3500, 3900]
    colours = ["red", "red", "red", "red", "blue", "blue", "green", "green", "gray", "gray",
               "gray"]
    frames = [solid(COLOURS[c]) for c in colours]
    return encode_frames(d / "vfr.mp4", frames, times, gop=3)


# Seconds of `variable_frame_rate`: the picture on screen at t = 0, 1, 2, 3 s.
VFR_LABELS = ["red", "blue", "blue", "gray"]


def rotated(d: Path) -> Path:
    return plain(d / "rotated.mp4", rotation=90)


def odd_size(d: Path) -> Path:
    """641x359: H.264 in 4:2:0 cannot hold odd sizes, FFV1 can (chroma rounded up)."""
    return plain(d / "odd 641x359.mkv", fps=2, size=(641, 359), codec="ffv1")


def tiny(d: Path) -> Path:
    return plain(d / "tiny.mp4", size=(16, 16))


def four_k(d: Path) -> Path:
    """3840x2160, two frames (the whole video lasts 1 s)."""
    frames, _ = colour_frames(["green"], 2, (3840, 2160))
    return encode_frames(d / "4k.mp4", frames, [0, 500], gop=2,
                         options={"preset": "ultrafast"})


def ten_bit_h264(d: Path) -> Path:
    return plain(d / "10bit.h264.mp4", pix_fmt="yuv420p10le")


def ten_bit_hevc(d: Path) -> Path:
    return plain(d / "10bit.hevc.mp4", codec="libx265", pix_fmt="yuv420p10le",
                 options={"x265-params": "log-level=error:keyint=5"})


def interlaced(d: Path) -> Path:
    """Interlaced H.264 (field-coded, top field first)."""
    return plain(d / "interlaced.mp4", size=(64, 48),
                 options={"flags": "+ildct+ilme", "x264-params": "tff=1"})


# Names a shell would misread, a line break, unicode, a leading dash, and rich markup.
AWKWARD_NAMES = [
    "with spaces.mp4",
    "it's \"quoted\".mp4",
    "$(touch pwned) `x`.mp4",
    "line\nbreak.mp4",
    "ünïcødé 視頻.mp4",
    "-leading-dash.mp4",
    "[red]not markup.mp4",
]


def awkward_names(d: Path) -> list[Path]:
    src = plain(d / "src.mp4")
    data = src.read_bytes()
    src.unlink()
    paths = []
    for name in AWKWARD_NAMES:
        p = d / name
        p.write_bytes(data)
        paths.append(p)
    return paths


def growing_ts(d: Path, pattern: Sequence[str] = ("red",) * 3 + ("blue",) * 3
               ) -> tuple[Path, bytes]:
    """A complete MPEG-TS recording and its bytes: tests write a prefix of them and append
    the rest later, as a recorder writing the file would."""
    path = plain(d / "growing.ts", pattern)
    return path, path.read_bytes()


# name -> maker, for the single-file catalogue (awkward names and growth have their own tests)
MAKERS: dict[str, Callable[[Path], Path]] = {
    "zero-byte": zero_byte,
    "random-bytes": random_bytes,
    "truncated-mp4": truncated_mp4,
    "truncated-mkv": truncated_mkv,
    "corrupt-middle": corrupt_middle,
    "audio-only": audio_only,
    "still-image": still_image,
    "audio-with-cover": audio_with_cover,
    "video-with-cover": video_with_cover,
    "short": short,
    "vfr": variable_frame_rate,
    "rotated": rotated,
    "odd-size": odd_size,
    "tiny": tiny,
    "4k": four_k,
    "10bit-h264": ten_bit_h264,
    "10bit-hevc": ten_bit_hevc,
    "interlaced": interlaced,
}
