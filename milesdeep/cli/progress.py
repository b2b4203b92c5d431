"""A rich progress bar in seconds of video, with speed as a multiple of real time."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text


class _SecondsColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        total = task.total or 0
        return Text(f"{task.completed:,.0f}/{total:,.0f} s", style="progress.download")


class _RealTimeColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        elapsed = task.elapsed or 0.0
        if elapsed <= 0 or not task.completed:
            return Text("   -  ×RT", style="progress.data.speed")
        return Text(f"{task.completed / elapsed:6.1f}×RT", style="progress.data.speed")


@contextlib.contextmanager
def video_progress(console: Console, name: str, total: float
                   ) -> Iterator[Callable[[float, float], None]]:
    """Yields a callback(done_seconds, total_seconds) that moves the bar."""
    progress = Progress(
        TextColumn("[bold]{task.description}", justify="left"),
        BarColumn(),
        _SecondsColumn(),
        _RealTimeColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
        disable=not console.is_terminal,
    )
    label = name if len(name) <= 40 else "…" + name[-39:]
    with progress:
        task = progress.add_task(label, total=max(total, 1e-3))
        start = time.perf_counter()

        def update(done: float, all_seconds: float) -> None:
            if all_seconds and all_seconds != progress.tasks[0].total:
                progress.update(task, total=all_seconds)
            progress.update(task, completed=done)

        yield update
        if console.is_terminal:
            progress.update(task, completed=progress.tasks[0].total)
        elif total:
            elapsed = time.perf_counter() - start
            console.print(f"{name}: {total:,.0f} s of video in {elapsed:.1f} s "
                          f"({total / max(elapsed, 1e-9):.1f}× real time)")
