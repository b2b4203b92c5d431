"""Which files a run works on: paths given on the command line, directories walked
recursively for video files, and `--from-list` files (one path a line)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from milesdeep.errors import MilesDeepError
from milesdeep.pipeline.decode import VIDEO_EXTENSIONS, is_video_name

__all__ = ["VIDEO_EXTENSIONS", "expand_inputs", "found_in_folders", "is_video_name", "read_list",
           "walk_videos"]


def walk_videos(directory: Path) -> list[Path]:
    """Video files under `directory`, recursively, sorted by path; hidden files and folders
    (our own temporary and state files among them) and symlinked folders are skipped."""
    found: list[Path] = []

    def onerror(e: OSError) -> None:
        raise MilesDeepError(f"cannot list the folder ({e.strerror})", e.filename)

    for root, dirs, files in os.walk(directory, onerror=onerror):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            path = Path(root) / name
            if is_video_name(path):
                found.append(path)
    return found


def read_list(list_file: Path) -> list[Path]:
    """Paths from a list file: one a line, or NUL-separated (`find -print0`) when the file
    holds a NUL byte, which is the only way to list names that contain a line break. Blank
    lines are skipped; relative paths are relative to the current directory."""
    try:
        data = Path(list_file).read_bytes()
    except OSError as e:
        raise MilesDeepError(f"cannot read the list of inputs ({e.strerror})", list_file) from None
    if b"\0" in data:
        items = data.split(b"\0")
    else:
        items = [line.rstrip(b"\r") for line in data.split(b"\n")]
    items = [item for item in items if item.strip()]
    # A video (or any binary file) given as the list by mistake splits into junk "paths",
    # "." and "/" among them, and the run would walk the whole disk: names in a list hold no
    # control characters but tab and (NUL-separated) line breaks.
    if any(_CONTROL.search(item) for item in items):
        raise MilesDeepError("is not a list of paths (it holds binary data); give a text file "
                             "with one path a line, or NUL-separated as find -print0 writes",
                             list_file)
    return [Path(os.fsdecode(item)) for item in items]


_CONTROL = re.compile(rb"[\x01-\x08\x0b\x0c\x0e-\x1f\x7f]")


def expand_inputs(paths: Iterable[Path] = (), from_list: Path | Sequence[Path] | None = None
                  ) -> list[Path]:
    """Files to process, in the order given, each once (by real path).

    A directory becomes the video files under it; anything else is kept as given, even if it
    does not exist or is not a video, so that the run reports it as a failure for that file
    instead of silently dropping it.
    """
    given = [Path(p) for p in paths]
    if from_list is not None:
        lists = [from_list] if isinstance(from_list, (str, Path)) else list(from_list)
        for lst in lists:
            given.extend(read_list(Path(lst)))
    out: list[Path] = []
    seen: set[str] = set()
    for p in given:
        for f in walk_videos(p) if p.is_dir() else [p]:
            key = os.path.realpath(f)
            if key not in seen:
                seen.add(key)
                out.append(f)
    return out


def found_in_folders(paths: Iterable[Path], given: Iterable[Path],
                     from_list: Path | None = None) -> set[Path]:
    """Those of `paths` (from `expand_inputs`) found by walking a folder, not named on the
    command line or in the list file."""
    named = [Path(p) for p in given]
    if from_list is not None:
        named.extend(read_list(Path(from_list)))
    keys = {os.path.realpath(p) for p in named if not p.is_dir()}
    return {p for p in paths if os.path.realpath(p) not in keys}
