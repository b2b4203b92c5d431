"""`miles-deep edit`: classify a video, then keep (or remove) the seconds of chosen classes.

The cut is a stream copy (no re-encoding) unless --precise, which re-encodes only the partial
GOPs at range boundaries. The original file is only ever read: there is no --replace; delete or
move the original yourself once you have checked the cut.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from milesdeep.cli import options as o
from milesdeep.cli.app import app, console
from milesdeep.errors import MilesDeepError
from milesdeep.pipeline.planner import PlanParams, plan_union
from milesdeep.pipeline.predictions import Predictions
from milesdeep.pipeline.ranges import format_time, kept_ranges, total

EXPORTS = ("otio", "edl", "fcpxml")


def parse_targets(targets: str | None, all_but_other: bool, labels: tuple[str, ...],
                  other: str | None) -> list[str]:
    """-t L1,L2, or (default, and -x) every label but the model's "other" one."""
    if targets is not None and all_but_other:
        raise MilesDeepError("give either -t LABELS or -x, not both")
    if targets is not None:
        names = [t.strip() for t in targets.split(",") if t.strip()]
        unknown = [n for n in names if n not in labels]
        if not names or unknown:
            raise MilesDeepError(f"unknown label(s) {', '.join(unknown) or repr(targets)}; "
                                 f"the model's labels are: {', '.join(labels)}")
        return names
    if other is None or other not in labels:
        raise MilesDeepError("this model names no 'other' label to leave out; choose targets "
                             f"with -t (labels: {', '.join(labels)})")
    return [n for n in labels if n != other]


def _predictions(video: Path, from_predictions: Path | None, model: str | None,
                 caffe: tuple[Path | None, ...], batch: int, rate: float, sampling: str,
                 backend: str) -> tuple[Predictions, str | None]:
    """(predictions, the model's other label) from a CSV or by classifying the video."""
    from milesdeep.pipeline.run import RunOptions

    if from_predictions is not None:
        from milesdeep.pipeline.predictions import read_predictions_csv

        preds = read_predictions_csv(from_predictions)
        other = None
        try:
            bundle = o.resolve_model_options(model, *caffe)
            if tuple(bundle.labels) == preds.labels:
                other = bundle.other_label
        except MilesDeepError:
            if model is not None or any(c is not None for c in caffe):
                raise
        return preds, other
    from milesdeep.cli.tag import check_sampling
    from milesdeep.jobs import open_runner

    bundle = o.resolve_model_options(model, *caffe)
    options = RunOptions(rate=rate, sampling=check_sampling(sampling),  # type: ignore[arg-type]
                         batch=batch)
    from milesdeep.cli.progress import video_progress
    from milesdeep.pipeline.decode import probe

    with open_runner(bundle, backend, model_arg=model, say=console.print) as runner:
        info = probe(video)
        with video_progress(console, video.name, info.duration) as progress:
            preds = runner.classify(video, options, progress, None)
    return preds, bundle.other_label


@app.command()
def edit(
    video: Annotated[Path, typer.Argument(help="The video to cut (only ever read)")],
    targets: Annotated[str | None, typer.Option("-t", "--target",
                                                help="Comma-separated labels to cut out "
                                                "[default: every label but the model's "
                                                "'other' one]")] = None,
    all_but_other: Annotated[bool, typer.Option("-x", "--all-but-other",
                                                help="Every label but the 'other' one")] = False,
    remove: Annotated[bool, typer.Option("--remove", help="Keep everything except the cuts "
                                         "(a clean version of the video)")] = False,
    pieces: Annotated[bool, typer.Option("-c", "--pieces", help="Write each range as its own "
                                         "file in <stem>.cut/")] = False,
    output_dir: o.OutDirOpt = None,
    batch: o.BatchOpt = 32,
    min_cut: o.MinCutOpt = 4,
    max_gap: o.MaxGapOpt = 2,
    min_score: o.MinScoreOpt = 0.5,
    min_coverage: o.MinCovOpt = 0.4,
    margin: Annotated[float, typer.Option("--margin", min=0.0, help="Widen every kept range "
                                          "by S seconds on both sides")] = 0.0,
    precise: Annotated[bool, typer.Option("--precise", help="Frame-accurate cuts: re-encode "
                                          "only the partial GOPs at boundaries (H.264)")
                       ] = False,
    from_predictions: Annotated[Path | None, typer.Option(
        "--from-predictions", help="Plan from a saved predictions CSV instead of running "
        "the network")] = None,
    export: Annotated[str | None, typer.Option(
        "--export", help="Write the cut list as an editorial timeline (otio, edl or fcpxml) "
        "referencing the original, instead of cutting the video")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs")
                         ] = False,
    model: o.ModelOpt = None,
    prototxt: o.ProtoOpt = None,
    weights: o.WeightsOpt = None,
    mean: o.MeanOpt = None,
    labels: o.LabelsOpt = None,
    rate: o.RateOpt = 1.0,
    sampling: o.SamplingOpt = "exact",
    backend: o.BackendOpt = "auto",
) -> None:
    """Cut VIDEO to the seconds of the target classes (or, with --remove, without them)."""
    from milesdeep.pipeline import remux

    if export is not None and export not in EXPORTS:
        raise MilesDeepError(f"--export {export!r} is not one of: {', '.join(EXPORTS)}")
    if export is not None and (pieces or precise):
        raise MilesDeepError("--export writes a timeline, not a video: drop -c / --precise")
    if not video.is_file():
        raise MilesDeepError("no such video file", video)
    params = PlanParams(min_cut, max_gap, min_score, min_coverage)
    index = remux.index_media(video)  # fails fast on an unreadable video
    out_dir = output_dir if output_dir is not None else video.parent
    preds, other = _predictions(video, from_predictions, model,
                                (prototxt, weights, mean, labels), batch, rate, sampling,
                                backend)
    names = parse_targets(targets, all_but_other, preds.labels, other)
    cuts, _ = plan_union(preds.probs, preds.labels, names, params.for_rate(preds.rate))
    if not cuts:
        console.print(f"no cuts found for {', '.join(names)} in {video.name}; nothing written")
        return
    ranges = kept_ranges(cuts, preds.rate, index.duration, remove=remove, margin=margin)
    what = "kept" if not remove else "kept (everything but the cuts)"
    console.print(f"{len(cuts)} cut(s) of {'+'.join(names)}; {what}: "
                  f"{format_time(total(ranges))} of {format_time(index.duration)}")
    if not ranges:
        console.print("the cuts cover the whole video: nothing left to keep; nothing written")
        return
    if export is not None:
        from milesdeep.pipeline.export import adapter_for, build_timeline, write_timeline

        _, ext = adapter_for(export)
        path = out_dir / f"{video.stem}.cut{ext}"
        timeline = build_timeline(video, ranges, index.frame_rate, index.duration)
        write_timeline(timeline, path, export, overwrite=overwrite)
        console.print(f"wrote {path}")
        return
    result = remux.cut_video(index, ranges, out_dir, precise=precise, pieces=pieces,
                             overwrite=overwrite)
    for line in result.summary_lines():
        console.print(line, markup=False, highlight=False)
    for path in result.outputs:
        console.print(f"wrote {path}", markup=False, highlight=False)
