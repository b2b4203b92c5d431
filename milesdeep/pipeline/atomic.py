"""Write outputs so that an interrupted run never leaves a partial file at the final path.

Everything is written to a hidden temporary name in the destination directory and renamed
into place only when complete (rename within one directory is atomic on POSIX).
"""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

from milesdeep.errors import MilesDeepError

# mkstemp creates files readable by the owner only; outputs get the usual umask-based mode.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


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
def _signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM wait until the block ends (where the OS allows it)."""
    held = {signal.SIGINT, signal.SIGTERM}
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


@contextlib.contextmanager
def atomic_path(final: Path, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside `final`; on success rename it to `final`.

    On any exception (including KeyboardInterrupt) the temporary file is removed and nothing
    appears at `final`.
    """
    final = Path(final)
    if final.exists() and not overwrite:
        raise MilesDeepError("output exists; pass --overwrite to replace it", final)
    check_writable_dir(final.parent)
    tmp_path: Path | None = None
    try:
        # A Ctrl-C between creating the file and knowing its name would leave it behind: the
        # signal waits until the name is held (and is then raised here, inside the try).
        with _signals_held():
            fd, tmp = tempfile.mkstemp(prefix=f".{final.stem[:40]}.",
                                       suffix=f".part{final.suffix}", dir=final.parent)
            tmp_path = Path(tmp)
            os.close(fd)
        os.chmod(tmp_path, 0o666 & ~_UMASK)
        yield tmp_path
        os.replace(tmp_path, final)
    except OSError as e:
        if tmp_path is not None:
            tmp_path.unlink(missing_ok=True)
        raise MilesDeepError(f"cannot write the output ({e.strerror or e})", final) from None
    except BaseException:
        if tmp_path is not None:
            tmp_path.unlink(missing_ok=True)
        raise


def write_text_atomic(final: Path, text: str, overwrite: bool = True) -> Path:
    with atomic_path(final, overwrite) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(final)
