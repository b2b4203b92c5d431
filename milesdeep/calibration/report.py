"""How often a reduced-precision variant agrees with FP32, on the held-out frames.

Every figure compares the FP32 model and a variant, both run with ONNX Runtime on the CPU, on
the same held-out tensors (`held_out.npz`):

- top1_agreement: share of held-out samples whose argmax (winning class) is the same.
- mean_abs_dp / max_abs_dp: |p_variant - p_fp32| of the class FP32 picks, mean and max over
  the held-out samples.
- cut_agreement, the figure users care about: for each held-out run (a contiguous stretch of
  one video at the pipeline's rate) the cut planner runs on FP32's and on the variant's
  probabilities with every label as a target (`plan_all_labels`, the .tag mode), giving one
  decision per (sample, label): is the sample inside a planned cut of that label? The
  agreement is the share of those decisions that are equal, over all runs and labels
  (cut_decisions of them; cut_disagreements differ). `per_label` gives the same share per label.

A loud warning is attached below 99.5 % top-1 agreement for FP16 and 98 % for INT8.

Caveat, measured: ONNX Runtime's CPU provider has float16 kernels for only some operators and
runs the rest in float32 behind inserted casts, so on the CPU the FP16 figures capture the
rounding of the weights and of some activations, not all of what a GPU computing in FP16 does.
INT8 Q/DQ is emulated faithfully (quantize, then dequantize, at every Q/DQ pair).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from milesdeep.calibration.frames import FrameSet, Run
from milesdeep.models.bundle import ModelBundle
from milesdeep.pipeline.atomic import write_text_atomic
from milesdeep.pipeline.planner import PlanParams, plan_all_labels

REPORT_FILE = "calibration_report.json"
REPORT_FORMAT = "milesdeep.calibration-report"
REPORT_VERSION = 1
THRESHOLDS = {"fp16": 0.995, "int8": 0.98}


@dataclass
class VariantFigures:
    precision: str
    onnx: str
    samples: int
    top1_agreement: float
    mean_abs_dp: float
    max_abs_dp: float
    cut_decisions: int
    cut_agreement: float
    cut_disagreements: int
    per_label: dict[str, float]
    threshold: float
    warning: str | None = None


@dataclass
class CalibrationReport:
    model: str
    model_sha256: str
    labels: list[str]
    method: str | None
    rate: float
    plan: dict[str, Any]
    videos: list[str]
    calibration_frames: int
    held_out_frames: int
    held_out_runs: int
    variants: dict[str, VariantFigures] = field(default_factory=dict)

    def to_json(self) -> str:
        data = {"format": REPORT_FORMAT, "version": REPORT_VERSION, **asdict(self)}
        return json.dumps(data, indent=2) + "\n"


def classify(bundle: ModelBundle, tensors: np.ndarray, batch: int = 32,
             threads: int = 0) -> np.ndarray:
    """Probabilities of `bundle` (any of its ONNX variants) for preprocessed tensors."""
    from milesdeep.pipeline.infer import OrtClassifier

    clf = OrtClassifier(bundle, threads=threads)
    out = np.empty((len(tensors), len(bundle.labels)), np.float32)
    for i in range(0, len(tensors), batch):
        out[i: i + batch] = clf.infer(tensors[i: i + batch])
    return out


def cut_mask(probs: np.ndarray, labels: Sequence[str], params: PlanParams) -> np.ndarray:
    """(labels, samples) booleans: is the sample inside a planned cut of that label?"""
    mask = np.zeros((len(labels), len(probs)), bool)
    for cut in plan_all_labels(probs, labels, params):
        mask[list(labels).index(cut.label), cut.start: cut.end + 1] = True
    return mask


def compare(p32: np.ndarray, pv: np.ndarray, runs: Sequence[Run], labels: Sequence[str],
            params: PlanParams) -> dict[str, Any]:
    """The agreement figures of one variant (see the module docstring)."""
    p32 = np.asarray(p32, np.float32)
    pv = np.asarray(pv, np.float32)
    win = p32.argmax(axis=1)
    rows = np.arange(len(p32))
    dp = np.abs(pv[rows, win] - p32[rows, win])
    same = np.zeros(len(labels), np.int64)
    total = 0
    for run in runs:
        sl = slice(run.offset, run.offset + run.count)
        a = cut_mask(p32[sl], labels, params)
        b = cut_mask(pv[sl], labels, params)
        same += (a == b).sum(axis=1)
        total += run.count
    decisions = total * len(labels)
    agree = int(same.sum())
    return {
        "samples": int(len(p32)),
        "top1_agreement": float((pv.argmax(axis=1) == win).mean()) if len(p32) else math.nan,
        "mean_abs_dp": float(dp.mean()) if len(dp) else math.nan,
        "max_abs_dp": float(dp.max()) if len(dp) else math.nan,
        "cut_decisions": decisions,
        "cut_agreement": agree / decisions if decisions else math.nan,
        "cut_disagreements": decisions - agree,
        "per_label": {name: (int(s) / total if total else math.nan)
                      for name, s in zip(labels, same)},
    }


def evaluate(bundle: ModelBundle, variants: Mapping[str, Path], frames: FrameSet,
             params: PlanParams = PlanParams(), method: str | None = None,
             threads: int = 0) -> tuple[CalibrationReport, dict[str, np.ndarray]]:
    """Run FP32 and each variant on the held-out frames; the report, and the probabilities
    (keyed 'fp32' and by variant)."""
    labels = list(bundle.labels)
    plan = params.for_rate(frames.rate)
    probs = {"fp32": classify(bundle, frames.held_out, threads=threads)}
    report = CalibrationReport(
        model=bundle.name, model_sha256=bundle.sha256, labels=labels, method=method,
        rate=frames.rate, plan=asdict(plan), videos=list(frames.videos),
        calibration_frames=len(frames.calibration), held_out_frames=len(frames.held_out),
        held_out_runs=len(frames.runs))
    for precision, path in variants.items():
        pv = classify(bundle.with_onnx(Path(path)), frames.held_out, threads=threads)
        probs[precision] = pv
        figures = compare(probs["fp32"], pv, frames.runs, labels, plan)
        threshold = THRESHOLDS.get(precision, 0.99)
        warning = None
        if not figures["top1_agreement"] >= threshold:
            warning = (f"{precision.upper()} agrees with FP32 on only "
                       f"{figures['top1_agreement']:.2%} of held-out frames (below "
                       f"{threshold:.1%}): it may change which seconds get cut")
        report.variants[precision] = VariantFigures(precision=precision, onnx=str(path),
                                                    threshold=threshold, warning=warning,
                                                    **figures)
    return report, probs


def write_report(report: CalibrationReport, directory: Path) -> Path:
    path = Path(directory) / REPORT_FILE
    write_text_atomic(path, report.to_json())
    return path


def report_table(report: CalibrationReport) -> Any:
    """The report as a rich Table."""
    from rich.table import Table

    table = Table(title=f"{report.model}: variants vs FP32 on {report.held_out_frames} held-out "
                  f"frames ({report.held_out_runs} runs)")
    table.add_column("variant")
    table.add_column("top-1 agreement", justify="right")
    table.add_column("mean |Δp|", justify="right")
    table.add_column("max |Δp|", justify="right")
    table.add_column("cut decisions agreeing", justify="right")
    for name, v in report.variants.items():
        style = "bold red" if v.warning else None
        table.add_row(name, f"{v.top1_agreement:.2%}", f"{v.mean_abs_dp:.4f}",
                      f"{v.max_abs_dp:.4f}",
                      f"{v.cut_agreement:.2%} ({v.cut_decisions - v.cut_disagreements}"
                      f"/{v.cut_decisions})", style=style)
    return table
