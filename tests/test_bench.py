"""A small smoke test of the benchmark harness: clip maker, `miles-deep bench`, baseline."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from milesdeep.bench import (
    BASELINE,
    bench_isolated,
    hardware_info,
    label_agreement,
    run_baseline,
)
from milesdeep.cli import run_app
from milesdeep.models.bundle import load_bundle
from milesdeep.pipeline.infer import OrtClassifier
from milesdeep.pipeline.predictions import Predictions
from tests.testdata import colour_bundle, colour_video

ROOT = Path(__file__).resolve().parents[1]


def make_clips_module():
    spec = importlib.util.spec_from_file_location("make_clips", ROOT / "benchmarks" /
                                                  "make_clips.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["make_clips"] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return colour_bundle(tmp_path_factory.mktemp("bench") / "colours")


def test_clip_maker_makes_class_changing_clips_with_audio_and_repeats_them(tmp_path: Path
                                                                          ) -> None:
    import av

    mc = make_clips_module()
    spec = mc.ClipSpec("tiny", 160, 96, 5, 1.0, bitrate=300_000, segment_seconds=(1.0, 2.0))
    rec = mc.make_clip(tmp_path / "tiny.mp4", spec)
    kinds = [k for _, _, k in rec["segments"]]
    assert len(kinds) >= 3 and kinds[:3] == ["natural", "pattern", "blobs"]
    with av.open(str(tmp_path / "tiny.mp4")) as c:
        assert c.streams.audio and c.streams.video[0].codec_context.name == "h264"
        frames = list(c.decode(video=0))
    assert len(frames) == 150
    assert [round(float(f.time), 3) for f in frames if f.key_frame] == [0, 1, 2, 3, 4]
    assert json.loads((tmp_path / "tiny.mp4.json").read_text())["clip"]["width"] == 160
    mc.repeat_clip(tmp_path / "tiny.mp4", tmp_path / "tiny3.mp4", 3)
    with av.open(str(tmp_path / "tiny3.mp4")) as c:
        n3 = sum(1 for _ in c.decode(video=0))
        assert c.streams.audio
    assert n3 == 450


def test_bench_command_writes_every_figure(tmp_path: Path, bundle_dir: Path) -> None:
    video = colour_video(tmp_path / "c.mp4", ["red"] * 3 + ["blue"] * 3 + ["green"] * 2,
                         fps=10, gop=25)
    out = tmp_path / "bench.json"
    rc = run_app(["bench", str(video), "--model", str(bundle_dir), "--baseline",
                  "--decode-reference", "--json", str(out), "-b", "4", "--repeat", "2"])
    assert rc == 0
    doc = json.loads(out.read_text())
    hw = doc["hardware"]
    assert hw["backend"] == "cpu" and hw["cores"] >= 1 and hw["cpu"]
    (v,) = doc["videos"]
    assert v["duration"] == pytest.approx(8.0, abs=0.1)
    runs = {r["mode"]: r for r in v["runs"]}
    # adaptive was asked for; exact comes with it for the agreement.
    assert set(runs) == {"adaptive", "exact", "decode-only", BASELINE}
    for mode in ("adaptive", "exact", BASELINE):
        r = runs[mode]
        assert set(r["stage_seconds_per_hour"]) >= {"decode", "preprocess", "inference",
                                                    "planning", "output"}
        assert r["seconds_per_hour"] == pytest.approx(r["wall"] / r["duration"] * 3600)
        assert r["x_realtime"] == pytest.approx(r["duration"] / r["wall"])
        assert r["peak_rss_mib"] > 10
        assert r["extra"]["repeats"] == 2  # each run is the median of two
        assert r["cpu"] > 0
        assert r["cpu_seconds_per_hour"] == pytest.approx(r["cpu"] / r["duration"] * 3600)
    assert runs["exact"]["samples"] == 8
    assert runs["decode-only"]["frames_decoded"] == 80
    assert runs[BASELINE]["frames_decoded"] == 80 and runs[BASELINE]["samples"] == 8
    # Solid colours survive the JPEG round trip and keyframe holding: every label agrees.
    assert v["agreement_with_exact"] == {"adaptive": 1.0, BASELINE: 1.0}
    assert v["speedup_vs_baseline"]["adaptive"] == pytest.approx(
        runs[BASELINE]["wall"] / runs["adaptive"]["wall"])
    assert v["cpu_ratio_vs_baseline"]["adaptive"] == pytest.approx(
        runs[BASELINE]["cpu"] / runs["adaptive"]["cpu"])


def test_baseline_round_trips_through_jpeg(tmp_path: Path, bundle_dir: Path) -> None:
    video = colour_video(tmp_path / "c.mp4", ["gray", "red", "red", "blue"], fps=5, gop=5)
    bundle = load_bundle(bundle_dir)
    report, preds = run_baseline(video, bundle, OrtClassifier(bundle, threads=1), batch=3)
    assert [preds.labels[k] for k in preds.probs.argmax(axis=1)] == ["gray", "red", "red",
                                                                       "blue"]
    assert report.stages["jpeg_encode"] > 0 and report.stages["jpeg_decode"] > 0
    assert report.samples == 4 and report.frames_decoded == 20


def test_agreement_counts_missing_slots_as_disagreements() -> None:
    def preds(winners: list[int]) -> Predictions:
        p = np.eye(2, dtype=np.float32)[winners]
        return Predictions(("a", "b"), np.arange(len(winners)), p, 1.0, len(winners))

    assert label_agreement(preds([0, 1, 1, 0]), preds([0, 1, 0, 0])) == 0.75
    assert label_agreement(preds([0, 1, 1]), preds([0, 1, 1, 0])) == 0.75


def test_isolated_run_reports_its_own_peak_rss(tmp_path: Path) -> None:
    video = colour_video(tmp_path / "c.mp4", ["red"] * 2, fps=5)
    report = bench_isolated(video, "decode-only")
    assert report.mode == "decode-only" and report.frames_decoded == 10
    assert 10 < report.peak_rss_mib < 4096
    assert 0 < report.cpu < 60  # the child's own CPU seconds come back too


def test_bench_refuses_bad_requests(tmp_path: Path, bundle_dir: Path, capsys) -> None:
    video = colour_video(tmp_path / "c.mp4", ["red"] * 2, fps=5)
    assert run_app(["bench", str(video), "--model", str(bundle_dir), "--sampling", "every"]) == 2
    assert "--sampling 'every'" in capsys.readouterr().err
    assert run_app(["bench", str(tmp_path / "missing.mp4")]) == 1
    err = capsys.readouterr().err  # one line: no run announced before it
    assert "no such file" in err and len(err.strip().splitlines()) == 1
    # --json naming a video wrote the figures over it (exit 0); nothing measured, no JSON.
    before = video.read_bytes()
    assert run_app(["bench", str(video), "--model", str(bundle_dir), "--json", str(video)]) == 1
    assert "--json names one of the videos" in capsys.readouterr().err
    assert video.read_bytes() == before
    assert run_app(["bench", str(tmp_path / "missing.mp4"), "--json",
                    str(tmp_path / "b.json")]) == 1
    assert not (tmp_path / "b.json").exists()
    capsys.readouterr()
    if hardware_info().get("gpu"):
        pytest.skip("a GPU is present")
    assert run_app(["bench", str(video), "--model", str(bundle_dir), "--backend", "gpu"]) == 1
    err = capsys.readouterr().err
    assert "--backend gpu" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_run_matrix_writes_markdown_and_json(tmp_path: Path, bundle_dir: Path) -> None:
    spec = importlib.util.spec_from_file_location("run_matrix", ROOT / "benchmarks" /
                                                  "run_matrix.py")
    assert spec is not None and spec.loader is not None
    rm = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rm)
    clips = tmp_path / "clips"
    clips.mkdir()
    # A stand-in for the main clip, small enough for a test.
    colour_video(clips / f"{rm.MAIN}.mp4", ["red"] * 2 + ["blue"] * 3, fps=10, gop=20)
    out = tmp_path / "results"
    assert rm.main(["--clips", str(clips), "--out", str(out), "--no-rss",
                    "--model", str(bundle_dir), "--repeat", "1"]) == 0
    doc = json.loads((out / "results.json").read_text())
    (v,) = doc["videos"]
    assert {r["mode"] for r in v["runs"]} == {"adaptive", "exact", "keyframes", "decode-only",
                                             BASELINE}
    md = (out / "results.md").read_text()
    assert "| target | measured | met |" in md and f"| {rm.MAIN} | adaptive |" in md
    assert [t["target"].split(" ")[0] for t in doc["targets"]] == ["adaptive", "adaptive",
                                                                   "exact"]


def test_bench_takes_folders_and_goes_on_past_a_broken_file(tmp_path: Path, bundle_dir: Path,
                                                            capsys) -> None:
    folder = tmp_path / "videos"
    (folder / "sub").mkdir(parents=True)
    colour_video(folder / "a.mp4", ["red"] * 2, fps=5)
    colour_video(folder / "sub" / "b.mp4", ["blue"] * 3, fps=5)
    (folder / "broken.mp4").write_bytes(b"\x00not a video" * 50)
    out = tmp_path / "bench.json"
    rc = run_app(["bench", str(folder), "--model", str(bundle_dir), "--sampling", "exact",
                  "--json", str(out)])
    err = capsys.readouterr().err
    assert rc == 1  # one file failed
    assert sum(line.startswith("error:") for line in err.splitlines()) == 1
    assert "broken.mp4" in err and "Traceback" not in err
    measured = sorted(Path(v["video"]).name for v in json.loads(out.read_text())["videos"])
    assert measured == ["a.mp4", "b.mp4"]


def test_bench_checks_its_json_path_before_measuring(tmp_path: Path, bundle_dir: Path,
                                                     capsys) -> None:
    video = colour_video(tmp_path / "a.mp4", ["red"] * 2, fps=5)
    rc = run_app(["bench", str(video), "--model", str(bundle_dir), "--json", str(tmp_path)])
    out, err = capsys.readouterr()
    assert rc == 1 and err.strip() == f"error: {tmp_path}: --json names a folder; give a file name"
    assert "adaptive" not in out + err.replace("--json", "")  # nothing was measured


def test_repeated_runs_report_each_mode_s_median(tmp_path: Path, bundle_dir: Path) -> None:
    from milesdeep.bench import RunReport, bench_video, median_run

    walls = [3.0, 1.0, 2.0, 5.0]
    runs = [RunReport("exact", 10.0, w, {"decode": w / 2}) for w in walls]
    mid = median_run(runs)
    # The lower middle of an even count: a real run, its own stage times, and the spread.
    assert mid.wall == 2.0 and mid.stages == {"decode": 1.0}
    assert mid.extra == {"repeats": 4.0, "wall_min": 1.0, "wall_max": 5.0}
    assert median_run(runs[:1]).extra == {}

    video = colour_video(tmp_path / "c.mp4", ["red"] * 2 + ["blue"] * 2, fps=10, gop=20)
    bundle = load_bundle(bundle_dir)
    said: list[str] = []
    vr = bench_video(video, bundle, OrtClassifier(bundle, threads=1), ["adaptive"],
                     baseline=True, repeat=2, say=said.append)
    assert [r.mode for r in vr.runs] == ["adaptive", "exact", BASELINE]
    for r in vr.runs:
        assert r.extra["repeats"] == 2 and r.extra["wall_min"] <= r.wall <= r.extra["wall_max"]
    # In turns: every mode once, then every mode again.
    assert said == [f"c.mp4: {m} ... ({k}/2)" for k in (1, 2)
                    for m in ("adaptive", "exact", "baseline (Miles Deep style)")]
    assert vr.agreement == {"adaptive": 1.0, BASELINE: 1.0}


def test_a_ratio_under_one_says_slower() -> None:
    from milesdeep.cli.bench import _times

    assert _times(2.0, "faster", "slower") == "2.0× faster"
    assert _times(0.8, "faster", "slower") == "1.2× slower"  # it said "0.8× faster"
