"""`miles-deep tag` as a batch job: per file, the predictions CSV, the .tag file and (with
--plot) the timeline PNG."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from milesdeep.batch.job import FileWork, ModelJob, Progress
from milesdeep.errors import MilesDeepError
from milesdeep.models.bundle import ModelBundle
from milesdeep.pipeline.planner import PlanParams
from milesdeep.pipeline.run import RunOptions

# Pictures that stop this many seconds (or more) before the stated duration mean a truncated
# or damaged file: worth a warning, since the last picture stands in for the rest.
SHORT_BY = 1.0


def model_key(bundle: ModelBundle) -> str:
    """The network's bytes and everything that changes what its scores mean."""
    spec = {"onnx": bundle.sha256, "labels": list(bundle.labels),
            "input": bundle.input.to_toml(), "output": bundle.output_kind}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:32]


def decode_warnings(decode_errors: int, decoded_end: float | None, duration: float
                    ) -> list[str]:
    out = []
    if decode_errors:
        out.append(f"{decode_errors} damaged packet(s) could not be decoded and were skipped; "
                   "the picture before each gap stands in for it")
    if decoded_end is not None and duration > 0 and decoded_end < duration - SHORT_BY:
        out.append(f"pictures end at {decoded_end:.1f} s but the file says it lasts "
                   f"{duration:.1f} s (truncated?); the last picture stands in for the rest")
    return out


@dataclass
class TagJob(ModelJob):
    bundle: ModelBundle
    run_options: RunOptions = field(default_factory=RunOptions)
    params: PlanParams = field(default_factory=PlanParams)
    out_dir: Path | None = None
    plot: bool = False
    threads: int = 0  # ONNX Runtime threads (0: every core)
    backend: str = "cpu"  # resolved: cpu or gpu
    model_arg: str | None = None
    say: Callable[[str], None] | None = field(default=None, repr=False, compare=False)
    command = "tag"
    _runner: Any = field(default=None, repr=False, compare=False)
    _stack: Any = field(default=None, repr=False, compare=False)
    _book: Any = field(default=None, repr=False, compare=False)

    def load(self) -> None:
        self.open_runner()

    def model_key(self) -> str:
        return model_key(self.bundle)

    def options(self) -> dict[str, Any]:
        return {"rate": self.run_options.rate, "sampling": self.run_options.sampling,
                "adaptive_margin": getattr(self.run_options, "adaptive_margin", None),
                "plan": asdict(self.params), "plot": self.plot}

    def output_dir(self, path: Path) -> Path:
        return self.out_dir if self.out_dir is not None else Path(path).parent

    def output_paths(self, path: Path) -> list[Path]:
        from milesdeep.jobs import PREDICTIONS_SUFFIX, output_stem

        stem = output_stem(Path(path), self.out_dir)
        names = [PREDICTIONS_SUFFIX, ".tag"] + ([".timeline.png"] if self.plot else [])
        return [stem.with_name(stem.name + s) for s in names]

    def _check_names(self, path: Path) -> None:
        """Refuse to replace another video's results: an earlier run into the same folder
        wrote them for a video of the same stem (a.mp4 and a.mkv beside each other, or two
        folders' clip001.mp4 tagged into one -o). Each run claims the names it wrote."""
        me = Path(os.path.abspath(path))
        with self.naming_video(path):
            db = self.state_db(path)
            for o in self.output_paths(path):
                owner = db.claimed_by(o) if os.path.lexists(o) else None
                if owner is not None and owner != me:
                    raise MilesDeepError(f"{o} holds the results of {owner} from an earlier "
                                         "run (same name); give another -o folder, or remove "
                                         "that file", path)

    def _claim(self, path: Path, outputs: list[Path]) -> None:
        """Claimed once written (tag replaces its names whatever holds them, so a claim is
        only what a later run of another video checks); a database that cannot be written
        is reported by the record that follows, as "outputs written, but ..."."""
        with contextlib.suppress(MilesDeepError):
            self.state_db(path).claim(path, outputs)

    def _drop_stale_plot(self, path: Path) -> list[str]:
        """Without --plot, this video's own timeline from an earlier run (recorded for it
        and unchanged since) would show scores this run replaced: it is removed."""
        from milesdeep.jobs import output_stem

        if self.plot:
            return []
        stem = output_stem(Path(path), self.out_dir)
        png = Path(os.path.abspath(stem.with_name(stem.name + ".timeline.png")))
        try:
            if not self.state_db(path).recorded_for(path).get(png, False):
                return []
        except MilesDeepError:  # reported by the record that follows
            return []
        png.unlink()
        return [f"removed the earlier run's {png.name}: it showed the scores this run "
                "replaced (--plot makes a new one)"]

    def process(self, path: Path, prefetched: Any, progress: Progress | None) -> FileWork:
        from milesdeep.jobs import tag_video

        self.load()
        self._check_names(path)
        result = tag_video(path, self.bundle, self._runner, options=self.run_options,
                           params=self.params, out_dir=self.out_dir, plot=self.plot,
                           progress=progress)
        t = result.times
        # Where the file's pictures end, whatever the sampling decoded of them.
        warnings = decode_warnings(t.decode_errors, t.extra.get("decoded_end"),
                                   result.predictions.duration)
        self._claim(path, list(result.outputs))
        warnings += self._drop_stale_plot(path)
        return FileWork(list(result.outputs), float(result.predictions.duration), warnings,
                        result)
