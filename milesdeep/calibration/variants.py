"""Reduced-precision ONNX variants of a model bundle.

FP16: onnxconverter-common's `float16.convert_float_to_float16(model, keep_io_types=True)`
casts weights and activations to float16 and keeps float32 inputs and outputs, so the runner
and the preprocessing kernel keep writing float32 and a strongly typed TensorRT network builds
FP16 kernels from the types in the graph (TensorRT 11 has no FP16 builder flag).
Docs: https://github.com/microsoft/onnxconverter-common (float16.py, `keep_io_types`).

The variant is written once and reused: `model.fp16.<sha12>.onnx` beside the bundle's ONNX
(keyed by the source model's hash, so an edited model gets a new variant), or in `scratch_dir`
when the bundle lives somewhere read-only (the built-in model inside site-packages).
"""

from __future__ import annotations

import os
from pathlib import Path

from milesdeep.errors import MilesDeepError
from milesdeep.models.bundle import ModelBundle
from milesdeep.pipeline.atomic import atomic_path


def fp16_path(bundle: ModelBundle, scratch_dir: Path | None = None) -> Path:
    base = Path(bundle.onnx_path).parent
    if scratch_dir is not None or not os.access(base, os.W_OK):
        base = Path(scratch_dir) if scratch_dir is not None else base
    return base / f"{Path(bundle.onnx_path).stem}.fp16.{bundle.sha256[:12]}.onnx"


def fp16_variant(bundle: ModelBundle, scratch_dir: Path | None = None) -> Path:
    """The FP16 ONNX for a bundle, made now if absent."""
    out = fp16_path(bundle, scratch_dir)
    if out.is_file():
        return out
    import onnx
    from onnxconverter_common import float16

    try:
        model = onnx.load(str(bundle.onnx_path))
        half = float16.convert_float_to_float16(model, keep_io_types=True)
    except Exception as e:  # the converter raises several types on unusual graphs
        raise MilesDeepError(f"cannot convert the model to FP16 ({type(e).__name__}: {e})",
                             bundle.onnx_path) from None
    with atomic_path(out) as tmp:
        onnx.save(half, str(tmp))
    return out
