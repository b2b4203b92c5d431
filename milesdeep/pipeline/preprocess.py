"""Preprocessing on the CPU (NumPy): one NV12/P016 picture -> one network input tensor.

This module is the reference the GPU kernel (`milesdeep/pipeline/kernels/preprocess.cu`) is
held to: both compute the function defined here, and the tests run the kernel's own source on
the CPU and compare.

THE CONVENTION (the one place it is written down)
=================================================
Coordinates are continuous, pixel k of an axis covers [k - 0.5, k + 0.5], i.e. its centre is k.

1. Display picture. The stored picture (luma H x W) is turned `rotation` degrees clockwise to
   be upright; the display picture is (Hd, Wd) = (H, W), or (W, H) for 90/270. Display pixel
   (yd, xd) is stored pixel
       0: (yd, xd)   90: (H-1-xd, yd)   180: (H-1-yd, W-1-xd)   270: (xd, W-1-yd).
   The same map holds for continuous coordinates, so rotation is a coordinate mapping done
   before sampling (a flip of an axis is c -> n-1-c, a swap exchanges the axes).
2. Resize and crop. 'squash': the display picture is resized to (Rh, Rw) = spec.size and the
   crop offset is (0, 0). 'resize-crop': it is resized to spec.resize_to and output pixel
   (i, j) is pixel (i + oy, j + ox) of that, with (oy, ox) = ((Rh-Sh)//2, (Rw-Sw)//2). Only
   the output pixels are ever computed.
3. Resampling, per display axis, separable. With s = n_display / R (input/output length), the
   resized pixel I sits at display coordinate  c = (I + 0.5) * s - 0.5  (half-pixel centres).
   The filter is a triangle (tent) of half-width f:  w(r) = max(0, 1 - |r - c| / f)  for the
   integer taps r = floor(c - f) + 1 ... floor(c + f); weights are normalised to sum 1 per
   output pixel; a tap outside [0, n-1] reads the nearest edge pixel (replicate border).
   f = s when `spec.antialias` and s > 1 (shrinking: support grows with the shrink factor,
   like PIL's BILINEAR / torchvision antialias=True), else f = 1 (plain 2-tap bilinear, like
   OpenCV INTER_LINEAR). The centre c is computed in display coordinates, then mapped to the
   stored axis by step 1.
4. Planes are resampled first, colour-converted second. Luma is sampled at (c_row, c_col) with
   half-widths (f_row, f_col) in stored luma coordinates. The chroma planes are
   ceil(H/2) x ceil(W/2), chroma sample k centred at luma coordinate 2k + 0.5 (centre-sited;
   with an odd size the last chroma sample reaches half a pixel past the picture), so a luma
   coordinate l is chroma coordinate  (l + 0.5) / 2 - 0.5  and a luma half-width f is
   max(1, f / 2) in chroma pixels. U and V are sampled there with the same tent rule, edges
   replicated on the chroma plane.
5. Units. Samples are in 8-bit units: uint8 as is, uint16 (P016, value in the high bits)
   divided by 256.
6. Colour. (R, G, B) = M (Y, U, V) + b for the stream's matrix (BT.601: Kr=0.299, Kb=0.114;
   BT.709: Kr=0.2126, Kb=0.0722) and range (limited: Y 16-235, C 16-240 centred on 128;
   full: Y 0-255, C centred on 128), see `yuv_to_rgb_matrix`. Each channel is then clamped to
   [0, 255].
7. Output. Channels in spec.channels order (RGB or BGR), value = (v - mean[c]) * scale with
   mean in that order, laid out as spec.layout (CHW or HWC per sample), written as float32 or
   float16 (round to nearest even).

The kernel evaluates exactly these formulas per output pixel (float32 arithmetic); NumPy
evaluates them per axis with tap tables built with the same float32 operations, then sums in
another order; they agree to about 1e-4 in 0-255 units. (Compile the kernel with
--fmad=false so the GPU rounds the coordinate arithmetic the same way.)
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from milesdeep.errors import MilesDeepError
from milesdeep.models.bundle import InputSpec
from milesdeep.pipeline.frames import Colour, Frame

_KR_KB = {"bt601": (0.299, 0.114), "bt709": (0.2126, 0.0722)}
_OUT_DTYPES = (np.dtype(np.float32), np.dtype(np.float16))


# --------------------------------------------------------------------------- colour


@functools.lru_cache(maxsize=8)
def yuv_to_rgb_matrix(colour: Colour) -> tuple[np.ndarray, np.ndarray]:
    """(M, b) with (R, G, B) = M @ (Y, U, V) + b, everything in 8-bit units (float64,
    read-only)."""
    try:
        kr, kb = _KR_KB[colour.matrix]
    except KeyError:
        raise ValueError(f"unknown colour matrix {colour.matrix!r}") from None
    kg = 1.0 - kr - kb
    # R, G, B from luma and centred chroma on the same 0-255 scale (the standards' equations).
    a = np.array([
        [1.0, 0.0, 2.0 * (1.0 - kr)],
        [1.0, -2.0 * kb * (1.0 - kb) / kg, -2.0 * kr * (1.0 - kr) / kg],
        [1.0, 2.0 * (1.0 - kb), 0.0],
    ])
    if colour.full_range:
        y_gain, c_gain, y_off = 1.0, 1.0, 0.0
    else:
        y_gain, c_gain, y_off = 255.0 / 219.0, 255.0 / 224.0, 16.0
    m = a @ np.diag([y_gain, c_gain, c_gain])
    b = -m @ np.array([y_off, 128.0, 128.0])
    m.setflags(write=False)
    b.setflags(write=False)
    return m, b


def channel_order(spec: InputSpec) -> tuple[int, int, int]:
    """Which RGB channel each output channel holds."""
    return (0, 1, 2) if spec.channels == "RGB" else (2, 1, 0)


# --------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class AxisPlan:
    """One display axis of the output: which stored axis it reads and how it is resampled."""

    stored_axis: int  # 0: stored rows, 1: stored columns
    flip: bool  # display coordinate c reads stored coordinate n-1-c
    n: int  # stored luma length of that axis
    resized: int  # R: length of the resized display axis
    offset: int  # crop offset into the resized axis
    count: int  # output length (spec.size on this axis)
    scale: float  # s = display length / R (rounded to float32, as the kernel receives it)
    support: float  # f: tent half-width in display (= stored luma) pixels


@dataclass(frozen=True)
class Geometry:
    """How the output rows (`y`) and columns (`x`) map into the stored picture."""

    y: AxisPlan
    x: AxisPlan
    quarter_turns: int  # rotation / 90

    @property
    def transposed(self) -> bool:
        return self.y.stored_axis == 1


def _f32(v: float) -> float:
    return float(np.float32(v))


@functools.lru_cache(maxsize=64)
def plan_geometry(height: int, width: int, rotation: int, spec: InputSpec) -> Geometry:
    """Steps 1-3 of the convention for a stored picture of `height` x `width` luma pixels."""
    if rotation not in (0, 90, 180, 270):
        raise ValueError(f"rotation must be 0, 90, 180 or 270, not {rotation!r}")
    if height < 1 or width < 1:
        raise ValueError(f"empty picture ({height}x{width})")
    q = rotation // 90
    disp_h, disp_w = (height, width) if q % 2 == 0 else (width, height)
    out_h, out_w = spec.size
    if spec.resize == "resize-crop":
        res_h, res_w = spec.resize_to or (256, 256)
    else:
        res_h, res_w = out_h, out_w
    # Stored axis and flip for display y and display x, per quarter turn (step 1).
    (ay, fy), (ax, fx) = {
        0: ((0, False), (1, False)),
        1: ((1, False), (0, True)),
        2: ((0, True), (1, True)),
        3: ((1, True), (0, False)),
    }[q]

    def axis(stored: int, flip: bool, n_disp: int, res: int, count: int) -> AxisPlan:
        s = _f32(n_disp / res)
        f = s if (spec.antialias and s > 1.0) else 1.0
        return AxisPlan(stored, flip, (height, width)[stored], res, (res - count) // 2, count,
                        s, f)

    return Geometry(axis(ay, fy, disp_h, res_h, out_h), axis(ax, fx, disp_w, res_w, out_w), q)


@functools.lru_cache(maxsize=256)
def axis_taps(plan: AxisPlan, chroma: bool) -> tuple[np.ndarray, np.ndarray]:
    """Tap indices (count, T) into the stored (luma or chroma) axis and their weights."""
    # float32 throughout, operation for operation as the kernel does it, so that both pick the
    # same taps and weights (coordinates near 4000 have float32 steps of 2.4e-4 pixel).
    half = np.float32(0.5)
    c = (np.arange(plan.offset, plan.offset + plan.count).astype(np.float32) + half) \
        * np.float32(plan.scale) - half
    if plan.flip:
        c = np.float32(plan.n - 1) - c
    f, n = np.float32(plan.support), plan.n
    if chroma:
        c = (c + half) * half - half
        f, n = max(np.float32(1.0), f * half), (n + 1) // 2
    lo = np.floor(c - f).astype(np.int64) + 1
    taps = int(np.max(np.floor(c + f).astype(np.int64) - lo)) + 1
    r = lo[:, None] + np.arange(taps)
    w = np.maximum(np.float32(0.0), np.float32(1.0) - np.abs(r.astype(np.float32) - c[:, None]) / f)
    w = w.astype(np.float64)
    w /= w.sum(axis=1, keepdims=True)
    idx = np.clip(r, 0, n - 1).astype(np.intp)
    idx.setflags(write=False)
    w32 = w.astype(np.float32)
    w32.setflags(write=False)
    return idx, w32


@dataclass(frozen=True)
class _Band:
    """An axis's tap table as dense weight blocks: output indices [a, b) read input indices
    [i0, i1) with weights W (b-a, i1-i0); edge taps already folded onto the edge pixel.
    Blocks of a few outputs let BLAS do the sums (a 1080p frame to 224 in a few ms)."""

    lo: int  # first input index any tap reads
    hi: int  # one past the last
    count: int
    blocks: tuple[tuple[int, int, int, int, np.ndarray], ...]


_BLOCK = 8  # outputs per block: measured fastest on a 1080p -> 224 resize
# OpenBLAS runs a GEMM of at most 4 * 65536 multiply-adds on the calling thread; bigger ones
# wake its thread pool, which for products this small costs more than it gains (4x slower on a
# busy 2-core machine). So every product is cut to stay under that size.
_GEMM_MACS = 1 << 18


@functools.lru_cache(maxsize=256)
def _band(plan: AxisPlan, chroma: bool) -> _Band:
    idx, w = axis_taps(plan, chroma)
    count, taps = idx.shape
    blocks = []
    for a in range(0, count, _BLOCK):
        b = min(count, a + _BLOCK)
        i0, i1 = int(idx[a:b].min()), int(idx[a:b].max()) + 1
        dense = np.zeros((b - a, i1 - i0), np.float32)
        np.add.at(dense, (np.repeat(np.arange(b - a), taps), (idx[a:b] - i0).ravel()),
                  w[a:b].ravel())
        dense.setflags(write=False)
        blocks.append((a, b, i0, i1, dense))
    return _Band(int(idx.min()), int(idx.max()) + 1, count, tuple(blocks))


def _resample(plane: np.ndarray, rows: _Band, cols: _Band) -> np.ndarray:
    """Separable resampling of a (n_r, n_c[, k]) plane to float32 (k, rows, cols): rows first
    (only the input columns the column taps reach), then columns."""
    k = 1 if plane.ndim == 2 else plane.shape[2]
    width = cols.hi - cols.lo
    src = plane[rows.lo:rows.hi, cols.lo:cols.hi].reshape(rows.hi - rows.lo, width * k)
    src = src.astype(np.float32)
    acc = np.empty((rows.count, width * k), np.float32)
    for a, b, i0, i1, dense in rows.blocks:
        step = max(1, _GEMM_MACS // dense.size)
        for c in range(0, width * k, step):
            np.matmul(dense, src[i0 - rows.lo:i1 - rows.lo, c:c + step], out=acc[a:b, c:c + step])
    if k > 1:  # components become stacked planes: (k * rows, width)
        acc = acc.reshape(rows.count, width, k).transpose(2, 0, 1).reshape(k * rows.count, width)
    out = np.empty((k * rows.count, cols.count), np.float32)
    for a, b, i0, i1, dense in cols.blocks:
        step = max(1, _GEMM_MACS // dense.size)
        for r in range(0, k * rows.count, step):
            out[r:r + step, a:b] = acc[r:r + step, i0 - cols.lo:i1 - cols.lo] @ dense.T
    return out.reshape(k, rows.count, cols.count)


def _resample_display(plane: np.ndarray, geo: Geometry, chroma: bool) -> np.ndarray:
    """Resample a stored plane straight to the output's display orientation: (k, out_h, out_w)."""
    by, bx = _band(geo.y, chroma), _band(geo.x, chroma)
    if geo.transposed:  # stored rows come from display x: resample, then swap the axes
        return np.swapaxes(_resample(plane, bx, by), 1, 2)
    return _resample(plane, by, bx)


# --------------------------------------------------------------------------- output


def _check_out(out: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
    if out is None:
        return np.empty(shape, np.float32)
    if out.shape != shape or out.dtype not in _OUT_DTYPES:
        raise ValueError(f"out must be float32 or float16 of shape {shape}, "
                         f"not {out.dtype} {out.shape}")
    return out


def _write(rgb: Sequence[np.ndarray], spec: InputSpec, out: np.ndarray) -> None:
    """Step 7: channel order, mean, scale, layout; `rgb` already clamped, 0-255 units."""
    for k, src in enumerate(channel_order(spec)):
        v = (rgb[src] - np.float32(spec.mean[k])) * np.float32(spec.scale)
        if spec.layout == "NCHW":
            out[k] = v
        else:
            out[:, :, k] = v


def _check_frame(frame: Frame) -> None:
    y, uv = frame.y, frame.uv
    if y.ndim != 2 or y.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"frame.y must be a 2-D uint8 or uint16 array, not {y.dtype} {y.shape}")
    want = ((y.shape[0] + 1) // 2, (y.shape[1] + 1) // 2, 2)
    if uv.shape != want or uv.dtype != y.dtype:
        raise ValueError(f"frame.uv must be {y.dtype} of shape {want}, not {uv.dtype} {uv.shape}")


def preprocess_frame(frame: Frame, spec: InputSpec, out: np.ndarray | None = None) -> np.ndarray:
    """One NV12/P016 frame -> one input tensor of `spec.shape` (float32 unless `out` is float16)."""
    _check_frame(frame)
    out = _check_out(out, spec.shape)
    geo = plan_geometry(frame.height, frame.width, frame.rotation, spec)
    unit = np.float32(1.0 if frame.y.dtype == np.uint8 else 1.0 / 256.0)
    yv = _resample_display(frame.y, geo, chroma=False)[0]
    uv = _resample_display(frame.uv, geo, chroma=True)
    yuv = (yv * unit, uv[0] * unit, uv[1] * unit)
    m, b = yuv_to_rgb_matrix(frame.colour)
    m32, b32 = m.astype(np.float32), b.astype(np.float32)
    rgb = []
    for k in range(3):
        v = yuv[0] * m32[k, 0] + yuv[1] * m32[k, 1] + yuv[2] * m32[k, 2] + b32[k]
        rgb.append(np.clip(v, 0.0, 255.0, out=v))
    _write(rgb, spec, out)
    return out


def preprocess_batch(frames: Sequence[Frame], spec: InputSpec,
                     out: np.ndarray | None = None) -> np.ndarray:
    """Frames -> (N, *spec.shape); `out` may be a larger buffer's first N slots."""
    shape = (len(frames), *spec.shape)
    out = _check_out(out, shape)
    for i, frame in enumerate(frames):
        preprocess_frame(frame, spec, out[i])
    return out


def preprocess_rgb(rgb: np.ndarray, spec: InputSpec, out: np.ndarray | None = None) -> np.ndarray:
    """An RGB still (H x W x 3 uint8) -> one input tensor, resampled by the same convention
    (no rotation, no chroma planes, no colour conversion)."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise MilesDeepError(f"an RGB image must be H x W x 3 uint8, not {rgb.dtype} {rgb.shape}")
    out = _check_out(out, spec.shape)
    geo = plan_geometry(rgb.shape[0], rgb.shape[1], 0, spec)
    _write(list(_resample_display(rgb, geo, chroma=False)), spec, out)
    return out


# --------------------------------------------------------------------------- test pictures


def frame_from_rgb(rgb: np.ndarray, colour: Colour = Colour(), rotation: int = 0,
                   dtype: type[np.integer] = np.uint8) -> Frame:
    """An NV12 (uint8) or P016 (uint16) frame holding an RGB picture: the inverse of step 6,
    chroma averaged over each 2x2 block (edge pixels repeated for odd sizes), rounded."""
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError("rgb must be H x W x 3")
    m, b = yuv_to_rgb_matrix(colour)
    yuv = (rgb.astype(np.float64) - b) @ np.linalg.inv(m).T
    h, w = rgb.shape[:2]
    padded = np.pad(yuv[..., 1:], ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    c = padded.reshape((h + 1) // 2, 2, (w + 1) // 2, 2, 2).mean(axis=(1, 3))
    unit = 1.0 if np.dtype(dtype) == np.uint8 else 256.0
    top = float(np.iinfo(dtype).max)

    def quantise(v: np.ndarray) -> np.ndarray:
        return np.clip(np.rint(v * unit), 0, top).astype(dtype)

    return Frame(quantise(yuv[..., 0]), quantise(c), colour, rotation)
