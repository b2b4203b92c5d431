"""Calibration frames: N samples spread across the user's videos and across time, preprocessed
exactly as the pipeline does, split into a calibration set and a held-out set, kept as `.npz`.

What is sampled. Sample i of a video is the picture on screen at t_i = i / rate, the pipeline's
own sampling rule (`milesdeep.pipeline.decode`), so a held-out sample is the tensor the pipeline
would classify for that second. The budget N is shared between the videos in proportion to
their sample counts (largest remainders), half for calibration and half held out by default.

- Held out: per video, contiguous runs of samples (at most `run_length` each, default 60), the
  runs spread evenly over the video, so the cut planner can be run on each run exactly as on a
  video and the cut decisions of FP32 and a variant compared second by second.
- Calibration: the remaining budget, spread evenly over the samples not held out.

How frames are decoded. By seeking, not by decoding every frame: for each wanted time the
decoder seeks to the keyframe at or before it (PyAV `container.seek(..., backward=True)`) and
decodes forward to the last frame whose timestamp is <= t (the pipeline's rule), carrying on
without a seek when the next wanted time is less than `SEEK_GAP` seconds ahead. A 512-frame
budget over an hour of video decodes a few GOPs per sample instead of 90,000 frames.

Files (in the output directory): `calibration.npz` (tensors, and which video and sample each
came from) and `held_out.npz` (tensors, and the runs: video, first sample, length, offset), each
with the input spec, the rate and the video list, so a later run can reuse them.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from milesdeep.errors import MilesDeepError
from milesdeep.models.bundle import InputSpec
from milesdeep.pipeline.atomic import atomic_path
from milesdeep.pipeline.decode import (
    frame_from_av,
    main_video,
    open_video,
    probe,
    sample_count,
    seek_steps,
    seek_to,
)
from milesdeep.pipeline.frames import Frame

CALIBRATION_FILE = "calibration.npz"
HELD_OUT_FILE = "held_out.npz"
FRAMES_FORMAT = "milesdeep.calibration-frames"
FRAMES_VERSION = 1
SEEK_GAP = 4.0  # seconds: decode forward rather than seek when the next time is this close
RUN_LENGTH = 60  # samples in one held-out run at most

Progress = Callable[[int, int], None]  # (frames done, frames in all)


@dataclass(frozen=True)
class Run:
    """A contiguous run of held-out samples of one video."""

    video: int  # index into the video list
    start: int  # first sample index in the video
    count: int  # samples
    offset: int  # first row in the held-out tensor array


@dataclass(frozen=True)
class SamplePlan:
    """Which sample indices of each video go to calibration and to the held-out runs."""

    calibration: list[tuple[int, int]]  # (video, sample index)
    runs: list[Run]

    @property
    def held_out_count(self) -> int:
        return sum(r.count for r in self.runs)


@dataclass
class FrameSet:
    """Preprocessed calibration and held-out tensors, with where each came from."""

    videos: list[str]
    rate: float
    spec: InputSpec
    calibration: np.ndarray  # (Nc, *spec.shape) float32
    calibration_source: np.ndarray  # (Nc, 2) int64: video, sample index
    held_out: np.ndarray  # (Nh, *spec.shape) float32
    runs: list[Run]
    requested: int = 0  # the frame budget asked for (a later run with the same reuses them)

    def run_tensors(self, run: Run) -> np.ndarray:
        return self.held_out[run.offset: run.offset + run.count]


# --------------------------------------------------------------------------- planning


def _shares(total: int, weights: Sequence[int], caps: Sequence[int]) -> list[int]:
    """Split `total` in proportion to `weights` (largest remainders), none above its cap."""
    out = [0] * len(weights)
    left = min(total, sum(caps))
    active = [i for i, c in enumerate(caps) if c > 0]
    while left > 0 and active:
        w = sum(weights[i] for i in active)
        exact = {i: left * weights[i] / w for i in active}
        give = {i: min(int(exact[i]), caps[i] - out[i]) for i in active}
        rest = left - sum(give.values())
        for i in sorted(active, key=lambda i: exact[i] - int(exact[i]), reverse=True):
            if rest == 0:
                break
            if out[i] + give[i] < caps[i]:
                give[i] += 1
                rest -= 1
        for i in active:
            out[i] += give[i]
        left = rest
        active = [i for i in active if out[i] < caps[i]]
    return out


def _spread(candidates: Sequence[int], k: int) -> list[int]:
    """k items of `candidates`, evenly spaced (the centre of k equal slices)."""
    n = len(candidates)
    if k <= 0 or n == 0:
        return []
    if k >= n:
        return list(candidates)
    return [candidates[int((j + 0.5) * n / k)] for j in range(k)]


def plan_samples(sample_counts: Sequence[int], frames: int, held_out_share: float = 0.5,
                 run_length: int = RUN_LENGTH) -> SamplePlan:
    """Choose the calibration samples and the held-out runs of every video."""
    if frames < 2:
        raise MilesDeepError("--frames must be at least 2 (some to calibrate, some to check)")
    if not 0.0 < held_out_share < 1.0:
        raise ValueError("held_out_share must be between 0 and 1")
    total = sum(sample_counts)
    if total < 2:
        raise MilesDeepError("the videos are too short: at least two samples are needed")
    budget = min(frames, total)
    n_held = max(1, min(budget - 1, round(budget * held_out_share)))
    n_cal = budget - n_held
    held = _shares(n_held, sample_counts, sample_counts)
    cal = _shares(n_cal, sample_counts, [n - h for n, h in zip(sample_counts, held)])

    calibration: list[tuple[int, int]] = []
    runs: list[Run] = []
    offset = 0
    for v, (n, h, c) in enumerate(zip(sample_counts, held, cal)):
        taken: set[int] = set()
        if h > 0:
            k = math.ceil(h / run_length)
            lengths = [h // k + (1 if j < h % k else 0) for j in range(k)]
            for j, length in enumerate(lengths):
                # Centre run j in slice j of the video: runs spread over its whole length.
                lo, hi = j * n // k, (j + 1) * n // k
                start = max(lo, min(hi - length, lo + (hi - lo - length) // 2))
                runs.append(Run(video=v, start=start, count=length, offset=offset))
                offset += length
                taken.update(range(start, start + length))
        free = [i for i in range(n) if i not in taken]
        calibration += [(v, i) for i in _spread(free, c)]
    return SamplePlan(calibration=calibration, runs=runs)


# --------------------------------------------------------------------------- decoding


def _decoded(container, info) -> Iterator[tuple[object, float]]:
    """Frames from the current position in presentation order with their times after the
    stream's start; corrupt packets skipped, non-increasing timestamps dropped (as the
    pipeline's source does)."""
    import av

    vs = main_video(container)
    tb = vs.time_base
    last = None
    for packet in container.demux(vs):
        try:
            decoded = packet.decode()
        except (av.error.InvalidDataError, ValueError, av.error.FFmpegError):
            continue
        for f in decoded:
            if f.pts is None:
                continue
            t = float(f.pts * tb) - info.start
            if last is not None and t <= last:
                continue
            last = t
            yield f, t


def frames_at(path: Path, times: Sequence[float]) -> Iterator[tuple[float, Frame]]:
    """For each time (seconds after the video stream's start), in ascending order, the picture
    on screen then: the last frame whose timestamp is <= t, or the first frame before it."""
    info = probe(Path(path))
    container = open_video(Path(path))
    try:
        vs = main_video(container)
        vs.codec_context.thread_type = "AUTO"
        tb = vs.time_base
        pending = sorted(float(t) for t in times)
        i = 0
        while i < len(pending):
            target = pending[i]
            # The keyframe at or before the target. A seek that lands past it (a wrong index;
            # MPEG-TS, which has none, lands near the time by decode order) is made again from
            # further back, and at last from the file's start.
            for at in seek_steps(int((info.start + max(target, 0.0)) / tb), tb):
                from_start = at is None
                seek_to(container, vs, at)
                frames = _decoded(container, info)
                prev = next(frames, None)
                if prev is None and from_start:
                    raise MilesDeepError("no picture could be decoded from the video stream",
                                         path)
                if prev is not None and (prev[1] <= target + 1e-9 or from_start):
                    break
            assert prev is not None
            first = i
            for f, t in itertools.chain(frames, [(None, math.inf)]):
                while i < len(pending) and t > pending[i] + 1e-9:
                    yield pending[i], frame_from_av(prev[0])
                    i += 1
                if f is None or i >= len(pending):
                    break
                if i > first and pending[i] - t > SEEK_GAP:
                    break  # far ahead of a time already served: seek rather than decode
                prev = (f, t)
    finally:
        container.close()


# --------------------------------------------------------------------------- the frame set


def sample_frames(videos: Sequence[Path], spec: InputSpec, frames: int = 512, rate: float = 1.0,
                  held_out_share: float = 0.5, run_length: int = RUN_LENGTH,
                  progress: Progress | None = None) -> FrameSet:
    """Sample, decode and preprocess the calibration and held-out frames of `videos`."""
    from milesdeep.pipeline.preprocess import preprocess_frame

    if not videos:
        raise MilesDeepError("give at least one video to take calibration frames from")
    infos = [probe(Path(v)) for v in videos]
    counts = [sample_count(i.duration, rate) for i in infos]
    for info, n in zip(infos, counts):
        if n == 0:
            raise MilesDeepError("the video's duration is unknown or zero", info.path)
    plan = plan_samples(counts, frames, held_out_share, run_length)
    cal = np.empty((len(plan.calibration), *spec.shape), np.float32)
    held = np.empty((plan.held_out_count, *spec.shape), np.float32)
    # Every wanted sample of a video -> the rows it fills, then one pass over the video.
    wanted: dict[int, dict[int, list[tuple[np.ndarray, int]]]] = {}
    for row, (v, i) in enumerate(plan.calibration):
        wanted.setdefault(v, {}).setdefault(i, []).append((cal, row))
    for run in plan.runs:
        for k in range(run.count):
            wanted.setdefault(run.video, {}).setdefault(run.start + k, []).append(
                (held, run.offset + k))
    done, total = 0, len(cal) + len(held)
    for v, by_index in sorted(wanted.items()):
        indices = sorted(by_index)
        got = 0
        for (_t, frame), index in zip(frames_at(Path(videos[v]), [i / rate for i in indices]),
                                     indices):
            for array, row in by_index[index]:
                preprocess_frame(frame, spec, out=array[row])
                done += 1
            got += 1
            if progress is not None:
                progress(done, total)
        if got != len(indices):
            raise MilesDeepError(f"only {got} of {len(indices)} frames could be decoded",
                                 videos[v])
    return FrameSet(videos=[str(v) for v in videos], rate=rate, spec=spec, calibration=cal,
                    calibration_source=np.asarray(plan.calibration, np.int64).reshape(-1, 2),
                    held_out=held, runs=plan.runs, requested=frames)


def _meta(fs: FrameSet) -> str:
    return json.dumps({"format": FRAMES_FORMAT, "version": FRAMES_VERSION, "videos": fs.videos,
                       "rate": fs.rate, "input": fs.spec.to_toml(),
                       "requested": fs.requested})


def save_frames(fs: FrameSet, directory: Path) -> tuple[Path, Path]:
    """Write `calibration.npz` and `held_out.npz` into `directory` (atomically)."""
    directory = Path(directory)
    meta = np.array(_meta(fs))
    runs = np.array([[r.video, r.start, r.count, r.offset] for r in fs.runs],
                    np.int64).reshape(-1, 4)
    out = []
    for name, arrays in ((CALIBRATION_FILE, {"tensors": fs.calibration,
                                             "source": fs.calibration_source}),
                         (HELD_OUT_FILE, {"tensors": fs.held_out, "runs": runs})):
        with atomic_path(directory / name) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, meta=meta, **arrays)
        out.append(directory / name)
    return out[0], out[1]


def load_frames(directory: Path) -> FrameSet:
    """Read the frame set `save_frames` wrote."""
    from milesdeep.models.bundle import parse_input_spec

    directory = Path(directory)
    loaded = []
    for name in (CALIBRATION_FILE, HELD_OUT_FILE):
        path = directory / name
        try:
            with np.load(path, allow_pickle=False) as z:
                loaded.append({k: z[k] for k in z.files})
        except FileNotFoundError:
            raise MilesDeepError(f"no {name} here: run miles-deep calibrate first",
                                 directory) from None
        except (OSError, ValueError) as e:
            raise MilesDeepError(f"cannot read the frames file ({e})", path) from None
    cal, held = loaded
    try:
        meta = json.loads(str(cal["meta"]))
        if meta.get("format") != FRAMES_FORMAT or str(held["meta"]) != str(cal["meta"]):
            raise ValueError("the two frame files do not belong together")
        spec = parse_input_spec(meta["input"], directory / CALIBRATION_FILE)
        runs = [Run(*(int(x) for x in r)) for r in held["runs"]]
        return FrameSet(videos=list(meta["videos"]), rate=float(meta["rate"]), spec=spec,
                        calibration=cal["tensors"], calibration_source=cal["source"],
                        held_out=held["tensors"], runs=runs,
                        requested=int(meta.get("requested", 0)))
    except (KeyError, ValueError, TypeError) as e:
        raise MilesDeepError(f"not a calibration frame set ({e}); run miles-deep calibrate "
                             "again", directory) from None
