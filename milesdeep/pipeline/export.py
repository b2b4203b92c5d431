"""Write the kept ranges as an editorial timeline an editor can refine in an NLE.

The timeline is built with OpenTimelineIO: a video track (and, in OTIO's own format, an audio
track when the source has audio) whose clips reference the original file (an absolute file://
URL) with the kept ranges as source ranges, in frames of the video's frame rate, on the
source's timecode clock. OTIO's own JSON adapter ships with opentimelineio; EDL (CMX 3600) and
FCPXML come from the `otio-cmx3600-adapter` and `otio-fcpx-xml-adapter` packages.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

from milesdeep.errors import MilesDeepError
from milesdeep.pipeline.atomic import write_text_atomic
from milesdeep.pipeline.ranges import TimeRange

# --export value -> (OTIO adapter name, file extension, package that provides the adapter)
FORMATS: dict[str, tuple[str, str, str]] = {
    "otio": ("otio_json", ".otio", "opentimelineio"),
    "edl": ("cmx_3600", ".edl", "otio-cmx3600-adapter"),
    "fcpxml": ("fcpx_xml", ".fcpxml", "otio-fcpx-xml-adapter"),
}


def _otio():  # imported lazily: only exports need it
    import opentimelineio as otio

    return otio


def build_timeline(source: Path, ranges: Sequence[TimeRange], frame_rate: Fraction,
                   duration: Fraction, name: str | None = None, timecode: str | None = None,
                   audio: bool = False):
    """An OTIO timeline with one clip per range, referencing `source`, on a video track and,
    with `audio`, an audio track beside it.

    Range times are seconds from the first frame; they are rounded to whole frames. With the
    source's start `timecode` ("01:00:00:00"), source times are on that clock, as an editor
    matching the clips to the media by timecode (an EDL's source in and out) reads them."""
    otio = _otio()
    rate = float(frame_rate)
    source = Path(source).resolve()

    def frames(t: Fraction) -> int:
        return round(t * frame_rate)

    first = 0
    if timecode:
        try:
            first = round(otio.opentime.from_timecode(timecode, rate).to_frames())
        except ValueError:  # a timecode OTIO cannot read at this rate: times from 0
            first = 0
    available = otio.opentime.TimeRange(otio.opentime.RationalTime(first, rate),
                                        otio.opentime.RationalTime(frames(duration), rate))
    # The FCPXML adapter looks clips up by an XPath built from the name, which a "'" breaks
    # (an internal error for "it's.mp4"): names carry a typographic apostrophe instead.
    stem = source.stem.replace("'", "\u2019")
    timeline = otio.schema.Timeline(name=name or f"{stem} cut")
    kinds = [("V1", otio.schema.TrackKind.Video)]
    if audio:
        kinds.append(("A1", otio.schema.TrackKind.Audio))
    for track_name, kind in kinds:
        track = otio.schema.Track(name=track_name, kind=kind)
        timeline.tracks.append(track)
        for i, r in enumerate(ranges, 1):
            start, end = frames(r.start), frames(r.end)
            if end <= start:
                continue
            ref = otio.schema.ExternalReference(target_url=source.as_uri(),
                                                available_range=available)
            track.append(otio.schema.Clip(
                name=f"{stem} {i}",
                media_reference=ref,
                source_range=otio.opentime.TimeRange(
                    otio.opentime.RationalTime(first + start, rate),
                    otio.opentime.RationalTime(end - start, rate)),
            ))
    return timeline


def timeline_ranges(timeline, kind: str = "Video") -> list[tuple[int, int]]:
    """(start frame, end frame) of every clip on the tracks of `kind`, in track order (for
    checks and round trips), on the source's clock."""
    out = []
    for track in timeline.tracks:
        if track.kind != kind:
            continue
        for clip in track.find_clips():
            r = clip.source_range
            start = r.start_time.to_frames()
            out.append((start, start + r.duration.to_frames()))
    return out


def adapter_for(kind: str) -> tuple[str, str]:
    """(adapter name, extension) for an --export value, checking that the adapter is there."""
    if kind not in FORMATS:
        raise MilesDeepError(f"unknown export format {kind!r}; choose one of: "
                             + ", ".join(FORMATS))
    adapter, ext, package = FORMATS[kind]
    otio = _otio()
    names = {a.name for a in otio.plugins.ActiveManifest().adapters}
    if adapter not in names:
        raise MilesDeepError(f"--export {kind} needs the OpenTimelineIO adapter {adapter!r}; "
                             f"install it with: pip install {package}")
    return adapter, ext


def write_timeline(timeline, path: Path, kind: str, overwrite: bool = False) -> Path:
    """Write `timeline` in the --export format `kind` to `path` (atomically)."""
    adapter, _ = adapter_for(kind)
    try:
        text = _otio().adapters.write_to_string(timeline, adapter)
    except ValueError as e:  # EDL's timecode has only SMPTE's frame rates (24, 25, 30, ...)
        raise MilesDeepError(f"cannot write the timeline as {kind} ({e}); use --export otio",
                             path) from None
    return write_text_atomic(Path(path), text, overwrite=overwrite)


def read_timeline(path: Path, kind: str, frame_rate: Fraction | None = None):
    """Read a timeline written by `write_timeline` (EDL needs the frame rate back)."""
    adapter, _ = adapter_for(kind)
    kwargs = {"rate": float(frame_rate)} if kind == "edl" and frame_rate else {}
    return _otio().adapters.read_from_file(str(path), adapter, **kwargs)
