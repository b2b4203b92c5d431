"""The seconds-per-hour benchmark as library code (`miles-deep bench` prints it).

For one video and one sampling mode, a run is the whole job `tag` does: classify (decode,
preprocess, inference; overlapped on the CPU path), plan the cuts, write the .tag and
predictions files (into a temporary folder). Reported per run: wall-clock seconds of work per
hour of video (end to end and per stage), times real time, peak RSS, and what ran it.

The baseline does what Miles Deep did (miles-deep.cpp): `ffmpeg -vf fps=1 -q:v 1` on a thread,
decoding every frame and writing one JPEG per second, while the main loop reads each JPEG back
as soon as it exists, resizes and mean-subtracts it and classifies it in batches of 32. Here
both halves run in this process, side by side as in the original, with the same sampling rule
as ours and the bundle's own preprocessing of the decoded JPEG (so the labels are comparable),
and the same network session. With `repeat`, every run is made several times in turns and each
reports its median.

Stage times come from the runner's clocks; stages overlap on the CPU path (decoding runs on its
own thread beside preprocessing and inference), so they need not add up to the total.

Peak RSS is `ru_maxrss`, the process's peak since it started: compare lengths by running each in
a fresh process (`isolated=True`, `miles-deep bench --isolate`).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from milesdeep.errors import MilesDeepError
from milesdeep.models.bundle import ModelBundle
from milesdeep.pipeline.infer import Classifier
from milesdeep.pipeline.predictions import Predictions

STAGES = ("decode", "preprocess", "inference", "planning", "output")
BASELINE = "baseline"
JPEG_QUALITY = 95  # ffmpeg -q:v 1 for MJPEG is about Pillow/libjpeg quality 95-97


def peak_rss_mib() -> float:
    """This process's peak resident set size so far, in MiB (Linux reports KiB)."""
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024.0 if sys.platform != "darwin" else kb / 2**20


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware_info(backend: str = "cpu", gpu: dict[str, Any] | None = None) -> dict[str, Any]:
    """What the figures were measured on."""
    import av
    import onnxruntime

    from milesdeep.pipeline.infer import cpu_threads

    info: dict[str, Any] = {
        "backend": backend,
        "cpu": cpu_model(),
        "cores": cpu_threads(),
        "logical_cpus": os.cpu_count(),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "pyav": av.__version__,
        "ffmpeg": _ffmpeg_version(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    if gpu:
        info.update(gpu)
    return info


def _ffmpeg_version() -> str:
    try:
        import av

        v = av.library_versions.get("libavcodec")
        return "libavcodec " + ".".join(map(str, v)) if v else ""
    except Exception:  # pragma: no cover - informative only
        return ""


def gpu_driver_version() -> str:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return ""
    try:
        out = subprocess.run([exe, "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=False).stdout
        return out.strip().splitlines()[0] if out.strip() else ""
    except (OSError, subprocess.TimeoutExpired):
        return ""


@dataclass
class RunReport:
    """One sampling mode (or the baseline, or plain decoding) on one video."""

    mode: str
    duration: float  # seconds of video
    wall: float  # seconds, end to end
    stages: dict[str, float] = field(default_factory=dict)  # seconds per stage
    samples: int = 0  # images classified
    frames_decoded: int = 0
    peak_rss_mib: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)
    # CPU seconds of every thread of the process meanwhile: the work itself, which unlike the
    # wall clock does not depend on how well a run keeps the cores busy.
    cpu: float = 0.0

    @property
    def seconds_per_hour(self) -> float:
        return self.wall / self.duration * 3600.0 if self.duration > 0 else float("nan")

    @property
    def cpu_seconds_per_hour(self) -> float:
        return self.cpu / self.duration * 3600.0 if self.duration > 0 else float("nan")

    @property
    def x_realtime(self) -> float:
        return self.duration / self.wall if self.wall > 0 else float("inf")

    def stage_seconds_per_hour(self) -> dict[str, float]:
        if self.duration <= 0:
            return {}
        return {k: v / self.duration * 3600.0 for k, v in self.stages.items()}

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["seconds_per_hour"] = self.seconds_per_hour
        d["cpu_seconds_per_hour"] = self.cpu_seconds_per_hour
        d["x_realtime"] = self.x_realtime
        d["stage_seconds_per_hour"] = self.stage_seconds_per_hour()
        return d


@dataclass
class VideoReport:
    video: str
    duration: float
    runs: list[RunReport] = field(default_factory=list)
    agreement: dict[str, float] = field(default_factory=dict)  # mode -> share equal to exact

    def run(self, mode: str) -> RunReport | None:
        return next((r for r in self.runs if r.mode == mode), None)

    def speedup(self, mode: str, cpu: bool = False) -> float | None:
        """How many times faster than the baseline `mode` ran, by the wall clock or (`cpu`) by
        CPU seconds (None without both)."""
        base, run = self.run(BASELINE), self.run(mode)
        if base is None or run is None:
            return None
        a, b = (base.cpu, run.cpu) if cpu else (base.wall, run.wall)
        return a / b if a > 0 and b > 0 else None

    def to_dict(self) -> dict[str, Any]:
        def ratios(cpu: bool) -> dict[str, float]:
            return {r.mode: s for r in self.runs if r.mode != BASELINE
                    and (s := self.speedup(r.mode, cpu)) is not None}

        return {
            "video": self.video,
            "duration": self.duration,
            "runs": [r.to_dict() for r in self.runs],
            "agreement_with_exact": self.agreement,
            "speedup_vs_baseline": ratios(False),
            "cpu_ratio_vs_baseline": ratios(True),
        }


def label_agreement(a: Predictions, b: Predictions) -> float:
    """Share of sample slots whose winning label is the same in both."""
    n = min(len(a.probs), len(b.probs))
    if n == 0:
        return float("nan")
    same = a.probs[:n].argmax(axis=1) == b.probs[:n].argmax(axis=1)
    # Slots only one of them has count as disagreements.
    return float(same.sum()) / max(len(a.probs), len(b.probs))


# --------------------------------------------------------------------------- our pipeline


def time_plan_and_outputs(video: Path, preds: Predictions, rate: float
                          ) -> tuple[float, float, float]:
    """Seconds spent planning, writing the .tag and predictions (planning included, as
    `tag` does), and the output part alone. Outputs go to a temporary folder."""
    from milesdeep.jobs import write_tag_outputs
    from milesdeep.pipeline.planner import PlanParams, plan_all_labels

    t1 = time.perf_counter()
    params = PlanParams().for_rate(rate)
    plan_all_labels(preds.probs, preds.labels, params)  # timed alone: planning
    t2 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="milesdeep-bench-") as tmp:
        t3 = time.perf_counter()
        write_tag_outputs(Path(tmp) / Path(video).stem, Path(video).name, preds, params,
                          plot=False)
        t4 = time.perf_counter()
    # Outputs are timed without the planning write_tag_outputs repeats internally.
    return t2 - t1, t4 - t3, max(0.0, (t4 - t3) - (t2 - t1))


def run_pipeline(video: Path, bundle: ModelBundle, classifier: Classifier, sampling: str,
                 rate: float = 1.0, batch: int = 32, decode_threads: int = 0,
                 gpu_backend: Any = None) -> tuple[RunReport, Predictions]:
    """The `tag` job end to end for one sampling mode, outputs written to a temporary folder."""
    from milesdeep.pipeline.run import RunOptions, StageTimes, classify_video

    options = RunOptions(rate=rate, sampling=sampling, batch=batch,  # type: ignore[arg-type]
                         decode_threads=decode_threads)
    times = StageTimes()
    c0 = time.process_time()
    t0 = time.perf_counter()
    if gpu_backend is not None:
        from milesdeep.pipeline.run_gpu import classify_video_gpu

        preds = classify_video_gpu(video, bundle, gpu_backend, options, None, times)
    else:
        preds = classify_video(video, bundle, classifier, options, None, times)
    t1 = time.perf_counter()
    plan_s, write_s, output = time_plan_and_outputs(video, preds, rate)
    planning = plan_s + times.extra.get("adaptive_planning", 0.0)
    wall = (t1 - t0) + plan_s + write_s
    report = RunReport(
        mode=sampling, duration=preds.duration, wall=wall,
        stages={"decode": times.decode, "preprocess": times.preprocess,
                "inference": times.inference, "planning": planning, "output": output},
        samples=times.samples, frames_decoded=times.frames_decoded,
        peak_rss_mib=peak_rss_mib(),
        extra={k: v for k, v in times.extra.items() if k != "adaptive_planning"},
        cpu=time.process_time() - c0,
    )
    return report, preds


# --------------------------------------------------------------------------- references


def decode_only(video: Path, threads: int = 0) -> RunReport:
    """Decode every frame with PyAV and nothing else: the floor `exact` is compared with."""
    from milesdeep.pipeline.decode import main_video, open_video, probe

    info = probe(video)
    c0 = time.process_time()
    t0 = time.perf_counter()
    frames = 0
    container = open_video(video)
    try:
        vs = main_video(container)
        vs.codec_context.thread_type = "AUTO"
        vs.codec_context.thread_count = threads
        for _ in container.decode(vs):
            frames += 1
    finally:
        container.close()
    wall = time.perf_counter() - t0
    return RunReport(mode="decode-only", duration=info.duration, wall=wall,
                     stages={"decode": wall}, frames_decoded=frames,
                     peak_rss_mib=peak_rss_mib(), cpu=time.process_time() - c0)


def run_baseline(video: Path, bundle: ModelBundle, classifier: Classifier, rate: float = 1.0,
                 batch: int = 32, quality: int = JPEG_QUALITY) -> tuple[RunReport, Predictions]:
    """Miles Deep's way, its two halves side by side as in the original (miles-deep.cpp runs
    ffmpeg on a thread and classifies each JPEG as soon as it exists): every frame decoded,
    one per sample time kept and written as a JPEG file; meanwhile each file is read back,
    decoded, preprocessed and classified in batches. (The original polls for each file with
    one-second sleeps; here a queue hands it over at once, which only makes it faster.)"""
    import queue
    import threading

    from PIL import Image

    from milesdeep.pipeline.decode import main_video, open_video, probe, sample_count
    from milesdeep.pipeline.preprocess import preprocess_rgb

    info = probe(video)
    stages = dict.fromkeys(("decode", "jpeg_encode", "jpeg_decode", "preprocess",
                            "inference", "planning", "output"), 0.0)
    frames = 0
    written: queue.Queue = queue.Queue()  # (path, slots it stands for); None at the end
    halt = threading.Event()  # the classifying side failed or was interrupted

    def extract(tmp: Path) -> None:
        """ffmpeg -vf fps=1 -q:v 1 img_%05d.jpg: decode all, keep the frame on screen at
        each sample time, convert it to RGB and write it as a JPEG."""
        nonlocal frames
        container = open_video(video)
        try:
            vs = main_video(container)
            vs.codec_context.thread_type = "AUTO"
            tb, start = vs.time_base, info.start
            n = sample_count(info.duration, rate) if info.duration > 0 else 1 << 62
            i, prev = 0, None
            t0 = time.perf_counter()

            def keep(frame, upto: int) -> None:
                nonlocal i, t0
                stages["decode"] += time.perf_counter() - t0
                t1 = time.perf_counter()
                path = Path(tmp) / f"{i:08d}.jpg"
                Image.fromarray(frame.to_ndarray(format="rgb24")).save(path, quality=quality)
                written.put((path, upto - i))  # a frame held for several slots: one file each
                i = upto
                stages["jpeg_encode"] += time.perf_counter() - t1
                t0 = time.perf_counter()

            for f in container.decode(vs):
                if halt.is_set():
                    return
                frames += 1
                if f.pts is None:
                    continue
                t = float(f.pts * tb) - start
                if prev is not None and t <= prev[1]:
                    continue
                stop = i
                while stop < n and stop / rate < t - 1e-9:
                    stop += 1
                if stop > i:
                    keep(prev[0] if prev is not None else f, stop)
                prev = (f, t)
            stages["decode"] += time.perf_counter() - t0
            if prev is not None and i < n and info.duration > 0:
                keep(prev[0], n)
        finally:
            container.close()

    c0 = time.process_time()
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="milesdeep-baseline-") as tmp:
        failure: list[BaseException] = []

        def step1() -> None:
            try:
                extract(Path(tmp))
            except BaseException as e:  # re-raised once the classifying side has stopped
                failure.append(e)
            finally:
                written.put(None)

        worker = threading.Thread(target=step1, name="milesdeep-baseline-ffmpeg", daemon=True)
        worker.start()
        # Step 2: read each JPEG back, decode, preprocess, classify in batches.
        buf = np.empty((batch, *bundle.input.shape), np.float32)
        rows: list[np.ndarray] = []
        fill = 0
        files = 0

        def flush() -> None:
            nonlocal fill
            t1 = time.perf_counter()
            rows.append(classifier.infer(buf[:fill]))
            stages["inference"] += time.perf_counter() - t1
            fill = 0

        try:
            while (item := written.get()) is not None:
                path, slots = item
                for _ in range(slots):
                    t1 = time.perf_counter()
                    with Image.open(path) as im:
                        rgb = np.asarray(im.convert("RGB"))
                    t2 = time.perf_counter()
                    preprocess_rgb(rgb, bundle.input, out=buf[fill])
                    stages["jpeg_decode"] += t2 - t1
                    stages["preprocess"] += time.perf_counter() - t2
                    fill += 1
                    files += 1
                    if fill == batch:
                        flush()
            if fill:
                flush()
        finally:
            halt.set()  # a no-op after a full run; otherwise decoding need not go on
            worker.join()
        if failure:
            raise failure[0]
        if not files:
            raise MilesDeepError("no picture could be decoded from the video stream", video)
    probs = np.concatenate(rows).astype(np.float32)
    preds = Predictions(labels=tuple(bundle.labels),
                        times=np.arange(len(probs), dtype=np.float64) / rate, probs=probs,
                        rate=rate, duration=info.duration)
    t1 = time.perf_counter()
    plan_s, write_s, stages["output"] = time_plan_and_outputs(video, preds, rate)
    stages["planning"] = plan_s
    wall = (t1 - t_start) + plan_s + write_s
    report = RunReport(mode=BASELINE, duration=info.duration, wall=wall, stages=stages,
                       samples=files, frames_decoded=frames, peak_rss_mib=peak_rss_mib(),
                       cpu=time.process_time() - c0)
    return report, preds


# --------------------------------------------------------------------------- a whole bench


def median_run(runs: list[RunReport]) -> RunReport:
    """The run with the median wall time (the lower middle one of an even count), its stage
    times as they were in that run, and the spread of all of them in `extra`."""
    ordered = sorted(runs, key=lambda r: r.wall)
    mid = ordered[(len(ordered) - 1) // 2]
    if len(runs) > 1:
        mid.extra = {**mid.extra, "repeats": float(len(runs)), "wall_min": ordered[0].wall,
                     "wall_max": ordered[-1].wall}
    return mid


def bench_video(video: Path, bundle: ModelBundle, classifier: Classifier,
                samplings: list[str], baseline: bool = False, decode_reference: bool = False,
                rate: float = 1.0, batch: int = 32, decode_threads: int = 0,
                gpu_backend: Any = None, say=None, repeat: int = 1) -> VideoReport:
    """Every requested run on one video. `adaptive` brings an `exact` run with it (for the
    agreement), which is reported too. With `repeat` > 1 every run is made that many times,
    in turns (all modes and the baseline, then all again), so a machine that slows down or
    speeds up meanwhile weighs on each alike; each mode reports its median run."""
    video = Path(video)
    modes = list(dict.fromkeys(samplings))
    if any(m != "exact" for m in modes) and "exact" not in modes:
        modes.append("exact")
    if repeat < 1:
        raise MilesDeepError("--repeat must be at least 1")
    preds: dict[str, Predictions] = {}
    runs: dict[str, list[RunReport]] = {}

    def note(what: str, k: int) -> None:
        if say:
            say(f"{video.name}: {what} ..." + (f" ({k + 1}/{repeat})" if repeat > 1 else ""))

    for k in range(repeat):
        for mode in modes:
            note(mode, k)
            report, preds[mode] = run_pipeline(video, bundle, classifier, mode, rate, batch,
                                               decode_threads, gpu_backend)
            runs.setdefault(mode, []).append(report)
        if decode_reference:
            note("decode only", k)
            runs.setdefault("decode-only", []).append(decode_only(video, decode_threads))
        if baseline:
            note("baseline (Miles Deep style)", k)
            report, preds[BASELINE] = run_baseline(video, bundle, classifier, rate, batch)
            runs.setdefault(BASELINE, []).append(report)
    medians = [median_run(r) for r in runs.values()]
    duration = max((r.duration for r in medians), default=0.0)
    vr = VideoReport(video=str(video), duration=duration, runs=medians)
    if "exact" in preds:
        for mode, p in preds.items():
            if mode != "exact":
                vr.agreement[mode] = label_agreement(p, preds["exact"])
    return vr


def bench_isolated(video: Path, sampling: str, model: str | None = None, rate: float = 1.0,
                   batch: int = 32, decode_threads: int = 0, timeout: float = 3600
                   ) -> RunReport:
    """One run in a fresh Python process, so its peak RSS is its own."""
    args = json.dumps({"video": str(video), "sampling": sampling, "model": model,
                       "rate": rate, "batch": batch, "threads": decode_threads})
    # The child imports this same copy of the package, installed or not.
    root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-m", "milesdeep.bench", args], capture_output=True,
                          text=True, timeout=timeout, check=False, env=env)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("{")), None)
    if proc.returncode != 0 or line is None:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise MilesDeepError(f"the isolated bench run failed: {tail}", video)
    d = json.loads(line)
    return RunReport(**{k: d[k] for k in ("mode", "duration", "wall", "stages", "samples",
                                          "frames_decoded", "peak_rss_mib", "extra", "cpu")})


def _isolated_main(arg: str) -> int:
    from milesdeep.models.bundle import resolve_model
    from milesdeep.pipeline.infer import OrtClassifier

    a = json.loads(arg)
    bundle = resolve_model(a["model"])
    classifier = OrtClassifier(bundle)
    if a["sampling"] == BASELINE:
        report, _ = run_baseline(Path(a["video"]), bundle, classifier, a["rate"], a["batch"])
    elif a["sampling"] == "decode-only":
        report = decode_only(Path(a["video"]), a["threads"])
    else:
        report, _ = run_pipeline(Path(a["video"]), bundle, classifier, a["sampling"], a["rate"],
                                 a["batch"], a["threads"])
    report.peak_rss_mib = peak_rss_mib()
    print(json.dumps(asdict(report)))
    return 0


if __name__ == "__main__":
    sys.exit(_isolated_main(sys.argv[1]))
