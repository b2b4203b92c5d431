"""A sample video for trying the tool on a fresh machine (no footage needed).

Scenes of a few seconds each cycle through test patterns (colour bars, a moving gradient,
noise, a skin-toned blob field) with a tone whose pitch changes with the scene, encoded as
H.264 + AAC in MP4 with a keyframe every 2 s.
"""

from __future__ import annotations

import functools
from fractions import Fraction
from pathlib import Path

import numpy as np

from milesdeep.pipeline.atomic import atomic_path

_BARS = np.array([[192, 192, 192], [192, 192, 0], [0, 192, 192], [0, 192, 0],
                  [192, 0, 192], [192, 0, 0], [0, 0, 192]], dtype=np.uint8)


@functools.lru_cache(maxsize=2)
def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return yy, xx


def _scene(kind: int, t: float, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = _grid(h, w)
    if kind == 0:  # colour bars, sliding
        idx = ((xx / w * 7 + t) % 7).astype(int)
        return _BARS[idx]
    if kind == 1:  # moving diagonal gradient
        v = (np.sin((xx + yy) / 40.0 + t * 3) * 0.5 + 0.5) * 255
        return np.stack([v, 255 - v, np.full_like(v, 128)], -1).astype(np.uint8)
    if kind == 2:  # coarse noise
        small = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
        return np.repeat(np.repeat(small, 8, 0), 8, 1)[:h, :w]
    # skin-toned soft blobs drifting
    cx = w * (0.5 + 0.3 * np.sin(t))
    cy = h * (0.5 + 0.3 * np.cos(t * 0.7))
    d = np.exp(-(((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * (h / 3) ** 2)))
    base = np.array([224, 172, 140], np.float32)
    return (base * (0.55 + 0.45 * d[..., None])).astype(np.uint8)


def make_sample_video(path: Path, seconds: int = 60, size: tuple[int, int] = (640, 360),
                      fps: int = 30, scene_seconds: int = 5, seed: int = 0) -> Path:
    """Write the sample video atomically and return its path."""
    import av

    w, h = size
    rng = np.random.default_rng(seed)
    path = Path(path)
    with atomic_path(path) as tmp:
        with av.open(str(tmp), "w", format="mp4") as out:
            vs = out.add_stream("libx264", rate=fps)
            vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
            vs.options = {"preset": "veryfast", "g": str(2 * fps), "keyint_min": str(2 * fps),
                          "sc_threshold": "0"}
            sr = 48000
            aus = out.add_stream("aac", rate=sr)
            aus.layout = "mono"
            for i in range(seconds * fps):
                t = i / fps
                kind = int(t // scene_seconds) % 4
                frame = av.VideoFrame.from_ndarray(_scene(kind, t, h, w, rng), format="rgb24")
                frame.pts = i
                frame.time_base = Fraction(1, fps)
                for p in vs.encode(frame):
                    out.mux(p)
            for p in vs.encode():
                out.mux(p)
            n = 1024
            for k in range(0, seconds * sr, n):
                tt = np.arange(k, k + n) / sr
                pitch = 330.0 * (1 + (tt // scene_seconds) % 4 / 4)
                tone = (0.2 * np.sin(2 * np.pi * pitch * tt)).astype(np.float32)
                af = av.AudioFrame.from_ndarray(tone[None, :], format="fltp", layout="mono")
                af.sample_rate, af.pts = sr, k
                af.time_base = Fraction(1, sr)
                for p in aus.encode(af):
                    out.mux(p)
            for p in aus.encode():
                out.mux(p)
    return path
