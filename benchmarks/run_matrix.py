"""Run the benchmark matrix over the reference clips; write results.md and results.json.

    python benchmarks/make_clips.py --out benchmarks/clips
    python benchmarks/run_matrix.py --clips benchmarks/clips --out benchmarks/results

Per clip (1 min each): adaptive, exact and keyframes sampling, plain PyAV decoding of every
frame, and the Miles-Deep-style baseline, all in this one process with one warmed-up ONNX
Runtime session. Memory: adaptive and exact on the 1 min and 10 min versions of the main clip,
each in a fresh process (peak RSS is a process-lifetime figure).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing

from milesdeep.bench import (  # noqa: E402
    BASELINE,
    VideoReport,
    bench_isolated,
    bench_video,
    hardware_info,
)
from milesdeep.models.bundle import resolve_model  # noqa: E402
from milesdeep.pipeline.infer import OrtClassifier  # noqa: E402

MAIN = "h264_1080p30_gop2s"
LONG = "h264_1080p30_gop2s_10min"
MODES = ["adaptive", "exact", "keyframes"]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def targets(main: VideoReport | None, rss: dict[str, dict[str, float]]) -> list[tuple]:
    """(target, measured, met?) rows for the issue's targets."""
    rows: list[tuple] = []
    if main is not None:
        s, c = main.speedup("adaptive"), main.speedup("adaptive", cpu=True)
        rows.append(("adaptive ≥ 8× faster than the baseline (same run)",
                     (f"{s:.1f}× ({c:.1f}× less CPU)" if c else f"{s:.1f}×") if s else "-",
                     bool(s and s >= 8)))
        a = main.agreement.get("adaptive")
        rows.append(("adaptive per-second labels = exact ≥ 99%",
                     f"{100 * a:.2f}%" if a is not None else "-", bool(a and a >= 0.99)))
        ex, dec = main.run("exact"), main.run("decode-only")
        if ex and dec:
            over = ex.wall / dec.wall - 1
            rows.append(("exact within 15% of decoding every frame with PyAV",
                         f"{100 * over:+.1f}% ({ex.wall:.1f} s vs {dec.wall:.1f} s)",
                         over <= 0.15))
    for mode, by_len in rss.items():
        if len(by_len) == 2:
            short, long_ = by_len.get("1 min"), by_len.get("10 min")
            if short and long_:
                rows.append((f"{mode}: peak RSS ≤ 1 GiB, not growing (1 min vs 10 min)",
                             f"{short:.0f} MiB vs {long_:.0f} MiB",
                             long_ <= 1024 and long_ <= short * 1.1 + 20))
    return rows


def markdown(hw: dict, reports: list[VideoReport], rss: dict, target_rows: list[tuple],
             started: str, repeat: int = 1) -> str:
    out = [f"# Benchmark results ({started})", "",
           f"Hardware: {hw['cpu']}, {hw['cores']} cores; backend {hw['backend']}; "
           f"ONNX Runtime {hw['onnxruntime']}, PyAV {hw['pyav']} ({hw['ffmpeg']}); "
           f"load average at start {hw['load_average']}.", "",
           "Seconds of work per hour of video (wall clock, end to end: classify, plan, write "
           ".tag and predictions). Stage columns are wall-clock seconds per hour spent in "
           "each stage; decoding runs on its own thread beside preprocessing and inference, "
           "so they overlap and need not add up. Baseline (Miles Deep's way, its two halves "
           "side by side as in miles-deep.cpp): decode every frame, one JPEG per second "
           "(quality 95), read back, preprocess, classify; its decode column includes the JPEG "
           "encoding and its preprocess column the JPEG decoding."
           + (f" Every run was made {repeat} times, in turns (all runs of a clip, then all "
              "again); each row is its median run." if repeat > 1 else ""), ""]
    if target_rows:
        out += ["## Targets", "", "| target | measured | met |", "|---|---|---|"]
        out += [f"| {t} | {m} | {'yes' if ok else 'no'} |" for t, m, ok in target_rows]
        out.append("")
    out += ["## Matrix", "",
            "| clip | run | s/hour | CPU s/hour | decode | preprocess | inference | planning "
            "| output | × real time | vs baseline | CPU vs baseline | labels = exact | images "
            "| frames decoded |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in reports:
        name = Path(r.video).stem
        for run in r.runs:
            per = run.stage_seconds_per_hour()
            if run.mode == BASELINE:
                per["decode"] = per.get("decode", 0) + per.get("jpeg_encode", 0)
                per["preprocess"] = per.get("preprocess", 0) + per.get("jpeg_decode", 0)
            sp = r.speedup(run.mode) if run.mode != BASELINE else None
            cp = r.speedup(run.mode, cpu=True) if run.mode != BASELINE else None
            ag = r.agreement.get(run.mode)
            cells = [name, run.mode, f"{run.seconds_per_hour:.0f}",
                     f"{run.cpu_seconds_per_hour:.0f}"]
            cells += [f"{per[k]:.1f}" if k in per else "-" for k in
                      ("decode", "preprocess", "inference", "planning", "output")]
            cells += [f"{run.x_realtime:.1f}", f"{sp:.1f}×" if sp else "-",
                      f"{cp:.1f}×" if cp else "-",
                      f"{100 * ag:.2f}%" if ag is not None else "-", str(run.samples),
                      str(run.frames_decoded)]
            out.append("| " + " | ".join(cells) + " |")
    if rss:
        out += ["", "## Peak RSS (each run in a fresh process)", "",
                "| run | " + " | ".join(next(iter(rss.values())).keys()) + " |",
                "|---|" + "---|" * len(next(iter(rss.values()))) + ""]
        for mode, by_len in rss.items():
            out.append(f"| {mode} | " + " | ".join(f"{v:.0f} MiB" for v in by_len.values())
                       + " |")
    out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clips", type=Path, default=HERE / "clips")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--only", nargs="*", help="clip names (default: every clip present)")
    ap.add_argument("--no-rss", action="store_true", help="skip the 1 min vs 10 min check")
    ap.add_argument("--model", default=None)
    ap.add_argument("--repeat", type=int, default=3,
                    help="runs of each measurement, made in turns; each reports its median")
    args = ap.parse_args(argv)
    started = time.strftime("%Y-%m-%d %H:%M")
    bundle = resolve_model(args.model)
    clf = OrtClassifier(bundle)
    clf.infer(np.zeros((32, *bundle.input.shape), np.float32))  # warm up, untimed
    hw = hardware_info("cpu")
    clips = sorted(p for p in args.clips.glob("*.mp4") if p.stem != LONG)
    if args.only:
        clips = [p for p in clips if p.stem in args.only]
    reports = []
    for clip in clips:
        reports.append(bench_video(clip, bundle, clf, MODES, baseline=True,
                                   decode_reference=True, say=log, repeat=args.repeat))
        r = reports[-1]
        log(f"{clip.stem}: " + ", ".join(f"{x.mode} {x.seconds_per_hour:.0f} s/h"
                                         for x in r.runs))
    rss: dict[str, dict[str, float]] = {}
    if not args.no_rss:
        for stem, label in ((MAIN, "1 min"), (LONG, "10 min")):
            path = args.clips / f"{stem}.mp4"
            if not path.exists():
                log(f"{path}: missing, no memory figure")
                continue
            for mode in ("adaptive", "exact"):
                log(f"{stem}: {mode} in a fresh process ...")
                rep = bench_isolated(path, mode, args.model)
                rss.setdefault(mode, {})[label] = rep.peak_rss_mib
                rss.setdefault(f"{mode} s/hour", {})[label] = rep.seconds_per_hour
    main_report = next((r for r in reports if Path(r.video).stem == MAIN), None)
    rss_only = {k: v for k, v in rss.items() if not k.endswith("s/hour")}
    rows = targets(main_report, rss_only)
    args.out.mkdir(parents=True, exist_ok=True)
    doc = {"started": started, "repeat": args.repeat, "hardware": hw,
           "hardware_at_end": hardware_info("cpu"),
           "videos": [r.to_dict() for r in reports], "peak_rss_fresh_process": rss,
           "targets": [{"target": t, "measured": m, "met": ok} for t, m, ok in rows]}
    (args.out / "results.json").write_text(json.dumps(doc, indent=1))
    md = markdown(hw, reports, rss_only, rows, started, args.repeat)
    if rss:
        md += "\nSeconds per hour in those fresh processes: " + "; ".join(
            f"{k.split()[0]} " + ", ".join(f"{lab} {v:.0f}" for lab, v in by.items())
            for k, by in rss.items() if k.endswith("s/hour")) + ".\n"
    (args.out / "results.md").write_text(md)
    log(f"wrote {args.out / 'results.md'} and results.json")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
