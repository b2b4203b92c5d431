"""The preprocessing kernel: it compiles for every supported GPU (nvcc and NVRTC), and its own
source, compiled as C++ and run over its whole launch grid on the CPU, computes the same
function as the NumPy reference (milesdeep.pipeline.preprocess)."""

from __future__ import annotations

import ctypes
import itertools
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from milesdeep.models.bundle import InputSpec
from milesdeep.pipeline.frames import Colour, Frame
from milesdeep.pipeline.kernels import (
    NVRTC_OPTIONS,
    PREPROCESS_SOURCE,
    SCALAR_PARAMS,
    kernel_name,
    kernel_source,
    plan_launch,
)
from milesdeep.pipeline.preprocess import preprocess_frame

KERNEL_DIR = Path(__file__).resolve().parents[1] / "milesdeep" / "pipeline" / "kernels"
SHIM_DIR = Path(__file__).resolve().parent / "kernel_shim"
ENTRIES = [kernel_name(i, o) for i in (np.uint8, np.uint16) for o in (np.float32, np.float16)]
ARCHS = (75, 80, 86, 89, 90)
TOLERANCE = 1.0 / 255.0  # in 0-255 units, the agreement the kernel is held to


# --------------------------------------------------------------------------- compilers


@pytest.mark.parametrize("arch", ARCHS)
def test_nvcc_compiles_for(arch: int, tmp_path: Path) -> None:
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc is not on PATH")
    cubin = tmp_path / f"preprocess_sm{arch}.cubin"
    proc = subprocess.run(
        [nvcc, f"-arch=sm_{arch}", "--cubin", "-Werror", "all-warnings", "--fmad=false",
         "-o", str(cubin), str(KERNEL_DIR / PREPROCESS_SOURCE)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    data = cubin.read_bytes()
    for entry in ENTRIES:
        assert entry.encode() in data


@pytest.fixture(scope="module")
def nvrtc():  # noqa: ANN201 - cupy.cuda.nvrtc, a module
    try:
        from cupy.cuda import nvrtc as mod

        mod.getVersion()
    except Exception as e:  # ImportError, or the NVRTC library missing (a CuPy error type)
        pytest.skip(f"CuPy's NVRTC is unavailable ({type(e).__name__}): "
                    'pip install cupy-cuda13x "cuda-toolkit[nvrtc]==13.*"')
    return mod


@pytest.mark.parametrize("arch", ARCHS)
def test_nvrtc_compiles_for(nvrtc, arch: int) -> None:
    # CuPy's RawModule needs a device to pick the architecture; its NVRTC binding does not.
    # The options are the ones RawModule passes (our NVRTC_OPTIONS plus its own two).
    if arch not in nvrtc.getSupportedArchs():
        pytest.skip(f"this NVRTC cannot target sm_{arch}")
    prog = nvrtc.createProgram(kernel_source(), PREPROCESS_SOURCE, (), ())
    try:
        try:
            nvrtc.compileProgram(prog, (*NVRTC_OPTIONS, f"--gpu-architecture=sm_{arch}",
                                        "-ftz=true", "--device-as-default-execution-space"))
        except nvrtc.NVRTCError:
            pytest.fail(nvrtc.getProgramLog(prog))
        cubin = nvrtc.getCUBIN(prog)
    finally:
        nvrtc.destroyProgram(prog)
    for entry in ENTRIES:
        assert entry.encode() in cubin


# --------------------------------------------------------------------------- CPU shim


class Shim:
    """The kernel source compiled by g++ with tests/kernel_shim, launched like cuLaunchKernel."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self.lib = lib
        lib.md_launch.restype = ctypes.c_int
        lib.md_param_sizes.restype = ctypes.c_int

    def param_sizes(self, name: str) -> list[int]:
        buf = (ctypes.c_int * 64)()
        n = self.lib.md_param_sizes(name.encode(), buf, 64)
        assert n >= 0, f"no kernel {name}"
        return list(buf[:n])

    def launch(self, name: str, grid: tuple[int, ...], block: tuple[int, ...],
               args: tuple) -> None:
        # Each argument's bytes, in a buffer we keep alive, addressed from a void* array.
        values = []
        for a in args:
            if isinstance(a, np.ndarray):
                values.append(np.array([a.ctypes.data], np.uint64))
            else:
                values.append(np.array([a]))
        sizes = [v.itemsize for v in values]
        assert sizes == self.param_sizes(name), "arguments do not match the kernel's signature"
        params = (ctypes.c_void_p * len(values))(*[v.ctypes.data for v in values])
        rc = self.lib.md_launch(name.encode(), (ctypes.c_uint * 3)(*grid),
                                (ctypes.c_uint * 3)(*block), params)
        assert rc == 0

    def run(self, frame: Frame, spec: InputSpec, out: np.ndarray, slot: int = 0) -> None:
        y, uv = frame.y, frame.uv
        assert y.strides[1] == y.itemsize and uv.strides[1:] == (2 * uv.itemsize, uv.itemsize)
        plan = plan_launch(spec, height=frame.height, width=frame.width, colour=frame.colour,
                           rotation=frame.rotation, in_dtype=y.dtype, out_dtype=out.dtype,
                           y_pitch=y.strides[0], uv_pitch=uv.strides[0])
        # Pointer arguments: the arrays' first element (planes may be views with padded rows).
        self.launch(plan.name, plan.grid, plan.block, plan.args(y, uv, out, slot))


@pytest.fixture(scope="session")
def shim(tmp_path_factory: pytest.TempPathFactory) -> Shim:
    gxx = shutil.which("g++")
    if gxx is None:
        pytest.skip("g++ is not on PATH")
    lib = tmp_path_factory.mktemp("shim") / "md_kernel_shim.so"
    proc = subprocess.run(
        [gxx, "-O2", "-std=c++17", "-shared", "-fPIC", "-Wall", "-Wextra", "-Werror",
         "-I", str(SHIM_DIR), "-I", str(KERNEL_DIR), str(SHIM_DIR / "runner.cpp"),
         "-o", str(lib)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return Shim(ctypes.CDLL(str(lib)))


def random_frame(rng: np.random.Generator, h: int, w: int, colour: Colour, rotation: int,
                 dtype: type, pad: int = 0) -> Frame:
    """Noise planes (the hardest case for agreement), rows padded by `pad` samples like a
    decoder surface's pitch."""
    top = np.iinfo(dtype).max + 1
    ch, cw = (h + 1) // 2, (w + 1) // 2
    y = rng.integers(0, top, (h, w + pad), dtype=dtype)[:, :w]
    uv = rng.integers(0, top, (ch, cw + pad, 2), dtype=dtype)[:, :cw]
    return Frame(y, uv, colour, rotation)


def test_arguments_match_the_kernel_signature(shim: Shim) -> None:
    for name in ENTRIES:
        assert shim.param_sizes(name) == [8, 8, 8] + [t().itemsize for _, t in SCALAR_PARAMS]


SOURCES = [(37, 53), (48, 64), (11, 9), (203, 301)]  # odd, even, tiny (enlarged), shrunk ~10x
CASES = list(itertools.product(range(len(SOURCES)), ("squash", "resize-crop"),
                               ("NCHW", "NHWC"), ("bt601", "bt709")))


@pytest.mark.parametrize("src, resize, layout, matrix", CASES)
def test_kernel_matches_numpy(shim: Shim, src: int, resize: str, layout: str,
                              matrix: str) -> None:
    k = CASES.index((src, resize, layout, matrix))
    rng = np.random.default_rng(k)
    # The factors not in the product cycle through the cases, so every value is covered.
    full_range, antialias = bool(k % 2), k % 4 != 3
    rotation = (0, 90, 180, 270)[(k // 2) % 4]
    dtype = (np.uint8, np.uint16)[(k // 3) % 2]
    spec = InputSpec(layout=layout, channels=("RGB", "BGR")[k % 2], size=(24, 20),
                     resize=resize, resize_to=(31, 28) if resize == "resize-crop" else None,
                     antialias=antialias)
    h, w = SOURCES[src]
    frame = random_frame(rng, h, w, Colour(matrix, full_range), rotation, dtype, pad=k % 5)
    out = np.full((2, *spec.shape), np.nan, np.float32)
    shim.run(frame, spec, out, slot=1)
    assert np.isnan(out[0]).all(), "the kernel wrote outside its batch slot"
    want = preprocess_frame(frame, spec)
    diff = float(np.abs(out[1] - want).max())
    assert diff <= TOLERANCE, diff


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_kernel_half_output_and_mean_scale(shim: Shim, dtype: type) -> None:
    rng = np.random.default_rng(7)
    spec = InputSpec(layout="NHWC", channels="BGR", size=(16, 18), resize="resize-crop",
                     resize_to=(20, 21), mean=(104.0, 117.0, 123.0), scale=0.017)
    frame = random_frame(rng, 45, 61, Colour("bt709", False), 270, dtype, pad=3)
    out = np.zeros((3, *spec.shape), np.float16)
    shim.run(frame, spec, out, slot=2)
    assert not out[:2].any()
    want = preprocess_frame(frame, spec)
    # float16 keeps 11 significant bits; in 0-255 units that is at most 2^-4 here.
    got = out[2].astype(np.float32)
    assert np.abs(got - want).max() <= np.abs(want).max() * 2.0**-11 + TOLERANCE * spec.scale
    # and the half rounding is the NumPy one (nearest even) of nearly the same float
    assert np.mean(got == want.astype(np.float16).astype(np.float32)) > 0.95


def test_kernel_large_frame_open_nsfw(shim: Shim) -> None:
    """A 1080p frame through the default model's geometry: float32 coordinates near 2000,
    a tent nearly 8 pixels wide (scale 1, so the difference is in 0-255 units)."""
    from milesdeep.models.builtin import OPEN_NSFW_SPEC

    rng = np.random.default_rng(3)
    frame = random_frame(rng, 1080, 1920, Colour("bt709", False), 0, np.uint8)
    out = np.empty((1, *OPEN_NSFW_SPEC.shape), np.float32)
    shim.run(frame, OPEN_NSFW_SPEC, out)
    assert np.abs(out[0] - preprocess_frame(frame, OPEN_NSFW_SPEC)).max() <= TOLERANCE
