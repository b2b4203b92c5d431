"""Stream-copy the kept time ranges of a video into one output (or one file per range).

Two passes over the source, both with PyAV (FFmpeg's libraries, no ffmpeg CLI):

1. `index_media` demuxes every packet once, without decoding, and records timestamps,
   durations and keyframe flags.
2. `plan_edit` works out, from the index alone, which packets go out and at what time:
   - video: each range starts at the keyframe at or before its planned start (or, with
     `precise`, at the exact frame, the partial GOPs being re-encoded by `smartcut`), and ends at
     the first point at or after its planned end where the packets copied so far hold exactly
     the frames before that point (B-frames make some ends undecodable); ranges that overlap
     after snapping are merged. Output times are continuous: range r is shifted so it starts
     where range r-1 ended. Decode timestamps are reassigned over the whole output (the i-th
     smallest pts minus the largest reorder delay), so they rise monotonically across splices.
   - audio: packets are laid end to end on an output clock; each range takes the packets whose
     source time lands nearest to the clock, so every packet is within half a packet (about
     11 ms for AAC at 48 kHz) of its place relative to the video, with no drift across ranges.
   - subtitles: the packets that start inside a range, shifted with it.
3. `write_edit` demuxes again and muxes the planned packets, writing through `atomic_path`,
   with the source's tags, its chapters mapped onto the output's timeline, and its start
   timecode moved to the output's first frame.

Planned times are seconds from the first video frame (what the classifier's sample times are).
"""

from __future__ import annotations

import bisect
import functools
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path

import av

from milesdeep.errors import MilesDeepError
from milesdeep.pipeline import smartcut
from milesdeep.pipeline.atomic import atomic_path
from milesdeep.pipeline.decode import (
    VIDEO_EXTENSIONS,
    keyframe_decodable,
    keyframe_resets,
    main_video,
    probe,
)
from milesdeep.pipeline.ranges import TimeRange, format_time
from milesdeep.pipeline.timecode import shifted, source_timecode

KINDS = ("video", "audio", "subtitle")


@dataclass
class StreamIndex:
    """Timestamps of one stream's packets, in demux order (decode order for video)."""

    index: int
    kind: str
    codec: str
    time_base: Fraction
    pts: list[int] = field(default_factory=list)
    dts: list[int | None] = field(default_factory=list)
    duration: list[int] = field(default_factory=list)
    key: list[bool] = field(default_factory=list)
    # video: keyframes decoding can start at and give that very picture (`keyframe_decodable`:
    # not an intra-refresh recovery point, whose picture is whole only frames later)
    whole: list[bool] = field(default_factory=list)
    # video: keyframes that start a new sequence (H.264 IDR): a stream copied on at one that
    # does not (an open-GOP I picture) after other pictures loses pictures in FFmpeg's decoder
    resets: list[bool] = field(default_factory=list)


@dataclass
class MediaIndex:
    path: Path
    video: StreamIndex
    others: list[StreamIndex]
    skipped: list[str]
    start: int  # the video stream's start (ticks; `decode.probe`): planned time 0
    end: int  # end of the last video frame (ticks)
    sorted_pts: list[int]
    suffix_min: list[int]  # suffix_min[i] = min video pts of packets i.. (end at len)
    key_pts: list[int]  # keyframe pts, sorted
    key_idx: list[int]  # their decode indices
    frame_rate: Fraction
    timecode: str | None = None  # the start timecode FFmpeg found (`timecode.source_timecode`)

    @property
    def duration(self) -> Fraction:
        return (self.end - self.start) * self.video.time_base

    def ticks(self, t: Fraction) -> Fraction:
        """Planned seconds -> video ticks (exact)."""
        return t / self.video.time_base + self.start

    def seconds(self, ticks: int) -> Fraction:
        return (ticks - self.start) * self.video.time_base


def _usable(packet: av.Packet) -> bool:
    return packet.size > 0 and packet.pts is not None


def _open(path: Path) -> av.container.InputContainer:
    try:
        return av.open(str(path))
    except (av.error.FFmpegError, OSError) as e:
        raise MilesDeepError(f"cannot read the video ({e})", path) from None


def _rewritten(container: av.container.InputContainer, s: av.stream.Stream,
               tc: str | None) -> bool:
    """A data stream the output gets anew from what is carried: a tmcd track (the moved
    timecode) or a MOV/MP4 chapter text track (FFmpeg reads the chapters from it, and marks
    it discarded; the chapters are carried)."""
    if s.type != "data":
        return False
    if tc is not None and s.metadata.get("timecode") == tc:
        return True
    return s.discard == av.stream.Discard.all and bool(container.chapters())


def index_media(path: Path) -> MediaIndex:
    """Scan every packet once (no decoding) and index the streams an edit carries."""
    path = Path(path)
    with _open(path) as c:
        video = main_video(c)
        if video is None:
            raise MilesDeepError("no video stream to cut", path)
        vindex = video.index
        frame_rate = video.average_rate or video.guessed_rate
        carried: dict[int, StreamIndex] = {}
        skipped: list[str] = []
        tc = source_timecode(c, video)
        for s in c.streams:
            if s is video or (s.type in ("audio", "subtitle")):
                codec = s.codec_context.name if s.codec_context else str(s.type)
                carried[s.index] = StreamIndex(s.index, s.type, codec, s.time_base)
            elif not _rewritten(c, s, tc):
                skipped.append(f"stream {s.index} ({s.type})")
        alone = keyframe_decodable(video.codec_context.name, video.codec_context.extradata)
        resets = keyframe_resets(video.codec_context.name, video.codec_context.extradata)
        try:
            for packet in c.demux([c.streams[i] for i in carried]):
                if not _usable(packet):
                    continue
                si = carried[packet.stream.index]
                si.pts.append(packet.pts)
                si.dts.append(packet.dts)
                si.duration.append(packet.duration or 0)
                si.key.append(packet.is_keyframe)
                if si.index == vindex:
                    si.whole.append(packet.is_keyframe
                                    and alone(memoryview(packet)) is not False)
                    si.resets.append(packet.is_keyframe
                                     and resets(memoryview(packet)) is not False)
        except av.error.FFmpegError as e:
            raise MilesDeepError(f"cannot read the video ({e})", path) from None
    v = carried.pop(vindex)
    if not v.pts or not any(v.key):
        raise MilesDeepError("the video stream has no frames or no keyframes", path)
    sorted_pts = sorted(v.pts)
    # Planned time 0 is the stream's start exactly as the classifier took it (`probe`):
    # usually the first picture, but not where the file says the stream starts earlier (an AVI
    # whose first frames are empty) or later (an MP4 whose edit list skips pictures decoded
    # only as references). Counted from anywhere else, every cut would land that much off.
    start = round(Fraction(probe(path).start) / v.time_base)
    last = v.pts.index(sorted_pts[-1])
    step = v.duration[last] or (sorted_pts[-1] - sorted_pts[-2] if len(sorted_pts) > 1 else 1)
    end = sorted_pts[-1] + step
    suffix = [end] * (len(v.pts) + 1)
    for i in range(len(v.pts) - 1, -1, -1):
        suffix[i] = min(v.pts[i], suffix[i + 1])
    keys = sorted((p, i) for i, (p, k) in enumerate(zip(v.pts, v.key)) if k)
    return MediaIndex(path, v, list(carried.values()), skipped, start, end,
                      sorted_pts, suffix, [p for p, _ in keys], [i for _, i in keys],
                      Fraction(frame_rate) if frame_rate else 1 / (step * v.time_base),
                      timecode=tc)


# --- planning ------------------------------------------------------------------------------


@dataclass
class CopyItem:
    """Copy video packets first..last (decode indices) whose pts >= low."""

    first: int
    last: int
    low: int
    offset: int  # added to source pts to get output pts (ticks)
    prepend_parameter_sets: bool = False


@dataclass
class EncodeItem:
    """Re-encode the frames with pts in `wanted`, decoding from the keyframe at keyframe_pts."""

    keyframe_pts: int
    wanted: list[int]
    stop: int | None  # first pts not wanted (None at the end of the stream)
    offset: int


@dataclass
class Span:
    """One output range: planned ranges (seconds) and what the output actually holds (ticks)."""

    planned: list[TimeRange]
    start: int
    end: int
    items: list[CopyItem | EncodeItem] = field(default_factory=list)


@dataclass
class RangeReport:
    planned: list[TimeRange]
    actual: TimeRange
    reencoded: Fraction  # seconds of video re-encoded in this range

    def describe(self) -> str:
        planned = ", ".join(str(r) for r in self.planned)
        note = f"  (re-encoded {float(self.reencoded):.2f}s)" if self.reencoded else ""
        return f"planned {planned} -> actual {self.actual}{note}"


@dataclass
class EditPlan:
    index: MediaIndex
    spans: list[Span]
    precise: bool
    notes: list[str]
    video_out: list[tuple[int, int]]  # (pts, dts) of every output video packet, in order
    others: dict[int, dict[int, list[int]]]  # stream -> packet index -> output pts (ticks)
    lead: int = 0  # ticks the output's video starts after its start (AVI: `plan_edit`)

    @property
    def duration(self) -> Fraction:
        return sum(((s.end - s.start) for s in self.spans), 0) * self.index.video.time_base

    def reports(self) -> list[RangeReport]:
        tb = self.index.video.time_base
        out = []
        for s in self.spans:
            enc = sum(len(i.wanted) for i in s.items if isinstance(i, EncodeItem))
            frame = Fraction(s.end - s.start, max(1, _frames_in(self.index, s.start, s.end)))
            out.append(RangeReport(s.planned, TimeRange(self.index.seconds(s.start),
                                                        self.index.seconds(s.end)),
                                   enc * frame * tb))
        return out


def _frames_in(index: MediaIndex, lo: int, hi: int) -> int:
    return bisect.bisect_left(index.sorted_pts, hi) - bisect.bisect_left(index.sorted_pts, lo)


def _next_pts(index: MediaIndex, t: Fraction) -> int:
    """The first frame pts at or after tick t (the stream end if none)."""
    i = bisect.bisect_left(index.sorted_pts, t)
    return index.sorted_pts[i] if i < len(index.sorted_pts) else index.end


def _key_position(index: MediaIndex, t: Fraction) -> int:
    """Place in `index.key_pts` of the last keyframe with pts <= t (the first if none)."""
    return max(bisect.bisect_right(index.key_pts, t) - 1, 0)


def _key_at_or_before(index: MediaIndex, t: Fraction) -> int:
    """Decode index of the last keyframe with pts <= t (the first keyframe if none)."""
    return index.key_idx[_key_position(index, t)]


def _key_after(index: MediaIndex, t: int) -> int | None:
    """Decode index of the first keyframe with pts > t, if any."""
    n = bisect.bisect_right(index.key_pts, t)
    return index.key_idx[n] if n < len(index.key_idx) else None


def _copy_end_at_least(index: MediaIndex, first: int, end: Fraction) -> tuple[int, int]:
    """The shortest clean decode prefix from `first` showing every frame before `end`:
    (last decode index, display end). Clean: the frames it holds are exactly those with pts in
    [pts[first], display end)."""
    v, suffix = index.video, index.suffix_min
    low, top = v.pts[first], -1
    for i in range(first, len(v.pts)):
        if v.pts[i] >= low:
            top = max(top, v.pts[i])
        if top < suffix[i + 1] and suffix[i + 1] >= end:
            return i, suffix[i + 1]
    return len(v.pts) - 1, index.end


def _copy_end_at_most(index: MediaIndex, first: int, end: int) -> tuple[int, int] | None:
    """The longest clean decode prefix from `first` that ends at or before `end`."""
    v, suffix = index.video, index.suffix_min
    low, top, best = v.pts[first], -1, None
    for i in range(first, len(v.pts)):
        if suffix[i + 1] > end:
            break
        if v.pts[i] >= low:
            top = max(top, v.pts[i])
        if top < suffix[i + 1]:
            best = (i, suffix[i + 1])
    return best


def _frames(index: MediaIndex, lo: int, hi: int) -> list[int]:
    s = index.sorted_pts
    return s[bisect.bisect_left(s, lo):bisect.bisect_left(s, hi)]


def _keyframe_spans(index: MediaIndex, ranges: Sequence[TimeRange], merge: bool,
                    notes: list[str] | None = None) -> list[Span]:
    spans: list[Span] = []
    early = 0
    for r in ranges:
        n = _key_position(index, index.ticks(r.start))
        first = index.key_idx[n]
        if not index.video.whole[first] and n > 0:
            # An intra-refresh recovery point: a decoder starting there shows nothing until
            # the refresh has gone round (1.2 s of a cut was lost so). Starting at the
            # keyframe before, the refresh is complete by this one.
            first = index.key_idx[n - 1]
            early += 1
        last, end = _copy_end_at_least(index, first, index.ticks(r.end))
        start = index.video.pts[first]
        if merge and spans and start <= spans[-1].end:
            prev = spans[-1]
            item = prev.items[0]
            assert isinstance(item, CopyItem)
            if end > prev.end:
                item.last, prev.end = max(item.last, last), end
            prev.planned.append(r)
            continue
        spans.append(Span([r], start, end, [CopyItem(first, last, start, 0)]))
    if early and notes is not None:
        notes.append(f"{early} range(s) start at an intra-refresh recovery point, whose "
                     "pictures are whole only once the refresh has gone round: they start a "
                     "keyframe earlier (--precise cuts them exactly)")
    return spans


def _whole_keyframes(index: MediaIndex) -> MediaIndex:
    """The index with only the keyframes a decoder can start at and show at once. Copying
    from an intra-refresh recovery point, or decoding a head from one, leaves pictures a
    player cannot show until the refresh has gone round (0.7 s of a cut was lost so). A
    stream without any such keyframe keeps them all."""
    keys = sorted((p, i) for i, (p, w) in enumerate(zip(index.video.pts, index.video.whole))
                  if w)
    if not keys or len(keys) == len(index.key_pts):
        return index
    return replace(index, key_pts=[p for p, _ in keys], key_idx=[i for _, i in keys])


def _precise_spans(index: MediaIndex, ranges: Sequence[TimeRange], merge: bool) -> list[Span]:
    """Smart-cut spans; `index`'s keyframes are the ones a cut can start at whole."""
    spans: list[Span] = []
    for r in ranges:
        start = _next_pts(index, index.ticks(r.start))
        end = _next_pts(index, index.ticks(r.end))
        if start >= end:
            # No picture starts inside the range (a slide show's long pictures, a range within
            # one frame): it keeps the picture on screen over it, as a keyframe cut would,
            # rather than nothing (an empty file said "wrote").
            i = bisect.bisect_right(index.sorted_pts, index.ticks(r.start)) - 1
            if i < 0:
                continue
            start = index.sorted_pts[i]
            end = _next_pts(index, Fraction(start + 1))
        if merge and spans and start <= spans[-1].end:
            spans[-1].end = max(spans[-1].end, end)
            spans[-1].planned.append(r)
        else:
            spans.append(Span([r], start, end))
    v = index.video
    for s in spans:
        stop = None if s.end >= index.end else s.end
        k0 = _key_at_or_before(index, Fraction(s.start))
        copy_from: int | None = k0
        if v.pts[k0] != s.start:
            k1 = _key_after(index, s.start)
            head_end = v.pts[k1] if k1 is not None and v.pts[k1] < s.end else s.end
            s.items.append(EncodeItem(v.pts[k0], _frames(index, s.start, head_end),
                                      None if head_end >= index.end else head_end, 0))
            copy_from = k1 if head_end < s.end else None
        if copy_from is None:
            continue
        clean = _copy_end_at_most(index, copy_from, s.end)
        if clean is None:
            kp = v.pts[copy_from]
            s.items.append(EncodeItem(kp, _frames(index, kp, s.end), stop, 0))
            continue
        last, shown_end = clean
        s.items.append(CopyItem(copy_from, last, v.pts[copy_from], 0))
        if shown_end < s.end:
            kt = v.pts[_key_at_or_before(index, Fraction(shown_end))]
            s.items.append(EncodeItem(kt, _frames(index, shown_end, s.end), stop, 0))
    return spans


def _plan_audio_like(si: StreamIndex, index: MediaIndex,
                     spans: Sequence[Span], outs: Sequence[Fraction]) -> dict[int, list[int]]:
    """Audio: packets laid end to end on an output clock, each within half a packet of its
    source-relative place. `outs[r]` is span r's output start in seconds.

    Works in the stream's ticks as floats (exact enough: the clock only ever adds whole-tick
    durations to one exact start per span), which keeps an hour of audio fast to plan."""
    tb = si.time_base
    order = sorted(range(len(si.pts)), key=lambda j: si.pts[j])
    times = [si.pts[j] for j in order]
    durs: list[int] = []
    fallback = max(1, round(Fraction(1, 50) / tb))
    for n, j in enumerate(order):
        d = si.duration[j]
        if n + 1 < len(order) and times[n + 1] > times[n]:
            d = times[n + 1] - times[n]
        durs.append(d if d > 0 else fallback)
    plan: dict[int, list[int]] = {}
    clock: float | None = None
    vtb = index.video.time_base
    longest = max(durs, default=0)
    for span, out0_s in zip(spans, outs):
        a = float(span.start * vtb / tb)
        out0 = float(out0_s / tb)
        out1 = out0 + float((span.end - span.start) * vtb / tb)
        if clock is None or abs(clock - out0) > longest:
            clock = out0
        want = a + (clock - out0)
        n = bisect.bisect_left(times, want)
        if n > 0 and (n == len(times) or abs(times[n - 1] - want) <= abs(times[n] - want)):
            n -= 1
        while n < len(times):
            mapped = times[n] - a + out0
            if abs(clock - mapped) > durs[n]:  # a hole in the source audio: resynchronise
                clock = mapped
            if clock + durs[n] / 2 > out1:
                break
            plan.setdefault(order[n], []).append(round(clock))
            clock += durs[n]
            n += 1
    return plan


def _plan_subtitles(si: StreamIndex, index: MediaIndex, spans: Sequence[Span],
                    outs: Sequence[Fraction]) -> dict[int, list[int]]:
    tb, vtb = si.time_base, index.video.time_base
    plan: dict[int, list[int]] = {}
    for span, out0 in zip(spans, outs):
        a, b = span.start * vtb, span.end * vtb
        for j, p in enumerate(si.pts):
            if a <= p * tb < b:
                plan.setdefault(j, []).append(round((p * tb - a + out0) / tb))
    return plan


def plan_edit(index: MediaIndex, ranges: Sequence[TimeRange], precise: bool = False,
              merge: bool = True) -> EditPlan:
    """Decide every output packet and its time from the index alone (see the module doc)."""
    notes: list[str] = []
    if precise:
        with _open(index.path) as c:
            reason = smartcut.reencode_support(c.streams[index.video.index])
        if reason:
            notes.append(f"--precise: {reason}; cutting at keyframes instead")
            precise = False
        elif _open_gop(index):
            notes.append("--precise: the keyframes are not IDR pictures (an open-GOP H.264 "
                         "stream), and the copy after a re-encoded start would lose pictures; "
                         "cutting at keyframes instead")
            precise = False
    notes += [f"left out {what}: only video, audio and subtitles are carried"
              for what in index.skipped]
    if precise:
        whole = _whole_keyframes(index)
        if whole is not index:
            notes.append("--precise: some keyframes are intra-refresh recovery points, where "
                         "no cut can start whole; pictures are re-encoded from the keyframe "
                         "before")
        spans = _precise_spans(whole, ranges, merge)
    else:
        spans = _keyframe_spans(index, ranges, merge, notes)
        if len(spans) > 1 and _open_gop(index):
            notes.append("the keyframes are not IDR pictures (an open-GOP H.264 stream): "
                         "at each join FFmpeg-based players lose pictures and show the "
                         "last ones before it out of order; -c writes each range as a file "
                         "of its own, which plays whole")
    if not spans:  # ranges before the first picture: an empty file is no output
        raise MilesDeepError("the kept time holds no picture of the video", index.path)
    out_start, outs = 0, []
    video_out: list[int] = []
    for s in spans:
        offset = out_start - s.start
        outs.append(out_start * index.video.time_base)
        previous_encoded = False
        first_out = len(video_out)
        for item in s.items:
            item.offset = offset
            if isinstance(item, CopyItem):
                item.prepend_parameter_sets = previous_encoded
                v = index.video
                video_out += [p + offset for p in v.pts[item.first:item.last + 1]
                              if p >= item.low]
                previous_encoded = False
            else:
                video_out += [p + offset for p in item.wanted]
                previous_encoded = True
        _check_distinct(index, [t - offset for t in video_out[first_out:]])
        out_start += s.end - s.start
    # Decode timestamps: the i-th smallest pts minus the largest reorder delay.
    ranked = sorted(video_out)
    delay = max((r - p for r, p in zip(ranked, video_out)), default=0)
    # AVI stores no times: a picture's is its place among the video frames, audio's its place
    # in the audio. FFmpeg moves a first decode time below 0 up to 0 in every stream, which the
    # audio cannot follow, so the pictures came `delay` late on each edit. There the output
    # starts as the source does: `delay` of audio before the first picture.
    lead = delay if output_extension(index).lower() == ".avi" else 0
    pairs = [(p + lead, r - delay + lead) for p, r in zip(video_out, ranked)]
    a_spans, a_outs = spans, outs
    if lead and spans:
        a_spans = [replace(spans[0], start=spans[0].start - lead), *spans[1:]]
        a_outs = [outs[0], *(o + lead * index.video.time_base for o in outs[1:])]
    others: dict[int, dict[int, list[int]]] = {}
    for si in index.others:
        planner = _plan_subtitles if si.kind == "subtitle" else _plan_audio_like
        others[si.index] = planner(si, index, a_spans, a_outs)
    _chain_prepends(spans)
    return EditPlan(index, spans, precise, notes, pairs, others, lead)


def _open_gop(index: MediaIndex) -> bool:
    """H.264 whose keyframes (I pictures; an intra refresh's recovery points are handled as
    such, `_whole_keyframes`) after the first are not all IDR pictures (x264 --open-gop)."""
    v = index.video
    keys = [r for k, r, w in zip(v.key, v.resets, v.whole) if k and w] \
        if v.codec == "h264" else []
    return not all(keys[1:])


def _check_distinct(index: MediaIndex, pts: Sequence[int]) -> None:
    """Two pictures with one time cannot be muxed (decode times must increase): say where,
    before anything is written, rather than fail halfway with FFmpeg's complaint."""
    ordered = sorted(pts)
    same = next((a for a, b in zip(ordered, ordered[1:]) if a == b), None)
    if same is not None:
        raise MilesDeepError(
            f"two pictures of the video have the same time, {float(index.seconds(same)):.3f} s "
            "(two recordings joined without new timestamps?), inside a range to keep: it "
            "cannot be cut by stream copy; cut each recording on its own, or re-encode it",
            index.path)


def _chain_prepends(spans: Sequence[Span]) -> None:
    """A copied keyframe that follows a re-encoded run in the output (even across spans)
    needs the original parameter sets in-band."""
    previous_encoded = False
    for s in spans:
        for item in s.items:
            if isinstance(item, CopyItem):
                item.prepend_parameter_sets = previous_encoded
                previous_encoded = False
            else:
                previous_encoded = True


# --- writing -------------------------------------------------------------------------------

# The one place packets reach the muxer (tests hook it to interrupt a write).
def _mux(output: av.container.OutputContainer, packet: av.Packet) -> None:
    output.mux(packet)


def write_edit(plan: EditPlan, dest: Path, overwrite: bool = False,
               on_progress: Callable[[float], None] | None = None,
               faststart: bool = False) -> Path:
    """Mux the planned packets into `dest` (temporary name, renamed when complete); with
    `faststart`, an MP4/MOV gets its index (moov) at the front (`FASTSTART_SUFFIXES`)."""
    index = plan.index
    with atomic_path(dest, overwrite=overwrite) as tmp, _open(index.path) as src:
        try:
            _write(plan, src, tmp, on_progress, faststart)
        except av.error.FFmpegError as e:
            raise MilesDeepError(f"cannot write the cut ({e})", dest) from None
    return Path(dest)


# The MOV-family muxers (FFmpeg's mov, mp4, ipod, 3gp) that take movflags.
FASTSTART_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".3gp", ".3g2"})


def _write(plan: EditPlan, src: av.container.InputContainer, tmp: Path,
           on_progress: Callable[[float], None] | None, faststart: bool = False) -> None:
    index = plan.index
    vidx = index.video.index
    carried = [vidx] + [i for i, p in plan.others.items() if p]
    encoder = smartcut.SegmentEncoder(index.path, vidx) if plan.precise else None
    avcc = smartcut.parse_avcc(src.streams[vidx].codec_context.extradata)
    # bitexact: no random IDs or dates in the header (Matroska), so a rerun gives the same bytes.
    options = {"fflags": "+bitexact"}
    if faststart and tmp.suffix.lower() in FASTSTART_SUFFIXES:
        # The muxer writes the moov last, then moves it ahead of the media: players and web
        # servers can start before reading the whole file, at the cost of rewriting it once.
        options["movflags"] = "+faststart"
    with av.open(str(tmp), "w", format=_format_for(tmp), container_options=options) as out:
        out_streams: dict[int, av.stream.Stream] = {}
        for i in carried:
            s = src.streams[i]
            if s.type == "subtitle" and s.codec_context.name not in out.supported_codecs:
                plan.notes.append(f"subtitle stream {i} ({s.codec_context.name}) cannot go "
                                  f"into {tmp.suffix}; left out")
                continue
            out_streams[i] = _stream_like(out, s)
            _copy_metadata(s.metadata, out_streams[i].metadata)
        _copy_metadata(src.metadata, out.metadata)
        _set_chapters(plan, src, out)
        items = [it for span in plan.spans for it in span.items]
        vtimes = iter(plan.video_out)
        vstream = out_streams[vidx]
        _set_timecode(plan, vstream)
        tb = index.video.time_base
        state = {"item": 0, "copied": 0, "emitted": 0}
        shown = _shown_for(plan)

        def emit_video(data: bytes | av.Packet, key: bool) -> None:
            pts, dts = next(vtimes)
            packet = data if isinstance(data, av.Packet) else av.Packet(data)
            packet.pts, packet.dts, packet.time_base = pts, dts, tb
            packet.duration = shown[state["emitted"]]
            state["emitted"] += 1
            if not isinstance(data, av.Packet):
                packet.is_keyframe = key
            packet.stream = vstream
            _mux(out, packet)

        def flush_encoded() -> None:
            while state["item"] < len(items) and isinstance(items[state["item"]], EncodeItem):
                item = items[state["item"]]
                assert isinstance(item, EncodeItem) and encoder is not None
                for ep in encoder.encode(item.keyframe_pts, item.wanted, item.stop):
                    emit_video(ep.data, ep.keyframe)
                state["item"] += 1
                state["copied"] = 0

        flush_encoded()
        counters = dict.fromkeys(carried, -1)
        total = len(index.video.pts)
        for packet in src.demux([src.streams[i] for i in carried]):
            if not _usable(packet):
                continue
            si = packet.stream.index
            counters[si] += 1
            j = counters[si]
            if si != vidx:
                if si not in out_streams:
                    continue
                for n, pts in enumerate(plan.others[si].get(j, ())):
                    p = packet if n == 0 else av.Packet(bytes(packet))
                    p.pts = p.dts = pts
                    p.time_base = src.streams[si].time_base
                    p.stream = out_streams[si]
                    _mux(out, p)
                continue
            if on_progress and j % 256 == 0:
                on_progress(j / total)
            if state["item"] >= len(items):
                continue
            item = items[state["item"]]
            assert isinstance(item, CopyItem)
            if item.first <= j <= item.last and packet.pts >= item.low:
                if state["copied"] == 0 and item.prepend_parameter_sets and avcc is not None:
                    packet = av.Packet(avcc.in_band() + bytes(packet))
                    packet.is_keyframe = True
                emit_video(packet, True)
                state["copied"] += 1
            if j >= item.last:
                state["item"] += 1
                state["copied"] = 0
                flush_encoded()
        flush_encoded()
    if encoder is not None:
        encoder.close()


def _stream_like(out: av.container.OutputContainer, template: av.stream.Stream
                 ) -> av.stream.Stream:
    """An output stream for copying `template`'s packets. PyAV looks a video stream's codec up
    as an *encoder* of the decoder's name, and some decoders have another name than any
    encoder (libdav1d for AV1): those streams take the decoder's codec itself, which is all
    a stream copy needs (its id and parameters)."""
    try:
        return out.add_stream_from_template(template)
    except av.codec.codec.UnknownCodecError:
        return out.add_stream_from_template(template, opaque=True)


def _shown_for(plan: EditPlan) -> list[int]:
    """Each output video packet's duration (ticks), in `plan.video_out` order: how long its
    picture is on screen (until the next picture; the last one until the kept time ends).
    Copied packets brought their source's, which in an MP4 are decode-time steps: with
    irregular frame times and B-frames, the cut's track ended up to 100 ms off the kept time.
    The MP4 muxer ends a track at the earlier of its latest picture's end and its last decode
    time plus the last packet's duration: the last packet in decode order lasts as long as the
    last picture on screen, which makes the two meet where the kept time ends (decode times
    are the pictures' times in order, less one delay: `plan_edit`)."""
    order = sorted(range(len(plan.video_out)), key=lambda k: plan.video_out[k][0])
    if not order:
        return []
    end = plan.lead + sum(s.end - s.start for s in plan.spans)
    out = [0] * len(order)
    for k, k_next in zip(order, [*order[1:], None]):
        stop = end if k_next is None else plan.video_out[k_next][0]
        out[k] = max(1, int(stop - plan.video_out[k][0]))
    out[-1] = out[order[-1]]
    return out


# Not copied from the source: what a muxer writes of its own (brands, the writing library),
# and the start timecode, which `_set_timecode` moves to the output's start (a container-level
# one, as MXF has, would otherwise win over it in the MOV and MXF muxers).
_MUXER_KEYS = {"major_brand", "minor_version", "compatible_brands", "encoder", "timecode"}


def _copy_metadata(src: dict, dest: dict) -> None:
    """Tags carry over as `ffmpeg -c copy` carries them: title, language, creation time..."""
    for key, value in src.items():
        if key.lower() not in _MUXER_KEYS:
            dest[key] = value


def _set_chapters(plan: EditPlan, src: av.container.InputContainer,
                  out: av.container.OutputContainer) -> None:
    """Each chapter that keeps some of its time, on the output's timeline: from where its
    first kept moment lands to where its last one does (the kept ranges are laid end to end,
    so that is one stretch), in video ticks."""
    tb = plan.index.video.time_base
    spans, kept = plan.spans, []
    starts = [0]
    for span in spans:
        starts.append(starts[-1] + span.end - span.start)
    chapters = src.chapters()
    for ch in chapters:
        a, b = ch["start"] * ch["time_base"] / tb, ch["end"] * ch["time_base"] / tb
        pieces = [(o + max(a, sp.start) - sp.start, o + min(b, sp.end) - sp.start)
                  for sp, o in zip(spans, starts) if min(b, sp.end) > max(a, sp.start)]
        if pieces:
            kept.append({"id": len(kept) + 1, "start": round(pieces[0][0]),
                         "end": round(pieces[-1][1]), "time_base": tb,
                         "metadata": dict(ch["metadata"])})
    if kept:
        out.set_chapters(kept)
    if chapters:
        plan.notes.append(f"chapters: {len(kept)} of {len(chapters)} kept, moved to "
                          "the output's times")


def _set_timecode(plan: EditPlan, vstream: av.stream.Stream) -> None:
    """The output starts some frames into the source, and so does its start timecode: FFmpeg's
    MOV/MP4 muxer writes it as a tmcd track, Matroska's as a tag, MXF's in its header."""
    meta = vstream.metadata
    index = plan.index
    if index.timecode is None or not plan.spans or not index.sorted_pts:
        return
    frames = _frames_in(index, index.sorted_pts[0], plan.spans[0].start)
    tc = shifted(index.timecode, index.frame_rate, frames)
    if tc is not None:
        meta["timecode"] = tc


def _format_for(path: Path) -> str | None:
    """Let FFmpeg pick the muxer from the extension (the temporary name keeps it)."""
    return None


@functools.cache
def _muxer_suffixes() -> frozenset[str]:
    """The file name suffixes FFmpeg picks a muxer by."""
    out = set()
    for name in av.formats_available:
        try:
            out.update(f".{e.strip().lower()}" for e in av.ContainerFormat(name, "w").extensions)
        except (ValueError, av.FFmpegError):  # a demuxer only
            continue
    return frozenset(out)


def candidate_extensions(path: Path) -> list[str]:
    """The extensions `output_extension` may choose for a source, from its name alone: its
    own, or .mkv for a name FFmpeg cannot write a video by (none, .divx, .qt, .xyz, .tag),
    Matroska taking nearly every codec; a .wmv may become .mkv too (decided by its codecs)."""
    ext = Path(path).suffix
    if ext.lower() not in VIDEO_EXTENSIONS or ext.lower() not in _muxer_suffixes():
        return [".mkv"]
    return [".mkv", ext] if ext.lower() == ".wmv" else [ext]


def output_extension(index: MediaIndex) -> str:
    """The source's extension (`candidate_extensions`), except that .wmv becomes .mkv as in
    the original (stream-copying into ASF was unreliable there) when Matroska takes every
    carried codec; FFmpeg's Matroska muxer refuses WMV2/WMV3/WMA at normal compliance, and
    those stay .wmv (ASF)."""
    ext = candidate_extensions(index.path)[-1]  # (.wmv's own when it may become .mkv)
    if ext.lower() != ".wmv":
        return ext
    codecs = {index.video.codec, *(s.codec for s in index.others)}
    with av.open(io.BytesIO(), "w", format="matroska") as probe:
        supported = probe.supported_codecs
    return ".mkv" if codecs <= supported else ext


def summary_lines(plan: EditPlan) -> list[str]:
    lines = [r.describe() for r in plan.reports()]
    lines.append(f"output {format_time(plan.duration)} in {len(plan.spans)} range(s)"
                 + (" (frame-accurate)" if plan.precise else " (keyframe cuts)"))
    return lines + plan.notes


# --- whole cuts ----------------------------------------------------------------------------


@dataclass
class CutResult:
    outputs: list[Path]
    plans: list[EditPlan]

    def summary_lines(self) -> list[str]:
        lines: list[str] = []
        for path, plan in zip(self.outputs, self.plans):
            if len(self.outputs) > 1:
                lines.append(f"{path.name}:")
            lines += summary_lines(plan)
        return lines


def output_paths(index: MediaIndex, out_dir: Path, n_ranges: int, pieces: bool) -> list[Path]:
    """`<stem>.cut<ext>`, or with pieces `<stem>.cut/<stem>.cut.<i><ext>` (i from 1)."""
    stem, ext = index.path.stem, output_extension(index)
    if not pieces:
        return [out_dir / f"{stem}.cut{ext}"]
    folder = out_dir / f"{stem}.cut"
    return [folder / f"{stem}.cut.{i}{ext}" for i in range(1, n_ranges + 1)]


def cut_video(index: MediaIndex, ranges: Sequence[TimeRange], out_dir: Path,
              precise: bool = False, pieces: bool = False,
              overwrite: bool = False, faststart: bool = False) -> CutResult:
    """Write the kept `ranges` of the indexed video into `out_dir` as one file, or one file per
    range with `pieces`. Nothing is written at any final path if one of them already exists
    (without `overwrite`); each file appears only when complete."""
    groups = [[r] for r in ranges] if pieces else [list(ranges)]
    paths = output_paths(index, Path(out_dir), len(groups), pieces)
    if not overwrite:
        for p in paths:
            if p.exists():
                raise MilesDeepError("output exists; pass --overwrite to replace it", p)
    if pieces:
        plans = [plan_edit(index, g, precise) for g in groups]
    else:
        plans = [plan_edit(index, groups[0], precise)]
    for n, (plan, path) in enumerate(zip(plans, paths)):
        try:
            write_edit(plan, path, overwrite=overwrite, faststart=faststart)
        except smartcut.SmartCutError as e:
            plans[n] = plan_edit(index, groups[n], precise=False)
            plans[n].notes.append(f"--precise failed ({e}); cut at keyframes instead")
            write_edit(plans[n], path, overwrite=overwrite, faststart=faststart)
    return CutResult(paths, plans)
