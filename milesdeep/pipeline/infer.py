"""Inference on the CPU with ONNX Runtime: a batch of input tensors in, probabilities out."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

import numpy as np

from milesdeep.errors import MilesDeepError
from milesdeep.models.bundle import ModelBundle


class Classifier(Protocol):
    """What the runner needs of an inference backend (ONNX Runtime here, TensorRT on a GPU)."""

    labels: tuple[str, ...]

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """(N, *input shape) float array -> (N, n_labels) float32 probabilities."""
        ...


def softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def cpu_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


class OrtClassifier:
    """An ONNX Runtime session for a model bundle."""

    def __init__(self, bundle: ModelBundle, threads: int = 0) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Decoding runs beside inference; intra-op threads = cores keeps the network busy while
        # FFmpeg's threads fill the gaps (measured in `miles-deep bench`).
        opts.intra_op_num_threads = threads or cpu_threads()
        opts.inter_op_num_threads = 1
        # Idle ORT workers spin by default, burning the cores FFmpeg's threads need between
        # batches (measured on 2 busy cores: 7 images/s spinning, 19 without).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # Fatal only: a model that fails is reported as one line (`_run`), not ORT's log too.
        opts.log_severity_level = 4
        try:
            self.session = ort.InferenceSession(
                str(bundle.onnx_path), sess_options=opts, providers=["CPUExecutionProvider"]
            )
        except Exception as e:  # ORT raises its own exception types for a bad model
            raise MilesDeepError(f"ONNX Runtime cannot load the model: {one_line(e)}",
                                 bundle.onnx_path) from None
        self.onnx_path = bundle.onnx_path
        self.where = bundle.directory if bundle.directory is not None else bundle.onnx_path
        self.labels = bundle.labels
        self.logits = bundle.output_kind == "logits"
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        in_type = self.session.get_inputs()[0].type
        self.input_dtype = np.float16 if "float16" in in_type else np.float32
        # A model exported with a fixed batch takes exactly that many images a run: batches
        # are cut to it and the last one padded (the padding's scores are dropped).
        b0 = self.session.get_inputs()[0].shape[0]
        self.fixed_batch = b0 if isinstance(b0, int) and b0 > 0 else None

    def _run(self, x: np.ndarray) -> np.ndarray:
        try:
            (out,) = self.session.run([self.output_name], {self.input_name: x})
        except Exception as e:  # the user's model failed (ORT's own exception types)
            raise MilesDeepError(f"the model failed on a batch of {len(x)} image(s): "
                                 f"{one_line(e)}", self.onnx_path) from None
        return np.asarray(out, dtype=np.float32).reshape(len(x), -1)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(batch, dtype=self.input_dtype)
        if self.fixed_batch is None or len(x) == 0:
            out = self._run(x)
        else:
            n, size = len(x), self.fixed_batch
            x = np.concatenate([x, np.zeros((-n % size, *x.shape[1:]), x.dtype)])
            out = np.concatenate([self._run(x[s:s + size]) for s in range(0, len(x), size)])[:n]
        if out.shape[1] != len(self.labels):
            raise MilesDeepError(
                f"the model gives {out.shape[1]} scores per image but there are "
                f"{len(self.labels)} labels; fix the labels file", self.where)
        return check_scores(softmax(out) if self.logits else out, self.logits, self.where)


def check_scores(scores: np.ndarray, logits: bool, where: Path | None) -> np.ndarray:
    """Scores the planner and the predictions file can take: finite, and (for a model said to
    give probabilities) within 0-1. Written unchecked, they made a CSV `tag` itself refuses."""
    if not np.isfinite(scores).all():
        raise MilesDeepError("the model gave NaN or infinite scores; check the model and "
                             "its input.mean/input.scale", where)
    if not logits and ((scores < -1e-3).any() or (scores > 1 + 1e-3).any()):
        raise MilesDeepError("the model's scores are outside 0-1, so they are not "
                             "probabilities: if it gives logits, set kind = \"logits\" under "
                             "[output] in model.toml", where)
    return scores


def one_line(e: BaseException) -> str:
    return " ".join(str(e).split())
