"""The GPU twin of `classify_video`: NVDEC -> CuPy kernel -> TensorRT, two batches in flight.

Decoding runs on a worker thread (the shared context made current there) behind the same
bounded queue as the CPU runner; the main thread launches the preprocessing kernel straight
into the TensorRT slot's input buffer and submits the batch without waiting, so while the GPU
runs batch k the host decodes batch k+1; scores come back through pinned memory and are
collected one batch late. Output: the same `Predictions` as the CPU runner.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from milesdeep.errors import MilesDeepError
from milesdeep.models.bundle import ModelBundle
from milesdeep.pipeline.predictions import Predictions
from milesdeep.pipeline.run import (
    Progress,
    RunOptions,
    StageTimes,
    _threaded,
    expand_slots,
    to_predictions,
)


@dataclass
class GpuBackend:
    """Everything the GPU path holds open across videos: close() when done."""

    gpu: Any  # GpuContext
    classifier: Any  # TrtClassifier
    preprocessor: Any  # CupyPreprocessor
    engine_path: Path
    say: Callable[[str], None] | None = None

    def close(self) -> None:
        self.classifier.close()
        self.gpu.close()

    def __enter__(self) -> GpuBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_gpu_backend(bundle: ModelBundle, precision: str | None = None,
                     engine_path: Path | None = None, model_arg: str | None = None,
                     say: Callable[[str], None] | None = None) -> GpuBackend:
    """Find and check the engine for this model, then set up context, kernel and runner."""
    from milesdeep.pipeline.preprocess_cupy import CupyPreprocessor
    from milesdeep.trt_engine.cuda_context import GpuContext
    from milesdeep.trt_engine.runner import TrtClassifier, import_tensorrt, locate_engine
    from milesdeep.trt_engine.sidecar import Environment

    trt = import_tensorrt()
    gpu = GpuContext(0)
    try:
        env = Environment(str(trt.__version__), gpu.name, gpu.compute_capability)
        path, sidecar = locate_engine(bundle, env, precision, engine_path, model_arg)
        classifier = TrtClassifier(path, bundle, gpu, sidecar)
        pre = CupyPreprocessor(bundle.input, gpu)
    except BaseException:
        gpu.close()
        raise
    return GpuBackend(gpu=gpu, classifier=classifier, preprocessor=pre, engine_path=path,
                      say=say)


def classify_video_gpu(path: Path, bundle: ModelBundle, backend: GpuBackend,
                       options: RunOptions | None = None, progress: Progress | None = None,
                       times: StageTimes | None = None) -> Predictions:
    from milesdeep.pipeline.decode_nvdec import gpu_source

    options = options or RunOptions()
    times = times if times is not None else StageTimes()
    start = time.perf_counter()
    gpu, clf, pre = backend.gpu, backend.classifier, backend.preprocessor
    # Adaptive sampling saves CPU decoding; NVDEC decodes every picture far faster than the
    # network classifies, so on the GPU it samples exactly (the CPU decoder a file may fall
    # back to knows only exact and keyframes).
    mode = "exact" if options.sampling == "adaptive" else options.sampling
    source = gpu_source(Path(path), gpu, rate=options.rate, mode=mode,  # type: ignore[arg-type]
                        threads=options.decode_threads, say=backend.say)
    duration = source.info.duration
    batch = min(options.batch, clf.max_batch)
    slots: list[tuple[int, int]] = []
    rows: list[np.ndarray] = []
    in_flight: list[tuple[list, Any]] = []

    def collect(keep: int) -> None:
        while len(in_flight) > keep:
            samples, handle = in_flight.pop(0)
            t0 = time.perf_counter()
            probs = handle.result()
            times.inference += time.perf_counter() - t0
            for s, p in zip(samples, probs):
                slots.append((s.index, s.hold))
                rows.append(p)
            if progress is not None:
                last = samples[-1]
                progress(min((last.index + last.hold) / options.rate, duration or 1e9),
                         duration)

    def decoded():
        with gpu.activated():
            yield from source

    pending: list = []
    buf = None
    for s in _threaded(decoded(), 2 * batch, times):
        if buf is None:
            buf = clf.input_buffer()
        t0 = time.perf_counter()
        pre.preprocess_into(s, buf, len(pending))
        times.preprocess += time.perf_counter() - t0
        s.frame = None  # type: ignore[assignment]
        pending.append(s)
        times.samples += 1
        if len(pending) == batch:
            in_flight.append((pending, clf.submit(buf[:batch])))
            pending, buf = [], None
            collect(keep=1)  # two batches in flight
    if pending:
        assert buf is not None
        in_flight.append((pending, clf.submit(buf[: len(pending)])))
    collect(keep=0)
    times.frames_decoded = source.stats.frames_decoded
    times.decode_errors = source.stats.decode_errors
    if not rows:
        raise MilesDeepError("no samples could be taken from the video", path)
    probs = expand_slots(slots, rows, max(source.expected_samples, slots[-1][0] + slots[-1][1]))
    times.total += time.perf_counter() - start
    return to_predictions(bundle, probs, options, duration, source.stats.end_time)
