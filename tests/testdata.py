"""Small real inputs the tests make: videos with known timestamps and a toy colour classifier."""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from milesdeep.models.bundle import InputSpec, write_bundle

COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "gray": (128, 128, 128)}


def encode_frames(path: Path, frames: Sequence[np.ndarray], pts_ms: Sequence[int],
                  codec: str = "libx264", pix_fmt: str = "yuv420p", gop: int = 12,
                  rotation: int | None = None, options: dict[str, str] | None = None) -> Path:
    """Encode RGB frames at the given presentation times (milliseconds) — any spacing, so
    variable frame rate is easy. The last frame lasts as long as the gap before it."""
    import av

    h, w = frames[0].shape[:2]
    with av.open(str(path), "w") as out:
        vs = out.add_stream(codec, rate=30)
        vs.width, vs.height, vs.pix_fmt = w, h, pix_fmt
        vs.time_base = Fraction(1, 1000)
        vs.codec_context.time_base = Fraction(1, 1000)
        opts = {"g": str(gop), "bf": "0"} if codec == "libx264" else {}
        opts.update(options or {})
        vs.options = opts
        if rotation is not None:
            vs.set_display_rotation(rotation)
        for img, pts in zip(frames, pts_ms):
            f = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            f.pts = int(pts)
            f.time_base = Fraction(1, 1000)
            for p in vs.encode(f):
                out.mux(p)
        for p in vs.encode():
            out.mux(p)
    return path


def solid(rgb: Sequence[int], h: int = 48, w: int = 64) -> np.ndarray:
    return np.broadcast_to(np.array(rgb, np.uint8), (h, w, 3)).copy()


def colour_video(path: Path, labels_per_second: Sequence[str], fps: int = 10,
                 size: tuple[int, int] = (64, 48), gop: int = 10) -> Path:
    """A constant-frame-rate video whose every second is one solid colour from COLOURS."""
    w, h = size
    frames, pts = [], []
    for s, name in enumerate(labels_per_second):
        for k in range(fps):
            frames.append(solid(COLOURS[name], h, w))
            pts.append(round((s * fps + k) * 1000 / fps))
    return encode_frames(path, frames, pts, gop=gop)


def colour_bundle(directory: Path, layout: str = "NCHW", channels: str = "RGB",
                  logits: bool = False) -> Path:
    """A real (tiny) classifier: the mean colour of the picture decides between red, green,
    blue and gray. Global average pool, then a fixed linear layer, then softmax."""
    import onnx
    from onnx import TensorProto, helper

    directory.mkdir(parents=True, exist_ok=True)
    labels = ["red", "green", "blue", "gray"]
    h = w = 16
    # Input is (x - 128) / 64 per channel; score_c = 4*x_c - 2*(sum of others), gray wins
    # when all channels are near zero.
    wmat = np.array([[4, -2, -2, 0], [-2, 4, -2, 0], [-2, -2, 4, 0]], np.float32)
    bias = np.array([0, 0, 0, 3.0], np.float32)
    if channels == "BGR":
        wmat = wmat[::-1].copy()
    shape = ["N", 3, h, w] if layout == "NCHW" else ["N", h, w, 3]
    nodes = []
    x = "input"
    if layout == "NHWC":
        nodes.append(helper.make_node("Transpose", ["input"], ["nchw"], perm=[0, 3, 1, 2]))
        x = "nchw"
    nodes += [
        helper.make_node("GlobalAveragePool", [x], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"]),
        helper.make_node("MatMul", ["flat", "W"], ["mm"]),
        helper.make_node("Add", ["mm", "B"], ["logits"]),
    ]
    out_name = "logits"
    if not logits:
        nodes.append(helper.make_node("Softmax", ["logits"], ["prob"], axis=1))
        out_name = "prob"
    graph = helper.make_graph(
        nodes, "colours",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor("W", TensorProto.FLOAT, wmat.shape, wmat.flatten()),
         helper.make_tensor("B", TensorProto.FLOAT, bias.shape, bias)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(directory / "model.onnx"))
    spec = InputSpec(layout=layout, channels=channels, size=(h, w), resize="squash",  # type: ignore[arg-type]
                     mean=(128.0, 128.0, 128.0), scale=1 / 64)
    write_bundle(directory, "model.onnx", labels, spec, name="colours",
                 output_kind="logits" if logits else "probabilities", other_label="gray")
    return directory


def mux_silence(out: Any, stream: Any, samples: int, rate: int = 48000) -> None:
    """Encode `samples` of mono silence (1024 a frame) into an audio `stream` of `out`."""
    import av

    for start in range(0, samples, 1024):
        f = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp",
                                       layout="mono")
        f.sample_rate, f.pts, f.time_base = rate, start, Fraction(1, rate)
        for p in stream.encode(f):
            out.mux(p)
    for p in stream.encode():
        out.mux(p)
