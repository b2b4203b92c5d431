"""Running a TensorRT engine: the GPU twin of `OrtClassifier`.

`TrtClassifier.infer(batch)` has the CPU classifier's interface (a batch in, (N, labels)
float32 probabilities out) and accepts a NumPy array or a CuPy device array. For the pipeline,
`submit(batch)` / `InFlight.result()` keep two batches in flight: each of two slots owns an
execution context, CuPy input/output buffers, a pinned host buffer and an event; `submit`
enqueues `set_input_shape`, `set_tensor_address`, `execute_async_v3` and an asynchronous
device-to-host copy of the scores on the shared stream and returns at once, so the host decodes
and preprocesses the next batch while the GPU runs this one.

Engines are found by key (`milesdeep.trt_engine.cache`) and checked against their sidecar
before use: another model, TensorRT version or GPU is refused with the rebuild command.

Docs read:
- https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/infer/Core/Runtime.html
  (`Runtime(logger)`, `deserialize_cuda_engine(serialized_engine)`)
- https://docs.nvidia.com/deeplearning/tensorrt/11.0.0/_static/python-api/infer/Core/Engine.html
  (`num_io_tensors`, `get_tensor_name`, `get_tensor_mode` -> `TensorIOMode.INPUT/OUTPUT`,
  `get_tensor_shape`, `get_tensor_dtype`, `get_tensor_profile_shape(name, profile_index)`,
  `create_execution_context()`)
- https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/infer/Core/ExecutionContext.html
  (`set_input_shape(name, shape)`, `set_tensor_address(name, ptr)`,
  `execute_async_v3(stream_handle)`)
- https://docs.cupy.dev/en/latest/reference/generated/cupy.asnumpy.html (`out=`, `stream=`,
  `blocking=False`), https://docs.cupy.dev/en/latest/reference/generated/cupyx.empty_pinned.html
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from milesdeep.errors import MilesDeepError
from milesdeep.models.bundle import ModelBundle
from milesdeep.pipeline.infer import check_scores, softmax
from milesdeep.trt_engine.cache import find_engines, rebuild_command
from milesdeep.trt_engine.compat import split_batches
from milesdeep.trt_engine.cuda_context import GpuContext
from milesdeep.trt_engine.sidecar import (
    EngineSidecar,
    Environment,
    check_not_stale,
    load_sidecar,
    stale_reasons,
)


def import_tensorrt() -> Any:
    try:
        import tensorrt as trt
    except ImportError:
        raise MilesDeepError("TensorRT is not installed: pip install 'tensorrt>=10,<12' "
                             "(or pip install 'milesdeep[gpu]')") from None
    return trt


def locate_engine(bundle: ModelBundle, env: Environment, precision: str | None = None,
                  engine_path: Path | None = None, model_arg: str | None = None,
                  directory: Path | None = None) -> tuple[Path, EngineSidecar]:
    """The engine a run uses: an explicit path, or the cached one for this model; refused with
    the rebuild command when absent or stale."""
    sha = bundle.sha256
    if engine_path is not None:
        candidates = [Path(engine_path)]
        if not candidates[0].is_file():
            raise MilesDeepError("no such engine file", engine_path)
    else:
        candidates = find_engines(bundle.name, sha, directory, precision)
        if not candidates:
            raise MilesDeepError(
                f"no TensorRT engine for model {bundle.name!r}"
                + (f" at {precision}" if precision else "")
                + f"; build one with: {rebuild_command(model_arg, precision or 'fp16')}")
    # Prefer the first usable one; if all are stale, report the first.
    first_error: MilesDeepError | None = None
    for path in candidates:
        sidecar = load_sidecar(path)
        if not stale_reasons(sidecar, sha, env):
            return path, sidecar
        try:
            check_not_stale(sidecar, sha, env, path,
                            rebuild_command(model_arg, sidecar.precision,
                                            sidecar.batch_profile.max))
        except MilesDeepError as e:
            first_error = first_error or e
    assert first_error is not None
    raise first_error


def engine_problem(bundle: ModelBundle, env: Environment, precision: str | None = None,
                   engine_path: Path | None = None, model_arg: str | None = None) -> str | None:
    """Why no engine is usable (for `choose_backend`), or None."""
    try:
        locate_engine(bundle, env, precision, engine_path, model_arg)
    except MilesDeepError as e:
        return str(e)
    return None


class _Slot:
    """One batch in flight: its own execution context, buffers and completion event."""

    def __init__(self, engine: Any, trt: Any, cupy: Any, input_name: str, output_name: str,
                 max_batch: int, in_shape: tuple[int, ...], in_dtype: np.dtype,
                 out_width: int, out_dtype: np.dtype) -> None:
        import cupyx

        self.context = engine.create_execution_context()
        if self.context is None:
            raise MilesDeepError("TensorRT could not create an execution context (out of GPU "
                                 "memory?)")
        self.input = cupy.empty((max_batch, *in_shape), dtype=in_dtype)
        self.output = cupy.empty((max_batch, out_width), dtype=out_dtype)
        self.host = cupyx.empty_pinned((max_batch, out_width), dtype=out_dtype)
        self.input_name = input_name
        self.output_name = output_name
        self.event: Any = None
        self.n = 0


class InFlight:
    """A submitted batch; `result()` waits for it and returns its probabilities."""

    def __init__(self, owner: TrtClassifier, slot: _Slot, n: int) -> None:
        self._owner = owner
        self._slot = slot
        self._n = n
        self._done: np.ndarray | None = None

    def result(self) -> np.ndarray:
        if self._done is None:
            self._slot.event.synchronize()
            out = np.array(self._slot.host[: self._n], dtype=np.float32)
            scores = softmax(out) if self._owner.logits else out
            self._done = check_scores(scores, self._owner.logits, self._owner.where)
        return self._done


class TrtClassifier:
    """A deserialized engine with two execution slots on the shared stream."""

    def __init__(self, engine_path: Path, bundle: ModelBundle, gpu: GpuContext,
                 sidecar: EngineSidecar | None = None) -> None:
        import cupy

        trt = import_tensorrt()
        self.trt, self.cupy, self.gpu = trt, cupy, gpu
        self.labels = bundle.labels
        self.logits = bundle.output_kind == "logits"
        self.where = bundle.directory if bundle.directory is not None else bundle.onnx_path
        self.sidecar = sidecar or load_sidecar(Path(engine_path))
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        data = Path(engine_path).read_bytes()
        with gpu.activated():
            self.engine = self._runtime.deserialize_cuda_engine(data)
            if self.engine is None:
                raise MilesDeepError("TensorRT could not deserialize the engine; rebuild it with "
                                     f"{rebuild_command(None, self.sidecar.precision)}",
                                     engine_path)
            names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
            inputs = [n for n in names
                      if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
            outputs = [n for n in names
                       if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
            if len(inputs) != 1 or not outputs:
                raise MilesDeepError(f"the engine has inputs {inputs} and outputs {outputs}; one "
                                     "image input and a score output are needed", engine_path)
            self.input_name, self.output_name = inputs[0], outputs[0]
            # Profile 0 was built as batch 1..N (opt N).
            _, _, max_shape = self.engine.get_tensor_profile_shape(self.input_name, 0)
            self.max_batch = int(max_shape[0])
            self.input_shape = tuple(int(d) for d in max_shape[1:])
            if self.input_shape != tuple(bundle.input.shape):
                raise MilesDeepError(f"the engine takes {list(self.input_shape)} per image but "
                                     f"the model's manifest gives {list(bundle.input.shape)}; "
                                     "rebuild the engine", engine_path)
            self.input_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(self.input_name)))
            out_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(self.output_name)))
            out_shape = tuple(self.engine.get_tensor_shape(self.output_name))
            width = int(out_shape[-1])
            if width != len(self.labels):
                raise MilesDeepError(f"the engine gives {width} scores per image but there are "
                                     f"{len(self.labels)} labels; rebuild the engine or fix the "
                                     "labels", engine_path)
            self._slots = [
                _Slot(self.engine, trt, cupy, self.input_name, self.output_name, self.max_batch,
                      self.input_shape, self.input_dtype, width, out_dtype)
                for _ in range(2)
            ]
        self._next = 0
        self._pending: list[InFlight | None] = [None, None]

    # --- the pipeline's interface -------------------------------------------------------
    def input_buffer(self) -> Any:
        """The device buffer the next `submit` reads: preprocess straight into it (rows
        [0, n)), so no copy is needed. Waits for that slot's previous batch to finish."""
        slot = self._slots[self._next]
        prev = self._pending[self._next]
        if prev is not None:
            prev.result()
        return slot.input

    def submit(self, batch: Any) -> InFlight:
        """Enqueue inference on a batch of at most `max_batch` images (a CuPy array, ideally
        `input_buffer()[:n]`, or a NumPy array) and return without waiting."""
        n = int(batch.shape[0])
        if n < 1 or n > self.max_batch:
            raise ValueError(f"batch of {n}: the engine takes 1..{self.max_batch}")
        i = self._next
        slot = self._slots[i]
        prev = self._pending[i]
        if prev is not None:
            prev.result()  # the slot's buffers are about to be reused
        cupy, stream = self.cupy, self.gpu.stream
        with stream:
            src = batch
            if isinstance(batch, np.ndarray):
                slot.input[:n].set(np.ascontiguousarray(batch, dtype=self.input_dtype),
                                   stream=stream)
            elif src.data.ptr != slot.input.data.ptr:
                slot.input[:n] = cupy.asarray(src, dtype=self.input_dtype)
            ctx = slot.context
            if not ctx.set_input_shape(self.input_name, (n, *self.input_shape)):
                raise MilesDeepError(f"TensorRT refused input shape {(n, *self.input_shape)}")
            ctx.set_tensor_address(self.input_name, int(slot.input.data.ptr))
            ctx.set_tensor_address(self.output_name, int(slot.output.data.ptr))
            if not ctx.execute_async_v3(self.gpu.stream_ptr):
                raise MilesDeepError("TensorRT inference failed (see the messages above)")
            cupy.asnumpy(slot.output[:n], stream=stream, out=slot.host[:n], blocking=False)
            slot.event = stream.record()
        handle = InFlight(self, slot, n)
        self._pending[i] = handle
        self._next = 1 - i
        return handle

    # --- the CPU classifier's interface -------------------------------------------------
    def infer(self, batch: Any) -> np.ndarray:
        """(N, *input shape) NumPy or CuPy array -> (N, labels) float32 probabilities,
        synchronously; batches larger than the engine's profile are split."""
        n = int(batch.shape[0])
        if n == 0:
            return np.empty((0, len(self.labels)), dtype=np.float32)
        handles = [self.submit(batch[s:e]) for s, e in split_batches(n, self.max_batch)]
        return np.concatenate([h.result() for h in handles])

    def close(self) -> None:
        for p in self._pending:
            if p is not None:
                p.result()
        self._pending = [None, None]
        self._slots = []
        self.engine = None

    def __enter__(self) -> TrtClassifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
