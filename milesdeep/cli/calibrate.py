"""`miles-deep calibrate`: FP16 / INT8 variants from the user's own frames, with a report of
how often they agree with FP32 (top-1 and the per-second cut decisions)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from milesdeep.cli import options as o
from milesdeep.cli.app import app, console
from milesdeep.errors import UsageError
from milesdeep.pipeline.planner import PlanParams


@app.command()
def calibrate(
    videos: Annotated[list[Path] | None, typer.Argument(
        help="Videos to take frames from", readable=False)] = None,
    model: o.ModelOpt = None,
    prototxt: o.ProtoOpt = None,
    weights: o.WeightsOpt = None,
    mean: o.MeanOpt = None,
    labels: o.LabelsOpt = None,
    precision: Annotated[str, typer.Option("--precision",
                                           help="fp16, int8 or both")] = "both",
    frames: Annotated[int, typer.Option("--frames", min=2, max=100_000,
                                        help="Frames to sample across the videos and time "
                                        "(half calibrate, half are held out to check)")] = 512,
    method: Annotated[str, typer.Option("--method",
                                        help="INT8 calibration: entropy, minmax or "
                                        "percentile")] = "entropy",
    output: Annotated[Path, typer.Option("-o", "--output",
                                         help="Directory for the frames, variants and "
                                         "report")] = Path("calibration"),
    rate: o.RateOpt = 1.0,
    min_cut: o.MinCutOpt = 4,
    max_gap: o.MaxGapOpt = 2,
    min_score: o.MinScoreOpt = 0.5,
    min_coverage: o.MinCovOpt = 0.4,
    resample: Annotated[bool, typer.Option("--resample",
                                           help="Sample frames again even if the directory "
                                           "holds frames from the same videos")] = False,
) -> None:
    """Make model.fp16.onnx / model.int8.onnx from frames of VIDEO... and report how often
    they agree with FP32 (build-engine --precision int8 --calibration DIR uses them)."""
    from milesdeep.calibration.calibrate import calibrate as run
    from milesdeep.calibration.report import report_table

    if not videos:
        raise UsageError("no video given: miles-deep calibrate VIDEO [VIDEO...]")
    params = PlanParams(min_cut, max_gap, min_score, min_coverage)
    bundle = o.resolve_model_options(model, prototxt, weights, mean, labels)

    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn("[bold]frames"), BarColumn(),
                   TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
                   console=console, disable=not console.is_terminal, transient=True)
    task = bar.add_task("frames", total=None)

    def progress(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total)

    def step(message: str) -> None:
        console.print(escape(message))

    from milesdeep.pipeline.atomic import removed_if_left_empty

    with removed_if_left_empty(output), bar:
        result = run(bundle, videos, output, precision=precision, frames=frames,
                     method=method, rate=rate, params=params, resample=resample,
                     step=step, progress=progress)
    console.print(report_table(result.report))
    for figures in result.report.variants.values():
        if figures.warning:
            console.print(f"[bold red]WARNING:[/] {escape(figures.warning)}", soft_wrap=True)
    for path in result.files:
        console.print(f"wrote {escape(str(path))}")
