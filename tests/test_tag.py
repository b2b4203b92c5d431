"""`tag` end to end on generated videos: probabilities, .tag and predictions files, errors."""

from __future__ import annotations

import hashlib
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from milesdeep.cli.app import run_app
from milesdeep.models.bundle import load_bundle
from milesdeep.pipeline.infer import OrtClassifier
from milesdeep.pipeline.predictions import read_predictions_csv
from milesdeep.pipeline.run import RunOptions, classify_video
from milesdeep.pipeline.tagfile import read_tag
from tests.testdata import colour_bundle, colour_video, encode_frames

SECONDS = ["red"] * 7 + ["blue"] * 7 + ["green", "red"] + ["green"] * 6 + ["gray"] * 5


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return colour_bundle(tmp_path_factory.mktemp("model") / "colours")


@pytest.fixture()
def video(tmp_path: Path) -> Path:
    return colour_video(tmp_path / "clip one.mp4", SECONDS)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("layout,channels", [("NCHW", "RGB"), ("NHWC", "BGR")])
def test_every_second_gets_its_colour(tmp_path: Path, video: Path, layout: str,
                                      channels: str) -> None:
    bundle = load_bundle(colour_bundle(tmp_path / "m", layout, channels))
    preds = classify_video(video, bundle, OrtClassifier(bundle), RunOptions(batch=4))
    assert preds.labels == ("red", "green", "blue", "gray")
    assert len(preds.times) == len(SECONDS)
    winners = [preds.labels[i] for i in preds.probs.argmax(axis=1)]
    assert winners == SECONDS
    assert np.allclose(preds.probs.sum(axis=1), 1.0, atol=1e-5)


def test_tag_writes_tag_and_predictions(video: Path, bundle_dir: Path) -> None:
    before = sha(video)
    rc = run_app(["tag", str(video), "--model", str(bundle_dir), "-b", "3"])
    assert rc == 0
    tag = read_tag(video.with_name("clip one.tag"))
    assert tag.movie_file_name == "clip one.mp4"
    assert list(tag.labels) == ["red", "green", "blue", "gray"]
    assert tag.total_seconds == len(SECONDS)
    spans = [(c.label, c.start, c.end) for c in tag.cuts]
    # Green 14-21 bridges one red second (gap <= 2). Gray's 5 s make no cut: Miles Deep
    # keeps a cut only if start < end - min_cut, i.e. at least min_cut + 2 samples long.
    assert spans == [("red", 0, 6), ("blue", 7, 13), ("green", 14, 21)]
    assert [c.start for c in tag.cuts] == sorted(c.start for c in tag.cuts)
    preds = read_predictions_csv(video.with_name("clip one.predictions.csv"))
    assert preds.times.tolist() == list(range(len(SECONDS)))
    assert sha(video) == before


def test_replan_from_predictions_without_the_network(video: Path, bundle_dir: Path,
                                                     tmp_path: Path) -> None:
    assert run_app(["tag", str(video), "--model", str(bundle_dir)]) == 0
    csv = video.with_name("clip one.predictions.csv")
    out = tmp_path / "replanned"
    assert run_app(["tag", "--from-predictions", str(csv), "-u", "1", "-o", str(out)]) == 0
    tag = read_tag(out / "clip one.tag")
    # With a 1 s minimum cut, gray's five seconds now make a cut.
    assert any(c.label == "gray" and (c.start, c.end) == (22, 26) for c in tag.cuts)
    folder = tmp_path / "d.csv"  # a folder: it said "no such predictions file"
    folder.mkdir()
    assert run_app(["tag", "--from-predictions", str(folder)]) == 1
    # -o names a folder: a file name there is refused, for re-planning and for videos.
    for args in (["--from-predictions", str(csv)], [str(video), "--model", str(bundle_dir)]):
        assert run_app(["tag", *args, "-o", str(tmp_path / "clip.tag")]) == 1
        assert not (tmp_path / "clip.tag").exists()
    # A bad predictions file leaves no new -o folder behind (it stayed, empty).
    bad = tmp_path / "bad.predictions.csv"
    bad.write_text("time,a,b\n0,0.5,nan\n")
    assert run_app(["tag", "--from-predictions", str(bad), "-o", str(tmp_path / "new")]) == 1
    assert not (tmp_path / "new").exists()
    # Nor the folders above a new nested one.
    assert run_app(["tag", str(tmp_path / "missing.mp4"), "--model", str(bundle_dir),
                    "-o", str(tmp_path / "n1" / "n2")]) == 1
    assert not (tmp_path / "n1").exists()


@pytest.mark.parametrize(("rate", "rows", "cut"), [
    (0.5, 10, (0, 7)),  # samples 0-3 cover [0, 8): the seconds 0..7 (the end said 6)
    (3.0, 40, (1, 6)),  # samples 3-18 cover [1, 6.33): re-planned from 6-decimal times,
                        # the rate came back 3.00000016 and the start as second 0
])
def test_tag_rows_cover_the_seconds_of_their_samples(tmp_path: Path, rate: float, rows: int,
                                                     cut: tuple[int, int]) -> None:
    from milesdeep.pipeline.predictions import Predictions, write_predictions_csv

    probs = np.tile(np.float32([0.9, 0.1]), (rows, 1))
    first, last = (0, 3) if rate < 1 else (3, 18)
    probs[first:last + 1] = [0.1, 0.9]
    video = tmp_path / "v.mp4"
    video.write_bytes(b"")  # the movie the .tag's first line names, beside its predictions
    csv = write_predictions_csv(tmp_path / "v.predictions.csv", Predictions(
        ("a", "b"), np.arange(rows) / rate, probs, rate, rows / rate))
    assert run_app(["tag", "--from-predictions", str(csv), "-g", "0"]) == 0
    tag = read_tag(tmp_path / "v.tag")
    assert tag.movie_file_name == "v.mp4"
    assert [(c.start, c.end) for c in tag.cuts if c.label == "b"] == [cut]
    assert tag.seconds_per_label[1] == round((last - first + 1) / rate)


def test_tag_rows_below_one_sample_a_second_stop_at_the_videos_end(
        tmp_path: Path, bundle_dir: Path) -> None:
    """A 4 s video at 0.3 samples a second has two samples, which span 6.7 s: the .tag gave
    7 seconds in all and a cut to second 6."""
    video = colour_video(tmp_path / "v.mp4", ["red"] * 4)
    assert run_app(["tag", str(video), "--model", str(bundle_dir), "--rate", "0.3",
                    "-u", "0", "--backend", "cpu"]) == 0
    tag = read_tag(tmp_path / "v.tag")
    assert tag.total_seconds == 4
    assert [(c.label, c.start, c.end) for c in tag.cuts] == [("red", 0, 3)]
    assert tag.seconds_per_label[tag.labels.index("red")] == 4
    # Re-planned from its CSV (beside the movie, whose length the CSV does not hold): the same.
    assert run_app(["tag", "--from-predictions", str(tmp_path / "v.predictions.csv"),
                    "-u", "0", "-o", str(tmp_path / "again")]) == 0
    assert (tmp_path / "again" / "v.tag").read_text() == (tmp_path / "v.tag").read_text()


def test_keyframe_sampling_holds_labels(tmp_path: Path, bundle_dir: Path) -> None:
    video = colour_video(tmp_path / "k.mp4", ["red"] * 4 + ["blue"] * 4, gop=20)
    bundle = load_bundle(bundle_dir)
    preds = classify_video(video, bundle, OrtClassifier(bundle),
                           RunOptions(sampling="keyframes"))
    # Keyframes at 0, 2, 4, 6 s: each held for two seconds.
    winners = [preds.labels[i] for i in preds.probs.argmax(axis=1)]
    assert winners == ["red"] * 4 + ["blue"] * 4


def _outputs(d: Path) -> set[str]:
    return {p.name for p in d.iterdir()}


@pytest.mark.parametrize("case", ["missing", "garbage", "unknown-model", "bad-labels"])
def test_bad_input_one_line_nothing_written(tmp_path: Path, bundle_dir: Path, case: str,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    video = colour_video(tmp_path / "v.mp4", ["red"] * 2)
    args = ["tag", str(video), "--model", str(bundle_dir)]
    if case == "missing":
        args[1] = str(tmp_path / "nope.mp4")
    elif case == "garbage":
        (tmp_path / "g.mp4").write_bytes(b"\x00junk" * 100)
        args[1] = str(tmp_path / "g.mp4")
    elif case == "unknown-model":
        args[3] = "no-such-model"
    else:
        bad = tmp_path / "badmodel"
        colour_bundle(bad)
        (bad / "labels.txt").write_text("a\nb\n")
        args[3] = str(bad)
    before = _outputs(tmp_path)
    rc = run_app(args)
    err = capsys.readouterr().err
    assert rc == 1
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert _outputs(tmp_path) == before


def test_memory_stays_flat_with_video_length(tmp_path: Path, bundle_dir: Path) -> None:
    """Samples are streamed: peak traced memory for 40 s of video is not 10x that of 4 s."""
    frame = np.random.default_rng(1).integers(0, 255, (240, 320, 3), dtype=np.uint8)
    bundle = load_bundle(bundle_dir)
    classifier = OrtClassifier(bundle)

    def peak(seconds: int) -> int:
        path = encode_frames(tmp_path / f"m{seconds}.mp4", [frame] * (seconds * 5),
                             [k * 200 for k in range(seconds * 5)], gop=50)
        tracemalloc.start()
        preds = classify_video(path, bundle, classifier, RunOptions(rate=5, batch=8))
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert len(preds.times) == seconds * 5
        return top

    short, long = peak(4), peak(40)
    # 200 held samples would be 200 x 115 kB = 23 MB of pixels; streaming keeps a few dozen.
    assert long < short * 1.5 + 2_000_000, (short, long)


def test_backend_choice_is_said_and_gpu_without_one_is_one_line(
        video: Path, bundle_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from milesdeep.pipeline.backend import probe_gpu

    assert run_app(["tag", str(video), "--model", str(bundle_dir), "--backend", "cpu"]) == 0
    assert "backend: cpu (requested with --backend cpu)" in capsys.readouterr().err
    if probe_gpu().usable:
        pytest.skip("a GPU is present")
    rc = run_app(["tag", str(video), "--model", str(bundle_dir), "--backend", "gpu",
                  "--force"])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err
    assert err.strip().splitlines() == [err.strip()] and "--backend gpu: missing" in err


def test_adaptive_margin_option_reaches_the_sampler(bundle_dir: Path, tmp_path: Path) -> None:
    """Blue seconds hidden inside 4 s GOPs whose keyframes are all red: the default margin
    trusts the agreeing, confident keyframes and misses them; the widest margin refines every
    stretch, so adaptive then gives exact's own numbers."""
    video = colour_video(tmp_path / "hidden.mp4", ["red", "blue", "blue", "red"] * 3, gop=40)
    outs = {}
    for name, extra in (("exact", ["--sampling", "exact"]),
                        ("default", ["--sampling", "adaptive"]),
                        ("wide", ["--sampling", "adaptive", "--adaptive-margin", "0.5"])):
        out = tmp_path / name
        assert run_app(["tag", str(video), "--model", str(bundle_dir), "-o", str(out),
                        *extra]) == 0
        outs[name] = read_predictions_csv(out / "hidden.predictions.csv").probs
    assert not np.array_equal(outs["default"], outs["exact"])
    assert np.array_equal(outs["wide"], outs["exact"])


def test_an_output_name_too_long_fails_that_file_before_any_work(
        tmp_path: Path, bundle_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A 247-byte video name fits the file system; `<stem>.predictions.csv` does not. That
    file fails with one line before it is classified, the others are done."""
    short = colour_video(tmp_path / "short.mp4", ["red"] * 2)
    long = tmp_path / ("ü" * 120 + "xyz.mp4")  # 247 bytes in UTF-8
    long.write_bytes(short.read_bytes())
    out = tmp_path / "out"
    assert run_app(["tag", str(long), str(short), "--model", str(bundle_dir),
                    "-o", str(out)]) == 1
    err = capsys.readouterr().err
    line = next(s for s in err.splitlines() if s.startswith("error:"))
    assert line.startswith(f"error: {long}: the output name ")
    assert "would be 259 bytes" in line and "rename the video shorter" in line
    assert "Traceback" not in err and "internal error" not in err
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "short.predictions.csv", "short.tag"]
