"""`miles-deep tag`: per-second class probabilities and Miles Deep's .tag cut list."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from milesdeep.batch.cli import (
    ForceOpt,
    FromListOpt,
    JobsOpt,
    check_output_dir,
    gather_walked,
    run_cli_batch,
)
from milesdeep.batch.runner import FileOutcome
from milesdeep.batch.tag_job import TagJob
from milesdeep.cli import options as o
from milesdeep.cli.app import app, console
from milesdeep.errors import UsageError
from milesdeep.jobs import TagResult, tag_from_predictions
from milesdeep.pipeline.planner import PlanParams
from milesdeep.pipeline.run import RunOptions


def summary_table(result: TagResult) -> Table:
    table = Table(title=result.name, title_justify="left", show_edge=False)
    table.add_column("label")
    table.add_column("seconds in cuts", justify="right")
    table.add_column("cuts", justify="right")
    counts: dict[str, int] = {}
    for c in result.cuts:
        counts[c.label] = counts.get(c.label, 0) + 1
    for label, seconds in result.seconds_per_label().items():
        table.add_row(label, f"{seconds / result.predictions.rate:,.0f}",
                      str(counts.get(label, 0)))
    return table


def check_sampling(sampling: str) -> str:
    from milesdeep.pipeline.run import SAMPLING_MODES as allowed
    if sampling not in allowed:
        raise UsageError(f"--sampling {sampling!r} is not one of: {', '.join(allowed)}")
    return sampling


@app.command()
def tag(
    videos: Annotated[list[Path] | None,
                      # readable=False: an unreadable video fails alone, not the whole run
                      typer.Argument(help="Video files and folders (searched recursively)",
                                     readable=False)
                      ] = None,
    model: o.ModelOpt = None,
    prototxt: o.ProtoOpt = None,
    weights: o.WeightsOpt = None,
    mean: o.MeanOpt = None,
    labels: o.LabelsOpt = None,
    batch: o.BatchOpt = 32,
    output_dir: o.OutDirOpt = None,
    sampling: o.SamplingOpt = "adaptive",
    rate: o.RateOpt = 1.0,
    min_cut: o.MinCutOpt = 4,
    max_gap: o.MaxGapOpt = 2,
    min_score: o.MinScoreOpt = 0.5,
    min_coverage: o.MinCovOpt = 0.4,
    plot: Annotated[bool, typer.Option("--plot", help="Also write `<stem>.timeline.png`")] = False,
    from_predictions: Annotated[
        Path | None,
        typer.Option("--from-predictions", help="Re-plan from a saved predictions CSV "
                     "(no video, no network)"),
    ] = None,
    from_list: FromListOpt = None,
    force: ForceOpt = False,
    jobs: JobsOpt = 1,
    backend: o.BackendOpt = "auto",
    adaptive_margin: o.MarginOpt = 0.05,
) -> None:
    """Classify every second of VIDEO and write `<stem>.tag` and `<stem>.predictions.csv`.

    Many videos (and folders) run with one model load; a rerun skips the files a previous run
    finished (state in .milesdeep-state.sqlite beside the outputs); a failed file is reported
    and the run goes on; exit status 0 only if no file failed."""
    params = PlanParams(min_cut, max_gap, min_score, min_coverage)
    if from_predictions is not None:
        if videos or from_list is not None:
            raise UsageError("give either videos or --from-predictions, not both")
        from milesdeep.pipeline.atomic import removed_if_left_empty

        with removed_if_left_empty(output_dir):  # a bad CSV leaves no new folder behind
            if output_dir is not None:
                check_output_dir(output_dir)
            result = tag_from_predictions(from_predictions, params=params,
                                          out_dir=output_dir, plot=plot, rate=rate)
        console.print(summary_table(result))
        for path in result.outputs:
            console.print(f"wrote {path}")
        return
    # A library walked after `edit` holds its cuts too: they are not more videos to tag.
    paths, walked = gather_walked(videos, from_list, "miles-deep tag VIDEO|FOLDER [...]", "tag")
    options = RunOptions(rate=rate, sampling=check_sampling(sampling), batch=batch,  # type: ignore[arg-type]
                         adaptive_margin=adaptive_margin)
    bundle = o.resolve_model_options(model, prototxt, weights, mean, labels)
    job = TagJob(bundle, options, params, output_dir, plot)
    from milesdeep.pipeline.backend import resolve_backend

    choice = resolve_backend(backend, bundle, model_arg=model)
    job.backend, job.model_arg = choice.name, model
    announced = False
    job.say = lambda m: console.print(escape(m), soft_wrap=True)
    if choice.name == "gpu" and jobs > 1:
        console.print(f"--jobs {jobs}: the gpu backend runs in one process; ignoring it")
        jobs = 1

    def report(outcome: FileOutcome) -> None:
        nonlocal announced
        if outcome.status == "done" and not announced:
            # Said once a file has run, so that a bad input still gets exactly one line.
            console.print(escape(choice.describe()), style="dim", soft_wrap=True)
            announced = True
        if len(paths) == 1 and outcome.status == "done":  # one video: its own summary
            console.print(summary_table(outcome.detail))
            for path in outcome.outputs:
                console.print(f"wrote {escape(str(path))}", soft_wrap=True)

    run_cli_batch(job, paths, force=force, jobs=jobs, out_dir=output_dir, report=report,
                  walked=walked)
