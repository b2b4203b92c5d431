"""Reduced-precision ONNX variants of a model: FP16, and INT8 with Q/DQ nodes.

TensorRT 11 builds strongly typed networks, so precision lives in the ONNX file, not in builder
flags: an FP16 engine comes from an FP16 graph, an INT8 engine from a Q/DQ graph. Both are made
here with maintained tools, no hand-written graph surgery:

- The opset is raised to 13 first with onnx's version converter: the default model is opset 9
  (converted from TensorFlow) and ONNX Runtime's per-channel Q/DQ needs opset >= 13.
- FP16: ONNX Runtime's `OnnxModel.convert_float_to_float16` (onnxruntime.transformers, built on
  the same float16 pass as onnxconverter-common) with float32 inputs/outputs and the
  numerically fragile ops (Softmax and friends) kept float32. It also removes the Cast pairs the
  pass leaves (fp32 -> fp16 -> fp32 around a blocked op at the output), which onnxconverter-
  common's converter alone does not: it leaves the graph output float16 when Softmax is last.
- INT8: `onnxruntime.quantization.quant_pre_process` (shape inference, basic fusions), then
  `quantize_static` in QDQ format with what TensorRT accepts: symmetric int8 activations
  (zero point 0), per-channel symmetric int8 weights, float biases (TensorRT has no int32
  DequantizeLinear), weights kept float behind a Q/DQ pair and one Q/DQ pair per consumer
  (the settings Hugging Face Optimum uses for its TensorRT configuration).
  Calibration runs batch by batch (`CalibStridedMinMax`, which works for every method): the
  histogram calibrators otherwise hold every intermediate tensor of every frame in memory,
  about 20 MB a frame for the default model.

The FP16 variant of a bundle is cached (`fp16_variant`): `model.fp16.<sha12>.onnx` beside the
bundle's ONNX (keyed by the source model's hash, so an edited model gets a new variant), or in
`scratch_dir` when the bundle lives somewhere read-only (the built-in model in site-packages).
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from milesdeep.errors import MilesDeepError
from milesdeep.models.bundle import ModelBundle
from milesdeep.pipeline.atomic import atomic_path

TARGET_OPSET = 13
METHODS = ("entropy", "minmax", "percentile")
# Kept float32 in the FP16 variant: exponentials and reductions whose range or precision float16
# cannot hold (Softmax saturates and loses the small probabilities the planner thresholds).
FP16_KEEP_FP32 = ("Softmax", "LogSoftmax", "Exp", "Log", "Pow", "ReduceMean", "ReduceSum",
                  "ReduceProd", "ReduceL2", "LayerNormalization", "Sqrt", "Div")
# Quantized in the INT8 variant: the layers that carry the arithmetic, plus residual Adds
# (TensorRT fuses a Q/DQ'd residual Add into the convolution before it).
INT8_OP_TYPES = ("Conv", "ConvTranspose", "MatMul", "Gemm", "Add")
CALIBRATION_BATCH = 16


# --------------------------------------------------------------------------- opset


def upgraded(model: Any, opset: int = TARGET_OPSET) -> Any:
    """The model at `opset` (at least), converted by onnx's version converter."""
    import onnx
    from onnx import version_converter

    current = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if current >= opset:
        return model
    try:
        out = version_converter.convert_version(model, opset)
        onnx.checker.check_model(out)
    except Exception as e:  # the converter raises several types for ops it cannot adapt
        raise MilesDeepError(f"cannot convert the model from opset {current} to {opset} "
                             f"({type(e).__name__}: {str(e)[:200]})") from None
    return out


def _load(path: Path) -> Any:
    import onnx

    try:
        return onnx.load(str(path))
    except Exception as e:  # onnx raises several types for a bad file
        raise MilesDeepError(f"not a readable ONNX model ({type(e).__name__})", path) from None


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The converters warn once per clamped weight, log advice we follow and print progress
    to stdout; keep the CLI's output readable."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), open(os.devnull, "w") as null, \
                contextlib.redirect_stdout(null):
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


# --------------------------------------------------------------------------- FP16


def make_fp16(onnx_in: Path, onnx_out: Path) -> Path:
    """Write an FP16 copy of `onnx_in` (float32 I/O, fragile ops float32) to `onnx_out`."""
    import onnx
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = upgraded(_load(Path(onnx_in)))
    try:
        with _quiet():
            om = OnnxModel(model)
            # use_symbolic_shape_infer=False: onnx's own inference covers standard ops, and the
            # symbolic helper needs ORT's transformers tools on sys.path.
            om.convert_float_to_float16(use_symbolic_shape_infer=False, keep_io_types=True,
                                        op_block_list=list(FP16_KEEP_FP32))
            om.topological_sort()
            half = om.model
            onnx.checker.check_model(half)
    except MilesDeepError:
        raise
    except Exception as e:  # the converter raises several types on unusual graphs
        raise MilesDeepError(f"cannot convert the model to FP16 ({type(e).__name__}: "
                             f"{str(e)[:200]})", onnx_in) from None
    with atomic_path(Path(onnx_out)) as tmp:
        onnx.save(half, str(tmp))
    return Path(onnx_out)


def fp16_path(bundle: ModelBundle, scratch_dir: Path | None = None) -> Path:
    """Where `fp16_variant` keeps a bundle's FP16 ONNX."""
    base = Path(bundle.onnx_path).parent
    if scratch_dir is not None or not os.access(base, os.W_OK):
        base = Path(scratch_dir) if scratch_dir is not None else base
    return base / f"{Path(bundle.onnx_path).stem}.fp16.{bundle.sha256[:12]}.onnx"


def fp16_variant(bundle: ModelBundle, scratch_dir: Path | None = None) -> Path:
    """The FP16 ONNX for a bundle, made now if absent."""
    out = fp16_path(bundle, scratch_dir)
    if out.is_file():
        return out
    return make_fp16(Path(bundle.onnx_path), out)


# --------------------------------------------------------------------------- INT8


class TensorReader:
    """ONNX Runtime's CalibrationDataReader over an in-memory array, in batches.

    Its length and range are counted in batches, so `CalibStridedMinMax` = 1 collects one batch
    at a time whatever the number of frames."""

    def __init__(self, input_name: str, tensors: np.ndarray, batch: int,
                 dtype: type = np.float32) -> None:
        self.input_name = input_name
        self.batches = [np.ascontiguousarray(tensors[i: i + batch], dtype=dtype)
                        for i in range(0, len(tensors), batch)]
        self.set_range(0, len(self.batches))

    def __len__(self) -> int:
        return len(self.batches)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._pending = list(range(start_index, min(end_index, len(self.batches))))

    def get_next(self) -> dict[str, np.ndarray] | None:
        if not self._pending:
            return None
        return {self.input_name: self.batches[self._pending.pop(0)]}

    def rewind(self) -> None:
        self.set_range(0, len(self.batches))


def _input_name(model: Any) -> str:
    inits = {i.name for i in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in inits]
    if len(names) != 1:
        raise MilesDeepError(f"the model must have exactly one input, it has {len(names)}")
    return names[0]


def _input(model: Any) -> Any:
    inits = {i.name for i in model.graph.initializer}
    return next(i for i in model.graph.input if i.name not in inits)


def _input_shape(model: Any) -> list[int | None]:
    return [d.dim_value if d.HasField("dim_value") else None
            for d in _input(model).type.tensor_type.shape.dim]


def make_int8(onnx_in: Path, onnx_out: Path, calibration_tensors: np.ndarray,
              method: str = "entropy", batch: int = CALIBRATION_BATCH) -> Path:
    """Write a Q/DQ INT8 copy of `onnx_in` to `onnx_out`, calibrated on `calibration_tensors`
    ((N, *input shape) float32, preprocessed exactly as the pipeline does) with `method`
    (entropy, minmax or percentile)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    methods = {"entropy": CalibrationMethod.Entropy, "minmax": CalibrationMethod.MinMax,
               "percentile": CalibrationMethod.Percentile}
    if method not in methods:
        raise MilesDeepError(f"unknown calibration method {method!r}: use {', '.join(METHODS)}")
    x = np.asarray(calibration_tensors)
    if x.ndim < 2 or len(x) == 0:
        raise MilesDeepError("INT8 calibration needs at least one preprocessed frame")
    model = upgraded(_load(Path(onnx_in)))
    want = _input_shape(model)[1:]
    if len(want) != x.ndim - 1 or any(w not in (None, g) for w, g in zip(want, x.shape[1:])):
        raise MilesDeepError(f"calibration frames are {list(x.shape[1:])} but the model takes "
                             f"{want}", onnx_in)
    name = _input_name(model)
    if not any(n.op_type in INT8_OP_TYPES for n in model.graph.node):
        raise MilesDeepError(f"the model has no layer INT8 quantizes ({', '.join(INT8_OP_TYPES)})"
                             "; use --precision fp16", onnx_in)
    fixed = _input_shape(model)[0]
    if fixed:  # a fixed batch: whole batches only, the last filled with frames from the start
        batch = fixed
        x = x[np.arange(-(-len(x) // fixed) * fixed) % len(x)]
    half = _input(model).type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    reader = TensorReader(name, x, batch, np.float16 if half else np.float32)
    with tempfile.TemporaryDirectory(prefix="milesdeep-int8-") as tmp:
        upgraded_path = Path(tmp) / "opset.onnx"
        pre_path = Path(tmp) / "pre.onnx"
        quant_path = Path(tmp) / "int8.onnx"
        onnx.save(model, str(upgraded_path))
        try:
            with _quiet():
                quant_pre_process(str(upgraded_path), str(pre_path))
                quantize_static(
                    str(pre_path), str(quant_path), reader,
                    quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=list(INT8_OP_TYPES),
                    per_channel=True,
                    reduce_range=False,
                    activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8,
                    calibrate_method=methods[method],
                    extra_options={
                        "ActivationSymmetric": True,
                        "WeightSymmetric": True,
                        "CalibTensorRangeSymmetric": True,
                        "QuantizeBias": False,
                        "AddQDQPairToWeight": True,
                        "DedicatedQDQPair": True,
                        "CalibStridedMinMax": 1,  # one batch at a time, see the docstring
                    },
                )
            quantized = onnx.load(str(quant_path))
            onnx.checker.check_model(quantized)
        except MilesDeepError:
            raise
        except Exception as e:  # the quantizer raises several types on unusual graphs
            raise MilesDeepError(f"cannot quantize the model to INT8 ({type(e).__name__}: "
                                 f"{str(e)[:200]})", onnx_in) from None
        with atomic_path(Path(onnx_out)) as out_tmp:
            onnx.save(quantized, str(out_tmp))
    return Path(onnx_out)
