"""Adaptive sampling: keyframes first, full decoding only where the class may change.

Decoding is the CPU path's cost (every frame of 1080p H.264 costs several times what the
network does), and most of it is wasted: a cut made by stream copy starts at a keyframe anyway.
So, in two passes over the file:

1. Keyframes only (the decoder is fed keyframe packets alone): each keyframe is classified and
   held for the sample slots up to the next keyframe, as `keyframes` sampling does. Slots
   before the next picture after a keyframe (pass 1 sees every packet's time) show that
   keyframe: they are exact already (on an all-intra stream, every slot is).
2. Wherever two neighbouring keyframes disagree (different winning class), or a keyframe's
   scores are near the decision (top two within 2 * margin of each other, or the top score
   within margin of `threshold`), the stretch that keyframe holds — and, for an uncertain one,
   the stretch before it — is decoded fully: seek to the keyframe, decode to the stretch's last
   slot, and take the picture on screen at every sample time by the same rule as `exact`
   (`milesdeep.pipeline.decode`). Those per-slot results replace the held ones.
   A stretch refined only because two confident keyframes disagree holds one change: it is
   *walked*, a couple of samples at a time, and decoding stops at the first sample that
   agrees confidently with the next keyframe (the slots after it hold that sample), so on a
   long GOP most of the stretch is never decoded.

Between two agreeing, confident keyframes the class is assumed constant, and a walked stretch
is assumed to hold one change: more than one change between neighbouring keyframes (there and
back, or back and forth) is the one thing this can miss (the bench reports the agreement with
`exact`). A keyframe that holds no slot is still classified, holding none, where the stretch
before it needs it as the neighbour (`PyAVSource(partners=True)`). The last keyframe's stretch
has no neighbour to compare with: pass 1 decodes it whole, straight on from that keyframe
(`PyAVSource(exact_tail=True)`), so it is exact and never sought back to. Long GOPs are no
special case: a stretch is whatever lies between two keyframes. Packets marked as keyframes
that cannot be decoded alone (intra-refresh recovery points) are not keyframes here, and a
stretch holding any is decoded whole (`blind_stretches`).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from milesdeep.errors import MilesDeepError
from milesdeep.models.bundle import ModelBundle
from milesdeep.pipeline.decode import (
    PyAVSource,
    frame_from_av,
    main_video,
    mark_needed,
    open_video,
    seek_steps,
    seek_to,
    skip_switch,
)
from milesdeep.pipeline.frames import Sample
from milesdeep.pipeline.infer import Classifier
from milesdeep.pipeline.predictions import Predictions

DEFAULT_MARGIN = 0.05
DEFAULT_THRESHOLD = 0.5  # the planner's default min_score


@dataclass(frozen=True)
class Held:
    """One pass-1 sample: keyframe at `pts` seconds, held for slots [index, index + hold);
    `shown_until`: when the next picture comes on screen (`DecodeStats.shown_until`), if known."""

    index: int
    hold: int
    pts: float
    shown_until: float | None = None

    def first_other(self, rate: float) -> int:
        """The first held slot that may show another picture than the keyframe: the ones
        before it are exact already."""
        if self.shown_until is None:  # only a slot at the keyframe's own time is sure
            return self.index + 1 if abs(self.index / rate - self.pts) < 1e-6 else self.index
        i = self.index
        while i < self.index + self.hold and i / rate < self.shown_until - 1e-9:
            i += 1
        return i


def uncertain(probs: np.ndarray, margin: float, threshold: float = DEFAULT_THRESHOLD
              ) -> np.ndarray:
    """Rows whose decision is fragile: the top two scores within 2 * margin of each other, or
    the top score within margin of the planner's threshold."""
    if probs.shape[1] < 2:
        top = probs[:, 0]
        return np.abs(top - threshold) < margin
    part = np.sort(probs, axis=1)
    top, second = part[:, -1], part[:, -2]
    return ((top - second) < 2 * margin) | (np.abs(top - threshold) < margin)


def exact_rows(held: list[Held], exact_from: float | None) -> np.ndarray:
    """Pass-1 samples that are exact already: from `exact_from` seconds on, pass 1 decoded
    every picture (the last keyframe and what follows it)."""
    if exact_from is None:
        return np.zeros(len(held), bool)
    return np.array([h.pts >= exact_from - 1e-9 for h in held], bool)


def blind_stretches(held: list[Held], unusable: list[float]) -> np.ndarray:
    """Keyframes whose stretch holds keyframes that could not be decoded alone
    (`DecodeStats.unusable_keyframes`: a periodic intra refresh). Such a stretch can be as
    long as the video, with any number of changes in it, and its keyframe neighbours say
    nothing about them: it is decoded whole, as `exact` would."""
    out = np.zeros(len(held), bool)
    if held and unusable:
        at = np.searchsorted([h.pts for h in held], unusable, side="right") - 1
        out[at[at >= 0]] = True
    return out


def plan_stretches(held: list[Held], probs: np.ndarray, rate: float, margin: float,
                   threshold: float = DEFAULT_THRESHOLD, exact_from: float | None = None,
                   blind: np.ndarray | None = None) -> list[tuple[int, int, int]]:
    """Slot ranges to decode fully, as (first slot, stop slot, index into `held` of the keyframe
    to start decoding from), one per refined keyframe stretch, in order. Samples from
    `exact_from` seconds on are exact (see `exact_rows`) and never refined; `blind` stretches
    (`blind_stretches`) always are."""
    if not held:
        return []
    winners = probs.argmax(axis=1)
    shaky = uncertain(probs, margin, threshold) if margin > 0 else np.zeros(len(held), bool)
    refine = np.zeros(len(held), bool)
    refine[:-1] |= winners[:-1] != winners[1:]
    refine |= shaky
    refine[:-1] |= shaky[1:]
    if exact_from is None:
        # Nothing follows the last keyframe to compare it with: its stretch (one GOP per
        # video) is always decoded, unless pass 1 decoded it whole (`exact_from`).
        refine[-1] = True
    if blind is not None:
        refine |= blind
    refine &= ~exact_rows(held, exact_from)
    out: list[tuple[int, int, int]] = []
    for j in np.flatnonzero(refine):
        # Every stretch seeks to its own keyframe, even right after another one: decoding on
        # through would also decode the pictures between the earlier stretch's last sample and
        # this keyframe, which no sample needs (half a GOP when one sample per GOP is refined).
        h = held[j]
        a, b = h.first_other(rate), h.index + h.hold  # slots before a show the keyframe
        if a < b:
            out.append((a, b, int(j)))
    return out


def walkable(held: list[Held], probs: np.ndarray, margin: float,
             threshold: float = DEFAULT_THRESHOLD, exact_from: float | None = None,
             blind: np.ndarray | None = None) -> np.ndarray:
    """Keyframes whose stretch can be walked: it is refined only because the next keyframe
    has another winner, and both are confident. Such a stretch holds one change (or the
    keyframes would not be trusted elsewhere either), so pass 2 decodes it from the start
    until a sample agrees, confidently, with the next keyframe, and the slots after that
    hold that sample - on a long GOP most of the stretch is never decoded."""
    winners = probs.argmax(axis=1)
    shaky = uncertain(probs, margin, threshold) if margin > 0 else np.zeros(len(held), bool)
    out = np.zeros(len(held), bool)
    if len(held) > 1:
        out[:-1] = (winners[:-1] != winners[1:]) & ~shaky[:-1] & ~shaky[1:]
    if len(held) > 2:
        out[1:-1] &= ~shaky[:-2]  # an uncertain keyframe before also asks for this stretch
    if blind is not None:
        out &= ~blind
    return out & ~exact_rows(held, exact_from)


WALK_BATCH = 1  # samples decoded, then classified, at a time while walking
# Shorter stretches are decoded whole, overlapped with inference. Two samples are enough: where
# keyframes fall between sample times (29.97 fps, or the 10 min bench clip) a changing 2 s GOP
# holds two to refine, and walking them, two walks side by side, took 7% less CPU and 6% less
# wall time on that clip than decoding each whole (measured in `miles-deep bench`).
MIN_WALK = 2
DECODERS = 2  # decoders refining batched stretches side by side
KEY_BATCH = 4  # pass-1 batch size
# Pass 2 classifies each refined sample as it comes: its few samples (one per class change)
# then overlap the decoders instead of waiting for all of them at the end (2-3% less wall
# time in 16 runs in turns; within the noise of the shared machine, never worse).
REFINE_BATCH = 1


class StretchSource:
    """Yields one `Sample` per slot of each stretch, decoding from the keyframe before it."""

    def __init__(self, source: PyAVSource, held: list[Held],
                 stretches: queue.SimpleQueue | None = None) -> None:
        self.source = source
        self.held = held
        self.stretches = stretches if stretches is not None else queue.SimpleQueue()
        self.frames_decoded = 0
        self.decode_errors = 0  # damaged packets skipped in the refined stretches
        self.last_end = 0.0  # end of the last picture decoded (a truncated file ends early)

        self._container = None  # opened once for every stretch (opening costs ~60 ms)

    def _open(self):
        if self._container is None:
            self._container = open_video(self.source.path, probed=True)
            cc = main_video(self._container).codec_context
            cc.thread_type = "AUTO"
            cc.thread_count = self.source.threads
        return self._container

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None

    def __enter__(self) -> StretchSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[Sample]:
        """The stretches of `stretches`, a queue several sources share so that none sits idle
        while another has work; the container stays open."""
        while True:
            try:
                run = self.stretches.get_nowait()
            except queue.Empty:
                return
            yield from self.samples(run)

    def samples(self, run: tuple[int, int, int]) -> Iterator[Sample]:
        """The samples of one stretch (first slot, stop slot, keyframe index)."""
        a, b, j = run
        container = self._open()
        yield from self._stretch(container, main_video(container), a, b,
                                 self.held[j].pts)

    def _from_keyframe(self, container, vs, key_pts: float) -> Iterator:
        """The packets in decode order from the keyframe at `key_pts` seconds on. A seek in a
        file without an index (MPEG-TS) lands near the time asked for, not on its keyframe,
        maybe after it: the packets before that keyframe are read past, and a seek that
        overshot is made again from further back."""
        import av

        tb = vs.time_base
        start = self.source.info.start

        def at_key(p) -> bool:
            return p.is_keyframe and p.pts is not None and (
                abs(float(p.pts * tb) - start - key_pts) < 1e-6)

        for at in seek_steps(int(round((key_pts + start) / tb)), tb):
            try:
                seek_to(container, vs, at)
            except av.error.FFmpegError:
                raise MilesDeepError(f"cannot seek to {key_pts:.3f} s in this file; "
                                     "use --sampling exact", self.source.path) from None
            packets = container.demux(vs)
            for p in packets:
                if at_key(p):
                    yield p
                    yield from packets
                    return
                t = None if p.pts is None else float(p.pts * tb) - start
                if t is not None and t > key_pts + 1e-6 and p.is_keyframe:
                    break  # past it: the seek landed after the keyframe
        raise MilesDeepError(f"no picture could be decoded after seeking to {key_pts:.3f} s",
                             self.source.path)

    def _stretch(self, container, vs, a: int, b: int, key_pts: float) -> Iterator[Sample]:
        import av

        tb = vs.time_base
        start = self.source.info.start
        rate = self.source.rate
        packets = self._from_keyframe(container, vs, key_pts)
        vs.codec_context.flush_buffers()
        vs.codec_context.skip_frame = "DEFAULT"
        i = a
        prev = None  # (frame, seconds) on screen so far
        # The last converted picture, with the av frame it came from: holding the frame keeps
        # its id from being reused by a later frame (an id()-keyed cache gave stale pictures).
        converted: list = [None, None]

        def emit(holder, upto: int) -> Iterator[Sample]:
            nonlocal i
            frame, pts = holder
            if converted[0] is not frame:
                converted[:] = [frame, frame_from_av(frame)]
            while i < upto:
                yield Sample(index=i, time=i / rate, pts=pts, frame=converted[1])
                i += 1

        def frames() -> Iterator:
            cc = vs.codec_context
            skip = skip_switch(cc)  # non-reference pictures at no slot
            for packet, needed in mark_needed(packets, tb, start, rate, a, b,
                                              until_last=True):
                skip(needed)
                try:
                    decoded = packet.decode()
                except av.error.EOFError:
                    return
                except (av.error.InvalidDataError, ValueError, av.error.FFmpegError):
                    self.decode_errors += 1
                    continue
                yield from decoded
            # Every packet a slot can show has been sent: drain the pictures the decoder still
            # holds (the next stretch's seek flushes it for reuse).
            try:
                yield from cc.decode(None)
            except (av.error.EOFError, av.error.FFmpegError):
                return

        for f in frames():
            if f.pts is None:
                continue
            self.frames_decoded += 1
            t = float(f.pts * tb) - start
            self.last_end = max(self.last_end, t + float((f.duration or 0) * tb))
            if prev is not None and t <= prev[1]:
                continue
            if t < key_pts - 1e-6:
                continue  # leading pictures of an open GOP, before the keyframe we asked for
            # Slots whose time comes before this frame belong to the previous frame.
            stop = i
            while stop < b and stop / rate < t - 1e-9:
                stop += 1
            if stop > i:
                yield from emit(prev if prev is not None else (f, t), stop)
            if i >= b:
                return
            prev = (f, t)
        if prev is None:
            raise MilesDeepError(f"no picture could be decoded after seeking to {key_pts:.3f} s",
                                 self.source.path)
        yield from emit(prev, b)


def classify_video_adaptive(
    path: Path,
    bundle: ModelBundle,
    classifier: Classifier,
    options=None,  # RunOptions (imported lazily: run.py imports this module)
    progress=None,
    times=None,
) -> Predictions:
    """`classify_video` with adaptive sampling; same inputs, same output."""
    from milesdeep.pipeline.run import (
        QUEUE_FRAMES,
        RunOptions,
        StageTimes,
        _threaded,
        _threaded_all,
        classify_samples,
        to_predictions,
    )

    options = options or RunOptions(sampling="adaptive")
    times = times if times is not None else StageTimes()
    t_start = time.perf_counter()
    margin = getattr(options, "adaptive_margin", DEFAULT_MARGIN)
    # Pass 1 decodes the last GOP whole from its keyframe (nothing follows it to compare it
    # with), so that stretch is exact without seeking back to decode the keyframe again.
    source = PyAVSource(Path(path), rate=options.rate, mode="keyframes",
                        threads=options.decode_threads, exact_tail=True, partners=True)
    duration = source.info.duration or 0.0
    n_expected = source.expected_samples

    held: list[Held] = []
    key_rows: list[np.ndarray] = []

    def on_keys(batch: list[Sample], probs: np.ndarray) -> None:
        for s, p in zip(batch, probs):
            held.append(Held(s.index, s.hold, s.pts))
            key_rows.append(p)
        if progress is not None and duration > 0:
            last = batch[-1]
            progress(0.5 * min((last.index + last.hold) / options.rate, duration), duration)

    # Small batches in pass 1: keyframes arrive slowly (one per GOP), and a full batch would
    # leave inference waiting for decoding and then decoding waiting for inference.
    classify_samples(_threaded(source, QUEUE_FRAMES, times), bundle, classifier,
                     min(options.batch, KEY_BATCH), times, on_keys)
    if not held:
        raise MilesDeepError("no samples could be taken from the video", path)
    key_probs = np.stack(key_rows).astype(np.float32)
    shown = source.stats.shown_until
    held = [Held(h.index, h.hold, h.pts, shown.get(round(h.pts, 6))) for h in held]
    n = max(n_expected, held[-1].index + held[-1].hold)
    probs = np.empty((n, len(bundle.labels)), dtype=np.float32)
    for h, p in zip(held, key_probs):
        probs[h.index: h.index + h.hold] = p

    t0 = time.perf_counter()
    exact_from = source.stats.exact_from
    blind = blind_stretches(held, source.stats.unusable_keyframes)
    stretches = plan_stretches(held, key_probs, options.rate, margin, exact_from=exact_from,
                               blind=blind)
    times.extra["adaptive_planning"] = times.extra.get("adaptive_planning", 0.0) + (
        time.perf_counter() - t0)
    to_refine = sum(b - a for a, b, _ in stretches)
    times.extra["refined_slots"] = float(to_refine)
    tail = int(exact_rows(held, exact_from).sum()) - 1 if exact_from is not None else 0
    times.extra["keyframes"] = float(len(held) - max(0, tail))
    times.extra["tail_samples"] = float(max(0, tail))  # pass-1 samples after the last keyframe
    times.extra["keyframes_skipped"] = float(source.stats.keyframes_skipped)
    times.extra["keyframes_unusable"] = float(len(source.stats.unusable_keyframes))

    walk = walkable(held, key_probs, margin, exact_from=exact_from, blind=blind)
    # Walking decodes in step with classification (no overlap), so it only pays where there
    # are slots to save: a stretch of a sample or two goes with the batched ones.
    walks = [r for r in stretches if walk[r[2]] and r[1] - r[0] >= MIN_WALK
             and r[1] == held[r[2]].index + held[r[2]].hold]
    batched = [r for r in stretches if r not in walks]
    # Stretches are independent (each seeks to its own keyframe), and decoding one is a chain
    # of dependent pictures that keeps a core only partly busy: the batched stretches are
    # shared between DECODERS decoders on their own threads, each with one open container,
    # each taking the next stretch when it is done with one. The walks reuse them.
    shared: queue.SimpleQueue = queue.SimpleQueue()
    for run in batched:
        shared.put(run)
    sources = [StretchSource(source, held, shared) for _ in range(min(DECODERS, len(batched)))]
    done = 0

    # Walks run on several threads at once, each classifying its own samples: the counters
    # and the progress callback are shared.
    lock = threading.Lock()

    def on_refined(batch: list[Sample], p: np.ndarray) -> None:
        nonlocal done
        with lock:
            for s, row in zip(batch, p):
                probs[s.index] = row
            done += len(batch)
            if progress is not None and duration > 0:
                progress(duration * (0.5 + 0.5 * done / max(1, to_refine)), duration)

    held_after = 0

    def walk_one(run: tuple[int, int, int], stretches: StretchSource) -> None:
        """Decode and classify the stretch a few samples at a time until a sample agrees,
        confidently, with the next keyframe; the rest of the stretch holds that sample."""
        nonlocal done, held_after
        a, b, j = run
        target = int(key_probs[j + 1].argmax())
        last = -1
        # Decoding runs in step with classification here (no thread running ahead): every
        # picture decoded past the agreeing sample would be wasted, and decoding a sample's
        # pictures costs far more than classifying it.
        samples = stretches.samples(run)
        mine = StageTimes()  # this walk's clocks, added to the run's under the lock
        try:
            while True:
                t0 = time.perf_counter()
                chunk = [s for _, s in zip(range(WALK_BATCH), samples)]
                mine.decode += time.perf_counter() - t0
                if not chunk:
                    return
                classify_samples(chunk, bundle, classifier, len(chunk), mine, on_refined)
                last = chunk[-1].index
                row = probs[last: last + 1]
                if int(row.argmax()) == target and not uncertain(row, margin)[0]:
                    break
        finally:
            samples.close()  # type: ignore[attr-defined]
            with lock:
                times.decode += mine.decode
                times.preprocess += mine.preprocess
                times.inference += mine.inference
                times.samples += mine.samples
        if last + 1 < b:
            with lock:
                probs[last + 1: b] = probs[last]
                done += b - (last + 1)
                held_after += b - (last + 1)

    def walk_all() -> None:
        """The walks, DECODERS at a time: a walk keeps its decoder waiting for each sample's
        scores, so two walks side by side fill each other's gaps."""
        while len(sources) < min(DECODERS, len(walks)):
            sources.append(StretchSource(source, held))
        free: queue.SimpleQueue = queue.SimpleQueue()
        for src in sources[:DECODERS]:
            free.put(src)

        def one(run: tuple[int, int, int]) -> None:
            src = free.get()
            try:
                walk_one(run, src)
            finally:
                free.put(src)

        with ThreadPoolExecutor(max_workers=min(DECODERS, len(walks)),
                                thread_name_prefix="milesdeep-walk") as pool:
            for f in [pool.submit(one, run) for run in walks]:
                f.result()  # re-raises a walk's error

    try:
        if batched:
            classify_samples(_threaded_all(sources, QUEUE_FRAMES, times), bundle, classifier,
                             min(options.batch, REFINE_BATCH), times, on_refined)
        if walks:
            walk_all()
    finally:
        for src in sources:
            src.close()
    if done != to_refine:
        raise RuntimeError(f"adaptive pass 2 gave {done} of {to_refine} slots")
    times.extra["walked_stretches"] = float(len(walks))
    times.extra["slots_held_after_walks"] = float(held_after)
    times.frames_decoded = source.stats.frames_decoded + sum(x.frames_decoded for x in sources)
    times.decode_errors = source.stats.decode_errors + sum(x.decode_errors for x in sources)
    times.extra["decoded_end"] = max([x.last_end for x in sources] + [source.stats.end_time])
    times.total += time.perf_counter() - t_start
    if progress is not None and duration > 0:
        progress(duration, duration)
    return to_predictions(bundle, probs, options, duration, source.stats.end_time)
