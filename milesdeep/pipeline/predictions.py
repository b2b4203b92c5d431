"""Per-sample class probabilities, and their CSV file.

The CSV has the header `time,<label_1>,...,<label_n>` and one row per sample: the sample's
time in seconds (`%.6f`) and each probability with 9 significant digits, which is enough to
give back the exact float32 — so planning from a predictions file gives the same cuts as
planning from the run that wrote it.

`PredictionsWriter` appends batch by batch to a temporary file beside the destination and
renames it into place only when closed without error, so a long video's rows are never all
held in memory and an interrupted run leaves no partial file.
"""

from __future__ import annotations

import contextlib
import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import IO

import numpy as np

from milesdeep.errors import MilesDeepError
from milesdeep.pipeline.atomic import atomic_path

TIME_FORMAT = "%.6f"
PROB_FORMAT = "%.9g"


@dataclass
class Predictions:
    """Sample i is the picture at times[i]; probs[i] its class probabilities.

    `rate` is samples per second; `duration` the video's length in seconds."""

    labels: tuple[str, ...]
    times: np.ndarray  # (N,) float64 seconds
    probs: np.ndarray  # (N, C) float32
    rate: float
    duration: float

    def __post_init__(self) -> None:
        self.labels = tuple(self.labels)
        self.times = np.asarray(self.times, dtype=np.float64)
        self.probs = np.asarray(self.probs, dtype=np.float32)
        if len(self.probs) == 0:  # (0,) or (0, C): no samples
            self.probs = self.probs.reshape(0, len(self.labels))
        if self.times.ndim != 1 or self.probs.shape != (len(self.times), len(self.labels)):
            raise ValueError(f"times {self.times.shape} and probs {self.probs.shape} do not "
                             f"fit {len(self.labels)} labels")


def _check_labels(labels: Sequence[str]) -> None:
    if not labels:
        raise ValueError("predictions need at least one label")
    for name in labels:
        if not name or any(ch in name for ch in ',"\r\n') or name == "time":
            raise MilesDeepError(f"label {name!r} cannot be a predictions CSV column (empty, "
                                 "'time', or holds a comma, quote or line break); rename it")
    if len(set(labels)) != len(labels):
        raise MilesDeepError("labels must be distinct to be CSV columns: " + ", ".join(labels))


class PredictionsWriter:
    """Context manager: `with PredictionsWriter(path, labels) as w: w.write(times, probs)`."""

    def __init__(self, path: str | Path, labels: Sequence[str], overwrite: bool = True) -> None:
        _check_labels(labels)
        self.path = Path(path)
        self.labels = tuple(labels)
        self.overwrite = overwrite
        self.rows = 0
        self._stack = contextlib.ExitStack()
        self._file: IO[str] | None = None

    def __enter__(self) -> PredictionsWriter:
        tmp = self._stack.enter_context(atomic_path(self.path, self.overwrite))
        self._file = self._stack.enter_context(open(tmp, "w", encoding="utf-8", newline=""))
        self._file.write("time," + ",".join(self.labels) + "\n")
        return self

    def write(self, times: np.ndarray | Sequence[float], probs: np.ndarray) -> None:
        """Append one batch: times (B,) and probs (B, C)."""
        if self._file is None:
            raise RuntimeError("PredictionsWriter.write outside its `with` block")
        times = np.asarray(times, dtype=np.float64).reshape(-1)
        probs = np.asarray(probs, dtype=np.float32)
        if probs.shape != (len(times), len(self.labels)):
            raise ValueError(f"batch probs {probs.shape} != ({len(times)}, {len(self.labels)})")
        if len(times) == 0:
            return
        # float32 widened to float64 prints the float32's own digits with %.9g.
        rows = np.column_stack([times, probs.astype(np.float64)])
        np.savetxt(self._file, rows, fmt=[TIME_FORMAT] + [PROB_FORMAT] * len(self.labels),
                   delimiter=",")
        self.rows += len(times)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> bool | None:
        self._file = None
        # Closes the file, then renames it into place (or removes it if exc is set).
        return self._stack.__exit__(exc_type, exc, tb)


def write_predictions_csv(path: str | Path, preds: Predictions, overwrite: bool = True) -> Path:
    with PredictionsWriter(path, preds.labels, overwrite) as writer:
        writer.write(preds.times, preds.probs)
    return Path(path)


MIN_RATE, MAX_RATE = 0.001, 1000.0  # samples per second, as --rate allows


def _rate_of(times: np.ndarray) -> float | None:
    """The rate that gives `times` (sample i at i / rate, written to TIME_FORMAT's 6
    decimals), or None if none does. A round one (3, 29.97, 30000/1001) that gives them all is
    taken exactly: the rate estimated from the rounded times is a little off (3.00000016),
    and whole seconds counted from it came out one short."""
    i = np.arange(1, len(times))
    t = times[1:]
    half = 5.01e-7  # half the last written digit, and a little for the float's own rounding
    if np.any(t <= half):
        return None
    lo, hi = float(np.max(i / (t + half))), float(np.min(i / (t - half)))
    if lo > hi:
        return None
    rough = (lo + hi) / 2
    ntsc = [float(Fraction(round(rough * 1.001) * 1000, 1001))]  # 24000/1001, 30000/1001 ...
    for rate in (*(round(rough, d) for d in range(4)), *ntsc):
        if lo <= rate <= hi:
            return float(rate)
    return rough


def read_predictions_csv(path: str | Path, rate: float = 1.0) -> Predictions:
    """Read a predictions CSV. The rate is the times' (sample i at i / rate); `rate` is taken
    for a file of one row, whose times cannot tell it. The duration is the last time plus one
    sample."""
    path = Path(path)

    def bad(what: str) -> MilesDeepError:
        return MilesDeepError(f"not a valid predictions CSV: {what}", path)

    try:
        # utf-8-sig: a spreadsheet that saved the file may have put a byte-order mark first.
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise bad("the file is empty (expected a header 'time,<label>,...')")
            if len(header) < 2 or header[0].strip() != "time":
                raise bad("the header must be 'time,<label_1>,...,<label_n>'")
            labels = tuple(h.strip() for h in header[1:])
            if any(not name for name in labels) or len(set(labels)) != len(labels):
                raise bad("the header's labels must be non-empty and distinct")
            values: list[list[float]] = []
            for row in reader:
                if not row:
                    continue
                if len(row) != len(header):
                    raise bad(f"line {reader.line_num}: {len(row)} fields, the header has "
                              f"{len(header)}")
                try:
                    numbers = [float(x) for x in row]
                except ValueError:
                    raise bad(f"line {reader.line_num}: not a number in {','.join(row)!r}") \
                        from None
                if not all(math.isfinite(x) for x in numbers):
                    raise bad(f"line {reader.line_num}: inf or nan")
                values.append(numbers)
    except OSError as e:
        raise MilesDeepError(f"cannot read the predictions CSV ({e.strerror})", path) from None
    except UnicodeDecodeError:
        raise bad("not UTF-8 text") from None
    except csv.Error as e:
        raise bad(str(e)) from None

    table = np.array(values, dtype=np.float64).reshape(len(values), len(header))
    times, probs = table[:, 0], table[:, 1:]
    if len(times) and abs(times[0]) > 1e-6:
        raise bad(f"the first time is {times[0]:g}; samples start at 0 (sample i at i / rate)")
    if len(times) > 1 and not np.all(np.diff(times) > 0):
        raise bad("times must increase from row to row")
    outside = np.flatnonzero(((probs < -1e-6) | (probs > 1 + 1e-6)).any(axis=1))
    if len(outside):
        row = int(outside[0])
        raise bad(f"line {row + 2}: a score outside 0-1 "
                  f"({','.join(f'{v:g}' for v in table[row])})")
    if len(times) > 1:
        found = _rate_of(times)
        if found is None:
            raise bad("the times are not evenly spaced (sample i at i / rate)")
        rate = found
    if not MIN_RATE - 1e-9 <= rate <= MAX_RATE + 1e-9:
        raise bad(f"{rate:g} samples a second; the times must give {MIN_RATE:g} to "
                  f"{MAX_RATE:g}")
    duration = float(times[-1] + 1.0 / rate) if len(times) else 0.0
    return Predictions(labels, times, probs.astype(np.float32), float(rate), duration)


def fits_video(preds: Predictions, seconds: float) -> bool:
    """Whether `preds` can be a video's of `seconds` length: `tag` writes one row per sample
    time, so more than a row too many or too few says they are another video's."""
    from milesdeep.pipeline.decode import sample_count

    return abs(len(preds.times) - sample_count(seconds, preds.rate)) <= 1
