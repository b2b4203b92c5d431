"""What differs between TensorRT 10.x and 11.x, in one place, plus the pure shape logic.

The only build-time difference that matters here: networks are strongly typed. TensorRT 10.x
needs `NetworkDefinitionCreationFlag.STRONGLY_TYPED` passed to `Builder.create_network`;
TensorRT 11.0 made strong typing unconditional and deprecated the flag (accepted, ignored), and
removed `BuilderFlag.FP16/INT8` and the INT8 calibrators. So precision always comes from the
ONNX itself (an FP16 ONNX, or a Q/DQ INT8 ONNX) and no precision builder flag is ever set.

Everything else used here has the same Python name in both:
`Builder.create_builder_config`, `IBuilderConfig.set_memory_pool_limit(MemoryPoolType.WORKSPACE,
n)`, `create_optimization_profile` / `IOptimizationProfile.set_shape(name, min, opt, max)`,
`IBuilderConfig.create_timing_cache` / `set_timing_cache(cache, ignore_mismatch)`,
`IBuilderConfig.progress_monitor` (an `IProgressMonitor` with `phase_start`, `step_complete`,
`phase_finish`), `Builder.build_serialized_network`, `OnnxParser.parse_from_file`,
`Runtime.deserialize_cuda_engine`, `ICudaEngine.num_io_tensors / get_tensor_name /
get_tensor_mode / get_tensor_shape / get_tensor_dtype / get_tensor_profile_shape`,
`IExecutionContext.set_input_shape / set_tensor_address / execute_async_v3(stream_handle)`.

Documentation read (TensorRT Python API):
- https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/infer/Core/Builder.html
- https://docs.nvidia.com/deeplearning/tensorrt/11.0.0/_static/python-api/infer/Core/Builder.html
  (STRONGLY_TYPED: "Deprecated in TensorRT 11.0. Strongly typed mode is always enabled")
- https://docs.nvidia.com/deeplearning/tensorrt/latest/api/migration/tensorrt-10x-to-11x-python-api-reference.html
  (BuilderFlag.FP16/INT8, int8_calibrator removed: "Strong typing", "Explicit quantization
  with Q/DQ nodes")
- https://docs.nvidia.com/deeplearning/tensorrt/latest/api/migration/tensorrt-10x-to-11x-python-api-patterns.html
- https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/parsers/Onnx/pyOnnx.html
- https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/infer/Core/ProgressMonitor.html
- https://docs.nvidia.com/deeplearning/tensorrt/11.0.0/_static/python-api/infer/Core/Engine.html
- https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/infer/Core/ExecutionContext.html
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from milesdeep.errors import MilesDeepError


def version_tuple(version: str) -> tuple[int, ...]:
    """'10.13.0.35' -> (10, 13, 0, 35); a suffix like 'rc1' or '+cuda13' is dropped."""
    nums = []
    for part in version.split("."):
        m = re.match(r"\d+", part)
        if not m:
            break
        nums.append(int(m.group()))
    if not nums:
        raise ValueError(f"not a version: {version!r}")
    return tuple(nums)


def supported_major(version: str) -> int:
    major = version_tuple(version)[0]
    if major not in (10, 11):
        raise MilesDeepError(f"TensorRT {version} is not supported: install TensorRT 10.x or "
                             "11.x (pip install 'tensorrt>=10,<12')")
    return major


def network_flags(version: str, strongly_typed_flag: int | None) -> int:
    """Flags for `Builder.create_network`: STRONGLY_TYPED on 10.x; nothing on 11.x, where
    strong typing is always on and the flag is deprecated. `strongly_typed_flag` is
    `int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)` (None when the enum lacks it)."""
    major = supported_major(version)
    if major >= 11:
        return 0
    if strongly_typed_flag is None:
        raise MilesDeepError(f"TensorRT {version} has no strongly typed networks: install "
                             "TensorRT 10.12 or newer")
    return 1 << strongly_typed_flag


def profile_shapes(input_shape: Sequence[int | None], batch: int
                   ) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """One optimisation profile for batch 1..N with opt N, from the network input's shape
    (dynamic dimensions are -1 or None). Only the batch axis may be dynamic."""
    if batch < 1:
        raise MilesDeepError("--batch must be at least 1")
    if len(input_shape) < 2:
        raise MilesDeepError(f"the model input has shape {list(input_shape)}; a batch of "
                             "images is needed")
    rest = [None if d is None or d < 0 else int(d) for d in input_shape[1:]]
    if any(d is None for d in rest):
        raise MilesDeepError(f"the model input {list(input_shape)} has a dynamic dimension "
                             "other than the batch; export it with a fixed image size")
    b0 = input_shape[0]
    if b0 is not None and b0 >= 0:
        if b0 != batch:
            raise MilesDeepError(f"the model has a fixed batch of {b0}; build with --batch {b0} "
                                 "or export the ONNX with a dynamic batch axis")
        lo = hi = opt = b0
    else:
        lo, opt, hi = 1, batch, batch
    fixed = tuple(int(d) for d in rest)  # type: ignore[arg-type]
    return (lo, *fixed), (opt, *fixed), (hi, *fixed)


def split_batches(n: int, max_batch: int) -> list[tuple[int, int]]:
    """[start, stop) chunks of at most `max_batch` covering n items (an engine's profile caps
    the batch it accepts)."""
    if max_batch < 1:
        raise ValueError("max_batch must be positive")
    return [(s, min(s + max_batch, n)) for s in range(0, n, max_batch)]


def make_progress_monitor(trt: Any, on_event: Callable[[str, str | None, int, int], None]
                          ) -> Any:
    """An `IProgressMonitor` forwarding (phase, parent, step, steps) to `on_event`.

    Per the docs the monitor must be thread-safe (TensorRT calls it from its own threads), must
    call the base `__init__`, and `step_complete` returns True to continue (False cancels the
    build)."""
    lock = __import__("threading").Lock()

    class Monitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self.steps: dict[str, int] = {}
            # An exception in a callback cancels the build; the builder raises it after.
            self.error: BaseException | None = None

        def _event(self, *args: Any) -> None:
            # An exception (Ctrl-C, a display error) must not unwind through TensorRT's C++
            # threads: it cancels the build instead, which then returns no engine.
            try:
                with lock:
                    on_event(*args)
            except BaseException as e:  # noqa: BLE001
                self.error = self.error or e

        def phase_start(self, phase_name: str, parent_phase: str | None,
                        num_steps: int) -> None:
            with lock:
                self.steps[phase_name] = num_steps
            self._event(phase_name, parent_phase, 0, num_steps)

        def step_complete(self, phase_name: str, step: int) -> bool:
            self._event(phase_name, None, step + 1, self.steps.get(phase_name, 0))
            return self.error is None

        def phase_finish(self, phase_name: str) -> None:
            with lock:
                n = self.steps.pop(phase_name, 0)
            self._event(phase_name, None, n, n)

    return Monitor()


# TensorRT DataType member name -> numpy dtype name (for the sidecar; the runner uses
# trt.nptype). Listed by name so this table needs no TensorRT import.
TRT_DTYPES = {
    "FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT8": "int8",
    "INT32": "int32", "INT64": "int64", "BOOL": "bool", "UINT8": "uint8", "FP8": "float8",
}


def dtype_name(trt_dtype: Any) -> str:
    name = getattr(trt_dtype, "name", str(trt_dtype)).split(".")[-1]
    return TRT_DTYPES.get(name, name.lower())
