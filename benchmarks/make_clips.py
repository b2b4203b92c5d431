"""Make the reference clips for the seconds-per-hour benchmark.

Every clip alternates three kinds of content in segments of 2-12 s whose boundaries fall
anywhere (not on keyframes), so the per-second class changes inside GOPs:

- `natural`: a photograph (matplotlib's sample `grace_hopper.jpg`) panned slowly;
- `pattern`: moving colour bars and a zone plate (test patterns);
- `blobs`: abstract skin-toned ellipses that the default model (open_nsfw) scores as its second
  class (found by a small random search; nothing but coloured shapes).

Film-like grain (a bank of noise frames) keeps the encoder spending its bitrate, so decoding
costs what it costs on real footage. H.264 uses libx264 `veryfast` (CABAC, B-frames, closed
GOPs) at a capped bitrate; HEVC uses libx265. Audio: an AAC tone, 48 kHz stereo.

The 10-minute clip for the memory check is the 1-minute clip repeated by remuxing (stream
copy with shifted timestamps), which costs seconds instead of a 10-minute encode.

    python benchmarks/make_clips.py --out benchmarks/clips          # the full set
    python benchmarks/make_clips.py --out /tmp/clips --only h264_1080p30_gop2s
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

SAMPLE_RATE = 48000

# Parameters of the "blobs" picture: background RGB, then 6 ellipses of
# (cx, cy, rx, ry, r, g, b, shading), all in [0, 1].
BLOBS = [0.193, 0.72, 0.107, 0.062, 0.915, 0.605, 0.728, 0.908, 0.419, 0.561, 0.166, 0.663,
         0.503, 0.0, 0.981, 0.798, 0.595, 0.441, 0.693, 0.183, 0.0, 0.027, 0.144, 0.708, 0.62,
         0.25, 0.978, 0.729, 0.609, 0.636, 0.758, 0.659, 0.486, 0.628, 0.256, 0.117, 0.529,
         0.165, 0.19, 0.962, 0.697, 0.646, 0.669, 0.603, 0.074, 0.436, 0.753, 0.813, 0.543,
         0.423, 0.167]
KINDS = ("natural", "pattern", "blobs")


@dataclass
class ClipSpec:
    name: str
    width: int
    height: int
    seconds: float
    gop_seconds: float
    codec: str = "libx264"
    bitrate: int = 8_000_000
    fps: int = 30
    seed: int = 7
    segment_seconds: tuple[float, float] = (2.0, 12.0)


# The benchmark matrix's clips (1 min each; the 10 min one is made by repetition).
CLIPS = [
    ClipSpec("h264_1080p30_gop2s", 1920, 1080, 60, 2.0),
    ClipSpec("h264_1080p30_gop8s", 1920, 1080, 60, 250 / 30),  # x264's default keyint 250
    ClipSpec("h264_720p30_gop2s", 1280, 720, 60, 2.0, bitrate=4_000_000),
    ClipSpec("h264_720p30_gop8s", 1280, 720, 60, 250 / 30, bitrate=4_000_000),
    ClipSpec("hevc_1080p30_gop2s", 1920, 1080, 30, 2.0, codec="libx265", bitrate=4_000_000),
]
LONG = ("h264_1080p30_gop2s", "h264_1080p30_gop2s_10min", 10)


def segments(seconds: float, seed: int, lengths: tuple[float, float] = (2.0, 12.0)
             ) -> list[tuple[float, float, str]]:
    """(start, end, kind) covering [0, seconds): lengths drawn from `lengths`, kinds cycling."""
    rng = np.random.default_rng(seed)
    out, t, k = [], 0.0, 0
    while t < seconds:
        end = min(seconds, t + float(rng.uniform(*lengths)))
        out.append((t, end, KINDS[k % len(KINDS)]))
        t, k = end, k + 1
    return out


def _natural(w: int, h: int) -> np.ndarray:
    import matplotlib
    from PIL import Image

    src = Path(matplotlib.__file__).parent / "mpl-data" / "sample_data" / "grace_hopper.jpg"
    return np.asarray(Image.open(src).convert("RGB").resize((w, h), Image.BILINEAR))


def _pattern(w: int, h: int) -> np.ndarray:
    img = np.zeros((h, w, 3), np.uint8)
    bars = [(192, 192, 192), (192, 192, 0), (0, 192, 192), (0, 192, 0), (192, 0, 192),
            (192, 0, 0), (0, 0, 192)]
    for k, c in enumerate(bars):
        img[: h // 2, k * w // 7:(k + 1) * w // 7] = c
    yy, xx = np.mgrid[0:h - h // 2, 0:w].astype(np.float32)
    r2 = (xx - w / 2) ** 2 + (yy - h / 4) ** 2
    zone = (127.5 + 127.5 * np.cos(r2 * (np.pi / (2.0 * w)))).astype(np.uint8)
    img[h // 2:] = zone[..., None]
    return img


def _blobs(w: int, h: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    yy, xx = yy / h, xx / w
    p = np.asarray(BLOBS, np.float32)
    img = np.ones((h, w, 3), np.float32) * p[0:3]
    for k in range(6):
        cx, cy, rx, ry, r, g, b, sh = p[3 + 8 * k: 11 + 8 * k]
        d = ((xx - cx) / (0.05 + rx)) ** 2 + ((yy - cy) / (0.05 + ry)) ** 2
        m = np.clip(1.5 - d, 0, 1)[..., None]
        shade = (1 - sh * np.clip(d, 0, 1))[..., None]
        img = img * (1 - m) + m * np.array([r, g, b], np.float32) * shade
    return np.clip(img * 255, 0, 255).astype(np.uint8)


class Renderer:
    """Frames of a clip: each kind is a still 12% larger than the frame, panned over time,
    plus grain from a bank of noise frames."""

    def __init__(self, w: int, h: int, seed: int) -> None:
        self.w, self.h = w, h
        big = (int(w * 1.12) // 2 * 2, int(h * 1.12) // 2 * 2)
        self.stills = {"natural": _natural(*big), "pattern": _pattern(*big),
                       "blobs": _blobs(*big)}
        rng = np.random.default_rng(seed)
        self.grain = [rng.integers(-6, 7, size=(h, w, 3), dtype=np.int16) for _ in range(6)]

    def frame(self, kind: str, t: float, i: int) -> np.ndarray:
        still = self.stills[kind]
        mx, my = still.shape[1] - self.w, still.shape[0] - self.h
        ox = int((0.5 + 0.5 * np.sin(0.31 * t)) * mx)
        oy = int((0.5 + 0.5 * np.cos(0.23 * t)) * my)
        crop = still[oy:oy + self.h, ox:ox + self.w].astype(np.int16)
        crop += self.grain[i % len(self.grain)]
        return np.clip(crop, 0, 255).astype(np.uint8)


def make_clip(path: Path, spec: ClipSpec, log=None) -> dict:
    """Encode one clip and write `<path>.json` with its segments; returns that record."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    segs = segments(spec.seconds, spec.seed, spec.segment_seconds)
    r = Renderer(spec.width, spec.height, spec.seed)
    n = int(round(spec.seconds * spec.fps))
    gop = max(1, int(round(spec.gop_seconds * spec.fps)))
    t0 = time.perf_counter()
    tmp = path.with_name(path.name + ".part" + path.suffix)
    with av.open(str(tmp), "w") as out:
        vs = out.add_stream(spec.codec, rate=spec.fps)
        vs.width, vs.height, vs.pix_fmt = spec.width, spec.height, "yuv420p"
        vs.bit_rate = spec.bitrate
        vs.codec_context.gop_size = gop
        if spec.codec == "libx264":
            vs.options = {"preset": "veryfast", "bf": "3", "g": str(gop),
                          "keyint_min": str(gop), "sc_threshold": "0",
                          "maxrate": str(spec.bitrate), "bufsize": str(2 * spec.bitrate),
                          "x264-params": "open-gop=0"}
        else:
            vs.options = {"preset": "ultrafast", "g": str(gop),
                          "x265-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:"
                                         "open-gop=0:bframes=3:log-level=error"}
        aus = out.add_stream("aac", rate=SAMPLE_RATE, layout="stereo")
        k = 0
        for i in range(n):
            t = i / spec.fps
            while k + 1 < len(segs) and t >= segs[k][1]:
                k += 1
            frame = av.VideoFrame.from_ndarray(r.frame(segs[k][2], t, i), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, spec.fps)
            for p in vs.encode(frame):
                out.mux(p)
            if log and i % (spec.fps * 10) == 0:
                log(f"{path.name}: {i / spec.fps:.0f}/{spec.seconds:.0f} s")
        for p in vs.encode():
            out.mux(p)
        size = aus.codec_context.frame_size or 1024
        total = int(spec.seconds * SAMPLE_RATE)
        fmt = aus.codec_context.format.name
        for start in range(0, total, size):
            m = min(size, total - start)
            tt = (start + np.arange(m)) / SAMPLE_RATE
            tone = (0.2 * np.sin(2 * np.pi * 440.0 * tt)).astype(np.float32)
            af = av.AudioFrame.from_ndarray(np.stack([tone, tone]), format=fmt,
                                            layout="stereo")
            af.sample_rate, af.pts, af.time_base = SAMPLE_RATE, start, Fraction(1, SAMPLE_RATE)
            for p in aus.encode(af):
                out.mux(p)
        for p in aus.encode():
            out.mux(p)
    tmp.replace(path)
    record = {"clip": asdict(spec), "segments": segs, "path": str(path),
              "encode_seconds": round(time.perf_counter() - t0, 1)}
    path.with_name(path.name + ".json").write_text(json.dumps(record, indent=1))
    return record


def repeat_clip(src: Path, dst: Path, times: int) -> Path:
    """`dst` = `src` played `times` times, by stream copy with shifted timestamps. The clip must
    be made of closed GOPs (so each copy decodes on its own) — `make_clip`'s are."""
    src, dst = Path(src), Path(dst)
    tmp = dst.with_name(dst.name + ".part" + dst.suffix)
    with av.open(str(src)) as probe:
        # The shift per copy: the longest stream's span from its first decode time to its
        # last presentation end (B-frames start decoding before time 0), rounded up to whole
        # video frames; the copies are then separated by a frame or two of hold.
        first: dict[int, Fraction] = {}
        ends: dict[int, Fraction] = {}
        for packet in probe.demux():
            if packet.pts is None or packet.stream.type not in ("video", "audio"):
                continue
            i, tb = packet.stream.index, packet.time_base
            dts = packet.dts if packet.dts is not None else packet.pts
            first[i] = min(first.get(i, dts * tb), dts * tb)
            ends[i] = max(ends.get(i, 0), (packet.pts + (packet.duration or 0)) * tb)
        fps = probe.streams.video[0].average_rate or Fraction(30)
    span = max(ends[i] - first[i] for i in ends)
    span = Fraction(int(np.ceil(float(span * fps) - 1e-6)), 1) / fps
    with av.open(str(src)) as inp, av.open(str(tmp), "w") as out:
        streams = [s for s in inp.streams if s.type in ("video", "audio")]
        omap = {s.index: out.add_stream_from_template(s) for s in streams}
        for k in range(times):
            inp.seek(0)
            for packet in inp.demux(streams):
                if packet.dts is None and packet.pts is None:
                    continue  # the demuxer's end-of-stream marker
                shift = int(round(span * k / packet.time_base))
                if packet.pts is not None:
                    packet.pts += shift
                if packet.dts is not None:
                    packet.dts += shift
                packet.stream = omap[packet.stream.index]
                out.mux(packet)
    tmp.replace(dst)
    return dst


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "clips")
    ap.add_argument("--only", nargs="*", help="clip names to make (default: all)")
    ap.add_argument("--force", action="store_true", help="remake clips that exist")
    args = ap.parse_args(argv)
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    for spec in CLIPS:
        if args.only and spec.name not in args.only:
            continue
        path = args.out / f"{spec.name}.mp4"
        if path.exists() and not args.force:
            log(f"{path}: exists")
            continue
        rec = make_clip(path, spec, log)
        log(f"{path}: {path.stat().st_size / 1e6:.1f} MB in {rec['encode_seconds']} s")
    src, name, times = LONG
    if not args.only or name in args.only:
        dst = args.out / f"{name}.mp4"
        if not (args.out / f"{src}.mp4").exists():
            log(f"{dst}: needs {src}.mp4 first")
        elif args.force or not dst.exists():
            repeat_clip(args.out / f"{src}.mp4", dst, times)
            log(f"{dst}: {dst.stat().st_size / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
