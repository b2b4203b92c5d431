"""The batch options every many-file command shares, and the few lines that run one.

A command adopts batch runs with:

    videos: Annotated[list[Path] | None, typer.Argument(...)] = None,
    from_list: FromListOpt = None, force: ForceOpt = False, jobs: JobsOpt = 1,
    ...
    run_cli_batch(MyJob(...), videos, from_list, force=force, jobs=jobs, out_dir=output_dir)
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Annotated

import typer

from milesdeep.batch.inputs import VIDEO_EXTENSIONS, expand_inputs, found_in_folders
from milesdeep.batch.job import BatchJob
from milesdeep.batch.runner import BatchSummary, FileOutcome, run_batch
from milesdeep.errors import MilesDeepError, UsageError

FromListOpt = Annotated[
    Path | None,
    typer.Option("--from-list", help="Also process the paths listed in this file, one a line "
                 "(or NUL-separated, as find -print0 writes)"),
]
ForceOpt = Annotated[
    bool,
    typer.Option("--force", help="Process files again even if a previous run finished them "
                 "with the same model and options"),
]
JobsOpt = Annotated[
    int,
    typer.Option("-j", "--jobs", min=1, max=256,
                 help="Worker processes, each with the model loaded (for CPU decoding); "
                 "1: one process, the next file opened while the current one runs"),
]


def gather_inputs(videos: Sequence[Path] | None, from_list: Path | None, usage: str
                  ) -> list[Path]:
    """Expand VIDEO arguments and --from-list; a run with nothing to do is a user error."""
    if not videos and from_list is None:
        raise UsageError(f"no video given: {usage}")
    paths = expand_inputs(videos or [], from_list)
    if not paths:
        where = ", ".join(str(v) for v in (videos or [])) or str(from_list)
        raise MilesDeepError(f"no video files found in {where}")
    return paths


def gather_walked(videos: Sequence[Path] | None, from_list: Path | None, usage: str,
                  command: str) -> tuple[list[Path], set[Path]]:
    """`gather_inputs`, less the files a folder walk found named like edit's outputs (a
    library holds an earlier edit's cuts: `*.cut.*`, said once), and the paths found by
    walking (for the runner: `run_cli_batch(walked=...)`)."""
    from milesdeep.batch.edit_job import drop_walked_outputs
    from milesdeep.cli.app import console

    paths = gather_inputs(videos, from_list, usage)
    walked = found_in_folders(paths, videos or [], from_list)
    paths, left_out = drop_walked_outputs(paths, walked)
    if left_out:
        console.print(f"left out {left_out} file(s) named like edit outputs (*.cut.*) found in "
                      "folders", markup=False, highlight=False, soft_wrap=True)
    if not paths:
        raise MilesDeepError(f"no video files to {command} (only earlier edit outputs found)")
    return paths, walked


# What an output file of ours, or a video, is named: `-o` given such a name that does not exist
# yet is taken for a file name typed where the folder goes (as `ffmpeg ... out.mp4`), not a
# folder to create with that name.
_FILE_SUFFIXES = VIDEO_EXTENSIONS | {".tag", ".csv", ".png", ".otio", ".edl", ".json"}


def check_output_dir(out_dir: Path) -> None:
    """`-o` names the output folder: refuse what looks like a file name before any work, then
    create the folder if needed and check it is writable."""
    from milesdeep.pipeline.atomic import check_writable_dir

    if not out_dir.exists() and out_dir.suffix.lower() in _FILE_SUFFIXES:
        raise MilesDeepError("-o is the output folder, not a file name (outputs are named "
                             "after each video); give a folder, e.g. -o "
                             f"{out_dir.parent / out_dir.stem}", out_dir)
    check_writable_dir(out_dir)


def run_cli_batch(job: BatchJob, paths: Sequence[Path], *, force: bool = False, jobs: int = 1,
                  out_dir: Path | None = None,
                  report: Callable[[FileOutcome], None] | None = None,
                  walked: Collection[Path] = ()) -> BatchSummary:
    """Run `job` over `paths` with the CLI's console, and exit with the run's status: 0 if
    nothing failed, 1 if a file failed, 130 if interrupted. `walked`: the paths found by
    walking a folder (`found_in_folders`)."""
    from milesdeep.batch.state import STATE_NAME
    from milesdeep.cli.app import console
    from milesdeep.pipeline.atomic import removed_if_left_empty

    with removed_if_left_empty(out_dir, lambda name: name.startswith(STATE_NAME)):
        if out_dir is not None:
            check_output_dir(out_dir)  # once, rather than once per file
        summary = run_batch(job, paths, force=force, jobs=jobs, console=console,
                            report=report, walked=walked)
    if summary.exit_code:
        raise typer.Exit(summary.exit_code)
    return summary
