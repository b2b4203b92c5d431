"""What a command supplies to the batch runner: how to process one file, where its outputs
go, and what identifies the model and options it ran with."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Progress = Callable[[float, float], None]  # (seconds of video done, seconds in all)

# How much of the next file to ask the kernel to read ahead while the current one runs.
READAHEAD_BYTES = 64 << 20


@dataclass
class FileWork:
    """What processing one file gave."""

    outputs: list[Path]
    seconds: float  # seconds of video processed
    warnings: list[str] = field(default_factory=list)
    detail: Any = None  # the command's own result (picklable), for its per-file report
    record: bool = True  # False: leave no state row (a rerun processes the file again)


class BatchJob:
    """A command's per-file work, shared by one process (or copied to each worker process:
    subclasses must pickle; `load` runs once per process, so keep models out of the pickle).
    """

    command: str = "job"

    def load(self) -> None:
        """Load what every file needs (the model) once for the process."""

    def configure_workers(self, jobs: int) -> None:
        """Called before `jobs` worker processes start: share the cores among them."""

    def model_key(self) -> str:
        """Identifies the model: a change of model redoes every file."""
        raise NotImplementedError

    def options(self) -> dict[str, Any]:
        """The options that change outputs (JSON-able): a change redoes every file."""
        raise NotImplementedError

    def output_dir(self, path: Path) -> Path:
        """Where `path`'s outputs (and so its state database) go."""
        raise NotImplementedError

    def output_paths(self, path: Path) -> list[Path]:
        """Every final output `path` may get, for clash checks and stale-file cleanup."""
        raise NotImplementedError

    def temporary_patterns(self, path: Path) -> list[tuple[Path, str]]:
        """(folder, regular expression) for temporaries of outputs whose names are not known
        before the file is processed (and so are not in `output_paths`)."""
        return []

    def may_write(self, path: Path, other: str) -> bool:
        """Whether processing `path` may write the file at real path `other` though it is not
        in `output_paths` (outputs whose number is known only once the file is processed)."""
        return False

    def file_key(self, path: Path) -> str:
        """What else, besides the input itself, the model and the options, a file's outputs
        depend on (a digest; "" for nothing): a change of it redoes the file."""
        return ""

    def close(self) -> None:
        """Release what `load` took (called once at the end of the run)."""

    def prefetch(self, path: Path) -> Any:
        """Runs on a helper thread while the previous file is processed: by default probe
        the video (which opens it and reads its headers: a bad file fails here) and ask the
        kernel to read its first READAHEAD_BYTES into the page cache."""
        from milesdeep.pipeline.decode import probe

        info = probe(path)
        readahead(path)
        return info

    def process(self, path: Path, prefetched: Any, progress: Progress | None) -> FileWork:
        """Process one file; raise MilesDeepError for a bad input. Outputs must be written
        atomically (`milesdeep.pipeline.atomic`)."""
        raise NotImplementedError

    def duration(self, prefetched: Any) -> float:
        """Seconds of video, for the progress bar."""
        return float(getattr(prefetched, "duration", 0.0) or 0.0)


def readahead(path: Path, nbytes: int = READAHEAD_BYTES) -> None:
    """Ask the kernel to start reading `path` into the page cache (no effect where
    unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.posix_fadvise(fd, 0, nbytes, os.POSIX_FADV_WILLNEED)
    except (OSError, AttributeError):
        pass
    finally:
        os.close(fd)


class ModelJob(BatchJob):
    """A job that classifies with a model: `open_runner` loads one runner per process (the CPU
    twin or the GPU one) and `close` releases it. The dataclass subclasses hold the fields
    used here: bundle, backend, model_arg, say, threads, run_options, _runner, _stack."""

    def open_runner(self) -> None:
        if self._runner is None:  # type: ignore[has-type]
            from milesdeep.jobs import load_runner

            self._stack = contextlib.ExitStack()
            self._runner = load_runner(self._stack, self.bundle, self.backend,  # type: ignore[attr-defined]
                                       self.model_arg, self.say, self.threads)  # type: ignore[attr-defined]

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        # Each process loads its own model and opens its own state databases; worker
        # processes do not print.
        state.update(_runner=None, _stack=None, _book=None, say=None)
        return state

    def close(self) -> None:
        if self._stack is not None:  # type: ignore[has-type]
            self._stack.close()
        self._runner = self._stack = None
        if getattr(self, "_book", None) is not None:
            self._book.close()  # type: ignore[has-type]
        self._book = None

    def state_db(self, path: Path):  # noqa: ANN201  (StateDB)
        """The state database of `path`'s output folder, opened once per process."""
        from milesdeep.batch.state import StateBook

        if getattr(self, "_book", None) is None:
            self._book = StateBook()
        return self._book.db(self.output_dir(path))

    @contextlib.contextmanager
    def naming_video(self, path: Path) -> Iterator[None]:
        """A state database error inside names the video it failed for (one line per video
        failed so), not only the database."""
        from milesdeep.batch.state import STATE_NAME
        from milesdeep.errors import MilesDeepError

        try:
            yield
        except MilesDeepError as e:
            if e.path is not None and e.path.name.startswith(STATE_NAME):
                raise MilesDeepError(str(e), path) from None
            raise

    def configure_workers(self, jobs: int) -> None:
        """Share the cores: each worker gets its part for ONNX Runtime and for decoding."""
        from dataclasses import asdict

        from milesdeep.pipeline.infer import cpu_threads
        from milesdeep.pipeline.run import RunOptions

        share = max(1, cpu_threads() // jobs)
        self.threads = share
        self.run_options = RunOptions(**{**asdict(self.run_options),  # type: ignore[has-type]
                                         "decode_threads": share})
