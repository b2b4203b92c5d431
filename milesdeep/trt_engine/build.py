"""Building a TensorRT engine from a model bundle (`miles-deep build-engine`).

Steps, as separate callables (Polygraphy's loader style): pick the ONNX variant for the
precision (`onnx_for_precision`), parse it into a strongly typed network, add one optimisation
profile for batch 1..N (opt N), set the workspace limit, load the timing cache kept beside the
engines, build with a progress monitor, then write the engine and its JSON sidecar atomically
and save the timing cache back.

Precision is a property of the ONNX (TensorRT 11 has no FP16/INT8 builder flags):
- fp32: the bundle's own ONNX;
- fp16: an FP16 ONNX with float32 inputs/outputs, made once beside the bundle (or in the engine
  directory for a read-only built-in) by `milesdeep.calibration.variants.fp16_variant`;
- int8: `model.int8.onnx` (a Q/DQ ONNX) from `--calibration DIR`.

TensorRT API pages read: see `milesdeep.trt_engine.compat`.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from milesdeep.errors import MilesDeepError, UsageError
from milesdeep.models.bundle import ModelBundle, file_sha256
from milesdeep.pipeline.atomic import atomic_path
from milesdeep.trt_engine.cache import engine_dir, engine_path, timing_cache_path
from milesdeep.trt_engine.compat import (
    dtype_name,
    make_progress_monitor,
    network_flags,
    profile_shapes,
)
from milesdeep.trt_engine.sidecar import (
    PRECISIONS,
    BatchProfile,
    EngineSidecar,
    TensorInfo,
    save_sidecar,
)

INT8_ONNX = "model.int8.onnx"
ProgressEvent = Callable[[str, str | None, int, int], None]


@dataclass
class BuildRequest:
    bundle: ModelBundle
    precision: str = "fp16"
    batch: int = 32
    calibration: Path | None = None
    output: Path | None = None
    workspace_bytes: int = 4 << 30


ENGINE_SUFFIXES = (".engine", ".plan", ".trt")


def check_request(precision: str, calibration: Path | None, output: Path | None = None
                  ) -> Path | None:
    """What can be refused without a GPU, so that it is refused on any machine: the
    precision and --calibration (the INT8 model's path for int8, else None), and an -o that
    is a folder or a file other than an engine (a video given as -o would be replaced)."""
    if precision not in PRECISIONS:
        raise UsageError(f"unknown precision {precision!r}: use fp32, fp16 or int8")
    if output is not None:
        if output.is_dir():
            raise MilesDeepError("is a folder; give the engine file's path", output)
        if output.exists() and output.suffix.lower() not in ENGINE_SUFFIXES:
            raise MilesDeepError("exists and is not an engine file; give a new path, or one "
                                 f"ending in {ENGINE_SUFFIXES[0]}", output)
    if precision == "int8":
        if calibration is None:
            raise UsageError("--precision int8 needs --calibration DIR holding "
                             f"{INT8_ONNX} (a Q/DQ model made from calibration frames)")
        path = Path(calibration) / INT8_ONNX
        if not path.is_file():
            raise MilesDeepError(f"no {INT8_ONNX} in the calibration directory; make it with "
                                 "the calibration command first", calibration)
        return path
    if calibration is not None:
        raise UsageError("--calibration is only used with --precision int8")
    return None


def onnx_for_precision(bundle: ModelBundle, precision: str, calibration: Path | None,
                       scratch_dir: Path | None = None) -> Path:
    """The ONNX file whose types give the engine its precision."""
    int8 = check_request(precision, calibration)
    if int8 is not None:
        return int8
    if precision == "fp32":
        return bundle.onnx_path
    from milesdeep.calibration.variants import fp16_variant

    return fp16_variant(bundle, scratch_dir=scratch_dir)


def io_tensors(network_or_engine: Any, trt: Any) -> tuple[list[TensorInfo], list[TensorInfo]]:
    """Name, shape, dtype and direction of an engine's I/O tensors (for the sidecar)."""
    eng = network_or_engine
    ins, outs = [], []
    for i in range(eng.num_io_tensors):
        name = eng.get_tensor_name(i)
        mode = eng.get_tensor_mode(name)
        info = TensorInfo(name=name, shape=tuple(int(d) for d in eng.get_tensor_shape(name)),
                          dtype=dtype_name(eng.get_tensor_dtype(name)),
                          mode="input" if mode == trt.TensorIOMode.INPUT else "output")
        (ins if info.mode == "input" else outs).append(info)
    return ins, outs


def build_engine(req: BuildRequest, gpu_name: str, compute_capability: tuple[int, int],
                 on_progress: ProgressEvent | None = None) -> tuple[Path, EngineSidecar]:
    """Build, write and describe an engine. Needs TensorRT and a GPU (callers check first)."""
    from milesdeep.trt_engine.runner import import_tensorrt

    check_request(req.precision, req.calibration, req.output)
    trt = import_tensorrt()
    bundle = req.bundle
    directory = engine_dir()
    out = Path(req.output) if req.output else engine_path(bundle.name, bundle.sha256,
                                                          req.precision, directory)
    scratch = directory if bundle.directory is None else None
    onnx_path = onnx_for_precision(bundle, req.precision, req.calibration, scratch)

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    network = builder.create_network(network_flags(trt.__version__,
                                                   None if flag is None else int(flag)))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise MilesDeepError(f"TensorRT cannot parse the ONNX model: {errors[:400]}", onnx_path)
    if network.num_inputs != 1:
        raise MilesDeepError(f"the model has {network.num_inputs} inputs; one image input is "
                             "needed", onnx_path)
    inp = network.get_input(0)
    lo, opt, hi = profile_shapes(list(inp.shape), req.batch)

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(req.workspace_bytes))
    profile = builder.create_optimization_profile()
    profile.set_shape(inp.name, lo, opt, hi)
    config.add_optimization_profile(profile)
    monitor = None
    if on_progress is not None:
        monitor = make_progress_monitor(trt, on_progress)
        config.progress_monitor = monitor  # kept alive by `monitor` until the build ends

    tc_path = timing_cache_path(out.parent, trt.__version__, compute_capability, gpu_name)
    blob = tc_path.read_bytes() if tc_path.is_file() else b""
    cache = config.create_timing_cache(blob) if blob else None
    # set_timing_cache says False for another device's cache, create_timing_cache None for an
    # unreadable one: then the build times afresh (and saves its own).
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)

    serialized = builder.build_serialized_network(network, config)
    if monitor is not None and monitor.error is not None:  # Ctrl-C during the build, say
        raise monitor.error
    if serialized is None:
        raise MilesDeepError("TensorRT could not build the engine (see the messages above; "
                             "a smaller --batch or a larger workspace may help)", onnx_path)

    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(serialized)
    ins, outs = io_tensors(engine, trt)
    sidecar = EngineSidecar(
        model_name=bundle.name,
        model_sha256=bundle.sha256,
        onnx_sha256=file_sha256(Path(onnx_path)),
        precision=req.precision,
        batch_profile=BatchProfile(lo[0], opt[0], hi[0]),
        inputs=ins,
        outputs=outs,
        layout=bundle.input.layout,
        tensorrt_version=str(trt.__version__),
        gpu_name=gpu_name,
        compute_capability=compute_capability,
        workspace_bytes=int(req.workspace_bytes),
        built_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        extra={"onnx": str(onnx_path)},
    )
    with atomic_path(out) as tmp:
        with open(tmp, "wb") as f:
            f.write(memoryview(serialized))
    save_sidecar(out, sidecar)
    timing = config.get_timing_cache()
    if timing is not None:  # a speed-up for the next build, never a reason to fail this one
        with contextlib.suppress(MilesDeepError), atomic_path(tc_path) as tmp:
            tmp.write_bytes(memoryview(timing.serialize()))
    return out, sidecar
