"""`miles-deep edit`: classify videos, then keep (or remove) the seconds of chosen classes.

The cut is a stream copy (no re-encoding) unless --precise, which re-encodes only the partial
GOPs at range boundaries. Originals are only ever read: there is no --replace; delete or move
an original yourself once you have checked its cut. The per-video work is
`milesdeep.batch.edit_job.EditJob`; this module resolves options and prints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from milesdeep.batch.cli import ForceOpt, FromListOpt, JobsOpt, gather_walked, run_cli_batch
from milesdeep.batch.edit_job import EXPORTS, EditJob, EditReport
from milesdeep.batch.edit_job import parse_targets as parse_targets
from milesdeep.batch.runner import FileOutcome, one_line
from milesdeep.cli import options as o
from milesdeep.cli.app import app, console
from milesdeep.errors import MilesDeepError, UsageError
from milesdeep.models.bundle import ModelBundle
from milesdeep.pipeline.planner import PlanParams
from milesdeep.pipeline.ranges import format_time

USAGE = "miles-deep edit VIDEO|FOLDER [...]"


def _bundle_for_predictions(model: str | None, caffe: tuple[Path | None, ...]
                            ) -> ModelBundle | None:
    """With saved predictions the model only says which label is "other" (for the default
    targets); a model that cannot be loaded matters only if one was asked for."""
    try:
        return o.resolve_model_options(model, *caffe)
    except MilesDeepError:
        if model is not None or any(c is not None for c in caffe):
            raise
        return None


def _check_targets(job: EditJob, labels: tuple[str, ...], whose: str = "the model's") -> None:
    """Fail once, before any video is read, when the targets do not fit the labels."""
    other = job.other_label if job.bundle is not None and \
        tuple(job.bundle.labels) == labels else None
    parse_targets(job.targets, job.all_but_other, labels, other, whose)


def _say(text: str) -> None:
    console.print(text, markup=False, highlight=False, soft_wrap=True)


def _removed(r: EditReport, short: bool = False) -> str:
    """What a redo that wrote nothing removed of an earlier run's outputs."""
    if not r.removed:
        return ""
    names = ", ".join(p.name if short else str(p) for p in r.removed)
    return f"; removed the earlier run's {names}"


def _report_single(r: EditReport, remove: bool) -> None:
    if r.nothing == "no cuts":
        _say(f"no cuts found for {', '.join(r.targets)} in {r.name}; nothing written"
             + _removed(r))
        return
    what = "kept" if not remove else "kept (everything but the cuts)"
    _say(f"{r.cuts} cut(s) of {'+'.join(r.targets)}; {what}: "
         f"{format_time(r.kept)} of {format_time(r.duration)}")
    if r.nothing:
        _say("the cuts cover the whole video: nothing left to keep; nothing written"
             + _removed(r))
        return
    for line in r.lines:
        _say(line)
    for path in r.outputs:
        _say(f"wrote {path}")
    if r.removed:
        _say(_removed(r).removeprefix("; "))


def _report_line(r: EditReport) -> None:
    """One line per edited video in a batch."""
    if r.nothing == "no cuts":
        text = f"no cuts of {'+'.join(r.targets)}; nothing written" + _removed(r, True)
    else:
        text = (f"{r.cuts} cut(s) of {'+'.join(r.targets)}; kept {format_time(r.kept)} of "
                f"{format_time(r.duration)}")
        if r.nothing:
            text += "; nothing left to keep, nothing written" + _removed(r, True)
        else:
            text += " -> " + ", ".join(p.name for p in r.outputs) + _removed(r, True)
    _say(one_line(f"  {r.name}: {text}"))


@app.command()
def edit(
    videos: Annotated[list[Path] | None,
                      typer.Argument(help="Videos and folders (searched recursively) to cut; "
                                     "only ever read", readable=False)] = None,
    targets: Annotated[str | None, typer.Option("-t", "--target",
                                                help="Comma-separated labels to cut out "
                                                "[default: every label but the model's "
                                                "'other' one]")] = None,
    all_but_other: Annotated[bool, typer.Option("-x", "--all-but-other",
                                                help="Every label but the 'other' one")] = False,
    remove: Annotated[bool, typer.Option("--remove", help="Keep everything except the cuts "
                                         "(a clean version of the video)")] = False,
    pieces: Annotated[bool, typer.Option("-c", "--pieces", help="Write each range as its own "
                                         "file in `<stem>.cut/`")] = False,
    output_dir: o.OutDirOpt = None,
    batch: o.BatchOpt = 32,
    min_cut: o.MinCutOpt = 4,
    max_gap: o.MaxGapOpt = 2,
    min_score: o.MinScoreOpt = 0.5,
    min_coverage: o.MinCovOpt = 0.4,
    margin: Annotated[float, typer.Option("--margin", min=0.0, max=86400.0,
                                          help="Widen every kept range by S seconds on both "
                                          "sides")] = 0.0,
    precise: Annotated[bool, typer.Option("--precise", help="Frame-accurate cuts: re-encode "
                                          "only the partial GOPs at boundaries (H.264)")
                       ] = False,
    faststart: Annotated[bool, typer.Option("--faststart", help="MP4/MOV outputs: put the "
                                            "index (moov) at the front, so players and web "
                                            "servers can start before reading the whole file "
                                            "(rewrites each output once)")] = False,
    from_predictions: Annotated[Path | None, typer.Option(
        "--from-predictions", help="Plan from saved predictions instead of running the "
        "network: a predictions CSV (one video), or a folder holding `<stem>.predictions.csv` "
        "for each video (what tag writes)")] = None,
    export: Annotated[str | None, typer.Option(
        "--export", help="Write the cut list as an editorial timeline (otio, edl or fcpxml) "
        "referencing the original, instead of cutting the video")] = None,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace files at output paths that an earlier edit of the same "
        "video did not write (its own outputs are replaced without it)")] = False,
    model: o.ModelOpt = None,
    prototxt: o.ProtoOpt = None,
    weights: o.WeightsOpt = None,
    mean: o.MeanOpt = None,
    labels: o.LabelsOpt = None,
    rate: o.RateOpt = 1.0,
    sampling: o.SamplingOpt = "adaptive",
    backend: o.BackendOpt = "auto",
    adaptive_margin: o.MarginOpt = 0.05,
    from_list: FromListOpt = None,
    force: ForceOpt = False,
    jobs: JobsOpt = 1,
) -> None:
    """Cut each VIDEO to the seconds of the target classes (or, with --remove, without them).

    Many videos (and folders) run with one model load. Resume: a rerun skips every video a
    previous run finished with the same model and options while the video and its outputs
    are unchanged (state in .milesdeep-state.sqlite in the output folder); --force redoes
    them. A redo, or the rerun of a killed run, replaces that video's own earlier outputs;
    a file at an output path that edit did not write for that video is never replaced
    without --overwrite (the video fails instead). A failed video is one error line and the
    run goes on; exit status 0 only if no video failed. Files found in folders that are named
    like edit outputs (`*.cut.*`, `*.cut.N.*`) are left out (name them to edit them)."""
    from milesdeep.cli.tag import check_sampling
    from milesdeep.pipeline.backend import check_request
    from milesdeep.pipeline.run import RunOptions

    # Checked even where they do not apply (--from-predictions): a typo is said, not ignored.
    check_sampling(sampling)
    check_request(backend)
    if export is not None and export not in EXPORTS:
        raise UsageError(f"--export {export!r} is not one of: {', '.join(EXPORTS)}")
    if export is not None and (pieces or precise or faststart):
        raise UsageError("--export writes a timeline, not a video: drop -c / --precise / "
                         "--faststart")
    if export is not None:
        from milesdeep.pipeline.export import adapter_for

        adapter_for(export)  # a missing adapter is one error, not one per video
    paths, walked = gather_walked(videos, from_list, USAGE, "edit")
    caffe = (prototxt, weights, mean, labels)
    backend_line = ""  # which backend runs the network, said after the first file
    params = PlanParams(min_cut, max_gap, min_score, min_coverage)
    job = EditJob(None, targets, all_but_other, remove, pieces, margin, precise, export,
                  overwrite, params, out_dir=output_dir, single=len(paths) == 1,
                  faststart=faststart)
    if from_predictions is not None:
        if not from_predictions.is_dir():
            if not from_predictions.is_file():
                raise MilesDeepError("no such predictions file or folder", from_predictions)
            if len(paths) > 1:
                raise MilesDeepError("a predictions CSV is for one video; for many, give the "
                                     "folder of <stem>.predictions.csv files", from_predictions)
        job.bundle = _bundle_for_predictions(model, caffe)
        job.predictions = from_predictions
        job.run_options = RunOptions(rate=rate)  # for a one-row file, whose times cannot tell
        if from_predictions.is_file():
            from milesdeep.pipeline.predictions import read_predictions_csv

            labels = tuple(read_predictions_csv(from_predictions).labels)
            try:
                _check_targets(job, labels, whose="its")  # the file's labels, not a model's
            except MilesDeepError as e:
                raise type(e)(str(e), from_predictions) from None
    else:
        from milesdeep.pipeline.backend import resolve_backend

        job.bundle = o.resolve_model_options(model, *caffe)
        _check_targets(job, tuple(job.bundle.labels))
        job.run_options = RunOptions(rate=rate, sampling=check_sampling(sampling),  # type: ignore[arg-type]
                                     batch=batch, adaptive_margin=adaptive_margin)
        choice = resolve_backend(backend, job.bundle, model_arg=model)
        backend_line = choice.describe()
        job.backend, job.model_arg, job.say = choice.name, model, _say
        if choice.name == "gpu" and jobs > 1:
            _say(f"--jobs {jobs}: the gpu backend runs in one process; ignoring it")
            jobs = 1

    def report(outcome: FileOutcome) -> None:
        nonlocal backend_line
        if outcome.status == "done" and backend_line:
            # Said once a file has run, as tag does, so that a bad input gets exactly one line.
            _say(backend_line)
            backend_line = ""
        r = outcome.detail
        if outcome.status != "done" or not isinstance(r, EditReport):
            return
        if len(paths) == 1:
            _report_single(r, remove)
        else:
            _report_line(r)

    run_cli_batch(job, paths, force=force, jobs=jobs, out_dir=output_dir, report=report,
                  walked=walked)
