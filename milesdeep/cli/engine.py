"""`miles-deep build-engine`: build the TensorRT engine for a model, once per GPU."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from milesdeep.cli import options as o
from milesdeep.cli.app import app, console
from milesdeep.errors import MilesDeepError, UsageError


@app.command("build-engine")
def build_engine_cmd(
    model: o.ModelOpt = None,
    prototxt: o.ProtoOpt = None,
    weights: o.WeightsOpt = None,
    mean: o.MeanOpt = None,
    labels: o.LabelsOpt = None,
    precision: Annotated[str, typer.Option("--precision",
                                           help="fp32, fp16 (an FP16 ONNX is made if absent) "
                                           "or int8 (needs --calibration)")] = "fp16",
    batch: Annotated[int, typer.Option("--batch", "-b", min=1, max=4096,
                                       help="Largest batch the engine takes (its profile is "
                                       "1..N, tuned for N)")] = 32,
    calibration: Annotated[Path | None, typer.Option(
        "--calibration", help="Calibration directory holding model.int8.onnx (int8 only)")
    ] = None,
    output: Annotated[Path | None, typer.Option(
        "-o", "--output", help="Write the engine here instead of the engine cache")] = None,
    workspace: Annotated[float, typer.Option("--workspace", min=0.0625, max=1024.0,
                                             help="Builder workspace limit, GiB")] = 4.0,
) -> None:
    """Build a TensorRT engine for the model on this GPU (kept in the engine cache)."""
    from milesdeep.pipeline.backend import missing_line, probe_gpu
    from milesdeep.trt_engine.build import check_request
    from milesdeep.trt_engine.sidecar import PRECISIONS

    if precision not in PRECISIONS:
        raise UsageError(f"--precision {precision!r} is not one of: {', '.join(PRECISIONS)}")
    # Options, -o and the model first: what is wrong with them is wrong on any machine, and
    # was hidden behind "needs a GPU" until the user reached one.
    check_request(precision, calibration, output)
    bundle = o.resolve_model_options(model, prototxt, weights, mean, labels)
    probe = probe_gpu()
    if not probe.usable:
        raise MilesDeepError(f"build-engine needs a GPU with TensorRT: {missing_line(probe)}")
    assert probe.gpu is not None

    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from milesdeep.trt_engine.build import BuildRequest, build_engine
    from milesdeep.trt_engine.cuda_context import GpuContext

    req = BuildRequest(bundle=bundle, precision=precision, batch=batch,
                       calibration=calibration, output=output,
                       workspace_bytes=int(workspace * (1 << 30)))
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                        TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
                        console=console, disable=not console.is_terminal)
    tasks: dict[str, int] = {}

    def on_progress(phase: str, parent: str | None, step: int, steps: int) -> None:
        if phase not in tasks:
            indent = "  " if parent else ""
            tasks[phase] = progress.add_task(f"{indent}{phase[:50]}", total=max(steps, 1))
        progress.update(tasks[phase], completed=step, total=max(steps, 1))

    console.print(f"building a {precision} engine for {bundle.name} on {probe.gpu.name} "
                  f"(batch 1..{batch})")
    with GpuContext(0) as gpu, progress:
        path, sidecar = build_engine(req, gpu.name, gpu.compute_capability, on_progress)
    console.print(f"wrote {path} (TensorRT {sidecar.tensorrt_version}, "
                  f"sm_{sidecar.compute_capability[0]}{sidecar.compute_capability[1]})")
