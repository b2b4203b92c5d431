"""Miles Deep's .tag file: every label's cuts in one CSV-like text file (`-a` mode).

The layout follows `TagTargets` in the original `cut_movie.cpp`:

    movie.mp4,label_1,...,label_n,
    total_seconds,label_1_seconds,...,label_n_seconds,
    label,start,end,score,coverage
    label_k,start,end,score,coverage        (one row per cut of every label, sorted by start)

- total_seconds is the number of samples classified; label_k_seconds is the total size of
  label_k's cuts (the sum of end - start + 1), not the seconds where label_k wins.
- start / end are sample indices, end inclusive (seconds at Miles Deep's one sample per
  second).
- score and coverage are written as C++'s `ostream << float` writes them: 6 significant
  digits, trailing zeros dropped (`%g`), e.g. `0.851852`, `1`. A score of 0 / 0 (a cut whose
  only target sample is its first) is written `nan`.
- Line 1 keeps the movie's file name verbatim (no directory), except that line breaks become
  spaces so the file stays four-part; labels may not contain commas or line breaks.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from milesdeep.errors import MilesDeepError
from milesdeep.pipeline.atomic import write_text_atomic
from milesdeep.pipeline.planner import Cut

CUT_HEADER = "label,start,end,score,coverage"


@dataclass
class TagFile:
    movie_file_name: str
    labels: list[str]
    total_seconds: int
    seconds_per_label: list[int]
    cuts: list[Cut]


def _number(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "nan"
    return f"{value:.6g}"


def format_tag(movie_file_name: str, labels: Sequence[str], total_seconds_per_label: Sequence[int],
               total_seconds: int, cuts: Iterable[Cut]) -> str:
    if len(total_seconds_per_label) != len(labels):
        raise ValueError("one total per label is needed")
    for name in labels:
        if not name or any(ch in name for ch in ",\r\n"):
            raise MilesDeepError(f"label {name!r} cannot be written to a .tag file (it is empty "
                                 "or holds a comma or line break); rename it in labels.txt")
    name = Path(movie_file_name).name.replace("\r", " ").replace("\n", " ")
    lines = [
        name + "," + "".join(f"{label}," for label in labels),
        f"{int(total_seconds)}," + "".join(f"{int(s)}," for s in total_seconds_per_label),
        CUT_HEADER,
    ]
    for cut in sorted(cuts, key=lambda c: c.start):  # stable: equal starts keep their order
        lines.append(f"{cut.label},{cut.start},{cut.end},{_number(cut.score)},"
                     f"{_number(cut.coverage)}")
    return "\n".join(lines) + "\n"


def write_tag(path: str | Path, movie_file_name: str, labels: Sequence[str],
              total_seconds_per_label: Sequence[int], total_seconds: int, cuts: Iterable[Cut],
              overwrite: bool = True) -> Path:
    """Write the .tag file atomically (nothing at `path` unless it is complete)."""
    text = format_tag(movie_file_name, labels, total_seconds_per_label, total_seconds, cuts)
    return write_text_atomic(Path(path), text, overwrite)


def read_tag(path: str | Path) -> TagFile:
    """Parse a .tag file written by Miles Deep or by `write_tag`."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise MilesDeepError(f"cannot read the tag file ({e.strerror})", path) from None
    except UnicodeDecodeError:
        raise MilesDeepError("not a tag file (not UTF-8 text)", path) from None

    def bad(line_no: int, what: str) -> MilesDeepError:
        return MilesDeepError(f"not a valid .tag file: line {line_no}: {what}", path)

    if len(lines) < 3:
        raise bad(len(lines) + 1, "expected three header lines")
    totals = lines[1].rstrip(",").split(",")
    try:
        total_seconds, *per_label = (int(x) for x in totals)
    except ValueError:
        raise bad(2, "expected whole numbers: total seconds, then seconds per label") from None
    # Line 1 ends with the labels (one per total on line 2); a comma in the movie's name only
    # makes the name longer.
    head = lines[0].rstrip(",").split(",")
    if len(head) < len(per_label) + 1:
        raise bad(1, f"expected the movie name and {len(per_label)} labels")
    split = len(head) - len(per_label)
    movie, labels = ",".join(head[:split]), head[split:]
    if lines[2].strip() != CUT_HEADER:
        raise bad(3, f"expected {CUT_HEADER!r}")
    cuts = []
    for line_no, line in enumerate(lines[3:], start=4):
        if not line.strip():
            continue
        fields = line.split(",")
        if len(fields) != 5:
            raise bad(line_no, f"expected 5 fields ({CUT_HEADER}), found {len(fields)}")
        try:
            score = float(fields[3])
            cut = Cut(fields[0], int(fields[1]), int(fields[2]),
                      None if math.isnan(score) else score, float(fields[4]))
        except ValueError:
            raise bad(line_no, "start and end must be whole numbers, score and coverage "
                               "numbers") from None
        if cut.label not in labels:
            raise bad(line_no, f"label {cut.label!r} is not in the header's labels")
        cuts.append(cut)
    return TagFile(movie, labels, total_seconds, per_label, cuts)
