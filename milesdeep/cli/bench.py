"""`miles-deep bench`: seconds of work per hour of video, per stage, against Miles Deep's way."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from milesdeep.batch.cli import FromListOpt, gather_inputs
from milesdeep.cli import options as o
from milesdeep.cli.app import app, console
from milesdeep.errors import MilesDeepError, UsageError

STAGE_COLUMNS = ("decode", "preprocess", "inference", "planning", "output")


def _fmt(v: float | None, spec: str = ".1f") -> str:
    return "-" if v is None else format(v, spec)


def video_table(report, hardware: dict, repeat: int = 1) -> Table:
    """One table per video: a row per run, seconds of work per hour of video."""
    from milesdeep.bench import BASELINE

    title = (f"{Path(report.video).name}: {report.duration:,.1f} s of video — "
             f"{hardware['backend']}, {hardware['cpu']}, {hardware['cores']} cores"
             + (f", {hardware['gpu']}" if hardware.get("gpu") else ""))
    t = Table(title=title, title_justify="left", show_edge=False,
              caption="seconds of work per hour of video (CPU: of every core together); "
              "stages overlap"
              + (f"; each run the median of {repeat}" if repeat > 1 else ""),
              caption_justify="left")
    t.add_column("run", no_wrap=True)
    t.add_column("s/hour", justify="right")
    t.add_column("CPU s/hour", justify="right")
    for s in STAGE_COLUMNS:
        t.add_column(s, justify="right")
    t.add_column("× real time", justify="right")
    t.add_column("peak RSS MiB", justify="right")
    t.add_column("vs baseline", justify="right")
    t.add_column("labels = exact", justify="right")
    for r in report.runs:
        per = r.stage_seconds_per_hour()
        if r.mode == BASELINE:
            per = dict(per)
            per["decode"] = per.get("decode", 0) + per.get("jpeg_encode", 0)
            per["preprocess"] = (per.get("preprocess", 0) + per.get("jpeg_decode", 0))
        speed = report.speedup(r.mode) if r.mode != BASELINE else None
        agree = report.agreement.get(r.mode)
        t.add_row(r.mode, _fmt(r.seconds_per_hour), _fmt(r.cpu_seconds_per_hour),
                  *(_fmt(per.get(s)) for s in STAGE_COLUMNS),
                  _fmt(r.x_realtime), _fmt(r.peak_rss_mib, ".0f"),
                  "-" if speed is None else f"{speed:.1f}×",
                  "-" if agree is None else f"{100 * agree:.2f}%")
    return t


def _times(ratio: float, better: str, worse: str) -> str:
    """`2.0× faster`, or for a ratio under 1 `1.3× slower` (not `0.8× faster`)."""
    return f"{ratio:.1f}× {better}" if ratio >= 1 else f"{1 / ratio:.1f}× {worse}"


@app.command()
def bench(
    videos: Annotated[list[Path] | None, typer.Argument(
        help="Video files or folders (searched recursively) to measure",
        readable=False)] = None,  # an unreadable one is our one line, not a usage error
    from_list: FromListOpt = None,
    backend: Annotated[str, typer.Option("--backend", help="cpu or gpu")] = "cpu",
    sampling: Annotated[list[str] | None, typer.Option(
        "--sampling", help="adaptive, exact or keyframes; repeat for several "
        "[default: adaptive] (adaptive also runs exact, for the agreement)")] = None,
    baseline: Annotated[bool, typer.Option(
        "--baseline", help="Also run the Miles-Deep-style baseline (decode every frame, one "
        "JPEG per second, classify) and print the ratio")] = False,
    decode_reference: Annotated[bool, typer.Option(
        "--decode-reference", help="Also time decoding every frame with PyAV alone")] = False,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the figures here")] = None,
    isolate: Annotated[bool, typer.Option(
        "--isolate", help="Run each measurement in a fresh process (own peak RSS; no "
        "agreement figures)")] = False,
    repeat: Annotated[int, typer.Option(
        "--repeat", min=1, max=100, help="Make every run this many times, in turns, and "
        "report each one's median")] = 1,
    model: o.ModelOpt = None,
    batch: o.BatchOpt = 32,
    rate: o.RateOpt = 1.0,
) -> None:
    """Measure seconds of work per hour of video, per stage, for each VIDEO."""
    from milesdeep.bench import (
        BASELINE,
        VideoReport,
        bench_isolated,
        bench_video,
        gpu_driver_version,
        hardware_info,
        median_run,
    )
    from milesdeep.pipeline.backend import resolve_backend
    from milesdeep.pipeline.run import SAMPLING_MODES

    modes = sampling or ["adaptive"]
    for m in modes:
        if m not in SAMPLING_MODES:
            raise UsageError(f"--sampling {m!r} is not one of: {', '.join(SAMPLING_MODES)}")
    if backend not in ("cpu", "gpu"):
        raise UsageError(f"--backend {backend!r}: bench measures cpu or gpu")
    videos = gather_inputs(videos, from_list, "miles-deep bench VIDEO [VIDEO...]")
    if json_out is not None:  # checked before minutes of measuring, not after
        from milesdeep.pipeline.atomic import check_writable_dir

        if json_out.is_dir():
            raise MilesDeepError("--json names a folder; give a file name", json_out)
        if any(os.path.realpath(v) == os.path.realpath(json_out) for v in videos):
            raise MilesDeepError("--json names one of the videos to measure; give another "
                                 "file name", json_out)
        check_writable_dir(json_out.parent)
    bundle = o.resolve_model_options(model)
    choice = resolve_backend(backend, bundle)  # --backend gpu without one: E's one line
    gpu_backend, gpu_info = None, None
    if choice.name == "gpu":
        if "adaptive" in modes:
            raise UsageError("--backend gpu decodes every frame on NVDEC: use "
                             "--sampling exact or keyframes")
        from milesdeep.pipeline.backend import probe_gpu
        from milesdeep.pipeline.run_gpu import open_gpu_backend

        probe = probe_gpu()
        gpu_info = {"gpu": probe.gpu.name if probe.gpu else "", "driver": gpu_driver_version(),
                    "tensorrt": probe.versions.get("tensorrt", "")}
        gpu_backend = open_gpu_backend(bundle, model_arg=model)
    hardware = hardware_info(choice.name, gpu_info)
    classifier = gpu_backend.classifier if gpu_backend is not None else None
    if classifier is None and not isolate:
        from milesdeep.pipeline.infer import OrtClassifier

        classifier = OrtClassifier(bundle)
        warm_up(classifier, bundle, batch)
    # Rich cannot print wider than its console: a log or pipe gets a console wide enough for
    # the whole table instead of truncated columns.
    from rich.console import Console

    wide = console if console.is_terminal else Console(stderr=True, highlight=False,
                                                       width=max(console.width, 140))

    def _bench_one(video: Path) -> VideoReport:
        from milesdeep.pipeline.decode import probe

        probe(video)  # a bad file is its one error line, not a run announced first
        if isolate:
            what = modes + ["decode-only"] * decode_reference + [BASELINE] * baseline
            each: dict[str, list] = {}
            for _ in range(repeat):
                for m in what:
                    each.setdefault(m, []).append(bench_isolated(video, m, model, rate, batch))
            runs = [median_run(r) for r in each.values()]
            return VideoReport(str(video), max(r.duration for r in runs), runs)
        return bench_video(video, bundle, classifier, modes, baseline=baseline,
                           decode_reference=decode_reference, rate=rate, batch=batch,
                           gpu_backend=gpu_backend, say=lambda m: console.print(m, style="dim"),
                           repeat=repeat)

    reports = []
    failed = 0
    try:
        for video in videos:
            try:
                report = _bench_one(video)
            except MilesDeepError as e:  # one bad file is one line; the others are measured
                failed += 1
                console.print(f"[bold red]error:[/] {escape(str(e))}", soft_wrap=True)
                continue
            reports.append(report)
            wide.print(video_table(report, hardware, repeat))
            for mode in modes:
                s, c = report.speedup(mode), report.speedup(mode, cpu=True)
                if s is not None:
                    console.print(f"{mode}: {_times(s, 'faster', 'slower')} than the "
                                  "Miles-Deep-style baseline"
                                  + (f" ({_times(c, 'less', 'more')} CPU)" if c else ""))
    finally:
        if gpu_backend is not None:
            gpu_backend.close()
    if json_out is not None and reports:  # nothing measured: nothing to write
        from milesdeep.pipeline.atomic import write_text_atomic

        doc = {"hardware": hardware, "videos": [r.to_dict() for r in reports],
               "agreement_rule": "share of sample slots whose winning label equals exact's"}
        write_text_atomic(json_out, json.dumps(doc, indent=1))
        console.print(f"wrote {json_out}")
    if failed:
        raise typer.Exit(1)


def warm_up(classifier, bundle, batch: int) -> None:
    """One untimed batch first: ONNX Runtime's first run allocates and plans."""
    import numpy as np

    classifier.infer(np.zeros((batch, *bundle.input.shape), np.float32))
