"""`--jobs N`: files processed by N worker processes, for when CPU decoding is the bottleneck.

Workers are *spawned* (a fresh interpreter each: no forked copy of ONNX Runtime's or
FFmpeg's threads), each loads the model once, and each gets 1/N of the cores for its own
threads. Workers only process; the parent records finished files in the state database
(one writer) and prints. A worker that dies (a crash inside a decoder, say) breaks the pool:
the files it lost are retried each in a pool of its own, and a file that kills the worker
processing it alone is reported as failed. Ctrl-C (or SIGTERM) in the parent stops the
workers with SIGTERM, which they turn into KeyboardInterrupt inside the file being processed,
so their temporaries are removed.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import TYPE_CHECKING, Any

from milesdeep.batch.job import BatchJob, FileWork
from milesdeep.errors import MilesDeepError
from milesdeep.pipeline.atomic import atomic_group

if TYPE_CHECKING:
    from milesdeep.batch.runner import BatchRunner, FileOutcome

_JOB: BatchJob | None = None
_BUSY = False
_STOPPING = False
STOP_WAIT = 30.0  # seconds the parent waits for stopped workers before it kills them


def _on_sigterm(signum: int, frame: object) -> None:
    global _STOPPING
    _STOPPING = True
    if _BUSY:
        raise KeyboardInterrupt  # unwinds the file: atomic writes remove their temporaries
    # An idle worker may be waiting for work holding the work queue's lock: exiting here left
    # that lock held and the other workers, and the parent waiting for them, stuck for ever.
    # It ends on the stop sentinel the parent sends instead.


def _init_worker(job: BatchJob) -> None:
    global _JOB
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides; it sends SIGTERM
    signal.signal(signal.SIGTERM, _on_sigterm)
    _JOB = job
    job.load()


def _work(path: Path) -> tuple[str, Any, Any, float]:
    """In a worker: ("done", (stat, FileWork)) or ("failed", message); never raises for a
    bad input or a bug, so nothing but plain data crosses the process boundary."""
    global _BUSY
    import time

    from milesdeep.batch.runner import internal_error

    assert _JOB is not None
    t0 = time.perf_counter()
    if _STOPPING:  # a file queued before the stop: not started
        return "failed", f"{path}: interrupted", None, 0.0
    _BUSY = True
    try:
        st = os.stat(path) if os.path.exists(path) else None
        pre = _JOB.prefetch(path)
        with atomic_group():  # the file's outputs appear together or not at all
            work: FileWork = _JOB.process(path, pre, None)
        return "done", st, work, time.perf_counter() - t0
    except MilesDeepError as e:
        return "failed", str(e), None, time.perf_counter() - t0
    except KeyboardInterrupt:
        return "failed", f"{path}: interrupted", None, time.perf_counter() - t0
    except Exception as e:  # noqa: BLE001
        return "failed", internal_error(path, e), None, time.perf_counter() - t0
    finally:
        _BUSY = False


def _stop_workers(ex: ProcessPoolExecutor) -> None:
    """SIGTERM interrupts the file each worker is on; the queued ones are cancelled, and the
    stop sentinels end the workers. One that is still there after STOP_WAIT is killed."""
    import time

    procs = list((getattr(ex, "_processes", None) or {}).values())
    for proc in procs:
        with contextlib.suppress(Exception):
            proc.terminate()
    ex.shutdown(wait=False, cancel_futures=True)
    deadline = time.monotonic() + STOP_WAIT
    for proc in procs:
        with contextlib.suppress(Exception):
            proc.join(max(0.0, deadline - time.monotonic()))
    for proc in procs:
        with contextlib.suppress(Exception):
            if proc.is_alive():
                proc.kill()


def run_pool(runner: BatchRunner, pending: list[Path], outcomes: dict[Path, FileOutcome],
             n: int) -> None:
    from milesdeep.batch.runner import FileOutcome

    runner.job.configure_workers(runner.jobs)
    ctx = multiprocessing.get_context("spawn")

    def run_group(group: list[Path]) -> list[Path]:
        """Process `group` in one pool; return the files whose results a broken pool lost."""
        broken: list[Path] = []
        ex = ProcessPoolExecutor(max_workers=min(runner.jobs, len(group)), mp_context=ctx,
                                 initializer=_init_worker, initargs=(runner.job,))
        futures: dict[Future, Path] = {ex.submit(_work, p): p for p in group}
        try:
            not_done = set(futures)
            while not_done:
                done, not_done = wait(not_done, return_when=FIRST_COMPLETED)
                for fut in done:
                    path = futures[fut]
                    try:
                        status, a, b, wall = fut.result()
                    except BrokenProcessPool:
                        broken.append(path)
                        continue
                    if status == "done":
                        o = runner.finish(path, a, b, wall)
                    else:
                        o = FileOutcome(path, "failed", a, wall=wall)
                    outcomes[path] = o
                    runner._announce(o, len(outcomes), n)
        except BaseException:
            _stop_workers(ex)
            raise
        ex.shutdown(wait=True)
        return broken

    # A dying worker breaks the whole pool, and every file in flight or queued loses its
    # result, not only the one that killed it. So the files of a broken pool are retried each
    # in a pool of its own: a file fails only if it kills the worker processing it alone.
    for path in run_group(list(pending)):
        if run_group([path]):
            o = FileOutcome(path, "failed", f"{path}: the worker process died while "
                            "processing it (a crash in the decoder?)")
            outcomes[path] = o
            runner._announce(o, len(outcomes), n)
