"""SMPTE start timecodes: read the source's, move it to where a cut starts.

FFmpeg reports a file's start timecode as a `timecode` metadata entry (on a MOV/MP4 `tmcd`
data stream, on the video stream of a Matroska file it wrote, or on the container for MXF),
and its MOV/MP4 muxer writes a `tmcd` track for a video stream that carries one. The arithmetic
is FFmpeg's (libavutil/timecode.c), so what we write reads back as FFmpeg would count it:
`fps` is the frame rate rounded, drop-frame (a `;` or `.` before the frames) only where fps is
a multiple of 30, the hours wrap at 24.
"""

from __future__ import annotations

import re
from fractions import Fraction

_TC = re.compile(r"^(\d{1,2}):(\d{2}):(\d{2})([:;.])(\d{2,3})$")


def source_timecode(container, video) -> str | None:  # noqa: ANN001  (av containers)
    """The start timecode FFmpeg found for `video` (an av stream of `container`), if any."""
    places = [video.metadata, *(s.metadata for s in container.streams if s.type == "data"),
              container.metadata]
    for meta in places:
        for key, value in meta.items():
            if key.lower() == "timecode" and _TC.match(value.strip()):
                return value.strip()
    return None


def _fps(rate: Fraction) -> int:
    return max(1, round(rate))


def _drop_frames(fps: int) -> int:
    return fps // 30 * 2 if fps % 30 == 0 else 0


def to_frames(tc: str, rate: Fraction) -> tuple[int, bool] | None:
    """(frame number, drop-frame) of a timecode at `rate`, or None if it is not one."""
    m = _TC.match(tc.strip())
    if m is None:
        return None
    hh, mm, ss, sep, ff = int(m[1]), int(m[2]), int(m[3]), m[4], int(m[5])
    fps = _fps(rate)
    drop = sep in ";." and _drop_frames(fps) > 0
    if mm > 59 or ss > 59 or ff >= fps:
        return None
    frames = (hh * 3600 + mm * 60 + ss) * fps + ff
    if drop:
        minutes = 60 * hh + mm
        frames -= _drop_frames(fps) * (minutes - minutes // 10)
    return frames, drop


def from_frames(frames: int, rate: Fraction, drop: bool) -> str:
    """The timecode of frame number `frames` (FFmpeg's av_timecode_make_string)."""
    fps = _fps(rate)
    d = _drop_frames(fps) if drop else 0
    if d:  # av_timecode_adjust_ntsc_framenum2: the frame numbers that drop-frame skips
        per10 = fps // 30 * 17982
        tens, rest = divmod(frames, per10)
        frames += 9 * d * tens + d * max(0, (rest - d) // (per10 // 10))
    ff = frames % fps
    ss = frames // fps % 60
    mm = frames // (fps * 60) % 60
    hh = frames // (fps * 3600) % 24
    width = 3 if fps > 100 else 2
    return f"{hh:02d}:{mm:02d}:{ss:02d}{';' if d else ':'}{ff:0{width}d}"


def shifted(tc: str, rate: Fraction, frames: int) -> str | None:
    """`tc` moved `frames` frames on, in its own drop-frame mode; None if `tc` is not one."""
    start = to_frames(tc, rate)
    if start is None:
        return None
    return from_frames(start[0] + frames, rate, start[1])
