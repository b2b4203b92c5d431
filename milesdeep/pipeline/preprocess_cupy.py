"""The CuPy launcher for the preprocessing kernel (`kernels/preprocess.cu`).

The kernel reads one NV12 or P016 picture in device memory (a `DeviceFrame` from NVDEC, or a
CPU-decoded frame uploaded to the GPU) and writes one row of the batch tensor in place:
rotation, resize (or resize-crop), YUV -> RGB/BGR, mean and scale, NCHW or NHWC — the same
function as the NumPy twin (`milesdeep.pipeline.preprocess`). Launch geometry and scalar
arguments come from `kernels.plan_launch`, which the CPU kernel tests exercise too; this module
only compiles the source once with NVRTC and enqueues launches on the pipeline's stream.

CuPy API used (docs read):
- https://docs.cupy.dev/en/stable/reference/generated/cupy.RawModule.html
  (`RawModule(code=..., options=...)`, `get_function(name)`; kernel call
  `kernel(grid, block, args)`, launched on the current stream)
- https://docs.cupy.dev/en/stable/user_guide/kernel.html (raw kernels; scalar arguments passed
  as NumPy scalars of the exact C type, arrays as device pointers)
- https://docs.cupy.dev/en/stable/reference/generated/cupy.cuda.Stream.html (`with stream:`)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from milesdeep.errors import MilesDeepError
from milesdeep.models.bundle import InputSpec
from milesdeep.pipeline.frames import Sample


class CupyPreprocessor:
    """Compiles the kernel once per process and launches it per sample."""

    def __init__(self, spec: InputSpec, gpu: Any) -> None:
        import cupy

        from milesdeep.pipeline.kernels import NVRTC_OPTIONS, kernel_source

        self.spec = spec
        self.gpu = gpu
        self.cupy = cupy
        try:
            self.module = cupy.RawModule(code=kernel_source(), options=tuple(NVRTC_OPTIONS))
            self.module.compile()  # now, not at the first launch (RawModule compiles lazily)
        except cupy.cuda.compiler.CompileException as e:  # a packaging or toolkit problem
            raise MilesDeepError(f"the preprocessing kernel does not compile with this CUDA "
                                 f"toolkit's NVRTC: {str(e).splitlines()[0]}") from None
        self._kernels: dict[str, Any] = {}

    def _kernel(self, name: str) -> Any:
        k = self._kernels.get(name)
        if k is None:
            k = self._kernels[name] = self.module.get_function(name)
        return k

    def launch(self, frame: Any, out: Any, slot: int) -> None:
        """Write `frame` (y, uv device arrays) into row `slot` of the batch buffer `out`."""
        from milesdeep.pipeline.kernels import plan_launch

        y, uv = frame.y, frame.uv
        if y.dtype != uv.dtype or y.dtype not in (np.uint8, np.uint16):
            raise MilesDeepError(f"cannot preprocess a {y.dtype}/{uv.dtype} picture on the GPU")
        if y.strides[-1] != y.itemsize or uv.strides[-1] != uv.itemsize or \
                uv.strides[-2] != 2 * uv.itemsize:
            y, uv = self.cupy.ascontiguousarray(y), self.cupy.ascontiguousarray(uv)
        if tuple(out.shape[1:]) != tuple(self.spec.shape) or not out.flags.c_contiguous:
            raise ValueError(f"batch buffer {out.shape} does not hold {self.spec.shape} rows")
        if not 0 <= slot < out.shape[0]:
            raise ValueError(f"slot {slot} outside the batch of {out.shape[0]}")
        plan = plan_launch(self.spec, height=int(y.shape[0]), width=int(y.shape[1]),
                           colour=frame.colour, rotation=int(frame.rotation),
                           in_dtype=y.dtype, out_dtype=out.dtype,
                           y_pitch=int(y.strides[0]), uv_pitch=int(uv.strides[0]))
        with self.gpu.stream:
            self._kernel(plan.name)(plan.grid, plan.block, plan.args(y, uv, out, slot))

    def preprocess_into(self, sample: Sample, out: Any, slot: int) -> None:
        self.launch(sample.frame, out, slot)
