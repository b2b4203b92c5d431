"""Write outputs so that an interrupted run never leaves a partial file at the final path.

Everything is written to a hidden temporary name in the destination directory and renamed
into place only when complete (rename within one directory is atomic on POSIX).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import secrets
import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from milesdeep.errors import MilesDeepError


def check_writable_dir(directory: Path) -> None:
    if not directory.is_dir():
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise MilesDeepError(f"cannot create the output directory ({e.strerror})",
                                 directory) from None
    if not os.access(directory, os.W_OK | os.X_OK):
        raise MilesDeepError("the output directory is not writable; choose another with -o",
                             directory)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM stops the work as Ctrl-C does (temporaries removed, a summary printed): by
    default it ends the process at once and left temporaries (`.part` files) behind."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


@contextlib.contextmanager
def removed_if_left_empty(directory: Path | None, ours: Callable[[str], bool] = lambda _: False
                          ) -> Iterator[None]:
    """A folder this block creates (-o) is removed again if, at the end, it holds nothing but
    files `ours` names (a run's state records): a run that wrote nothing leaves nothing."""
    made = directory is not None and not directory.exists()
    # The folders above it that the block may make too (-o new/sub/out): they go as well.
    above = [d for d in directory.parents if not d.exists()] if made and directory else []
    try:
        yield
    finally:
        if made and directory is not None:
            with contextlib.suppress(OSError):
                left = list(directory.iterdir())
                if all(p.is_file() and ours(p.name) for p in left):
                    for p in left:
                        p.unlink()
                    directory.rmdir()
                    for d in above:  # nearest first; one that holds anything stays
                        d.rmdir()


def _name_max(directory: Path) -> int:
    """The longest file name (bytes) the file system of `directory`, or of the nearest folder
    above it that exists, takes."""
    for d in (directory, *directory.parents):
        with contextlib.suppress(OSError, ValueError):
            if d.is_dir():
                return int(os.pathconf(d, "PC_NAME_MAX"))
    return 255


def too_long_name(outputs: Iterable[Path], base: Path) -> str | None:
    """Why some output cannot be written under `base` (its output folder) because a name in
    it is too long, or None: checked before any work, not found when the file is written."""
    limit = _name_max(base)
    for output in outputs:
        try:
            parts = output.relative_to(base).parts
        except ValueError:
            parts = (output.name,)
        for part in parts:
            n = len(os.fsencode(part))
            if n > limit:
                return (f"the output name {part[:24]}…{part[-24:]} would be {n} bytes, more "
                        f"than the file system takes ({limit}); rename the video shorter")
    return None


def _create(path: Path) -> None:
    """Create `path`, empty, failing if it exists; mode from the umask, as outputs get."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))


@contextlib.contextmanager
def atomic_path(final: Path, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside `final`; on success rename it to `final`.

    On any exception (including KeyboardInterrupt) the temporary file is removed and nothing
    appears at `final`.
    """
    final = Path(final)
    try:
        exists = final.exists()
    except OSError as e:  # a name too long for the file system, say
        raise MilesDeepError(f"cannot write the output ({e.strerror or e})", final) from None
    if exists and not overwrite:
        raise MilesDeepError("output exists; pass --overwrite to replace it", final)
    check_writable_dir(final.parent)
    tmp_path: Path | None = None
    try:
        while True:
            # The name is held before the file exists, so an interrupt at any moment after
            # it is created still finds it to remove. (A Ctrl-C becomes KeyboardInterrupt
            # between any two bytecodes of the main thread, whichever thread the signal
            # reached: masking it there did not close the gap.)
            tmp_path = final.parent / (f".{final.stem[:40]}.{secrets.token_hex(4)}"
                                       f".part{final.suffix}")
            try:
                _create(tmp_path)
                break
            except FileExistsError:  # another run's temporary file: not ours to remove
                tmp_path = None
        yield tmp_path
        group = _GROUP.get()
        if group is None:
            os.replace(tmp_path, final)
        else:  # renamed with the rest of its group (`atomic_group`)
            group.append((tmp_path, final))
    except OSError as e:
        if tmp_path is not None:
            tmp_path.unlink(missing_ok=True)
        raise MilesDeepError(f"cannot write the output ({e.strerror or e})", final) from None
    except BaseException:
        if tmp_path is not None:
            tmp_path.unlink(missing_ok=True)
        raise


_GROUP: contextvars.ContextVar[list[tuple[Path, Path]] | None] = contextvars.ContextVar(
    "atomic_group", default=None)


@contextlib.contextmanager
def atomic_group() -> Iterator[None]:
    """Every `atomic_path` completed inside this block is renamed into place only when the
    block ends well, all together; if it fails (an interrupt, a full disk on the last of a
    video's pieces or on its plot) none is: one video's outputs appear together or not at all.
    """
    group: list[tuple[Path, Path]] = []
    token = _GROUP.set(group)
    try:
        yield
    except BaseException:
        for tmp, _ in group:
            tmp.unlink(missing_ok=True)
        raise
    finally:
        _GROUP.reset(token)
    for n, (tmp, final) in enumerate(group):
        try:
            os.replace(tmp, final)
        except OSError as e:
            for rest, _ in group[n:]:
                rest.unlink(missing_ok=True)
            raise MilesDeepError(f"cannot write the output ({e.strerror or e})", final) from None


def write_text_atomic(final: Path, text: str, overwrite: bool = True) -> Path:
    with atomic_path(final, overwrite) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(final)
