"""`calibrate`: frames from the user's videos -> FP16 / INT8 variants -> accuracy report.

Everything lands in one directory, which `build-engine --precision int8 --calibration DIR`
reads (`model.int8.onnx`):

    calibration.npz  held_out.npz         the sampled, preprocessed frames (repeatable runs)
    model.fp16.onnx  model.int8.onnx      the variants
    calibration_report.json               the figures (see `milesdeep.calibration.report`)

Frames already in the directory are reused when they were taken from the same videos at the
same rate with the same input spec and frame budget (`resample=True` takes them again).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from milesdeep.calibration.frames import FrameSet, load_frames, sample_frames, save_frames
from milesdeep.calibration.report import REPORT_FILE, CalibrationReport, evaluate, write_report
from milesdeep.calibration.variants import METHODS, make_fp16, make_int8
from milesdeep.errors import MilesDeepError, UsageError
from milesdeep.models.bundle import ModelBundle
from milesdeep.pipeline.atomic import check_writable_dir
from milesdeep.pipeline.planner import PlanParams

FP16_ONNX = "model.fp16.onnx"
INT8_ONNX = "model.int8.onnx"
PRECISIONS = ("fp16", "int8", "both")

Step = Callable[[str], None]
Progress = Callable[[int, int], None]


@dataclass
class CalibrationResult:
    directory: Path
    frames: FrameSet
    reused_frames: bool
    variants: dict[str, Path]
    report: CalibrationReport
    report_path: Path
    files: list[Path] = field(default_factory=list)


def _reusable(directory: Path, videos: Sequence[Path], bundle: ModelBundle, rate: float,
              frames: int) -> FrameSet | None:
    try:
        fs = load_frames(directory)
    except MilesDeepError:
        return None
    same = (fs.videos == [str(v) for v in videos] and fs.rate == rate
            and fs.spec == bundle.input and fs.requested == frames)
    return fs if same else None


def calibrate(bundle: ModelBundle, videos: Sequence[Path], directory: Path,
              precision: str = "both", frames: int = 512, method: str = "entropy",
              rate: float = 1.0, params: PlanParams = PlanParams(), resample: bool = False,
              step: Step | None = None, progress: Progress | None = None) -> CalibrationResult:
    """Make the variants of `bundle` from frames of `videos` and measure them (see module)."""
    if precision not in PRECISIONS:
        raise UsageError(f"--precision {precision!r} is not one of: {', '.join(PRECISIONS)}")
    if method not in METHODS:
        raise UsageError(f"--method {method!r} is not one of: {', '.join(METHODS)}")
    if not videos:
        raise MilesDeepError("give at least one video to take calibration frames from")
    directory = Path(directory)
    outputs = [directory / n for n in ("calibration.npz", "held_out.npz", FP16_ONNX, INT8_ONNX,
                                       REPORT_FILE)]
    for v in videos:  # an input is only ever read
        if any(os.path.realpath(v) == os.path.realpath(f) for f in outputs):
            raise MilesDeepError("has the name of one of calibrate's outputs in the output "
                                 "folder, which would replace it; rename it or use another -o",
                                 v)
    check_writable_dir(directory)
    say = step or (lambda _msg: None)

    fs = None if resample else _reusable(directory, videos, bundle, rate, frames)
    reused = fs is not None
    if fs is None:
        from milesdeep.pipeline.decode import probe

        for v in videos:  # a bad file is its one error line, not a step announced first
            probe(v)
        say(f"sampling {frames} frames from {len(videos)} video(s)")
        fs = sample_frames(videos, bundle.input, frames=frames, rate=rate, progress=progress)
        got = len(fs.calibration) + len(fs.held_out)
        if got < frames:
            say(f"the videos hold {got} sample times at {rate:g} a second: {got} frames taken")
        # An INT8 variant and a report already here were made from other frames.
        for stale in (directory / INT8_ONNX, directory / REPORT_FILE):
            stale.unlink(missing_ok=True)
        save_frames(fs, directory)
    else:
        say(f"reusing the {len(fs.calibration) + len(fs.held_out)} frames in {directory}")

    variants: dict[str, Path] = {}
    if precision in ("fp16", "both"):
        say("making the FP16 variant")
        variants["fp16"] = make_fp16(bundle.onnx_path, directory / FP16_ONNX)
    if precision in ("int8", "both"):
        say(f"calibrating the INT8 variant on {len(fs.calibration)} frames ({method})")
        variants["int8"] = make_int8(bundle.onnx_path, directory / INT8_ONNX, fs.calibration,
                                     method)
    say(f"comparing with FP32 on {len(fs.held_out)} held-out frames")
    report, _ = evaluate(bundle, variants, fs, params,
                         method=method if "int8" in variants else None)
    report_path = write_report(report, directory)
    # The folder holds what its report describes: a variant an earlier run made and this one
    # did not (an INT8 model beside an FP16-only report) would be built from unmeasured.
    for name, file in (("fp16", FP16_ONNX), ("int8", INT8_ONNX)):
        if name not in variants and (directory / file).exists():
            (directory / file).unlink()
            say(f"removed the earlier run's {file} (this run made {', '.join(variants)})")
    files = [directory / "calibration.npz", directory / "held_out.npz", *variants.values(),
             report_path]
    return CalibrationResult(directory=directory, frames=fs, reused_frames=reused,
                             variants=variants, report=report, report_path=report_path,
                             files=files)
