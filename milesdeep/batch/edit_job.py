"""`miles-deep edit` as a batch job: per video, classify (or read saved predictions), plan the
cuts, and write the kept ranges (stream copy, pieces, or an editorial timeline).

Replacing files: an output path that already exists is replaced only if an earlier edit run
claimed it for the same video (claims are recorded in the output folder's state database
*before* an output is written, so the outputs of a killed run are replaced by the rerun), or
with `overwrite`. Anything else there is left alone and that video fails with one line.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from milesdeep.batch.job import FileWork, ModelJob, Progress, readahead
from milesdeep.errors import MilesDeepError, UsageError
from milesdeep.models.bundle import ModelBundle
from milesdeep.pipeline.atomic import too_long_name
from milesdeep.pipeline.planner import PlanParams
from milesdeep.pipeline.run import RunOptions

EXPORTS = ("otio", "edl", "fcpxml")
PREDICTIONS_SUFFIX = ".predictions.csv"  # what `tag` writes (milesdeep.jobs)

# Names edit gives its outputs: <stem>.cut<ext> and, with pieces, <stem>.cut.<i><ext>.
_OUTPUT_NAME = re.compile(r".*\.cut(\.\d+)?$", re.DOTALL)


def is_edit_output_name(path: Path) -> bool:
    """Whether `path` is named like an edit output (so a folder walk leaves it out)."""
    return bool(_OUTPUT_NAME.match(Path(path).stem))


def drop_walked_outputs(paths: list[Path], walked: set[Path]) -> tuple[list[Path], int]:
    """Leave out files found by walking a folder (`walked`) that are named like edit outputs
    (`<stem>.cut.<ext>`, `<stem>.cut/<stem>.cut.<i>.<ext>`), so that editing a folder twice
    does not edit the first run's cuts. A file named outright is always kept."""
    kept = [p for p in paths if p not in walked or not is_edit_output_name(p)]
    return kept, len(paths) - len(kept)


def parse_targets(targets: str | None, all_but_other: bool, labels: tuple[str, ...],
                  other: str | None, whose: str = "the model's") -> list[str]:
    """-t L1,L2, or (default, and -x) every label but the model's "other" one. `whose`: where
    the labels come from, for the message."""
    if targets is not None and all_but_other:
        raise UsageError("give either -t LABELS or -x, not both")
    if targets is not None:
        names = [t.strip() for t in targets.split(",") if t.strip()]
        unknown = [n for n in names if n not in labels]
        if not names or unknown:
            raise MilesDeepError(f"unknown label(s) {', '.join(unknown) or repr(targets)}; "
                                 f"{whose} labels are: {', '.join(labels)}")
        return names
    if other is None or other not in labels:
        raise MilesDeepError("this model names no 'other' label to leave out; choose targets "
                             f"with -t (labels: {', '.join(labels)})")
    return [n for n in labels if n != other]


def _check_fits(preds: Any, video: Path, csv: Path) -> None:
    """Predictions made for another video (or for this one before it was replaced) would cut
    it at seconds that mean nothing: `tag` writes one row per sample time of the video, so
    more than a row too many or too few says the file is not this video's."""
    from milesdeep.pipeline.decode import probe
    from milesdeep.pipeline.predictions import fits_video

    seconds = probe(video).duration
    if seconds <= 0 or len(preds.times) < 2:
        return  # no length to compare with; a one-row file covers any short video
    if not fits_video(preds, seconds):
        raise MilesDeepError(
            f"the predictions in {csv.name} cover {len(preds.times) / preds.rate:.1f} s but "
            f"the video lasts {seconds:.1f} s: they are another video's; run miles-deep tag "
            "on this one", video)


@dataclass
class EditReport:
    """What one video's edit did (picklable: it crosses from worker processes)."""

    name: str
    targets: list[str]
    cuts: int
    kept: float  # seconds kept
    duration: float  # seconds in the source
    outputs: list[Path] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)  # per-range report of the cut
    nothing: str = ""  # why nothing was written, if so
    removed: list[Path] = field(default_factory=list)  # an earlier run's outputs, now stale


@dataclass
class EditJob(ModelJob):
    """Cut each video to (or, with `remove`, without) the seconds of the target classes.

    `predictions`: None (classify with `bundle`), a predictions CSV (one video), or a folder
    holding `<stem>.predictions.csv` for each video (what `tag -o FOLDER` writes)."""

    bundle: ModelBundle | None
    targets: str | None = None  # -t, comma-separated
    all_but_other: bool = False
    remove: bool = False
    pieces: bool = False
    margin: float = 0.0
    precise: bool = False
    export: str | None = None
    overwrite: bool = False
    params: PlanParams = field(default_factory=PlanParams)
    run_options: RunOptions = field(default_factory=RunOptions)
    predictions: Path | None = None
    backend: str = "cpu"  # resolved: cpu or gpu
    model_arg: str | None = None
    out_dir: Path | None = None
    single: bool = False  # one video: no state row for "no cuts", so nothing at all is written
    threads: int = 0  # ONNX Runtime threads (0: every core)
    faststart: bool = False  # MP4/MOV outputs get their index (moov) at the front
    say: Callable[[str], None] | None = field(default=None, repr=False, compare=False)
    command = "edit"
    _runner: Any = field(default=None, repr=False, compare=False)
    _stack: Any = field(default=None, repr=False, compare=False)
    _book: Any = field(default=None, repr=False, compare=False)

    # --- model ---------------------------------------------------------------------------

    @property
    def other_label(self) -> str | None:
        return self.bundle.other_label if self.bundle is not None else None

    def load(self) -> None:
        if self.predictions is not None or self._runner is not None:
            return
        assert self.bundle is not None
        self.open_runner()

    # --- identity ------------------------------------------------------------------------

    def model_key(self) -> str:
        if self.predictions is None:
            from milesdeep.batch.tag_job import model_key

            assert self.bundle is not None
            return model_key(self.bundle)
        # The scores come from the CSVs (see file_key); the model only names "other".
        return "predictions:" + str(self.other_label)

    def options(self) -> dict[str, Any]:
        opts: dict[str, Any] = {
            "targets": self.targets, "all_but_other": self.all_but_other,
            "remove": self.remove, "pieces": self.pieces, "margin": self.margin,
            "precise": self.precise, "export": self.export, "plan": asdict(self.params)}
        if self.faststart:  # only when set: earlier runs' records stay valid
            opts["faststart"] = True
        if self.predictions is not None and self.run_options.rate != 1.0:
            opts["rate"] = self.run_options.rate  # read from one-row files; only when set
        if self.predictions is None:
            opts.update(rate=self.run_options.rate, sampling=self.run_options.sampling,
                        adaptive_margin=getattr(self.run_options, "adaptive_margin", None),
                        backend=self.backend)
        return opts

    def predictions_csv(self, path: Path) -> Path:
        assert self.predictions is not None
        if self.predictions.is_dir():
            return self.predictions / f"{Path(path).stem}{PREDICTIONS_SUFFIX}"
        return self.predictions

    def file_key(self, path: Path) -> str:
        """With saved predictions, the CSV's bytes: a re-tagged video is edited again."""
        if self.predictions is None:
            return ""
        try:
            return hashlib.sha256(self.predictions_csv(path).read_bytes()).hexdigest()[:32]
        except OSError:
            return "unreadable"

    # --- outputs -------------------------------------------------------------------------

    def output_dir(self, path: Path) -> Path:
        return self.out_dir if self.out_dir is not None else Path(path).parent

    def output_paths(self, path: Path) -> list[Path]:
        path = Path(path)
        d, stem = self.output_dir(path), path.stem
        if self.export is not None:
            from milesdeep.pipeline.export import FORMATS

            return [d / f"{stem}.cut{FORMATS[self.export][1]}"]
        from milesdeep.pipeline import remux

        exts = remux.candidate_extensions(path)
        if self.pieces:  # the first piece stands for all (same folder, same names)
            return [d / f"{stem}.cut" / f"{stem}.cut.1{e}" for e in exts]
        return [d / f"{stem}.cut{e}" for e in exts]

    def may_write(self, path: Path, other: str) -> bool:
        """With pieces, any `<stem>.cut/<stem>.cut.<i><ext>` (output_paths names the first)."""
        if not self.pieces or self.export is not None:
            return False
        stem = Path(path).stem
        folder = os.path.realpath(self.output_dir(path) / f"{stem}.cut")
        there = Path(other)
        return str(there.parent) == folder and bool(
            re.fullmatch(re.escape(f"{stem}.cut.") + r"\d+", there.stem))

    def temporary_patterns(self, path: Path) -> list[tuple[Path, str]]:
        """Pieces' temporaries (`milesdeep.pipeline.atomic` names them after the first 40
        characters of the piece's stem, `<stem>.cut.<i>`)."""
        if not self.pieces or self.export is not None:
            return []
        from milesdeep.pipeline import remux

        path = Path(path)
        prefix = f"{path.stem}.cut."
        head = re.escape(prefix[:40]) + (r"\d*" if len(prefix) < 40 else "")
        folder = self.output_dir(path) / f"{path.stem}.cut"
        return [(folder, r"\." + head + r"\.[a-z0-9_]{8}\.part" + re.escape(e))
                for e in remux.candidate_extensions(path)]

    def _ours(self, path: Path) -> Callable[[Path], bool]:
        """Whether a file at an output name is this video's own, to replace or remove: one a
        finished edit recorded as written for it and unchanged since, or one claimed for it
        that no finished run recorded (what a run killed between writing and recording
        left). Not a file the user has put at a recorded name since."""
        db = self.state_db(path)
        me = Path(os.path.abspath(path))
        recorded = db.recorded_for(path)

        def check(o: Path) -> bool:
            a = Path(os.path.abspath(o))
            return recorded[a] if a in recorded else db.claimed_by(o) == me
        return check

    def _claim(self, path: Path, outputs: list[Path]) -> None:
        """Refuse to replace what another program, the user or another video put at an output
        path, unless --overwrite (`_ours`); then claim the paths for this video before
        writing them."""
        with self.naming_video(path):
            if not self.overwrite:
                ours = self._ours(path)
                for o in outputs:
                    if os.path.lexists(o) and not ours(o):
                        raise MilesDeepError("output exists; pass --overwrite to replace it", o)
            self.state_db(path).claim(path, outputs)

    def _pieces_there(self, path: Path) -> dict[int, Path]:
        """The files in `<stem>.cut/` named as this video's pieces, by number."""
        stem = Path(path).stem
        folder = self.output_dir(path) / f"{stem}.cut"
        pattern = re.compile(re.escape(f"{stem}.cut.") + r"(\d+)$")
        found = {}
        for o in (folder.iterdir() if folder.is_dir() else ()):
            m = pattern.match(o.stem)
            if m:
                found[int(m.group(1))] = o
        return found

    def _remove_ours(self, path: Path, candidates: list[Path]) -> list[Path]:
        """Remove those of `candidates` that are this video's own (`_ours`)."""
        ours = self._ours(path)
        removed = []
        for o in candidates:
            if ours(o):
                o.unlink()
                removed.append(o)
        return removed

    def _drop_stale_pieces(self, path: Path, outputs: list[Path]) -> list[Path]:
        """A redo that gives fewer pieces removes this video's own surplus pieces."""
        surplus = [o for i, o in sorted(self._pieces_there(path).items())
                   if i > len(outputs)]
        return self._remove_ours(path, surplus)

    def _drop_earlier_outputs(self, path: Path) -> list[Path]:
        """A redo that writes nothing (no cuts, or nothing left to keep) removes what an
        earlier run wrote for this video under this run's output names: left there, a cut
        made with other options would pass for this run's result."""
        if self.export is not None or not self.pieces:
            found = [o for o in self.output_paths(path) if os.path.lexists(o)]
        else:
            found = [o for _, o in sorted(self._pieces_there(path).items())]
        removed = self._remove_ours(path, found)
        if removed and self.pieces and self.export is None:
            try:
                removed[0].parent.rmdir()  # only when nothing else is left in it
            except OSError:
                pass
        return removed

    # --- work ----------------------------------------------------------------------------

    def prefetch(self, path: Path) -> Any:
        """Index every packet (no decoding) while the previous video is classified: a bad
        file fails here, and its bytes are in the page cache for the classifier."""
        from milesdeep.pipeline.decode import probe
        from milesdeep.pipeline.remux import index_media

        probe(path)  # clear errors for missing files, FIFOs, files with no video
        readahead(path)
        return index_media(path)

    def duration(self, prefetched: Any) -> float:
        return float(prefetched.duration)

    def _scores(self, path: Path, progress: Progress | None,  # noqa: ANN202  (Predictions)
                times: Any = None):
        if self.predictions is not None:
            from milesdeep.pipeline.predictions import read_predictions_csv

            csv = self.predictions_csv(path)
            if not csv.is_file():
                raise MilesDeepError(f"no predictions file {csv}; run miles-deep tag on it "
                                     "first, or drop --from-predictions", path)
            preds = read_predictions_csv(csv, self.run_options.rate)
            _check_fits(preds, path, csv)
            return preds
        self.load()
        return self._runner.classify(path, self.run_options, progress, times)

    def process(self, path: Path, prefetched: Any, progress: Progress | None) -> FileWork:
        from milesdeep.batch.tag_job import decode_warnings
        from milesdeep.pipeline.planner import plan_union
        from milesdeep.pipeline.ranges import kept_ranges, total
        from milesdeep.pipeline.run import StageTimes

        index = prefetched
        path = Path(path)
        times = StageTimes()
        preds = self._scores(path, progress, times)
        # Damaged or missing pictures are said as tag says them (the cut copies what is there).
        warnings = decode_warnings(times.decode_errors, times.extra.get("decoded_end"),
                                   preds.duration) if self.predictions is None else []
        other = self.other_label if self.bundle is not None and \
            tuple(self.bundle.labels) == tuple(preds.labels) else None
        names = parse_targets(self.targets, self.all_but_other, tuple(preds.labels), other)
        cuts, _ = plan_union(preds.probs, preds.labels, names, self.params.for_rate(preds.rate))
        seconds = float(index.duration)
        report = EditReport(path.name, names, len(cuts), 0.0, seconds)
        if not cuts:
            report.nothing = "no cuts"
            report.removed = self._drop_earlier_outputs(path)
            return FileWork([], seconds, warnings, report, record=not self.single)
        ranges = kept_ranges(cuts, preds.rate, index.duration, remove=self.remove,
                             margin=self.margin)
        report.kept = float(total(ranges))
        if not ranges:
            report.nothing = "all cut"
            report.removed = self._drop_earlier_outputs(path)
            return FileWork([], seconds, warnings, report, record=not self.single)
        claimed: list[Path] = []
        try:
            return self._write(path, index, ranges, report, warnings, claimed)
        except BaseException:
            self._unclaim_missing(path, claimed)
            raise

    def _unclaim_missing(self, path: Path, outputs: list[Path]) -> None:
        """A write that failed or was interrupted gives up its claims on the names it did
        not write: a file the user puts there later is not this video's to replace."""
        self.state_db(path).unclaim(path, [o for o in outputs if not os.path.lexists(o)])

    def _write(self, path: Path, index: Any, ranges: Any, report: EditReport,
               warnings: list[str], claimed: list[Path]) -> FileWork:
        """Write the kept `ranges`; `claimed` gets the names claimed for them."""
        from milesdeep.pipeline import remux

        out_dir = self.output_dir(path)
        seconds = float(index.duration)
        if self.export is not None:
            from milesdeep.pipeline.export import adapter_for, build_timeline, write_timeline

            _, ext = adapter_for(self.export)
            outputs = [out_dir / f"{path.stem}.cut{ext}"]
            self._claim(path, outputs)
            claimed += outputs
            # The EDL and FCPXML adapters render a second track badly (FCPXML) or not at
            # all (EDL): the audio track goes into OTIO's own format only.
            audio = self.export == "otio" and any(s.kind == "audio" for s in index.others)
            timeline = build_timeline(path, ranges, index.frame_rate, index.duration,
                                      timecode=index.timecode, audio=audio)
            write_timeline(timeline, outputs[0], self.export, overwrite=True)
        else:
            n = len(ranges) if self.pieces else 1
            outputs = remux.output_paths(index, out_dir, n, self.pieces)
            # The run checked the first piece's name; the tenth has a digit more.
            long = too_long_name(outputs, out_dir)
            if long is not None:
                raise MilesDeepError(long, path)
            self._claim(path, outputs)
            claimed += outputs
            result = remux.cut_video(index, ranges, out_dir, precise=self.precise,
                                     pieces=self.pieces, overwrite=True,
                                     faststart=self.faststart)
            outputs = list(result.outputs)
            if self.pieces:
                report.removed = self._drop_stale_pieces(path, outputs)
            report.lines = result.summary_lines()
            if not self.single:  # a batch shows what went wrong with --precise as warnings
                warnings += sorted({note for plan in result.plans for note in plan.notes
                                    if "--precise" in note})
        report.outputs = outputs
        return FileWork(outputs, seconds, warnings, report)
