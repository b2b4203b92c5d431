"""One CUDA context shared by PyNvVideoCodec, CuPy and TensorRT.

pycuda retains the device's *primary* context (`Device.retain_primary_context()`) and pushes it;
CuPy and TensorRT use the CUDA runtime API, which works in the primary context of the current
device, so all three share one context and device pointers pass between them freely.
PyNvVideoCodec asks for a context handle and a stream (`cuda_context=`, `cuda_stream=`): it gets
the primary context's handle and a CuPy stream's pointer, so its decoded surfaces are ordered
with the CuPy kernels and TensorRT enqueues on the same stream.

CUDA contexts are current per thread: a worker thread that touches the GPU enters
`GpuContext.activated()` first.

Docs read:
- pycuda: https://documen.tician.de/pycuda/driver.html (`init`, `Device(i)`,
  `Device.retain_primary_context`, `Device.name`, `Device.compute_capability`,
  `Context.push/pop/detach`, `Context.handle`); NVIDIA's PyNvVideoCodec SimpleDecoder sample
  passes `cuda_context=ctx.handle, cuda_stream=stream.handle` the same way.
- CuPy: https://docs.cupy.dev/en/stable/reference/generated/cupy.cuda.Stream.html
  (`Stream(non_blocking=True)`, `.ptr`, `.synchronize()`),
  https://docs.cupy.dev/en/stable/reference/generated/cupy.cuda.Device.html (`use()`).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

from milesdeep.errors import MilesDeepError


class GpuContext:
    """The device, its retained primary context, and the pipeline's CUDA stream."""

    def __init__(self, device_id: int = 0) -> None:
        try:
            import cupy
            import pycuda.driver as cuda
        except ImportError as e:
            raise MilesDeepError(f"the GPU path needs {e.name}: pip install 'milesdeep[gpu]'"
                                 ) from None
        cuda.init()
        if device_id >= cuda.Device.count():
            raise MilesDeepError(f"no CUDA device {device_id} (found {cuda.Device.count()})")
        self.device_id = device_id
        self._cuda = cuda
        self._device = cuda.Device(device_id)
        self._context = self._device.retain_primary_context()
        self._pushed: set[int] = set()
        self._lock = threading.Lock()
        self._push()
        self._cupy = cupy
        cupy.cuda.Device(device_id).use()
        self.stream: Any = cupy.cuda.Stream(non_blocking=True)
        self.name: str = self._device.name()
        major, minor = self._device.compute_capability()
        self.compute_capability: tuple[int, int] = (int(major), int(minor))

    @property
    def context_handle(self) -> int:
        return int(self._context.handle)

    @property
    def stream_ptr(self) -> int:
        return int(self.stream.ptr)

    def _push(self) -> None:
        tid = threading.get_ident()
        with self._lock:
            if tid in self._pushed:
                return
            self._context.push()
            self._pushed.add(tid)

    def _pop(self) -> None:
        tid = threading.get_ident()
        with self._lock:
            if tid not in self._pushed:
                return
            self._cuda.Context.pop()
            self._pushed.discard(tid)

    @contextlib.contextmanager
    def activated(self) -> Iterator[GpuContext]:
        """Make the shared context current in this thread (for worker threads)."""
        tid = threading.get_ident()
        mine = tid not in self._pushed
        if mine:
            self._push()
        self._cupy.cuda.Device(self.device_id).use()
        try:
            yield self
        finally:
            if mine:
                self._pop()

    def close(self) -> None:
        try:
            self.stream.synchronize()
        finally:
            self._pop()
            self._context.detach()

    def __enter__(self) -> GpuContext:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
