"""The batch run loop: many files, one model load, per-file isolation, resume, summary.

- Files are done one after another in this process (the model loaded once), with the next
  file's probe and disk read-ahead running on a helper thread while the current one is
  classified, or by `jobs` worker processes (spawned, each loading the model once) when
  decoding on the CPU is the bottleneck.
- One file's failure is one line (file and reason) and the run goes on; a bug in one file is
  reported the same way (with its traceback under MILESDEEP_DEBUG=1).
- A file counts as done once all its outputs are renamed into place and its row is in the
  state database (`milesdeep.batch.state`); a rerun skips it while it and the model and
  options are unchanged (`force` redoes it). Ctrl-C (or SIGTERM) stops between or inside
  files, leaving no partial output and no temporary file; a run killed with SIGKILL may leave
  temporary files, which the next run over the same files removes.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
import traceback
from collections.abc import Callable, Collection, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from milesdeep.batch.job import BatchJob, FileWork, Progress
from milesdeep.batch.state import FileKey, StateBook, options_hash
from milesdeep.errors import MilesDeepError
from milesdeep.pipeline.atomic import atomic_group, sigterm_as_interrupt, too_long_name

Status = Literal["done", "skipped", "failed"]


@dataclass
class FileOutcome:
    path: Path
    status: Status
    message: str = ""  # the reason, for a failure
    seconds: float = 0.0  # seconds of video processed
    wall: float = 0.0  # seconds it took
    outputs: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    detail: Any = None


@dataclass
class BatchSummary:
    outcomes: list[FileOutcome]
    wall: float = 0.0
    interrupted: bool = False
    not_started: int = 0

    def count(self, status: Status) -> int:
        return sum(o.status == status for o in self.outcomes)

    @property
    def seconds(self) -> float:
        return sum(o.seconds for o in self.outcomes if o.status == "done")

    @property
    def realtime(self) -> float:
        return self.seconds / self.wall if self.wall > 0 else 0.0

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return 130
        return 1 if self.count("failed") else 0


def one_line(text: str) -> str:
    """Messages stay on one line even when a file name holds a line break."""
    return text.replace("\r", "\\r").replace("\n", "\\n")


def _temp_pattern(final: Path) -> str:
    """The names `milesdeep.pipeline.atomic.atomic_path` gives temporaries for `final`
    (tempfile's 8 random characters between the prefix and suffix)."""
    return (r"\." + re.escape(final.stem[:40]) + r"\.[a-z0-9_]{8}\.part"
            + re.escape(final.suffix))


def remove_stale_temporaries(finals: Sequence[Path],
                             patterns: Sequence[tuple[Path, str]] = ()) -> list[Path]:
    """Delete temporaries left beside `finals` (or in a folder matching a (folder, regex)
    pattern) by a killed run; returns what was removed."""
    by_dir: dict[Path, list[str]] = {}
    for f in finals:
        by_dir.setdefault(f.parent, []).append(_temp_pattern(f))
    for d, rx in patterns:
        by_dir.setdefault(Path(d), []).append(rx)
    removed = []
    for d, patterns in by_dir.items():
        rx = re.compile("(?:" + "|".join(patterns) + ")$")
        try:
            names = os.listdir(d)
        except OSError:
            continue
        for name in names:
            if name.startswith(".") and rx.match(name):
                with contextlib.suppress(OSError):
                    os.unlink(d / name)
                    removed.append(d / name)
    return removed


def _stat(path: Path) -> os.stat_result | None:
    try:
        return os.stat(path)
    except (OSError, ValueError):
        return None


class BatchRunner:
    """Runs a `BatchJob` over many files. `console` receives progress and one line per
    failed file (None: silent); `report` is called with each finished file's outcome."""

    def __init__(self, job: BatchJob, *, force: bool = False, jobs: int = 1,
                 console: Console | None = None,
                 report: Callable[[FileOutcome], None] | None = None) -> None:
        if jobs < 1:
            raise MilesDeepError("--jobs must be at least 1")
        self.job = job
        self.force = force
        self.jobs = jobs
        self.console = console
        self.report = report
        self.book = StateBook()
        self.single = False
        self._model_key = ""
        self._opts_hash = ""

    # --- output ----------------------------------------------------------------------------

    def _print(self, text: str) -> None:
        if self.console is not None:
            self.console.print(text, soft_wrap=True, highlight=False)

    def _announce(self, o: FileOutcome, k: int, n: int) -> None:
        name = escape(one_line(str(o.path)))
        for w in o.warnings:
            self._print(f"[yellow]warning:[/] {name}: {escape(one_line(w))}")
        if o.status == "failed":
            self._print(f"[bold red]error:[/] {escape(one_line(o.message))}")
        elif o.status == "skipped" and self.single:
            self._print(f"skipped {name}: done before with this model and options "
                        "(--force redoes it)")
        elif o.status == "done" and not self.single:
            rt = f", {o.seconds / o.wall:.1f}× real time" if o.wall > 0 else ""
            self._print(f"[{k}/{n}] done {name}: {o.seconds:,.1f} s of video in "
                        f"{o.wall:.1f} s{rt}")
        if self.report is not None:
            self.report(o)

    @contextlib.contextmanager
    def _progress(self, path: Path, total: float) -> Iterator[Progress | None]:
        if self.console is None:
            yield None
            return
        if self.single:
            from milesdeep.cli.progress import video_progress

            with video_progress(self.console, path.name, total) as cb:
                yield cb
            return
        if not self.console.is_terminal:
            yield None
            return
        from rich.progress import BarColumn, TextColumn, TimeRemainingColumn
        from rich.progress import Progress as Bar

        bar = Bar(TextColumn("{task.description}"), BarColumn(), TimeRemainingColumn(),
                  console=self.console, transient=True)
        name = path.name if len(path.name) <= 40 else "…" + path.name[-39:]
        with bar:
            task = bar.add_task(escape(one_line(name)), total=max(total, 1e-3))

            def update(done: float, all_seconds: float) -> None:
                bar.update(task, completed=done, total=max(all_seconds, 1e-3))

            yield update

    def summary_table(self, s: BatchSummary) -> Table:
        table = Table(title=f"{self.job.command}: {len(s.outcomes)} files", title_justify="left",
                      show_edge=False)
        for col in ("done", "skipped", "failed", "seconds of video", "seconds", "× real time"):
            table.add_column(col, justify="right")
        table.add_row(str(s.count("done")), str(s.count("skipped")), str(s.count("failed")),
                      f"{s.seconds:,.0f}", f"{s.wall:,.1f}", f"{s.realtime:,.1f}")
        return table

    def print_summary(self, s: BatchSummary) -> None:
        if self.console is None:
            return
        self.console.print(self.summary_table(s))
        failed = [o for o in s.outcomes if o.status == "failed"]
        for o in failed[:20]:
            self._print(f"  failed: {escape(one_line(o.message))}")
        if len(failed) > 20:
            self._print(f"  … and {len(failed) - 20} more failed files (listed above)")
        if s.interrupted:
            self._print(f"[bold red]interrupted[/]: {s.not_started} files not finished; run the "
                        "same command again to resume")

    # --- planning --------------------------------------------------------------------------

    def _plan(self, paths: Sequence[Path], walked: Collection[Path] = ()
              ) -> tuple[list[Path], dict[Path, FileOutcome]]:
        """(files to process, outcomes already known: clashes and skips), each keyed by
        the input path. `walked`: the paths found by walking a folder, not named."""
        known: dict[Path, FileOutcome] = {}
        owner: dict[str, Path] = {}
        outputs_of_run: set[str] = set()
        for p in paths:
            outputs_of_run.update(os.path.abspath(f) for f in self.job.output_paths(p))
        found = {os.path.abspath(p) for p in walked}
        # By real path: a named input reached through a symlink is the file behind it.
        named = {os.path.realpath(p) for p in paths if os.path.abspath(p) not in found}
        pending: list[Path] = []
        for p in paths:
            here = os.path.abspath(p)
            outputs = self.job.output_paths(p)
            mine = {os.path.realpath(f) for f in outputs}
            if os.path.realpath(p) in mine:
                known[p] = FileOutcome(p, "failed", str(MilesDeepError(
                    "it has the name of its own output, which would replace it; rename it or "
                    "write the outputs elsewhere with -o", p)))
                continue
            if here in outputs_of_run and here in found:
                continue  # an output of this very run found by walking a folder
            inputs = sorted(x for x in named - {os.path.realpath(p)}
                            if x in mine or self.job.may_write(p, x))
            if inputs:  # a file named to be processed is never written over
                known[p] = FileOutcome(p, "failed", str(MilesDeepError(
                    f"its output would replace {one_line(inputs[0])}, an input of this run; "
                    "process them separately or write the outputs elsewhere with -o", p)))
                continue
            clash = None
            for f in outputs:
                other = owner.setdefault(os.path.abspath(f), p)
                if other != p:
                    clash = other
            if clash is not None:
                known[p] = FileOutcome(p, "failed", str(MilesDeepError(
                    f"its outputs would overwrite those of {one_line(str(clash))} (same name, "
                    "same output folder); process it separately or with another -o", p)))
                continue
            long = too_long_name(outputs, self.job.output_dir(p))
            if long is not None:
                known[p] = FileOutcome(p, "failed", str(MilesDeepError(long, p)))
                continue
            st = _stat(p)
            if not self.force and st is not None:
                try:
                    key = self._key(p, st)
                    done = self.book.db(self.job.output_dir(p)).lookup(key)
                except MilesDeepError as e:
                    known[p] = FileOutcome(p, "failed", f"{p}: {e}")
                    continue
                if done is not None:
                    known[p] = FileOutcome(p, "skipped", outputs=done)
                    continue
            pending.append(p)
        return pending, known

    def _key(self, path: Path, st: os.stat_result) -> FileKey:
        extra = self.job.file_key(path)
        opts = options_hash(self._opts_hash, {"file": extra}) if extra else self._opts_hash
        return FileKey.of(path, st, self._model_key, opts)

    # --- running ---------------------------------------------------------------------------

    def run(self, paths: Sequence[Path], walked: Collection[Path] = ()) -> BatchSummary:
        """`walked`: those of `paths` found by walking a folder (an output of this run found
        so is left alone; one named is an input, and what would replace it fails)."""
        paths = [Path(p) for p in paths]
        self.single = len(paths) == 1
        start = time.perf_counter()
        self._model_key = self.job.model_key()
        self._opts_hash = options_hash(self.job.command, self.job.options())
        pending, known = self._plan(paths, walked)
        remove_stale_temporaries([f for p in pending for f in self.job.output_paths(p)],
                                 [t for p in pending for t in self.job.temporary_patterns(p)])
        skipped = sum(o.status == "skipped" for o in known.values())
        if skipped and not self.single:
            self._print(f"{skipped} of {len(paths)} files were done before with this model and "
                        "options: skipping them (--force redoes them)")
        outcomes: dict[Path, FileOutcome] = {}
        n = len(paths)
        for p, o in known.items():
            if o.status == "failed":
                outcomes[p] = o
                self._announce(o, len(outcomes), n)
            else:
                outcomes[p] = o
                if self.single:
                    self._announce(o, len(outcomes), n)
        summary = BatchSummary([])
        try:
            with sigterm_as_interrupt():
                if pending:
                    self.job.load()
                if self.jobs > 1 and len(pending) > 1:
                    from milesdeep.batch.pool import run_pool

                    run_pool(self, pending, outcomes, n)
                else:
                    self._run_here(pending, outcomes, n)
        except KeyboardInterrupt:
            summary.interrupted = True
        finally:
            self.book.close()
            self.job.close()
        summary.outcomes = [outcomes[p] for p in paths if p in outcomes]
        summary.not_started = len(pending) - sum(p in outcomes for p in pending)
        summary.wall = time.perf_counter() - start
        if not self.single or summary.interrupted:
            self.print_summary(summary)
        return summary

    def _run_here(self, pending: list[Path], outcomes: dict[Path, FileOutcome],
                  n: int) -> None:
        pool = ThreadPoolExecutor(1, thread_name_prefix="milesdeep-prefetch")
        futures: dict[int, Future] = {}

        def submit(k: int) -> None:
            if k < len(pending):
                futures[k] = pool.submit(self._prefetch, pending[k])

        try:
            submit(0)
            for k, path in enumerate(pending):
                fut = futures.pop(k)
                submit(k + 1)  # the next file opens while this one is classified
                o = self._one(path, fut)
                outcomes[path] = o
                self._announce(o, len(outcomes), n)
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def _prefetch(self, path: Path) -> tuple[os.stat_result | None, Any]:
        st = _stat(path)  # before any read: a file that grows meanwhile is seen to change
        return st, self.job.prefetch(path)

    def _one(self, path: Path, fut: Future) -> FileOutcome:
        t0 = time.perf_counter()
        try:
            st0, pre = fut.result()
            with self._progress(path, self.job.duration(pre)) as progress, atomic_group():
                work = self.job.process(path, pre, progress)
            return self.finish(path, st0, work, time.perf_counter() - t0)
        except MilesDeepError as e:
            return FileOutcome(path, "failed", str(e), wall=time.perf_counter() - t0)
        except Exception as e:  # noqa: BLE001  a bug must not stop the other files
            return FileOutcome(path, "failed", internal_error(path, e),
                               wall=time.perf_counter() - t0)

    def finish(self, path: Path, st0: os.stat_result | None, work: FileWork,
               wall: float) -> FileOutcome:
        """Record a processed file in its state database and make its outcome."""
        warnings = list(work.warnings)
        st1 = _stat(path)
        if st0 is None or st1 is None:
            warnings.append("the file could not be examined after reading; it will be "
                            "processed again next time")
        elif (st1.st_size, st1.st_mtime_ns) != (st0.st_size, st0.st_mtime_ns):
            warnings.append(f"the file changed while it was read ({st0.st_size:,} -> "
                            f"{st1.st_size:,} bytes); the outputs cover what was there when "
                            "it was opened, and the next run will process it again")
        if st0 is not None and work.record:
            try:
                key = self._key(path, st0)
                self.book.db(self.job.output_dir(path)).record(key, self.job.command,
                                                               work.outputs, work.seconds)
            except MilesDeepError as e:
                return FileOutcome(path, "failed", f"{path}: outputs written, but {e}",
                                   work.seconds, wall, work.outputs, warnings, work.detail)
        return FileOutcome(path, "done", "", work.seconds, wall, work.outputs, warnings,
                           work.detail)


def internal_error(path: Path, e: BaseException) -> str:
    if os.environ.get("MILESDEEP_DEBUG"):
        traceback.print_exception(e)
    return (f"{path}: internal error ({type(e).__name__}: {e}); this is a bug — "
            "MILESDEEP_DEBUG=1 shows the traceback")


def run_batch(job: BatchJob, paths: Sequence[Path], *, force: bool = False, jobs: int = 1,
              console: Console | None = None,
              report: Callable[[FileOutcome], None] | None = None,
              walked: Collection[Path] = ()) -> BatchSummary:
    """Process `paths` with `job`; see `BatchRunner`."""
    return BatchRunner(job, force=force, jobs=jobs, console=console,
                       report=report).run(paths, walked)
