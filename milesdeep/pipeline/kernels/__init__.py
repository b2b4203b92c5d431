"""CUDA kernel sources shipped in the package, and the pure-Python side of launching them.

`preprocess.cu` holds the NV12/P016 -> tensor kernels (compiled at run time by CuPy's NVRTC on
the GPU path, and as C++ on the CPU in the tests). `plan_launch` turns a frame description and
an `InputSpec` into the launch geometry and the kernel's scalar parameters, in the exact order
and C types of the kernel's signature; the CuPy launcher and the CPU test harness both use it.
Nothing here imports a GPU package.
"""

from __future__ import annotations

import functools
import importlib.resources
from dataclasses import dataclass
from typing import Any

import numpy as np

from milesdeep.models.bundle import InputSpec
from milesdeep.pipeline.frames import Colour
from milesdeep.pipeline.preprocess import channel_order, plan_geometry, yuv_to_rgb_matrix

PREPROCESS_SOURCE = "preprocess.cu"
BLOCK = (32, 8, 1)  # threads per block: x along output columns, y along output rows
# NVRTC options: no fused multiply-add, so the GPU rounds the coordinate arithmetic exactly as
# the NumPy reference does (the kernel is memory-bound; FMA buys nothing here).
NVRTC_OPTIONS = ("--fmad=false",)

_IN = {np.dtype(np.uint8): "u8", np.dtype(np.uint16): "u16"}
_OUT = {np.dtype(np.float32): "f32", np.dtype(np.float16): "f16"}

# The parameters after the three pointers (y, uv, out), as in MD_ENTRY in preprocess.cu.
SCALAR_PARAMS: tuple[tuple[str, type[np.generic]], ...] = (
    ("y_pitch", np.int32), ("uv_pitch", np.int32), ("src_h", np.int32), ("src_w", np.int32),
    ("quarter_turns", np.int32), ("slot", np.int32), ("out_h", np.int32), ("out_w", np.int32),
    ("off_y", np.int32), ("off_x", np.int32),
    ("scale_y", np.float32), ("scale_x", np.float32),
    ("support_y", np.float32), ("support_x", np.float32),
    *((f"m{r}{c}", np.float32) for r in range(3) for c in range(3)),
    ("b0", np.float32), ("b1", np.float32), ("b2", np.float32),
    ("mean0", np.float32), ("mean1", np.float32), ("mean2", np.float32),
    ("out_scale", np.float32), ("nhwc", np.int32),
)


def kernel_source(name: str = PREPROCESS_SOURCE) -> str:
    """The text of a kernel source file shipped in this package."""
    return importlib.resources.files(__name__).joinpath(name).read_text(encoding="utf-8")


def kernel_name(in_dtype: Any, out_dtype: Any) -> str:
    """The entry point for NV12 (uint8) or P016 (uint16) input and float32/float16 output."""
    try:
        return f"nv12_to_tensor_{_IN[np.dtype(in_dtype)]}_{_OUT[np.dtype(out_dtype)]}"
    except KeyError:
        raise ValueError(f"no preprocessing kernel for {np.dtype(in_dtype)} -> "
                         f"{np.dtype(out_dtype)}; inputs: uint8/uint16, outputs: "
                         "float32/float16") from None


@dataclass(frozen=True)
class Launch:
    """One frame's launch: `kernel(grid, block, launch.args(y, uv, out, slot))` in CuPy."""

    name: str
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    scalars: tuple[np.generic, ...]  # SCALAR_PARAMS values, `slot` left at 0

    def args(self, y: Any, uv: Any, out: Any, slot: int = 0) -> tuple[Any, ...]:
        """The full argument tuple: the three pointers (whatever the caller passes: CuPy arrays,
        or np.uint64 addresses) and the scalars with `slot` filled in."""
        scalars = list(self.scalars)
        scalars[_SLOT] = np.int32(slot)
        return (y, uv, out, *scalars)


_SLOT = [name for name, _ in SCALAR_PARAMS].index("slot")


@functools.lru_cache(maxsize=64)
def _plan(spec: InputSpec, height: int, width: int, colour: Colour, rotation: int,
          in_dtype: np.dtype, out_dtype: np.dtype, y_pitch: int, uv_pitch: int) -> Launch:
    geo = plan_geometry(height, width, rotation, spec)
    m, b = yuv_to_rgb_matrix(colour)
    order = list(channel_order(spec))
    m, b = m[order], b[order]  # rows in the output's channel order
    out_h, out_w = spec.size
    values = (
        y_pitch, uv_pitch, height, width, geo.quarter_turns, 0, out_h, out_w,
        geo.y.offset, geo.x.offset, geo.y.scale, geo.x.scale, geo.y.support, geo.x.support,
        *m.ravel().tolist(), *b.tolist(), *spec.mean, spec.scale, int(spec.layout == "NHWC"),
    )
    scalars = tuple(t(v) for (_, t), v in zip(SCALAR_PARAMS, values, strict=True))
    grid = (-(-out_w // BLOCK[0]), -(-out_h // BLOCK[1]), 1)
    return Launch(kernel_name(in_dtype, out_dtype), grid, BLOCK, scalars)


def plan_launch(spec: InputSpec, *, height: int, width: int, colour: Colour, rotation: int = 0,
                in_dtype: Any = np.uint8, out_dtype: Any = np.float32,
                y_pitch: int | None = None, uv_pitch: int | None = None) -> Launch:
    """Launch geometry and scalar parameters for a stored `height` x `width` NV12/P016 picture.

    Pitches are in bytes between rows (NVDEC surfaces are padded); by default rows are packed:
    width * itemsize for Y, ceil(width / 2) * 2 * itemsize for the interleaved UV plane.
    """
    in_dt, out_dt = np.dtype(in_dtype), np.dtype(out_dtype)
    item = in_dt.itemsize
    y_pitch = width * item if y_pitch is None else y_pitch
    uv_pitch = (width + 1) // 2 * 2 * item if uv_pitch is None else uv_pitch
    return _plan(spec, height, width, colour, rotation, in_dt, out_dt, y_pitch, uv_pitch)
