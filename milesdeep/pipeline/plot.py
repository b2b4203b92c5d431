"""A timeline PNG of one video: each class's probability over time, and the planned cuts.

Top panel: the class probabilities stacked (each sample's column shows how the model split
it between classes, since they sum to 1), with the winner readable as the tallest band.
Bottom panel: one lane per label that has cuts, a bar per cut in that class's colour. Times
read mm:ss, or h:mm:ss past an hour. matplotlib is imported inside the function: it is slow
to import and only this output needs it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from milesdeep.pipeline.atomic import atomic_path
from milesdeep.pipeline.planner import Cut
from milesdeep.pipeline.predictions import Predictions


def clock(seconds: float) -> str:
    """mm:ss, or h:mm:ss from one hour on."""
    s = max(0, int(round(seconds)))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


# More columns than the picture has pixels only slow matplotlib down (a 90-minute video at
# 60 samples/s is 324,000 samples); longer runs are averaged into this many bins.
MAX_COLUMNS = 2400


def binned(times: np.ndarray, probs: np.ndarray, most: int) -> tuple[np.ndarray, np.ndarray]:
    """At most `most` consecutive runs of samples, each averaged and placed at its first time.

    Averaging keeps each column's probabilities summing to 1."""
    n = len(times)
    if n <= most:
        return times, probs
    starts = np.linspace(0, n, most, endpoint=False).astype(np.int64)
    counts = np.diff(np.append(starts, n))
    sums = np.add.reduceat(probs.astype(np.float64), starts, axis=0)
    return times[starts], sums / counts[:, None]


def tick_step(span: float, most: int = 12) -> float:
    """A clock-friendly tick spacing in seconds giving at most `most` ticks over `span`."""
    for step in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200):
        if span / step <= most:
            return float(step)
    return 3600.0 * np.ceil(span / 3600.0 / most)


def plot_timeline(path: str | Path, preds: Predictions, cuts: Sequence[Cut], title: str = "",
                  overwrite: bool = True) -> Path:
    """Write the timeline PNG atomically. Cut start/end are sample indices of `preds`."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch
    from matplotlib.ticker import FuncFormatter, MultipleLocator

    labels = list(preds.labels)
    colours = [matplotlib.colormaps["tab10" if len(labels) <= 10 else "tab20"](i % 20)
               for i in range(len(labels))]
    colour_of = dict(zip(labels, colours, strict=True))
    rate = preds.rate if preds.rate > 0 else 1.0
    end_time = max(preds.duration, float(preds.times[-1]) + 1 / rate if len(preds.times) else 0)
    end_time = end_time if end_time > 0 else 1.0
    lanes = [name for name in labels if any(c.label == name for c in cuts)]
    lanes += sorted({c.label for c in cuts} - set(labels))  # e.g. a union "a+b" plan

    fig = Figure(figsize=(12, 4.5 + 0.3 * len(lanes)), dpi=100, layout="constrained")
    probs_ax, cuts_ax = fig.subplots(
        2, 1, sharex=True, height_ratios=[4, max(1, 0.5 * len(lanes))])
    if len(preds.times):
        times, probs = binned(preds.times, preds.probs, MAX_COLUMNS)
        # Repeat the last sample to the end so that it is drawn for its whole slot.
        times = np.append(times, end_time)
        probs = np.vstack([probs, probs[-1:]]).T
        probs_ax.stackplot(times, probs, colors=colours, step="post", linewidth=0)
    spans = {name: [(c.start / rate, (c.end + 1 - c.start) / rate) for c in cuts
                    if c.label == name] for name in lanes}
    for lane, name in enumerate(lanes):
        colour = colour_of.get(name, "0.3")
        cuts_ax.broken_barh(spans[name], (lane - 0.4, 0.8), color=colour)

    probs_ax.set_ylim(0, max(1.0, float(preds.probs.sum(axis=1).max(initial=1.0))))
    probs_ax.set_ylabel("probability")
    probs_ax.grid(alpha=0.3)
    probs_ax.set_title(title or "class probabilities and planned cuts")
    handles = [Patch(color=c, label=n) for n, c in zip(labels, colours, strict=True)]
    probs_ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0),
                    title="class", frameon=False)

    cuts_ax.set_yticks(range(len(lanes)), lanes)
    cuts_ax.set_ylim(-0.6, max(len(lanes), 1) - 0.4)
    cuts_ax.invert_yaxis()
    cuts_ax.set_xlim(0, end_time)
    cuts_ax.grid(axis="x", alpha=0.3)
    if not lanes:
        cuts_ax.set_yticks([])
        cuts_ax.text(0.5, 0.5, "no cuts", ha="center", va="center", transform=cuts_ax.transAxes)
    cuts_ax.set_ylabel("cuts")
    cuts_ax.set_xlabel("time")
    cuts_ax.xaxis.set_major_locator(MultipleLocator(tick_step(end_time)))
    cuts_ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: clock(x)))

    with atomic_path(Path(path), overwrite) as tmp:
        fig.savefig(tmp, format="png")
    return Path(path)
