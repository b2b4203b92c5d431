"""Smart cut (`--precise`): re-encode only the partial GOPs at range boundaries.

A stream-copied range must start at a keyframe. To start (or end) between keyframes we decode
the GOP around the boundary and re-encode just the frames that are kept, with the same codec,
size and pixel format, then splice those packets into the copied stream.

H.264 only (libx264 is in PyAV's bundled FFmpeg). The splice has to keep the decoder's
parameter sets right:

- In MP4/Matroska the stream's SPS/PPS live in the container's `avcC` record and packets are
  length-prefixed NAL units. libx264 opened without a global header writes its own SPS/PPS
  in-band (Annex B, start codes) before its first frame; we convert its packets to the stream's
  length-prefixed form and keep those in-band parameter sets. (MPEG-TS and other Annex B
  streams keep start codes; their extradata, if any, is Annex B too.)
- After a re-encoded run the decoder still holds libx264's parameter sets, so the first copied
  keyframe that follows gets the original SPS/PPS (from the extradata) prepended in-band.
  FFmpeg's decoder switches parameter sets in-band; a player that only reads `avcC` once
  (some hardware decoders) may not, which is the price of not re-encoding whole GOPs.
- libx264's SPS for a run without B-frames says the decoder reorders nothing; FFmpeg takes the
  stream's reorder depth from the first SPS it meets, so that SPS is made to declare the
  source's (`milesdeep.pipeline.sps`), or Matroska cuts read back with wrong decode times.
- The re-encoded frames have no B-frames and start with an IDR frame; every copied GOP starts
  at an IDR keyframe (closed GOP), so nothing references across a splice. Streams with open
  GOPs (non-IDR keyframes whose leading pictures reference the previous GOP) can show damage
  on the first frames after a copied keyframe; x264's default is closed GOPs.

Any other codec: `reencode_support` says why not and the caller falls back to keyframe cuts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from milesdeep.pipeline import sps
from milesdeep.pipeline.decode import seek_steps, seek_to

ENCODERS = {"h264": "libx264"}
# Quality of the re-encoded frames: visually lossless for typical sources, so the splice does
# not show. (A bitrate match would be cheaper, but a few frames per boundary cost little.)
CRF = "16"
PRESET = "fast"


class SmartCutError(RuntimeError):
    """A boundary could not be re-encoded faithfully (the caller cuts at keyframes instead)."""


@dataclass(frozen=True)
class AvcConfig:
    """What the splice needs from the stream's extradata: NAL framing and parameter sets."""

    length_size: int | None  # bytes of each NAL length prefix; None: Annex B start codes
    parameter_sets: tuple[bytes, ...]  # SPS then PPS NAL units, without prefixes

    def in_band(self) -> bytes:
        """The parameter sets framed like the stream's packets, to prepend to a keyframe."""
        if self.length_size is None:
            return b"".join(b"\x00\x00\x00\x01" + n for n in self.parameter_sets)
        return b"".join(len(n).to_bytes(self.length_size, "big") + n
                        for n in self.parameter_sets)

    def frame(self, annexb: bytes) -> bytes:
        """An encoder's Annex B packet framed like the stream's packets."""
        if self.length_size is None:
            return annexb
        return b"".join(len(n).to_bytes(self.length_size, "big") + n
                        for n in split_annexb(annexb))


def parse_avcc(extradata: bytes | None) -> AvcConfig | None:
    """Parameter sets from H.264 extradata: an ISO/IEC 14496-15 `avcC` record (MP4, Matroska)
    or Annex B NAL units (MPEG-TS, ASF). None if there is no extradata."""
    if not extradata:
        return None
    if extradata[0] != 1:
        sets = [n for n in split_annexb(bytes(extradata)) if n[0] & 0x1F in (7, 8)]
        return AvcConfig(None, tuple(sets))
    if len(extradata) < 7:
        return None
    length_size = (extradata[4] & 3) + 1
    sets: list[bytes] = []
    pos = 5
    count = extradata[pos] & 0x1F
    pos += 1
    for table in range(2):
        for _ in range(count):
            n = int.from_bytes(extradata[pos:pos + 2], "big")
            sets.append(bytes(extradata[pos + 2:pos + 2 + n]))
            pos += 2 + n
        if table == 0:
            count = extradata[pos]
            pos += 1
    return AvcConfig(length_size, tuple(sets))


def split_annexb(data: bytes) -> list[bytes]:
    """NAL units of an Annex B byte stream (00 00 01 / 00 00 00 01 start codes)."""
    buf = np.frombuffer(data, dtype=np.uint8)
    if len(buf) < 4:
        return [data] if data else []
    zero = (buf[:-2] == 0) & (buf[1:-1] == 0) & (buf[2:] == 1)
    starts = np.flatnonzero(zero)
    nals: list[bytes] = []
    for i, s in enumerate(starts):
        begin = int(s) + 3
        end = int(starts[i + 1]) if i + 1 < len(starts) else len(data)
        # A 4-byte start code leaves one zero byte at the end of the previous unit.
        if i + 1 < len(starts) and data[end - 1] == 0:
            end -= 1
        nals.append(data[begin:end])
    return [n for n in nals if n]


def source_reorder(avcc: AvcConfig | None) -> int:
    """How many pictures the source's SPS says its decoder reorders (0 if it does not say)."""
    for nal in avcc.parameter_sets if avcc is not None else ():
        if nal[0] & 0x1F == 7:
            try:
                found = sps.restriction(nal)
            except ValueError:  # an SPS we cannot read: leave the encoder's as it is
                return 0
            return (found.reorder or 0) if found is not None else 0
    return 0


def declare_reorder(annexb: bytes, reorder: int) -> bytes:
    """The encoder's packet with its in-band SPS declaring the source's reordering
    (`milesdeep.pipeline.sps`): a cut starting with re-encoded pictures otherwise reads, in
    FFmpeg, as a stream without B-frames, and Matroska's rebuilt decode times go wrong."""
    nals = split_annexb(annexb)
    if not any(n[0] & 0x1F == 7 for n in nals):
        return annexb
    try:
        nals = [sps.with_reorder(n, reorder) if n[0] & 0x1F == 7 else n for n in nals]
    except ValueError:  # an SPS we cannot read: FFmpeg's guess is no worse than before
        return annexb
    return b"".join(b"\x00\x00\x00\x01" + n for n in nals)


def reencode_support(stream: av.video.stream.VideoStream) -> str | None:
    """None if `stream` can be smart-cut here, else a reason to fall back to keyframe cuts."""
    cc = stream.codec_context
    name = cc.name
    if name not in ENCODERS:
        # The format's name (av1), not the decoder's (libdav1d).
        return (f"{cc.codec.canonical_name} cannot be re-encoded here (smart cut supports "
                "H.264 only)")
    try:
        encoder = av.codec.Codec(ENCODERS[name], "w")
    except Exception:  # noqa: BLE001  the FFmpeg build lacks the encoder
        return f"the {ENCODERS[name]} encoder is not available in this FFmpeg build"
    formats = {f.name for f in encoder.video_formats or ()}
    if cc.pix_fmt not in formats:
        return f"{ENCODERS[name]} here cannot write the pixel format {cc.pix_fmt}"
    return None


@dataclass(frozen=True)
class EncodedPacket:
    data: bytes
    source_pts: int  # pts of the source frame it encodes, in the stream's time base
    keyframe: bool


class SegmentEncoder:
    """Decodes frames [start, stop) of a video stream and re-encodes them as one closed run.

    Opens its own reader of the source so the main demux pass is never disturbed.
    """

    def __init__(self, path: Path, stream_index: int) -> None:
        self._reader = av.open(str(path))
        self._stream = self._reader.streams[stream_index]
        self._stream.thread_type = "AUTO"
        cc = self._stream.codec_context
        self.codec = ENCODERS[cc.name]
        self.avcc = parse_avcc(cc.extradata)
        self.time_base: Fraction = self._stream.time_base
        self.reorder = source_reorder(self.avcc)

    def close(self) -> None:
        self._reader.close()

    def _decode(self, keyframe_pts: int, start: int, stop: int | None,
                seek: bool) -> list[av.VideoFrame]:
        seek_to(self._reader, self._stream, keyframe_pts if seek else None)
        frames: list[av.VideoFrame] = []
        for packet in self._reader.demux(self._stream):
            for frame in packet.decode():
                if frame.pts is None:
                    continue
                if stop is not None and frame.pts >= stop:
                    return frames
                if frame.pts >= start:
                    frames.append(frame)
        return frames

    def encode(self, keyframe_pts: int, wanted: Sequence[int],
               stop: int | None) -> list[EncodedPacket]:
        """Re-encode the frames whose pts are `wanted` (sorted, from one or two GOPs decoded
        from the keyframe at `keyframe_pts`); `stop` is the first pts not wanted, or None at
        the end of the stream."""
        # The container's seek may land after the keyframe (MPEG-TS, which has no index,
        # lands near the time by decode order): seek again from further back, and at last
        # decode from the beginning.
        for at in seek_steps(keyframe_pts, self.time_base):
            frames = self._decode(at or 0, wanted[0], stop, seek=at is not None)
            if [f.pts for f in frames] == list(wanted):
                break
        got = [f.pts for f in frames]
        if got != list(wanted):
            raise SmartCutError(f"decoded frames {got[:3]}... do not match the packet "
                                f"timestamps {list(wanted)[:3]}...")
        first = frames[0]
        enc = av.CodecContext.create(self.codec, "w")
        enc.width, enc.height = first.width, first.height
        enc.pix_fmt = first.format.name
        enc.time_base = self.time_base
        rate = self._stream.average_rate or self._stream.guessed_rate
        if rate:
            enc.framerate = rate
        enc.max_b_frames = 0
        enc.gop_size = len(frames) + 1  # one IDR, at the start of the run
        options = {"crf": CRF, "preset": PRESET}
        src = self._stream.codec_context
        if src.sample_aspect_ratio:  # non-square pixels: the SPS says so, as the copies' do
            enc.sample_aspect_ratio = src.sample_aspect_ratio
        if first.interlaced_frame:
            # Interlaced pictures stay interlaced (one stream mixed both), in the source's
            # field order.
            bff = str(getattr(src, "field_order", "")) in ("bb", "bt")
            options["x264-params"] = "bff=1" if bff else "tff=1"
        enc.options = options
        for attr in ("color_range", "colorspace", "color_primaries", "color_trc"):
            try:
                setattr(enc, attr, getattr(self._stream.codec_context, attr))
            except (AttributeError, ValueError, TypeError):
                pass
        out: list[EncodedPacket] = []
        for frame in [*frames, None]:
            if frame is not None:
                frame.pict_type = av.video.frame.PictureType.NONE
                frame.time_base = self.time_base
            for packet in enc.encode(frame):
                data = bytes(packet)
                if self.reorder:
                    data = declare_reorder(data, self.reorder)
                if self.avcc is not None:
                    data = self.avcc.frame(data)
                out.append(EncodedPacket(data, packet.pts, packet.is_keyframe))
        if [p.source_pts for p in out] != list(wanted):
            raise SmartCutError(f"the encoder returned {len(out)} of {len(wanted)} frames")
        return out
