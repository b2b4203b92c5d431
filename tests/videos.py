"""Tiny test videos encoded with PyAV, shared by every test module.

Each maker writes a short video (default 160x90) in well under a second and returns its path.
The videos carry machine-readable content so a test can check what an edit did to them:

- **flash + beep** (`flash_beep_video`): every second, at `phase` seconds past the second, one
  frame is white (the rest dark grey) and a 1 kHz beep starts at the same instant. A test that
  finds flash frames (`flash_times`) and beep onsets (`beep_onsets`) in an output can check that
  audio stayed in sync with video.
- **frame code**: the bottom 16 rows of every frame hold the frame's index in the source as
  10 black/white blocks (binary, most significant bit first); `read_frame_codes` reads them
  back, so a test can list exactly which source frames an output holds.
- **two classes** (`two_class_video`): each second is either a solid colour ("A") or random
  noise ("B") following a pattern such as "AABBBA", for classification tests.

Codecs: `.mp4`/`.mkv`/`.mov` get H.264 (libx264) + AAC; `.wmv` gets WMV2 + WMA v2 in ASF
(the codecs FFmpeg can write into that container).
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

CODE_BITS = 10
CODE_ROWS = 16
SAMPLE_RATE = 48000
BEEP_HZ = 1000.0
GREY = 40


def _codecs_for(path: Path, codecs: tuple[str, str] | None) -> tuple[str, str, str | None]:
    """(video codec, audio codec, container format or None) for a file name."""
    fmt = "asf" if path.suffix.lower() == ".wmv" else None
    if codecs is not None:
        return codecs[0], codecs[1], fmt
    if fmt == "asf":
        return "wmv2", "wmav2", fmt
    return "libx264", "aac", fmt


def draw_code(frame: np.ndarray, index: int) -> None:
    """Write `index` into the bottom CODE_ROWS rows of an RGB frame as black/white blocks."""
    h, w, _ = frame.shape
    block = w // CODE_BITS
    frame[h - CODE_ROWS:, :, :] = 0
    for bit in range(CODE_BITS):
        if index >> (CODE_BITS - 1 - bit) & 1:
            frame[h - CODE_ROWS + 2:h - 2, bit * block + 2:(bit + 1) * block - 2, :] = 255


def read_code(rgb: np.ndarray) -> int:
    """Read back the index written by `draw_code` (robust to lossy compression)."""
    h, w, _ = rgb.shape
    block = w // CODE_BITS
    value = 0
    for bit in range(CODE_BITS):
        patch = rgb[h - CODE_ROWS + 4:h - 4, bit * block + 4:(bit + 1) * block - 4, :]
        value = value << 1 | int(patch.mean() > 128)
    return value


def encode_video(
    path: Path,
    frames: list[np.ndarray] | np.ndarray,
    fps: int,
    audio: np.ndarray | None = None,
    gop: int = 25,
    bframes: int = 2,
    codecs: tuple[str, str] | None = None,
) -> Path:
    """Encode RGB frames (N, H, W, 3 uint8) and optional mono float audio at SAMPLE_RATE.

    `gop` is the keyframe interval in frames (closed GOPs, every keyframe an IDR frame);
    `bframes` the number of consecutive B-frames libx264 may use (0 for none); `codecs`
    overrides the (video, audio) encoders chosen from the extension, e.g. ("libx264", "aac")
    for an H.264 file named .wmv.
    """
    path = Path(path)
    vcodec, acodec, fmt = _codecs_for(path, codecs)
    h, w = frames[0].shape[:2]
    with av.open(str(path), "w", format=fmt) as out:
        vs = out.add_stream(vcodec, rate=fps)
        vs.width, vs.height = w, h
        vs.pix_fmt = "yuv420p"
        vs.codec_context.gop_size = gop
        if vcodec in ("libx264", "mpeg4"):
            vs.codec_context.max_b_frames = bframes
        if vcodec == "libx264":
            vs.options = {"crf": "18", "preset": "veryfast", "sc_threshold": "0",
                          "keyint_min": str(gop), "x264-params": "open-gop=0"}
        else:
            vs.bit_rate = 400_000
            # No extra keyframes at scene cuts (the flashes): keyframes every `gop` frames.
            vs.options = {"sc_threshold": "1000000000"}
        astream = None
        if audio is not None:
            astream = out.add_stream(acodec, rate=SAMPLE_RATE, layout="mono")
            if acodec == "wmav2":
                astream.bit_rate = 64_000
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame.pts = i
            frame.time_base = Fraction(1, fps)
            for packet in vs.encode(frame):
                out.mux(packet)
        for packet in vs.encode():
            out.mux(packet)
        if astream is not None and audio is not None:
            fmt_name = astream.codec_context.format.name
            size = astream.codec_context.frame_size or 1024
            pcm = np.asarray(audio, dtype=np.float32)
            for start in range(0, len(pcm), size):
                chunk = pcm[start:start + size]
                arr = chunk[None, :]  # mono: one row, planar or packed alike
                if fmt_name.startswith(("s16", "s32")):  # libmp3lame takes s32p
                    top = 32767 if fmt_name.startswith("s16") else 2**31 - 1
                    arr = np.round(arr * top).astype(np.int16 if top == 32767 else np.int32)
                frame = av.AudioFrame.from_ndarray(arr, format=fmt_name, layout="mono")
                frame.sample_rate = SAMPLE_RATE
                frame.pts = start
                frame.time_base = Fraction(1, SAMPLE_RATE)
                for packet in astream.encode(frame):
                    out.mux(packet)
            for packet in astream.encode():
                out.mux(packet)
    return path


def flash_beep_video(
    path: Path,
    seconds: int = 12,
    fps: int = 25,
    gop: int = 25,
    size: tuple[int, int] = (160, 90),
    phase: float = 0.6,
    beep_offset: float = 0.0,
    beep_seconds: float | None = None,
    bframes: int = 2,
    audio: bool = True,
    codecs: tuple[str, str] | None = None,
) -> Path:
    """A video with a white flash frame and a 1 kHz beep every second, plus the frame code.

    The flash is at frame round((k + phase) * fps) for k = 0..seconds-1; the beep starts at
    the same instant plus `beep_offset` seconds (non-zero only to test the sync checker) and
    lasts `beep_seconds` (default: one frame, as long as the flash).
    """
    if beep_seconds is None:
        beep_seconds = 1 / fps
    w, h = size
    n = seconds * fps
    frames = np.full((n, h, w, 3), GREY, dtype=np.uint8)
    flash_frames = [round((k + phase) * fps) for k in range(seconds)]
    for i in flash_frames:
        frames[i, :, :, :] = 255
    for i in range(n):
        draw_code(frames[i], i)
    pcm = None
    if audio:
        pcm = np.zeros(seconds * SAMPLE_RATE, dtype=np.float32)
        t = np.arange(int(beep_seconds * SAMPLE_RATE)) / SAMPLE_RATE
        tone = (0.5 * np.sin(2 * np.pi * BEEP_HZ * t)).astype(np.float32)
        for i in flash_frames:
            start = round((i / fps + beep_offset) * SAMPLE_RATE)
            pcm[start:start + len(tone)] = tone[: max(0, len(pcm) - start)]
    return encode_video(path, frames, fps, pcm, gop=gop, bframes=bframes, codecs=codecs)


def two_class_video(
    path: Path,
    pattern: str = "AABBBAAB",
    fps: int = 10,
    size: tuple[int, int] = (160, 90),
    colour: tuple[int, int, int] = (200, 40, 40),
    gop: int = 10,
    seed: int = 0,
    audio: bool = False,
) -> Path:
    """One second per pattern character: "A" = a solid `colour`, "B" = uniform random noise.

    Frames also carry the frame code. Returns the path.
    """
    w, h = size
    rng = np.random.default_rng(seed)
    frames = np.empty((len(pattern) * fps, h, w, 3), dtype=np.uint8)
    for s, c in enumerate(pattern):
        for j in range(fps):
            i = s * fps + j
            if c == "A":
                frames[i] = colour
            elif c == "B":
                frames[i] = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
            else:
                raise ValueError(f"pattern characters must be A or B, not {c!r}")
            draw_code(frames[i], i)
    pcm = np.zeros(len(pattern) * SAMPLE_RATE, dtype=np.float32) if audio else None
    return encode_video(path, frames, fps, pcm, gop=gop)


# --- reading outputs back ---------------------------------------------------------------


def decode_video(path: Path) -> tuple[list[float], list[np.ndarray]]:
    """(presentation times in seconds, RGB frames) of the first video stream."""
    times, frames = [], []
    with av.open(str(path)) as c:
        for f in c.decode(video=0):
            times.append(float(f.time))
            frames.append(f.to_ndarray(format="rgb24"))
    return times, frames


def read_frame_codes(path: Path) -> list[int]:
    """The source frame index of every frame of `path`, in presentation order."""
    return [read_code(f) for f in decode_video(path)[1]]


def flash_times(path: Path) -> list[float]:
    """Presentation times of the white flash frames (mean luma above the code strip)."""
    times, frames = decode_video(path)
    return [t for t, f in zip(times, frames) if f[:-CODE_ROWS].mean() > 150]


def decode_audio(path: Path) -> tuple[float, np.ndarray]:
    """(start time in seconds, mono samples at the stream rate) of the first audio stream.

    Samples are laid end to end from the first frame's time, as a player would play them.
    """
    chunks, start = [], None
    with av.open(str(path)) as c:
        for f in c.decode(audio=0):
            if start is None:
                start = float(f.time) if f.time is not None else 0.0
            a = f.to_ndarray()
            chunks.append(a.reshape(-1) if a.shape[0] == 1 else a.mean(axis=0))
    return start or 0.0, np.concatenate(chunks) if chunks else np.zeros(0, np.float32)


def beep_onsets(path: Path, min_length: float = 0.03, threshold: float = 0.15,
                min_gap: float = 0.01) -> list[float]:
    """Times (seconds) where a beep starts: |sample| crosses `threshold` after silence, and
    stays loud (no gap over `min_gap`) for at least `min_length` seconds. The length test
    ignores the few milliseconds of a beep that a cut at packet granularity can leave at a
    range boundary."""
    start, pcm = decode_audio(path)
    with av.open(str(path)) as c:
        rate = c.streams.audio[0].rate
    loud = np.flatnonzero(np.abs(pcm) > threshold)
    if len(loud) == 0:
        return []
    breaks = np.flatnonzero(np.diff(loud) > min_gap * rate)
    firsts = np.concatenate([[loud[0]], loud[breaks + 1]])
    lasts = np.concatenate([loud[breaks], [loud[-1]]])
    return [float(start + a / rate) for a, b in zip(firsts, lasts)
            if (b - a) / rate >= min_length]


def stream_durations(path: Path) -> dict[str, float]:
    """Durations in seconds of the first video and audio streams, from the decoded frames."""
    out: dict[str, float] = {}
    with av.open(str(path)) as c:
        vt = [(float(f.time), f) for f in c.decode(video=0)]
    if vt:
        step = vt[1][0] - vt[0][0] if len(vt) > 1 else 0.0
        out["video"] = vt[-1][0] - vt[0][0] + step
    with av.open(str(path)) as c:
        if c.streams.audio:
            rate = c.streams.audio[0].rate
            start, pcm = decode_audio(path)
            out["audio"] = len(pcm) / rate
            out["audio_start"] = start
    return out


def with_subtitles(src: Path, dest: Path, cues: list[tuple[float, float, str]]) -> Path:
    """Copy `src` into `dest` (Matroska) adding a SubRip stream with (start s, length s, text)
    cues. Returns `dest`."""
    ms = Fraction(1, 1000)
    with av.open(str(src)) as inp, av.open(str(dest), "w", format="matroska") as out:
        streams = {s.index: out.add_stream_from_template(s) for s in inp.streams}
        subs = out.add_mux_stream("subrip", time_base=ms)
        for packet in inp.demux():
            if packet.size:
                packet.stream = streams[packet.stream.index]
                out.mux(packet)
        for start, length, text in cues:
            packet = av.Packet(text.encode())
            packet.pts = packet.dts = round(start * 1000)
            packet.duration = round(length * 1000)
            packet.time_base = ms
            packet.stream = subs
            out.mux(packet)
    return Path(dest)


def subtitle_cues(path: Path) -> list[tuple[float, str]]:
    """(start seconds, text) of every packet of the first subtitle stream."""
    with av.open(str(path)) as c:
        s = c.streams.subtitles[0]
        return [(float(p.pts * s.time_base), bytes(p).decode()) for p in c.demux(s) if p.size]


def decode_warnings(path: Path) -> list[str]:
    """FFmpeg's warnings and errors while decoding every video and audio frame of `path`
    (a spliced stream with wrong parameter sets or references shows up here)."""
    import av.logging

    av.logging.set_level(av.logging.VERBOSE)
    try:
        with av.logging.Capture() as logs:
            with av.open(str(path)) as c:
                for _ in c.decode(*c.streams.video[:1], *c.streams.audio[:1]):
                    pass
    finally:
        av.logging.set_level(None)
    return [f"{name}: {message}" for level, name, message in logs
            if level <= av.logging.WARNING]
