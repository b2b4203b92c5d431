"""The runner: source -> frames -> tensors -> scores, in batches, with decoding overlapping
inference and bounded queues so memory does not grow with the length of the video."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from milesdeep.errors import MilesDeepError
from milesdeep.models.bundle import ModelBundle
from milesdeep.pipeline.decode import PyAVSource
from milesdeep.pipeline.frames import Sample
from milesdeep.pipeline.infer import Classifier
from milesdeep.pipeline.predictions import Predictions

Progress = Callable[[float, float], None]  # (seconds of video done, seconds in all)
Sampling = Literal["exact", "keyframes", "adaptive"]
SAMPLING_MODES: tuple[str, ...] = ("adaptive", "exact", "keyframes")


@dataclass
class RunOptions:
    rate: float = 1.0
    sampling: Sampling = "exact"
    batch: int = 32
    decode_threads: int = 0  # 0: FFmpeg chooses
    # adaptive: refine around keyframes whose top two scores are within 2 * margin, or whose
    # top score is within margin of the planner's 0.5 (see milesdeep.pipeline.adaptive).
    adaptive_margin: float = 0.05


@dataclass
class StageTimes:
    """Wall-clock seconds spent in each stage (stages overlap, so they need not add up)."""

    decode: float = 0.0
    preprocess: float = 0.0
    inference: float = 0.0
    total: float = 0.0
    samples: int = 0
    frames_decoded: int = 0
    decode_errors: int = 0
    extra: dict[str, float] = field(default_factory=dict)


_DONE = object()
# Decoded pictures waiting for preprocessing. Each is consumed at once into the batch buffer,
# so a few cover the decoder's jitter; more only hold memory (a 1080p picture is 3 MiB: a
# bound of 2 * batch let a fast decoder park ~200 MiB, and peak RSS grew with video length).
QUEUE_FRAMES = 8


def _threaded(it: Iterable, maxsize: int, times: StageTimes) -> Iterator:
    """Run an iterator on a worker thread behind a bounded queue; re-raise its errors here."""
    return _threaded_all([it], maxsize, times)


def _threaded_all(its: Sequence[Iterable], maxsize: int, times: StageTimes) -> Iterator:
    """Run each iterator on its own worker thread, all feeding one bounded queue (items come
    in whatever order the workers produce them); re-raise a worker's error here."""
    q: queue.Queue = queue.Queue(maxsize=maxsize)
    stop = threading.Event()
    clock = threading.Lock()  # several workers add to one counter

    def work(it: Iterable) -> None:
        try:
            t0 = time.perf_counter()
            for item in it:
                t1 = time.perf_counter()
                with clock:
                    times.decode += t1 - t0
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
                t0 = time.perf_counter()
            q.put(_DONE)
        except BaseException as e:  # handed to the consumer, which re-raises it
            q.put(e)

    workers = [threading.Thread(target=work, args=(it,), name=f"milesdeep-decode-{k}",
                                daemon=True) for k, it in enumerate(its)]
    for w in workers:
        w.start()
    running = len(workers)
    try:
        while running:
            item = q.get()
            if item is _DONE:
                running -= 1
                continue
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        for w in workers:
            w.join(timeout=5)


def classify_samples(
    samples: Iterable[Sample],
    bundle: ModelBundle,
    classifier: Classifier,
    batch: int,
    times: StageTimes,
    on_batch: Callable[[list[Sample], np.ndarray], None],
    preprocess_into: Callable[[Sample, np.ndarray], None] | None = None,
) -> None:
    """Preprocess samples into a reused batch buffer and classify each full batch."""
    from milesdeep.pipeline.preprocess import preprocess_frame

    if batch < 1:
        raise MilesDeepError("the batch size (-b) must be at least 1")
    if preprocess_into is None:
        def preprocess_into(s: Sample, out: np.ndarray) -> None:
            preprocess_frame(s.frame, bundle.input, out=out)

    buf = np.empty((batch, *bundle.input.shape), dtype=np.float32)
    pending: list[Sample] = []

    def flush() -> None:
        t0 = time.perf_counter()
        probs = classifier.infer(buf[: len(pending)])
        times.inference += time.perf_counter() - t0
        on_batch(list(pending), probs)
        pending.clear()

    for s in samples:
        t0 = time.perf_counter()
        preprocess_into(s, buf[len(pending)])
        times.preprocess += time.perf_counter() - t0
        s.frame = None  # type: ignore[assignment]  # the pixels are in the batch now
        pending.append(s)
        times.samples += 1
        if len(pending) == batch:
            flush()
    if pending:
        flush()


def classify_video(
    path: Path,
    bundle: ModelBundle,
    classifier: Classifier,
    options: RunOptions | None = None,
    progress: Progress | None = None,
    times: StageTimes | None = None,
) -> Predictions:
    """Classify every sample of one video on the CPU path; returns per-sample probabilities."""
    options = options or RunOptions()
    if options.sampling == "adaptive":
        from milesdeep.pipeline.adaptive import classify_video_adaptive

        return classify_video_adaptive(path, bundle, classifier, options, progress, times)
    times = times if times is not None else StageTimes()
    start = time.perf_counter()
    source = PyAVSource(Path(path), rate=options.rate, mode=options.sampling,
                        threads=options.decode_threads)
    duration = source.info.duration
    n_expected = source.expected_samples
    rows: list[np.ndarray] = []
    slots: list[tuple[int, int]] = []

    def on_batch(batch: list[Sample], probs: np.ndarray) -> None:
        for s, p in zip(batch, probs):
            slots.append((s.index, s.hold))
            rows.append(p)
        if progress is not None:
            last = batch[-1]
            progress(min((last.index + last.hold) / options.rate, duration or 1e9), duration)

    classify_samples(_threaded(source, QUEUE_FRAMES, times), bundle, classifier,
                     options.batch, times, on_batch)
    times.frames_decoded = source.stats.frames_decoded
    times.decode_errors = source.stats.decode_errors
    times.extra["decoded_end"] = source.stats.end_time  # a truncated file ends early
    if not rows:
        raise MilesDeepError("no samples could be taken from the video", path)
    probs = expand_slots(slots, rows, max(n_expected, slots[-1][0] + slots[-1][1]))
    times.total += time.perf_counter() - start
    return to_predictions(bundle, probs, options, duration, source.stats.end_time)


def expand_slots(slots: list[tuple[int, int]], rows: list[np.ndarray], n: int) -> np.ndarray:
    """One row per sample slot from (index, hold) slots: keyframe sampling holds a row for
    several slots. Every slot must be covered exactly once."""
    probs = np.empty((n, len(rows[0])), dtype=np.float32)
    covered = 0
    for (index, hold), p in zip(slots, rows):
        probs[index: index + hold] = p
        covered += hold
    if covered != n:
        raise RuntimeError(f"sampling covered {covered} of {n} sample slots")
    return probs


def to_predictions(bundle: ModelBundle, probs: np.ndarray, options: RunOptions,
                   duration: float, decoded_end: float) -> Predictions:
    """Sample i is at i / rate; a container that reports no duration has the decoded one."""
    return Predictions(
        labels=tuple(bundle.labels),
        times=np.arange(len(probs), dtype=np.float64) / options.rate,
        probs=probs,
        rate=options.rate,
        duration=duration if duration > 0 else decoded_end,
    )
