"""Decoding and sampling on the CPU with PyAV (FFmpeg's libraries).

Sampling rule, shared with the NVDEC twin: sample i stands for time t_i = i / rate after the
video stream's start, for every i with t_i < duration, and is the picture on screen at t_i,
i.e. the last frame (in presentation order) whose timestamp is <= t_i; before the first frame,
the first frame. Timestamps are used throughout, never frame counts, so variable frame rate
just works.

Modes:
- `exact`: decode every frame, keep the one on screen at each sample time (non-reference
  pictures on screen at no sample time are skipped; with an intra-only codec, every picture
  on screen at none).
- `keyframes`: decode keyframes only (the decoder skips the rest); each keyframe is held for
  every sample time until the next keyframe (`Sample.hold`). A keyframe held for no sample time
  is not decoded; an open-GOP keyframe is decoded anew, as after a seek.
"""

from __future__ import annotations

import math
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from stat import S_ISREG
from typing import Any, Literal

import numpy as np

from milesdeep.errors import MilesDeepError
from milesdeep.pipeline.frames import Colour, Frame, Sample

SamplingMode = Literal["exact", "keyframes"]

# FFmpeg's AVColorSpace values we map; anything else is treated as unspecified.
_BT709 = {1}
_BT601 = {5, 6}


# Extensions of the video containers FFmpeg reads that a video library holds. A file given by
# name is taken whatever its extension; a directory contributes only these.
VIDEO_EXTENSIONS = frozenset({
    ".3g2", ".3gp", ".asf", ".avi", ".divx", ".dv", ".f4v", ".flv", ".h264", ".h265",
    ".hevc", ".m2t", ".m2ts", ".m2v", ".m4v", ".mkv", ".mov", ".mp4", ".mpeg", ".mpg", ".mts",
    ".mxf", ".nut", ".ogv", ".qt", ".rm", ".rmvb", ".ts", ".vob", ".webm", ".wmv", ".y4m",
})


def is_video_name(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTENSIONS


@dataclass
class VideoInfo:
    path: Path
    width: int
    height: int
    duration: float  # seconds, as reported by the container (0 if unknown)
    codec: str
    fps: float
    rotation: int  # clockwise degrees to display upright
    start: float  # the stream's start time in seconds (sample times are relative to it)
    has_audio: bool
    keyframe_times: list[float] = field(default_factory=list)
    start_known: bool = True  # False: no timestamp told it, and `start` is 0


@dataclass
class DecodeStats:
    frames_decoded: int = 0
    decode_errors: int = 0
    # where the file's pictures end, relative to the stream start: the last decoded frame's end,
    # or a later packet's that no slot needed decoded (a truncated file ends early)
    end_time: float = 0.0
    exact_from: float | None = None  # keyframes + exact_tail: exact from this time (s) on
    keyframes_skipped: int = 0  # keyframes: keyframes held for no slot, never decoded
    # keyframes: times (s) of packets marked as keyframes that cannot be decoded alone
    # (`keyframe_decodable`: intra-refresh recovery points), taken as other pictures
    unusable_keyframes: list[float] = field(default_factory=list)
    # keyframes: keyframe time (s, rounded to 1e-6) -> time the next picture comes on screen;
    # the slots before it show the keyframe itself (so adaptive sampling has them exactly)
    shown_until: dict[float, float] = field(default_factory=dict)


def sample_count(duration: float, rate: float) -> int:
    """Number of samples for a video of `duration` seconds: every i with i / rate < duration."""
    if duration <= 0:
        return 0
    return max(1, math.ceil(duration * rate - 1e-6))


def open_video(path: Path, probed: bool = False):  # -> av.container.InputContainer
    """Open a video for reading, with one clear error for each way that fails.

    `probed`: skip the decoding FFmpeg's stream probe does (about 40 ms of CPU for a 1080p
    H.264 file, paid on every open) when the header already says what we need or an earlier
    open told us; frames decoded afterwards are the same."""
    import av

    path = Path(path)
    if not path.exists():
        raise MilesDeepError("no such file", path)
    if path.is_dir():
        raise MilesDeepError("is a directory, not a video", path)
    if not path.is_file():  # opening a FIFO would wait for a writer forever
        raise MilesDeepError("not a regular file (a pipe or a device?)", path)
    try:
        if path.stat().st_size == 0:
            raise MilesDeepError("the file is empty (0 bytes)", path)
        # skip_frame reaches only the decoders the probe opens, not the stream's own.
        options = {"skip_frame": "all"} if probed else None
        container = av.open(str(path), mode="r", metadata_errors="ignore", options=options)
    except MilesDeepError:
        raise
    except PermissionError:
        raise MilesDeepError("cannot read the file: permission denied", path) from None
    except (av.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise MilesDeepError(
            f"not a video FFmpeg can read ({getattr(e, 'strerror', None) or type(e).__name__})",
            path,
        ) from None
    if main_video(container) is None:
        container.close()
        raise MilesDeepError("has no video stream (audio only, or only a cover picture?)",
                             path)
    # FFmpeg reads a PNG or JPEG as a one-picture "video" (its image demuxers): it has no
    # seconds to classify or cut.
    if container.format.name == "image2" or container.format.name.endswith("_pipe"):
        container.close()
        raise MilesDeepError("is a still image, not a video", path)
    return container


def main_video(container: Any) -> Any:  # InputContainer -> VideoStream | None
    """The video stream every stage reads: the first that is not a cover picture (an
    attached picture is one image, shown for a whole audio file or beside the video)."""
    import av

    for s in container.streams.video:
        if not (s.disposition & av.stream.Disposition.attached_pic):
            return s
    return None


def _seconds(value: int | None, time_base: Fraction | None) -> float | None:
    if value is None or time_base is None:
        return None
    return float(value * time_base)


def probe(path: Path) -> VideoInfo:
    """Open the video, read its stream information, and close it.

    The container's header says all `VideoInfo` holds for most files (MP4, Matroska), so the
    first try skips the pictures FFmpeg's probe would decode; a stream whose size only
    decoding tells (MPEG-TS, raw H.264), is probed again in full. Where the header leaves the
    start unknown (Matroska), the first packets' times tell it (as a full probe finds it):
    a start taken as 0 there made every cut of a file that starts late land that much off.

    A run asks this of each file several times (the sampler, the cutter, the batch's checks):
    it is read once while the file stays the same (path, size, modification time)."""
    path = Path(path)
    try:
        st = path.stat()
        key = (os.path.realpath(path), st.st_size, st.st_mtime_ns) \
            if S_ISREG(st.st_mode) else None
    except OSError:  # open_video says what is wrong
        key = None
    if key in _PROBED:
        return replace(_PROBED[key], path=path)
    for probed in (True, False):
        container = open_video(path, probed=probed)
        try:
            info = _info(path, container)
        finally:
            container.close()
        if info.width > 0 and info.height > 0 and info.codec and info.start_known:
            break
    if key is not None:
        if len(_PROBED) >= 256:
            _PROBED.pop(next(iter(_PROBED)))
        _PROBED[key] = replace(info)
    return info


_PROBED: dict[tuple[str, int, int], VideoInfo] = {}  # `probe`'s answers, oldest first


def _first_times(container, vs, packets: int = 64) -> tuple[int | None, int | None]:
    """The smallest presentation time among the stream's first packets (read, not decoded),
    its start, reordered pictures included; and the smallest of their presentation and decode
    times. (None, None) if there are none."""
    import av

    try:
        seen = [(p.pts, p.pts if p.dts is None else min(p.pts, p.dts))
                for p, _ in zip(container.demux(vs), range(packets))
                if p.pts is not None and p.size]
    except (av.FFmpegError, OSError):
        return None, None
    if not seen:
        return None, None
    return min(t for t, _ in seen), min(t for _, t in seen)


def _lent(container, vs, value: int | None, file_value: int | None) -> bool:
    """Might the stream's start or duration (`value`, in its time base) be the file's
    (`file_value`, microseconds), lent to it? FFmpeg gives a stream whose start or length it
    did not find (H.264 in Matroska or NUT opened without decoding, any Matroska stream's
    length) the file's: the earliest start of any stream, an audio track's 0 where the video
    starts at 0.48 s; the end of the one that ends last. The stream's own packets tell."""
    if value is None or file_value is None or len(container.streams) < 2:
        return False
    # Within a tick: the file's microseconds rounded to the stream's time base.
    tick = max(float(vs.time_base), 1e-6)
    return abs(float(value * vs.time_base) - file_value / 1_000_000) <= tick + 1e-6


def _info(path: Path, container) -> VideoInfo:
    vs = main_video(container)
    cc = vs.codec_context
    first = vs.start_time
    if first is None or _lent(container, vs, first, container.start_time):
        pts, earliest = _first_times(container, vs)
        # A lent start is the stream's own if any of its packets reaches back to it: an MP4
        # edit list leaves pictures before the start with earlier times (decoded only as
        # references), an AVI counts its first picture's decode time as 0.
        if first is None or (earliest is not None and earliest > first):
            first = pts
    start = _seconds(first, vs.time_base) or 0.0
    own = None if _lent(container, vs, vs.duration, container.duration) else vs.duration
    duration = _seconds(own, vs.time_base)
    if not duration and container.duration:
        duration = container.duration / 1_000_000 - max(
            0.0, start - (container.start_time or 0) / 1_000_000
        )
    if (not own and len(container.streams) > 1) or (
            start > 0 and container.format.name.startswith("matroska")):
        # Without a length of its own (Matroska, NUT, FLV) the video has the file's: the end
        # of whichever stream ends last (audio often runs on). And a Matroska file that starts
        # late says nothing sure: FFmpeg writes the end time as its Duration, mkvmerge the
        # length. The last packets tell.
        end = _video_end(container, vs, start + (duration or 0.0))
        if end is not None and end > start:
            duration = end - start
    rate = vs.average_rate or vs.guessed_rate or vs.base_rate
    rotation = 0
    try:
        dm = vs.metadata.get("rotate")
        if dm is not None:
            rotation = int(dm) % 360
    except (TypeError, ValueError):
        rotation = 0
    return VideoInfo(
        path=path,
        width=int(cc.width),
        height=int(cc.height),
        duration=float(duration or 0.0),
        codec=cc.name,
        fps=float(rate) if rate else 0.0,
        rotation=rotation,
        start=start,
        has_audio=bool(container.streams.audio),
        start_known=first is not None,
    )


def _video_end(container, vs, latest: float) -> float | None:
    """When the video stream's last packet ends (seconds, on the file's own clock), read from
    the last keyframe before `latest` seconds on; None if the file cannot be read that way."""
    import av

    rate = vs.average_rate or vs.guessed_rate
    # A seek past the last video keyframe can land at the end of the file (FLV without an
    # index): then from 1, 2, 4 ... seconds earlier.
    for at in seek_steps(int(latest * 1_000_000), Fraction(1, 1_000_000)):
        try:
            seek_to(container, None, at)  # no stream: microseconds
            end = None
            for p in container.demux(vs):
                if p.pts is None or not p.size:
                    continue
                step = p.duration or (round(1 / (rate * vs.time_base)) if rate else 0)
                end = max(end or 0.0, float((p.pts + step) * vs.time_base))
        except (av.FFmpegError, OSError, ZeroDivisionError):
            return None
        if end is not None:
            return end
    return None


def _colour(frame) -> Colour:
    cs = int(frame.colorspace or 2)
    if cs in _BT709:
        matrix = "bt709"
    elif cs in _BT601:
        matrix = "bt601"
    else:  # unspecified: what players assume
        matrix = "bt709" if frame.height >= 720 else "bt601"
    full = int(frame.color_range or 0) == 2 or frame.format.name.startswith("yuvj")
    return Colour(matrix=matrix, full_range=full)  # type: ignore[arg-type]


def _plane(frame, i: int, h: int, w: int, dtype: type, channels: int = 1) -> np.ndarray:
    p = frame.planes[i]
    itemsize = np.dtype(dtype).itemsize
    a = np.frombuffer(p, dtype=dtype).reshape(-1, p.line_size // itemsize)[:h]
    return a[:, : w * channels]


_NATIVE8 = {"yuv420p", "yuvj420p", "nv12"}
_NATIVE16 = {"yuv420p10le": 6, "yuv420p12le": 4, "p010le": 0, "p016le": 0}


def seek_steps(target: int, time_base: Fraction) -> Iterator[int | None]:
    """Where to seek, in turn, for the keyframe at or before `target` (in `time_base` units):
    `target`, then 1, 2, 4 ... seconds before it, and last None: the file's start. A seek in a
    file without an index (MPEG-TS) lands near the time by decode order, maybe past that
    keyframe; the caller checks what it reads and takes the next step if it overshot."""
    back = 0.0
    while True:
        at = target - int(back / time_base)
        if at <= 0:
            yield None
            return
        yield at
        back = max(1.0, 2 * back)


def seek_to(container, stream, at: int | None) -> None:
    """Seek `container` to the keyframe at or before `at` in `stream`, or (None) to the start."""
    if at is None:
        container.seek(0)
    else:
        container.seek(at, stream=stream, backward=True)


def frame_from_av(frame) -> Frame:
    """An av.VideoFrame as an NV12 (or P016) `Frame`, converting other pixel formats with
    swscale (4:2:2, 4:4:4, RGB, gray and friends become 4:2:0)."""
    colour = _colour(frame)
    rotation = (-int(frame.rotation or 0)) % 360
    fmt = frame.format.name
    if fmt not in _NATIVE8 and fmt not in _NATIVE16:
        deep = any(c.bits > 8 for c in frame.format.components)
        frame = frame.reformat(format="p010le" if deep else "yuv420p")
        fmt = frame.format.name
    w, h = frame.width, frame.height
    cw, ch = (w + 1) // 2, (h + 1) // 2
    if fmt in _NATIVE8:
        y = _plane(frame, 0, h, w, np.uint8).copy()
        if fmt == "nv12":
            uv = _plane(frame, 1, ch, cw, np.uint8, 2).reshape(ch, cw, 2).copy()
        else:
            uv = np.stack([_plane(frame, 1, ch, cw, np.uint8),
                           _plane(frame, 2, ch, cw, np.uint8)], axis=-1)
    else:
        shift = _NATIVE16[fmt]  # P016 convention: the value sits in the high bits
        y = _plane(frame, 0, h, w, np.uint16) << shift
        if fmt.startswith("p01"):
            uv = (_plane(frame, 1, ch, cw, np.uint16, 2).reshape(ch, cw, 2) << shift).copy()
        else:
            uv = np.stack([_plane(frame, 1, ch, cw, np.uint16),
                           _plane(frame, 2, ch, cw, np.uint16)], axis=-1) << shift
        y = np.ascontiguousarray(y)
    return Frame(y=y, uv=uv, colour=colour, rotation=rotation)


def mark_needed(packets: Iterable, time_base: Fraction, start: float, rate: float,
                first: int = 0, stop: int | None = None, lookahead: int = 16,
                until_last: bool = False) -> Iterator[tuple[Any, bool]]:
    """(packet, needed) in decode order: needed is False when the packet's picture is on screen
    at none of the sample slots [first, stop) — the next picture in presentation order comes
    before the next slot time. The decoder may then skip it if no other picture refers to it
    (`skip_frame = NONREF`): reference pictures are decoded regardless, so every picture that
    is kept decodes to exactly the same pixels.

    Presentation order is reordered decode order, so each packet waits until `lookahead` more
    have been read; a later picture missed by the window only makes a packet look needed.
    A packet with no timestamp is always needed.

    `until_last`: end after the last packet whose picture can be on screen at a slot before
    `stop` (the window after it holds only later pictures). Its caller then drains the decoder
    instead of decoding the pictures a decoder's reorder delay would otherwise ask for (two or
    three reference pictures per stretch of adaptive sampling)."""
    pending: deque = deque()
    seen: deque = deque(maxlen=4 * lookahead)  # times of packets already handed out
    end = math.inf if stop is None else stop
    last = (end - 1) / rate + 1e-9 if until_last else math.inf  # the last slot's time

    def past(t: float | None) -> bool:
        return t is not None and t > last

    def decide(packet, t: float | None) -> bool:
        if t is None:
            return True
        nxt = min((x for x in seen if x > t + 1e-9), default=math.inf)
        nxt = min(nxt, min((x for _, x in pending if x is not None and x > t + 1e-9),
                           default=math.inf))
        k = max(first, math.ceil(t * rate - 1e-9))  # the first slot at or after t
        return k < end and k / rate < nxt - 1e-9

    for packet in packets:
        t = None if packet.pts is None else float(packet.pts * time_base) - start
        pending.append((packet, t))
        if len(pending) > lookahead:
            p, pt = pending.popleft()
            if past(pt) and all(past(x) for _, x in pending):
                return
            yield p, decide(p, pt)
            if pt is not None:
                seen.append(pt)
    while pending:
        p, pt = pending.popleft()
        if past(pt) and all(past(x) for _, x in pending):
            return
        yield p, decide(p, pt)
        if pt is not None:
            seen.append(pt)


# Decoders that apply skip_frame to each packet as it is decoded: FFmpeg's own (frame threads
# copy it as each packet is handed over). Others are never asked to skip: libdav1d (AV1) reads
# it once, when it opens, and a stretch whose first packet was skippable lost every
# non-reference picture after it, those of the slots too.
SKIPS_PER_PACKET = frozenset({"h264", "hevc", "mpeg1video", "mpeg2video", "mpeg4", "h263",
                              "vp8", "vp9", "vc1", "wmv3"})

def skip_switch(cc: Any) -> Callable[[bool], None]:
    """A function to call before decoding each packet, with whether a slot shows its picture
    (`mark_needed`): the decoder skips non-reference pictures no slot shows (skip_frame
    NONREF) where it applies that per packet (SKIPS_PER_PACKET). It switches only when the
    answer changes: frame threads copy the setting as each packet is handed over."""
    skipping = False
    can_skip = cc.name in SKIPS_PER_PACKET

    def switch(needed: bool) -> None:
        nonlocal skipping
        if can_skip and needed == skipping:
            skipping = not needed
            cc.skip_frame = "NONREF" if skipping else "DEFAULT"

    return switch


# exact_tail holds the packets after the latest keyframe in memory until the next one (or the
# end); past this many bytes it gives up on that GOP, so memory does not grow with GOP length.
TAIL_BYTES = 64 << 20

# NAL unit types of pictures that reset the picture order count (and, in H.264, frame_num):
# H.264 IDR; HEVC IDR and BLA. A keyframe of another kind (an H.264 recovery point, an HEVC
# CRA: open GOPs) continues the count from the pictures before it.
_RESETS = {"h264": frozenset({5}), "hevc": frozenset({16, 17, 18, 19, 20})}
_VCL = {"h264": range(1, 6), "hevc": range(0, 32)}


def _nal_units(codec: str, extradata: bytes | None) -> Callable[[Any], Iterator[bytes]]:
    """A function giving the NAL units of one H.264 / HEVC packet (each from its header byte,
    a few bytes of it: enough for the header and the start of a slice header)."""
    # MP4 and Matroska carry length-prefixed NAL units (avcC / hvcC extradata says how long
    # the prefix is); MPEG-TS and raw streams carry start codes.
    size = None
    if extradata and len(extradata) > 21 and extradata[0] == 1:
        size = (extradata[4 if codec == "h264" else 21] & 3) + 1

    def units(data) -> Iterator[bytes]:
        if size is not None:  # (a memoryview: the picture's bytes need not be copied)
            i = 0
            while i + size < len(data):
                n = int.from_bytes(data[i:i + size], "big")
                yield bytes(data[i + size:i + size + min(n, 16)])
                i += size + n
            return
        data = bytes(data)
        i = data.find(b"\x00\x00\x01")
        while 0 <= i < len(data) - 3:
            yield data[i + 3:i + 19]
            i = data.find(b"\x00\x00\x01", i + 3)

    return units


def _first_vcl(codec: str, extradata: bytes | None) -> Callable[[Any], tuple[int, bytes] | None]:
    """A function giving a packet's first picture NAL unit: (its type, its bytes), or None."""
    units, vcl = _nal_units(codec, extradata), _VCL[codec]

    def first(data) -> tuple[int, bytes] | None:
        for unit in units(data):
            t = unit[0] & 0x1F if codec == "h264" else (unit[0] >> 1) & 0x3F
            if t in vcl:
                return t, unit
        return None

    return first


def keyframe_resets(codec: str, extradata: bytes | None) -> Any:
    """A function telling, from a keyframe packet's bytes, whether that picture resets the
    picture order count (True), or not (False: it is a valid start only after a flush), or
    None when this codec has no such count or the packet cannot be read."""
    if codec not in _RESETS:
        return lambda data: None
    resets, first = _RESETS[codec], _first_vcl(codec, extradata)

    def check(data) -> bool | None:
        unit = first(data)
        return None if unit is None else unit[0] in resets

    return check


def _h264_intra(unit: bytes) -> bool | None:
    """Is this H.264 slice an I (or SI) slice? Its header starts with first_mb_in_slice and
    slice_type, two Exp-Golomb numbers; None if they cannot be read."""
    raw = unit[1:].replace(b"\x00\x00\x03", b"\x00\x00")  # emulation prevention bytes
    bits = "".join(f"{b:08b}" for b in raw)
    pos = 0
    value = None
    for _ in range(2):
        zeros = bits.find("1", pos) - pos
        if zeros < 0 or pos + 2 * zeros + 1 > len(bits):
            return None
        value = int(bits[pos + zeros:pos + 2 * zeros + 1], 2) - 1
        pos += 2 * zeros + 1
    return value % 5 in (2, 4)


def keyframe_decodable(codec: str, extradata: bytes | None) -> Any:
    """A function telling, from a packet the demuxer marks as a keyframe, whether decoding can
    start there and give that very picture (True), or not (False), or None if unknown.
    A periodic intra refresh (x264 --intra-refresh) marks recovery points as keyframes: P
    pictures whose picture is whole only after many more have been decoded. Decoded alone
    after a flush they give nothing; a decoder started there shows pictures only later."""
    if codec not in _RESETS:
        return lambda data: None
    first = _first_vcl(codec, extradata)

    def check(data) -> bool | None:
        unit = first(data)
        if unit is None:
            return None
        t, nal = unit
        if codec == "hevc":
            return 16 <= t <= 23  # IRAP: IDR, CRA, BLA
        return True if t == 5 else _h264_intra(nal)

    return check


class PyAVSource:
    """Yields `Sample`s of one video, decoding on FFmpeg's own threads."""

    def __init__(self, path: Path, rate: float = 1.0, mode: SamplingMode = "exact",
                 threads: int = 0, skip_unseen: bool = True, exact_tail: bool = False,
                 partners: bool = False) -> None:
        if rate <= 0:
            raise MilesDeepError("--rate must be positive")
        if mode not in ("exact", "keyframes"):
            raise MilesDeepError(f"unknown sampling mode {mode!r}: use exact or keyframes")
        self.path = Path(path)
        self.rate = rate
        self.mode = mode
        self.threads = threads
        # exact: skip decoding non-reference pictures that are on screen at no sample time
        # (`mark_needed`); the samples are the same pictures, bit for bit.
        self.skip_unseen = skip_unseen
        # keyframes: once the last keyframe is decoded, decode the rest of the video after it
        # too, so that its slots are exact (`stats.exact_from`); adaptive sampling would
        # otherwise seek back and decode that keyframe again to refine them.
        self.exact_tail = exact_tail and mode == "keyframes"
        # keyframes: a keyframe held for no slot still comes as a sample holding none
        # (`hold` 0) when the keyframe before it holds a slot showing another picture:
        # adaptive sampling compares each keyframe with the next one to find class changes.
        self.partners = partners and mode == "keyframes"
        self.info = probe(self.path)
        self.stats = DecodeStats()
        self._seen_end = 0.0  # the end of the last packet demuxed, decoded or not
        # keyframes: the times (ticks) of the keyframe packets decoded. Some decoders never
        # mark a picture as a keyframe (qtrle), so a picture is one if it is marked or if its
        # time is one of these.
        self._key_pts: set[int] = set()

    @property
    def expected_samples(self) -> int:
        return sample_count(self.info.duration, self.rate)

    def _frames(self, container) -> Iterator:
        """Decoded frames in presentation order; corrupt packets are skipped and counted."""
        import av

        vs = main_video(container)
        cc = vs.codec_context
        cc.thread_type = "AUTO"
        cc.thread_count = self.threads
        tb, start, rate = vs.time_base, self.info.start, self.rate
        n = sample_count(self.info.duration, rate) if self.info.duration > 0 else None
        keyframes = self.mode == "keyframes"
        if keyframes and cc.name in SKIPS_PER_PACKET:
            cc.skip_frame = "NONKEY"
        packets: Iterator = ((p, True) for p in container.demux(vs))
        # Intra-only codecs (MJPEG, ProRes, DNxHD, ...): no picture refers to another, so one
        # shown at no slot is not even handed to the decoder.
        drop_unseen = False
        if not keyframes and self.skip_unseen:
            packets = mark_needed(container.demux(vs), tb, start, rate, 0, n)
            drop_unseen = bool(cc.codec.intra_only)
        skip = skip_switch(cc)
        flagged = False  # has the demuxer marked any packet as a keyframe?
        tail: list | None = []  # exact_tail: the packets after the latest keyframe, not yet
        # decoded; None once they outgrow TAIL_BYTES (a GOP that long is refined as others are)
        held = 0  # their bytes
        last_key = None  # that keyframe's pts
        # Keyframes: each keyframe packet waits until the next one shows whether keyframe
        # sampling gives it any slot; one that would be held for none is never decoded (with
        # keyframes closer together than the slots, or an intra-only stream, most are not).
        pending: tuple | None = None  # (packet, seconds)
        fed = False  # has a keyframe been decoded? The first one holds the slots before it.
        resets = keyframe_resets(cc.name, cc.extradata)
        alone = keyframe_decodable(cc.name, cc.extradata)
        fed_last = False  # was the latest keyframe decoded (so its tail can follow)?
        last_fed: float | None = None  # the time of the last keyframe decoded
        recent: list[float] = []  # the last two keyframes' times, for `stats.shown_until`
        eof = False  # the decoder said it has ended
        shown = self.stats.shown_until

        def seconds(packet) -> float | None:
            return None if packet.pts is None else float(packet.pts * tb) - start

        def decode(packet, needed: bool) -> Iterator | None:
            skip(needed)
            try:
                return packet.decode()
            except av.error.EOFError:
                return None
            except (av.error.InvalidDataError, ValueError, av.error.FFmpegError):
                self.stats.decode_errors += 1
                return iter(())

        def pictures(frames) -> Iterator:
            for f in frames:
                if f.pts is None or (keyframes and not self._is_key(f)):
                    continue
                self.stats.frames_decoded += 1
                yield f

        def slot_between(t: float, t_next: float) -> bool:
            """Is there a slot at or after t and before t_next?"""
            i = max(0, math.ceil(t * rate - 1e-9))  # the first slot at or after t
            return (n is None or i < n) and i / rate < t_next - 1e-9

        def holds_a_slot(t: float | None, t_next: float) -> bool:
            """Would keyframe sampling hold the keyframe at t for a slot before t_next?"""
            return t is None or not fed or t_next <= t + 1e-9 or slot_between(t, t_next)

        def holds_another(t_key: float | None, t_next: float) -> bool:
            """Does the keyframe at t_key hold a slot before t_next that shows another picture
            than itself (one at or after `shown_until`)?"""
            return t_key is None or slot_between(
                max(t_key, shown.get(round(t_key, 6), t_key)), t_next)

        def release(t_next: float, following=None) -> Iterator:
            """The pending keyframe's frames, or nothing if no slot needs it; `following`: the
            next keyframe packet (None at the end). Sets `eof` if the decoder ended."""
            nonlocal pending, fed, fed_last, eof, last_fed
            packet, t = pending  # type: ignore[misc]
            pending = None
            fed_last = holds_a_slot(t, t_next) or (self.partners and t is not None and (
                last_fed is not None and holds_another(last_fed, t)))
            if not fed_last:
                self.stats.keyframes_skipped += 1
                if t is not None:  # (an all-intra stream would keep one entry a picture)
                    shown.pop(round(t, 6), None)
                return
            fresh = resets(memoryview(packet)) is False
            if not cc.is_open and following is not None and (
                    resets(memoryview(following)) is False):
                # Open GOPs ahead: every keyframe will be decoded on its own, so frame
                # threads could only add latency; slices still share out each picture.
                cc.thread_type = "SLICE"
            if fresh and fed:
                # An open-GOP keyframe continues the picture order count of the pictures
                # before it, which keyframe sampling never decodes: fed straight after the
                # previous keyframe, the decoder would reorder or drop pictures. So, as a seek
                # does: take what the decoder holds, flush it, and start anew here.
                try:
                    yield from cc.decode(None)
                except (av.error.EOFError, av.error.FFmpegError):
                    pass
                cc.flush_buffers()
            fed = True
            last_fed = t
            if packet.pts is not None:
                self._key_pts.add(packet.pts)
            frames = decode(packet, True)
            if frames is None:
                eof = True
                return
            yield from frames

        def note(t: float | None, key: bool) -> None:
            """`stats.shown_until`: when the next picture after each keyframe comes on screen
            (a missing timestamp could be anywhere: only the keyframe's own time is sure)."""
            for k in recent:
                v = k if t is None else t
                if (v > k + 1e-9 or t is None) and round(k, 6) in shown:
                    shown[round(k, 6)] = min(shown[round(k, 6)], v)
            if key:
                recent[:] = [] if t is None else recent[-1:] + [t]
                if t is not None:
                    shown.setdefault(round(t, 6), math.inf)

        def finish() -> Iterator:
            """The end: the pending keyframe, then its tail (exact_tail) or the drained decoder."""
            if pending is not None:
                yield from pictures(release(math.inf))
                if eof:
                    return
                if fed_last and self.exact_tail and tail is not None:
                    yield from self._tail(container, tail, last_key, decode)
                    return
            try:
                yield from pictures(cc.decode(None))
            except (av.error.EOFError, av.error.FFmpegError):
                return

        try:
            for packet, needed in packets:
                if packet.size and packet.pts is not None:
                    self._seen_end = max(self._seen_end, float(
                        (packet.pts + (packet.duration or 0)) * tb) - start)
                if keyframes and packet.size:
                    # Keyframes only: the decoder never even parses the others. Until one
                    # packet is marked (some streams carry no flags), the decoder's own
                    # NONKEY skipping decides.
                    t = seconds(packet)
                    key = packet.is_keyframe
                    if key and alone(memoryview(packet)) is False:
                        key = False
                        if t is not None:
                            self.stats.unusable_keyframes.append(t)
                    if key:
                        flagged = True
                        note(t, True)
                        if pending is not None:
                            yield from pictures(release(math.inf if t is None else t, packet))
                            if eof:
                                return
                        pending = (packet, t)
                        tail, held, last_key = [], 0, packet.pts
                        continue
                    if flagged:
                        note(t, False)
                        if self.exact_tail and tail is not None:
                            tail.append(packet)
                            held += packet.size
                            if held > TAIL_BYTES:
                                tail = None
                        continue
                if not packet.size and pending is not None:
                    yield from finish()
                    return
                if drop_unseen and not needed and packet.size:
                    continue
                frames = decode(packet, needed)
                if frames is None:
                    break
                yield from pictures(frames)
            else:
                if pending is not None:  # no end-of-stream packet came
                    yield from finish()
        except av.error.FFmpegError:
            # A truncated or damaged tail ends demuxing; what was decoded stands, and the
            # keyframe still waiting is decoded too.
            self.stats.decode_errors += 1
            if pending is not None:
                tail = None
                yield from finish()

    def _tail(self, container, tail: list, last_key: int, decode) -> Iterator:
        """Every picture after the last keyframe (which the decoder holds), in presentation
        order, then the decoder drained: the last keyframe's slots become exact."""
        import av

        vs = main_video(container)
        tb, start = vs.time_base, self.info.start
        vs.codec_context.skip_frame = "DEFAULT"  # `decode` only switches to NONREF and back
        t_key = float(last_key * tb) - start
        n = sample_count(self.info.duration, self.rate) if self.info.duration > 0 else None
        first = max(0, math.ceil(t_key * self.rate - 1e-9))
        wanted = later = 0  # packets of pictures some slot shows; pictures after the keyframe

        def after(frames) -> Iterator:
            nonlocal later
            for f in self._after(frames, last_key):
                later += f.pts > last_key
                yield f

        for packet, needed in mark_needed(tail, tb, start, self.rate, first, n,
                                          until_last=True):
            wanted += needed and packet.size > 0 and packet.pts is not None and (
                packet.pts > last_key)
            frames = decode(packet, needed)
            if frames is None:
                break
            yield from after(frames)
        else:
            try:
                yield from after(vs.codec_context.decode(None))
            except (av.error.EOFError, av.error.FFmpegError):
                # A damaged or truncated last packet: the pictures before it stand, and the
                # last one holds the slots after it, as `exact` has it.
                self.stats.decode_errors += 1
        # A decoder that reads skip_frame only when it opens (libdav1d, were it asked to
        # skip) would still skip every picture but keyframes: a tail that gave none is not
        # exact, and adaptive sampling refines it.
        if later or not wanted:
            self.stats.exact_from = t_key

    def _after(self, frames, last_key: int) -> Iterator:
        for f in frames:
            # Leading pictures of an open GOP come before its keyframe and refer to pictures
            # pass 1 never decoded (earlier keyframes the decoder still held are fine).
            if f.pts is None or (f.pts < last_key and not self._is_key(f)):
                continue
            self.stats.frames_decoded += 1
            yield f

    def __iter__(self) -> Iterator[Sample]:
        container = open_video(self.path, probed=True)
        try:
            yield from self._samples(container)
        finally:
            container.close()

    def _samples(self, container) -> Iterator[Sample]:
        vs = main_video(container)
        tb = vs.time_base
        start = self.info.start
        rate = self.rate
        duration = self.info.duration
        i = 0
        prev = None  # (frame, pts_seconds) on screen so far
        last_end = 0.0
        for f in self._frames(container):
            t = float(f.pts * tb) - start
            if prev is not None and t <= prev[1]:
                continue  # out-of-order or duplicate timestamp: keep the first
            dur = float(f.duration * tb) if f.duration else (1.0 / self.info.fps
                                                              if self.info.fps else 0.0)
            last_end = max(last_end, t + dur)
            # Slots before this frame's time belong to the previous frame (or, at the very
            # start, to this one).
            first = i
            while i / rate < t - 1e-9 and (duration <= 0 or i / rate < duration - 1e-9):
                i += 1
            if i > first:
                holder = prev if prev is not None else (f, t)
                yield from self._emit(holder, first, i)
            elif self.partners and prev is not None and self._is_key(prev[0]):
                yield from self._emit(prev, i, i)  # a keyframe holding no slot: hold 0
            prev = (f, t)
            if duration > 0 and t >= duration:
                break  # past the length known at open: a file still growing is read no further
        self.stats.end_time = max(last_end, self._seen_end)
        if prev is None:
            raise MilesDeepError("no picture could be decoded from the video stream", self.path)
        end = duration if duration > 0 else last_end
        n = sample_count(end, rate)
        if i < n:
            yield from self._emit(prev, i, n)
        elif self.partners and self._is_key(prev[0]) and n > 0:
            yield from self._emit(prev, i, i)  # the last keyframe, holding no slot

    def _is_key(self, frame) -> bool:
        return bool(frame.key_frame) or frame.pts in self._key_pts

    def _emit(self, holder, first: int, stop: int) -> Iterator[Sample]:
        frame, pts = holder
        converted = frame_from_av(frame)
        if self.mode == "keyframes":
            yield Sample(index=first, time=first / self.rate, pts=pts, frame=converted,
                         hold=stop - first)
            return
        for k in range(first, stop):
            yield Sample(index=k, time=k / self.rate, pts=pts, frame=converted)
