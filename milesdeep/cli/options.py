"""Options shared by several commands, and how they resolve to library objects."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from milesdeep.errors import UsageError
from milesdeep.models.bundle import ModelBundle, resolve_model

ModelOpt = Annotated[
    str | None,
    typer.Option("--model", help="Built-in model name or bundle directory "
                 "[default: open-nsfw, or ./model/ in Miles Deep's layout]"),
]
ProtoOpt = Annotated[Path | None, typer.Option("-p", "--prototxt",
                                               help="Caffe model definition (deploy.prototxt)")]
WeightsOpt = Annotated[Path | None, typer.Option("-w", "--weights",
                                                 help="Caffe weights (.caffemodel)")]
MeanOpt = Annotated[Path | None, typer.Option("-m", "--mean",
                                              help="Caffe mean file (mean.binaryproto)")]
LabelsOpt = Annotated[Path | None, typer.Option("-l", "--labels",
                                                help="Labels file, one label a line")]
BatchOpt = Annotated[int, typer.Option("-b", "--batch", min=1, max=4096,
                                       help="Samples per inference batch")]
OutDirOpt = Annotated[Path | None, typer.Option("-o", "--output-dir",
                                                help="Write outputs here instead of beside "
                                                "the video")]
MinCutOpt = Annotated[int, typer.Option("-u", "--min-cut", min=0,
                                        help="Minimum length of a cut, in samples (seconds)")]
MaxGapOpt = Annotated[int, typer.Option("-g", "--max-gap", min=0,
                                        help="Largest gap of other classes inside a cut")]
MinScoreOpt = Annotated[float, typer.Option("-s", "--min-score", min=0.0, max=1.0,
                                            help="Minimum mean score of a cut")]
MinCovOpt = Annotated[float, typer.Option("-v", "--min-coverage", min=0.0, max=1.0,
                                          help="Minimum share of a cut's seconds that are hits")]
RateOpt = Annotated[float, typer.Option("--rate", min=0.001, max=1000.0,
                                        help="Samples per second of video")]
SamplingOpt = Annotated[str, typer.Option("--sampling",
                                          help="adaptive: keyframes, plus every sample time "
                                          "where the class may change; exact: every sample "
                                          "time; keyframes: keyframes only, each held until "
                                          "the next")]
MarginOpt = Annotated[float, typer.Option(
    "--adaptive-margin", min=0.0, max=0.5,
    help="adaptive sampling: also decode fully around keyframes whose top score is this close "
    "to 0.5 (or whose top two scores are within twice this); larger is safer and slower")]
BackendOpt = Annotated[str, typer.Option("--backend",
                                         help="auto, cpu or gpu (NVDEC + CuPy + TensorRT)")]


def resolve_model_options(
    model: str | None,
    prototxt: Path | None = None,
    weights: Path | None = None,
    mean: Path | None = None,
    labels: Path | None = None,
    cwd: Path | None = None,
) -> ModelBundle:
    """--model, or Caffe files (-p -w [-m] -l), or ./model/ in Miles Deep's layout, or the
    built-in default, in that order."""
    caffe = [prototxt, weights, mean, labels]
    if any(x is not None for x in caffe):
        if model is not None:
            raise UsageError("give either --model or Caffe files (-p -w -m -l), not both")
        missing = [flag for flag, v in (("-p", prototxt), ("-w", weights), ("-l", labels))
                   if v is None]
        if missing:
            raise UsageError(f"a Caffe model needs {' '.join(missing)} too "
                                 "(-p deploy.prototxt -w weights.caffemodel -l labels.txt)")
        from milesdeep.models.caffe import bundle_from_caffe

        return bundle_from_caffe(prototxt, weights, mean, labels)  # type: ignore[arg-type]
    if model is None:
        from milesdeep.models.caffe import bundle_from_caffe, find_model_folder

        found = find_model_folder(cwd or Path.cwd())
        if found is not None:
            return bundle_from_caffe(*found)
    return resolve_model(model)
