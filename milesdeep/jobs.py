"""Whole jobs as library calls: what `miles-deep tag` does for one video, callable from Python."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from milesdeep.errors import MilesDeepError
from milesdeep.models.bundle import ModelBundle
from milesdeep.pipeline.decode import sample_count
from milesdeep.pipeline.infer import Classifier
from milesdeep.pipeline.planner import Cut, PlanParams, plan_all_labels, seconds_per_label
from milesdeep.pipeline.predictions import (
    Predictions,
    read_predictions_csv,
    write_predictions_csv,
)
from milesdeep.pipeline.run import Progress, RunOptions, StageTimes, classify_video
from milesdeep.pipeline.tagfile import write_tag

PREDICTIONS_SUFFIX = ".predictions.csv"


@runtime_checkable
class Runner(Protocol):
    """Classifies whole videos on one backend (the CPU twin, or NVDEC + CuPy + TensorRT)."""

    name: str

    def classify(self, path: Path, options: RunOptions | None, progress: Progress | None,
                 times: StageTimes | None) -> Predictions: ...


@dataclass
class CpuRunner:
    bundle: ModelBundle
    classifier: Classifier
    name: str = "cpu"

    def classify(self, path: Path, options: RunOptions | None = None,
                 progress: Progress | None = None, times: StageTimes | None = None
                 ) -> Predictions:
        return classify_video(path, self.bundle, self.classifier, options, progress, times)


@dataclass
class GpuRunner:
    bundle: ModelBundle
    backend: Any  # milesdeep.pipeline.run_gpu.GpuBackend (imported only on the GPU path)
    name: str = "gpu"

    def classify(self, path: Path, options: RunOptions | None = None,
                 progress: Progress | None = None, times: StageTimes | None = None
                 ) -> Predictions:
        from milesdeep.pipeline.run_gpu import classify_video_gpu

        return classify_video_gpu(path, self.bundle, self.backend, options, progress, times)


def load_runner(stack: contextlib.ExitStack, bundle: ModelBundle, backend: str,
                model_arg: str | None = None, say: Callable[[str], None] | None = None,
                threads: int = 0) -> Runner:
    """Open a resolved backend (`cpu` or `gpu`) for `bundle`, loading the model once; GPU
    resources are released when `stack` closes."""
    if backend == "gpu":
        from milesdeep.pipeline.run_gpu import open_gpu_backend

        gb = stack.enter_context(open_gpu_backend(bundle, model_arg=model_arg, say=say))
        return GpuRunner(bundle, gb)
    from milesdeep.pipeline.infer import OrtClassifier

    return CpuRunner(bundle, OrtClassifier(bundle, threads=threads))


@contextlib.contextmanager
def open_runner(bundle: ModelBundle, backend: str = "auto", model_arg: str | None = None,
                say: Callable[[str], None] | None = None) -> Iterator[Runner]:
    """Choose the backend (`auto`, `cpu` or `gpu`), say which runs and why, and load the model
    once for the whole run. `gpu` without a usable GPU stack raises the one-line error."""
    from milesdeep.pipeline.backend import resolve_backend

    choice = resolve_backend(backend, bundle, model_arg=model_arg)
    if say is not None:
        say(choice.describe())
    with contextlib.ExitStack() as stack:
        yield load_runner(stack, bundle, choice.name, model_arg, say)


@dataclass
class TagResult:
    name: str
    predictions: Predictions
    cuts: list[Cut]
    outputs: list[Path] = field(default_factory=list)
    times: StageTimes = field(default_factory=StageTimes)

    def seconds_per_label(self) -> dict[str, int]:
        return dict(zip(self.predictions.labels,
                        seconds_per_label(self.cuts, self.predictions.labels)))



def output_stem(video: Path, out_dir: Path | None) -> Path:
    """`<out_dir or the video's directory>/<stem>`: outputs append their own suffixes."""
    return (out_dir if out_dir is not None else video.parent) / video.stem


def stem_of_predictions(path: Path) -> str:
    name = path.name
    return name[: -len(PREDICTIONS_SUFFIX)] if name.endswith(PREDICTIONS_SUFFIX) else path.stem


def write_tag_outputs(stem: Path, movie_name: str, preds: Predictions, params: PlanParams,
                      plot: bool, write_predictions: bool = True) -> tuple[list[Cut], list[Path]]:
    """Plan every label from `preds` and write <stem>.tag (+ predictions CSV, + plot PNG)."""
    cuts = plan_all_labels(preds.probs, preds.labels, params.for_rate(preds.rate))
    outputs: list[Path] = []
    if write_predictions:
        outputs.append(write_predictions_csv(stem.with_name(stem.name + PREDICTIONS_SUFFIX),
                                             preds))
    outputs.append(write_tag(stem.with_name(stem.name + ".tag"), movie_name, preds.labels,
                             *_tag_seconds(cuts, preds)))
    if plot:
        from milesdeep.pipeline.plot import plot_timeline

        outputs.append(plot_timeline(stem.with_name(stem.name + ".timeline.png"), preds, cuts,
                                     title=movie_name))
    return cuts, outputs


def _tag_seconds(cuts: list[Cut], preds: Predictions) -> tuple[list[int], int, list[Cut]]:
    """The .tag file counts whole seconds. At one sample per second (Miles Deep's rate) sample
    indices are seconds; at other rates cuts are given as the seconds their samples fall in."""
    per_label = seconds_per_label(cuts, preds.labels)
    total = len(preds.times)
    if preds.rate == 1.0:
        return per_label, total, cuts
    r = preds.rate
    # A cut of samples a..b covers [a / r, (b + 1) / r): from the second a falls in to the
    # last second it reaches into (below 1 sample a second, one sample spans several), but
    # never past the video's last second (a 4 s video at 0.3 samples a second has two
    # samples, which span 6.7 s).
    seconds = sample_count(preds.duration, 1.0) if preds.duration > 0 else round(total / r)
    in_seconds = [replace(c, start=math.floor(c.start / r + 1e-9),
                          end=min(seconds - 1, math.ceil((c.end + 1) / r - 1e-9) - 1))
                  for c in cuts]
    per_second = [min(seconds, round(n / r)) for n in per_label]
    if r < 1.0:  # a sample spans seconds: count the seconds the rows give
        per_second = seconds_per_label(in_seconds, preds.labels)
    return per_second, min(seconds, round(total / r)), in_seconds


def tag_video(video: Path, bundle: ModelBundle, classifier: Classifier | Runner, *,
              options: RunOptions | None = None, params: PlanParams | None = None,
              out_dir: Path | None = None, plot: bool = False,
              progress: Progress | None = None) -> TagResult:
    """Classify every sample of `video` and write its .tag and predictions files.

    `classifier` is a CPU classifier, or a `Runner` from `open_runner` for any backend."""
    video = Path(video)
    times = StageTimes()
    runner = classifier if isinstance(classifier, Runner) else CpuRunner(bundle, classifier)
    preds = runner.classify(video, options, progress, times)
    cuts, outputs = write_tag_outputs(output_stem(video, out_dir), video.name, preds,
                                      params or PlanParams(), plot)
    return TagResult(video.name, preds, cuts, outputs, times)


def tag_from_predictions(csv: Path, *, params: PlanParams | None = None,
                         out_dir: Path | None = None, plot: bool = False,
                         rate: float = 1.0) -> TagResult:
    """Re-plan from a saved predictions file, without the network (`rate`: for a file of one
    row, whose times cannot tell it)."""
    csv = Path(csv)
    if csv.is_dir():
        raise MilesDeepError("is a folder; give the <stem>.predictions.csv file to re-plan",
                             csv)
    if not csv.is_file():
        raise MilesDeepError("no such predictions file", csv)
    preds = read_predictions_csv(csv, rate)
    name = stem_of_predictions(csv)
    stem = (out_dir if out_dir is not None else csv.parent) / name
    movie = _movie_beside(csv, name)
    preds = _with_movie_length(preds, csv.parent / movie)
    cuts, outputs = write_tag_outputs(stem, movie, preds, params or PlanParams(), plot,
                                      write_predictions=False)
    return TagResult(movie, preds, cuts, outputs)


def _with_movie_length(preds: Predictions, movie: Path) -> Predictions:
    """The CSV gives sample times, not the video's length (up to a sample interval more):
    where the movie it was made from is beside it, and fits it, its length is taken, so the
    .tag's seconds are those `tag` gave the movie (below one sample a second they differed)."""
    from milesdeep.pipeline.decode import probe
    from milesdeep.pipeline.predictions import fits_video

    if not movie.is_file():
        return preds
    try:
        seconds = probe(movie).duration
    except MilesDeepError:
        return preds
    if seconds <= 0 or not fits_video(preds, seconds):
        return preds
    return replace(preds, duration=seconds)


def _movie_beside(csv: Path, stem: str) -> str:
    """The .tag's first line names the movie file: `tag` writes the predictions beside it,
    so the one video there with the CSV's stem is it; otherwise the stem."""
    from milesdeep.pipeline.decode import is_video_name

    try:
        found = [p.name for p in csv.parent.iterdir() if p.stem == stem and is_video_name(p)]
    except OSError:
        found = []
    return found[0] if len(found) == 1 else stem
