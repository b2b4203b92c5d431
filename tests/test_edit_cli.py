"""`miles-deep edit` end to end: targets, --remove, -c, --margin, --precise, exports, safety."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from milesdeep.cli.app import run_app
from milesdeep.pipeline.export import read_timeline, timeline_ranges
from milesdeep.pipeline.predictions import Predictions, write_predictions_csv
from tests import videos as V
from tests.testdata import colour_bundle

FPS = 25


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def master(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return V.flash_beep_video(tmp_path_factory.mktemp("m") / "v.mp4", seconds=12, fps=FPS)


@pytest.fixture
def video(master: Path, tmp_path: Path) -> Iterator[Path]:
    """A fresh copy per test; its bytes must be unchanged when the test ends."""
    path = tmp_path / "v.mp4"
    shutil.copyfile(master, path)
    before = sha(path)
    yield path
    assert sha(path) == before


def predictions_csv(path: Path, winners: str, labels: tuple[str, str] = ("a", "b")) -> Path:
    """One sample per second; winners[i] names the label that wins second i (0.9)."""
    probs = np.array([[0.9, 0.1] if w == "a" else [0.1, 0.9] for w in winners], np.float32)
    preds = Predictions(labels, np.arange(len(winners), dtype=np.float64), probs, 1.0,
                        float(len(winners)))
    return write_predictions_csv(path, preds)


@pytest.fixture
def csv(tmp_path: Path) -> Path:
    # "b" wins seconds 2..7: one cut, kept as [2, 8).
    return predictions_csv(tmp_path / "p.csv", "aabbbbbbaaaa")


def edit(*args: str | Path) -> int:
    return run_app(["edit", *map(str, args)])


def names(d: Path) -> set[str]:
    return {p.name for p in d.iterdir()}


def test_keep_target_precise(video: Path, csv: Path) -> None:
    assert edit(video, "--from-predictions", csv, "-t", "b", "--precise") == 0
    out = video.with_name("v.cut.mp4")
    assert V.read_frame_codes(out) == list(range(2 * FPS, 8 * FPS))
    d = V.stream_durations(out)
    assert d["video"] == pytest.approx(6.0) and abs(d["audio"] - 6.0) < 0.1


def test_keep_target_keyframes_reports_boundaries(video: Path, csv: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert edit(video, "--from-predictions", csv, "-t", "b") == 0
    err = capsys.readouterr().err
    assert "planned 0:00:02.000-0:00:08.000 -> actual" in err
    codes = V.read_frame_codes(video.with_name("v.cut.mp4"))
    assert codes[0] <= 2 * FPS and codes[-1] >= 8 * FPS - 1
    assert codes == list(range(codes[0], codes[-1] + 1))


def test_remove_gives_the_rest(video: Path, csv: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "clean"
    assert edit(video, "--from-predictions", csv, "-t", "b", "--remove", "--precise",
                "-o", out_dir) == 0
    codes = V.read_frame_codes(out_dir / "v.cut.mp4")
    assert codes == list(range(0, 2 * FPS)) + list(range(8 * FPS, 12 * FPS))


def test_pieces_and_margin(video: Path, tmp_path: Path) -> None:
    csv2 = predictions_csv(tmp_path / "p2.csv", "abbbbbbaaaaa")  # needs 6 samples: [1, 7)
    assert edit(video, "--from-predictions", csv2, "-t", "b", "-c", "--precise",
                "--margin", "0.4") == 0
    piece = tmp_path / "v.cut" / "v.cut.1.mp4"
    assert names(tmp_path / "v.cut") == {"v.cut.1.mp4"}
    codes = V.read_frame_codes(piece)
    assert codes == list(range(round(0.6 * FPS), round(7.4 * FPS)))


def test_unknown_label_lists_the_labels(video: Path, csv: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    before = names(video.parent)
    assert edit(video, "--from-predictions", csv, "-t", "b,zebra") == 1
    err = capsys.readouterr().err.strip()
    assert "zebra" in err and "a, b" in err and len(err.splitlines()) == 1
    assert names(video.parent) == before


def test_no_cuts_writes_nothing(video: Path, csv: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    before = names(video.parent)
    assert edit(video, "--from-predictions", csv, "-t", "a") == 0  # "a" runs are too short
    assert "no cuts found" in capsys.readouterr().err
    assert names(video.parent) == before


def test_redo_with_nothing_to_write_removes_the_earlier_cut(
        video: Path, csv: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = video.with_name("v.cut.mp4")
    assert edit(video, "--from-predictions", csv, "-t", "b") == 0 and out.exists()
    capsys.readouterr()
    # The same video again with other targets: no cuts, so the earlier cut must not stay
    # behind as if it were this run's result.
    assert edit(video, "--from-predictions", csv, "-t", "a") == 0
    err = capsys.readouterr().err
    assert "no cuts found" in err and f"removed the earlier run's {out}" in err
    assert not out.exists()


def test_redo_with_nothing_left_removes_earlier_pieces(video: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    two = predictions_csv(tmp_path / "two.csv", "bbbaaaaaabbb")  # two cuts, two pieces
    assert edit(video, "--from-predictions", two, "-t", "b", "-c", "--min-cut", "1") == 0
    folder = tmp_path / "v.cut"
    assert names(folder) == {"v.cut.1.mp4", "v.cut.2.mp4"}
    everything = predictions_csv(tmp_path / "all.csv", "bbbbbbbbbbbb")
    assert edit(video, "--from-predictions", everything, "-t", "b", "-c", "--remove") == 0
    assert "nothing left to keep" in capsys.readouterr().err
    assert not folder.exists()


@pytest.mark.parametrize("mine", ["file", "symlink"])
def test_nothing_to_write_leaves_a_file_put_where_its_cut_was(video: Path, csv: Path,
                                                               tmp_path: Path,
                                                               mine: str) -> None:
    """The name was claimed for this video, but the file there is the user's now (the cut
    was deleted and another put in its place): the redo removed it."""
    out = video.with_name("v.cut.mp4")
    assert edit(video, "--from-predictions", csv, "-t", "b") == 0
    out.unlink()
    if mine == "file":
        out.write_bytes(b"mine")
    else:
        (tmp_path / "target").write_bytes(b"mine")
        out.symlink_to(tmp_path / "target")
    assert edit(video, "--from-predictions", csv, "-t", "a") == 0
    assert out.read_bytes() == b"mine"


def test_nothing_to_write_leaves_a_file_it_did_not_write(video: Path, csv: Path) -> None:
    out = video.with_name("v.cut.mp4")
    out.write_bytes(b"mine")
    assert edit(video, "--from-predictions", csv, "-t", "a") == 0
    assert out.read_bytes() == b"mine"


def test_default_targets_need_an_other_label(video: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    csv_ab = predictions_csv(tmp_path / "ab.csv", "aabbbbbbaaaa")
    assert edit(video, "--from-predictions", csv_ab) == 1
    assert "-t" in capsys.readouterr().err
    # Labels of the built-in model: its "other" label (sfw) is left out, nsfw is cut.
    csv_nsfw = predictions_csv(tmp_path / "n.csv", "aabbbbbbaaaa", labels=("sfw", "nsfw"))
    assert edit(video, "--from-predictions", csv_nsfw, "-x", "--precise") == 0
    assert V.read_frame_codes(video.with_name("v.cut.mp4")) == list(range(2 * FPS, 8 * FPS))


def test_overwrite_is_explicit(video: Path, csv: Path) -> None:
    out = video.with_name("v.cut.mp4")
    out.write_bytes(b"mine")
    assert edit(video, "--from-predictions", csv, "-t", "b") == 1
    assert out.read_bytes() == b"mine"
    assert edit(video, "--from-predictions", csv, "-t", "b", "--overwrite") == 0
    assert V.read_frame_codes(out)


@pytest.mark.parametrize("kind,ext", [("otio", ".otio"), ("edl", ".edl"),
                                      ("fcpxml", ".fcpxml")])
def test_export_round_trips(video: Path, csv: Path, kind: str, ext: str) -> None:
    assert edit(video, "--from-predictions", csv, "-t", "b", "--remove", "--export",
                kind) == 0
    path = video.with_name("v.cut" + ext)
    assert not video.with_name("v.cut.mp4").exists()  # a timeline, not a render
    timeline = read_timeline(path, kind, frame_rate=FPS)
    assert timeline_ranges(timeline) == [(0, 2 * FPS), (8 * FPS, 12 * FPS)]
    if kind == "otio":
        clip = next(iter(timeline.find_clips()))
        assert clip.media_reference.target_url == video.resolve().as_uri()


def test_exports_are_on_the_source_timecode_clock(tmp_path: Path) -> None:
    """An EDL's source in/out said 00:00:03:00 for a MOV starting at 01:00:00:00 (editors match
    clips to media by timecode), FCPXML's asset start 0s; OTIO's timeline left out the audio."""
    from fractions import Fraction

    from milesdeep.pipeline.export import build_timeline, write_timeline
    from milesdeep.pipeline.ranges import TimeRange

    src = tmp_path / "src.mov"
    src.write_bytes(b"")
    ranges = [TimeRange(Fraction(3), Fraction(7))]
    tl = build_timeline(src, ranges, Fraction(25), Fraction(12), timecode="01:00:00:00",
                        audio=True)
    first = 3600 * 25
    assert timeline_ranges(tl) == timeline_ranges(tl, "Audio") == [(first + 75, first + 175)]
    edl = write_timeline(tl, tmp_path / "t.edl", "edl").read_text()
    assert "01:00:03:00 01:00:07:00 00:00:00:00 00:00:04:00" in edl
    plain = build_timeline(src, ranges, Fraction(25), Fraction(12), timecode="01:00:00:00")
    fcp = write_timeline(plain, tmp_path / "t.fcpxml", "fcpxml").read_text()
    assert 'start="3600/1s"' in fcp and 'start="3603s"' in fcp
    assert timeline_ranges(build_timeline(src, ranges, Fraction(25), Fraction(12))) == [
        (75, 175)]  # no timecode: from 0, as before
    odd = tmp_path / "it's.mov"  # the FCPXML adapter failed on the apostrophe
    fcp = write_timeline(build_timeline(odd, ranges, Fraction(25), Fraction(12)),
                         tmp_path / "odd.fcpxml", "fcpxml").read_text()
    assert "it\u2019s 1" in fcp and odd.resolve().as_uri() in fcp


@pytest.mark.parametrize("name", ["-lead dash.mp4", "it's \"q\" $(touch pwned).mp4",
                                  "ünïcødé 名前.mp4"])
def test_awkward_file_names(master: Path, tmp_path: Path, csv: Path, name: str) -> None:
    path = tmp_path / name
    shutil.copyfile(master, path)
    assert run_app(["edit", "--from-predictions", str(csv), "-t", "b", "--precise", "--",
                    str(path)]) == 0
    out = tmp_path / (path.stem + ".cut.mp4")
    assert V.read_frame_codes(out) == list(range(2 * FPS, 8 * FPS))
    assert not (tmp_path / "pwned").exists() and not Path("pwned").exists()


def test_wmv_outputs(tmp_path: Path, csv: Path) -> None:
    # H.264 named .wmv: written as .mkv, as the original did.
    h264 = V.flash_beep_video(tmp_path / "h.wmv", seconds=12, codecs=("libx264", "aac"),
                              bframes=0)
    assert edit(h264, "--from-predictions", csv, "-t", "b") == 0
    assert (tmp_path / "h.cut.mkv").exists() and V.read_frame_codes(tmp_path / "h.cut.mkv")
    # Real WMV (WMV2 + WMA2): FFmpeg's Matroska muxer refuses these codecs, so it stays ASF.
    wmv = V.flash_beep_video(tmp_path / "w.wmv", seconds=12)
    before = sha(wmv)
    assert edit(wmv, "--from-predictions", csv, "-t", "b", "--precise") == 0
    out = tmp_path / "w.cut.wmv"
    codes = V.read_frame_codes(out)
    assert codes == list(range(codes[0], codes[-1] + 1)) and codes[0] <= 2 * FPS
    assert sha(wmv) == before


@pytest.mark.parametrize("given", ["out.mkv", "sub/cut.MP4", "x.tag"])
def test_output_dir_given_a_file_name_is_refused(video: Path, csv: Path, given: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """-o is a folder: `-o out.mkv` (ffmpeg's habit) is refused before any work, with the
    folder to give instead, and nothing is created; a folder that exists is used whatever
    its name."""
    before = names(video.parent)
    target = video.parent / given
    assert edit(video, "--from-predictions", csv, "-t", "b", "-o", target) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "-o is the output folder" in err[0], err
    assert str(target.parent / target.stem) in err[0]
    assert names(video.parent) == before
    target.mkdir(parents=True)
    assert edit(video, "--from-predictions", csv, "-t", "b", "-o", target) == 0
    assert "v.cut.mp4" in names(target)


def test_a_tenth_piece_whose_name_is_too_long_fails_before_any_piece(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`<stem>.cut.1.mp4` fits the file system (checked before any work); `<stem>.cut.10.mp4`
    does not, which only the plan shows: the file fails with one line, and no piece is
    written."""
    stem = "p" * 245  # .cut.1.mp4 makes 255 bytes, .cut.10.mp4 256
    video = V.flash_beep_video(tmp_path / f"{stem}.mp4", seconds=30, fps=10, gop=10)
    csv = predictions_csv(tmp_path / "p.csv", "abb" * 10)  # ten cuts of b
    out = tmp_path / "out"
    assert edit(video, "--from-predictions", csv, "-t", "b", "-u", "0", "-g", "0", "-c",
                "-o", out) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {video}: the output name "), err
    assert "would be 256 bytes" in err[0] and "rename the video shorter" in err[0]
    assert not (out / f"{stem}.cut").exists()


def test_bad_input_with_a_model_is_one_line(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """The backend is said once a file has run, so a bad input gives only its error."""
    bundle = colour_bundle(tmp_path / "bundle")
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all" * 100)
    assert edit(bad, "--model", bundle, "--backend", "cpu") == 1
    out, err = capsys.readouterr()
    assert out.strip() == ""
    assert err.strip().splitlines() == [f"error: {bad}: not a video FFmpeg can read "
                                        "(Invalid data found when processing input)"]
    assert names(tmp_path) == {"bundle", "bad.mp4"}


def test_with_a_model_end_to_end(tmp_path: Path) -> None:
    """Classify with a real (tiny) ONNX model: red seconds are cut, noise reads as gray."""
    bundle = colour_bundle(tmp_path / "bundle")
    video = V.two_class_video(tmp_path / "c.mp4", pattern="BBAAAAAABBBB", fps=10,
                              colour=(255, 0, 0), gop=10)
    before = sha(video)
    assert edit(video, "--model", bundle, "--precise", "--backend", "cpu") == 0
    assert V.read_frame_codes(tmp_path / "c.cut.mp4") == list(range(20, 80))
    assert sha(video) == before


@pytest.mark.parametrize("name", ["late.mkv", "gap.avi"])
def test_a_video_that_starts_late_is_cut_at_its_classes(tmp_path: Path, name: str) -> None:
    """The first picture at 7 s, red from 4 s to 10 s after it: the cut holds the red pictures
    and nothing else. The Matroska file's times count from its first picture, the AVI's from
    0 (it says so), but the classifier and the cutter must count alike: they did not, and the
    cuts held gray from 7 s later."""
    import av

    from tests.testdata import COLOURS, encode_frames, solid

    fps = 10
    colours = ["red" if 4 * fps <= k < 10 * fps else "gray" for k in range(16 * fps)]
    frames = [solid(COLOURS[c], 48, 64) for c in colours]
    video = encode_frames(tmp_path / name, frames, [7000 + 100 * k for k in range(len(frames))],
                          gop=fps, options={"bf": "3" if name.endswith(".mkv") else "0"})
    bundle = colour_bundle(tmp_path / "bundle")
    assert edit(video, "--model", bundle, "-t", "red", "--precise", "--backend", "cpu") == 0
    out = next(tmp_path.glob(f"{video.stem}.cut.*"))
    with av.open(str(out)) as c:
        means = [f.to_ndarray(format="rgb24").reshape(-1, 3).mean(0) for f in c.decode(video=0)]
    assert len(means) == 6 * fps
    red = [m[0] > 200 and m[1] < 50 for m in means]
    if name.endswith(".mkv"):
        assert all(red)
    else:  # FFmpeg's AVI muxer puts every frame 0.1 s late: the last 0.9 s are gray
        assert red == [True] * 51 + [False] * 9


def top_level_boxes(path: Path) -> list[str]:
    """The MP4's top-level box types, in file order."""
    data, i, out = path.read_bytes(), 0, []
    while i + 8 <= len(data):
        size = int.from_bytes(data[i:i + 4], "big")
        kind = data[i + 4:i + 8].decode("latin-1")
        if size == 1:  # 64-bit size follows the type
            size = int.from_bytes(data[i + 8:i + 16], "big")
        out.append(kind)
        if size < 8:
            break
        i += size
    return out


def index_first(path: Path) -> bool:
    """Does the MP4's index (moov) come before its media (mdat)?"""
    boxes = top_level_boxes(path)
    return boxes.index("moov") < boxes.index("mdat")


def test_faststart_puts_the_index_first_and_changes_no_picture(video: Path, csv: Path,
                                                               tmp_path: Path) -> None:
    assert edit(video, "--from-predictions", csv, "-t", "b", "-o", tmp_path / "plain") == 0
    assert edit(video, "--from-predictions", csv, "-t", "b", "-o", tmp_path / "fast",
                "--faststart") == 0
    plain, fast = tmp_path / "plain" / "v.cut.mp4", tmp_path / "fast" / "v.cut.mp4"
    assert not index_first(plain)  # FFmpeg's default: the index last
    assert index_first(fast)
    assert V.read_frame_codes(fast) == V.read_frame_codes(plain)
    assert V.stream_durations(fast) == V.stream_durations(plain)


def test_faststart_leaves_matroska_as_it_is(csv: Path, tmp_path: Path) -> None:
    mkv = V.flash_beep_video(tmp_path / "v.mkv", seconds=12, fps=FPS)
    assert edit(mkv, "--from-predictions", csv, "-t", "b", "-o", tmp_path / "plain") == 0
    assert edit(mkv, "--from-predictions", csv, "-t", "b", "-o", tmp_path / "fast",
                "--faststart") == 0
    assert (tmp_path / "fast" / "v.cut.mkv").read_bytes() == \
        (tmp_path / "plain" / "v.cut.mkv").read_bytes()


def test_faststart_with_export_is_refused(video: Path, csv: Path, capsys) -> None:
    assert edit(video, "--from-predictions", csv, "-t", "b", "--export", "otio",
                "--faststart") != 0
    err = capsys.readouterr().err
    assert "writes a timeline" in err and "--faststart" in err
    assert not video.with_name("v.cut.otio").exists()


def test_a_rerun_with_faststart_is_not_skipped_as_done(video: Path, csv: Path,
                                                       tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert edit(video, "--from-predictions", csv, "-t", "b", "-o", out) == 0
    assert not index_first(out / "v.cut.mp4")
    assert edit(video, "--from-predictions", csv, "-t", "b", "-o", out, "--faststart") == 0
    assert index_first(out / "v.cut.mp4")


@pytest.mark.parametrize("args", [
    ["-t", "b", "--sampling", "foo"], ["-t", "b", "--backend", "foo"], ["--export", "foo"],
    ["-t", "b", "-x"], ["--export", "otio", "-c"],
])
def test_a_wrong_option_is_a_usage_error(video: Path, csv: Path, args: list[str],
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """Exit 2 with one line, as for the usage errors the parser finds (a value out of range,
    an unknown option); these exited 1."""
    before = names(video.parent)
    assert edit(video, "--from-predictions", csv, *args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and len(err.splitlines()) == 1
    assert names(video.parent) == before


@pytest.mark.parametrize("rows", [100, 6])
def test_predictions_of_another_video_are_refused(video: Path, tmp_path: Path, rows: int,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """A 100-row CSV on this 12 s video cut it at seconds that mean nothing, exit 0."""
    other = predictions_csv(tmp_path / "other.csv", "ab" * (rows // 2))
    before = names(video.parent)
    assert edit(video, "--from-predictions", other, "-t", "b", "-u", "0") == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "another video's" in err and "lasts 12.0 s" in err
    assert names(video.parent) == before


def test_a_redo_keeps_files_the_user_put_at_its_names(video: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]
                                                      ) -> None:
    """Claims alone let a redo replace or delete what the user had put at an earlier cut's
    name. Only files recorded as written for the video and unchanged are its own."""
    from milesdeep.pipeline import remux

    three = predictions_csv(tmp_path / "three.csv", "bbaabbaabbaa")
    one = predictions_csv(tmp_path / "one.csv", "bbaaaaaaaaaa")
    folder = tmp_path / "v.cut"
    assert edit(video, "--from-predictions", three, "-t", "b", "-c", "-u", "0", "-g", "0") == 0
    assert names(folder) == {"v.cut.1.mp4", "v.cut.2.mp4", "v.cut.3.mp4"}
    (folder / "v.cut.2.mp4").unlink()
    (folder / "v.cut.2.mp4").write_bytes(b"mine")  # the user's, at a recorded name
    assert edit(video, "--from-predictions", one, "-t", "b", "-c", "-u", "0", "-g", "0") == 0
    # Its own surplus piece goes (past the user's file too); the user's file stays.
    assert names(folder) == {"v.cut.1.mp4", "v.cut.2.mp4"}
    assert (folder / "v.cut.2.mp4").read_bytes() == b"mine"
    assert "removed the earlier run's" in capsys.readouterr().err

    # The same for a single cut: a redo does not replace the user's file without --overwrite.
    out = video.with_name("v.cut.mp4")
    assert edit(video, "--from-predictions", one, "-t", "b", "-u", "0") == 0
    out.unlink()
    out.write_bytes(b"mine")
    assert edit(video, "--from-predictions", three, "-t", "b", "-u", "0", "-g", "0") == 1
    assert out.read_bytes() == b"mine" and "pass --overwrite" in capsys.readouterr().err

    # An interrupted write gives up its claim: what the user puts there later is theirs.
    out.unlink()

    def interrupted(output, packet):  # noqa: ANN001
        raise KeyboardInterrupt

    monkeypatch.setattr(remux, "_mux", interrupted)
    assert edit(video, "--from-predictions", one, "-t", "b", "-u", "0") == 130
    assert not out.exists()
    monkeypatch.undo()
    out.write_bytes(b"mine")
    assert edit(video, "--from-predictions", one, "-t", "b", "-u", "0") == 1
    assert out.read_bytes() == b"mine"


def test_an_edl_at_a_frame_rate_timecode_has_not_is_one_line(tmp_path: Path) -> None:
    """EDL timecode has SMPTE's rates only: a 10 fps video's EDL was an internal error."""
    from fractions import Fraction

    from milesdeep.errors import MilesDeepError
    from milesdeep.pipeline.export import build_timeline, write_timeline
    from milesdeep.pipeline.ranges import TimeRange

    src = tmp_path / "src.mp4"
    src.write_bytes(b"")
    tl = build_timeline(src, [TimeRange(Fraction(1), Fraction(3))], Fraction(10), Fraction(6))
    with pytest.raises(MilesDeepError, match=r"t\.edl: cannot write the timeline as edl .*"
                                             r"use --export otio"):
        write_timeline(tl, tmp_path / "t.edl", "edl")
    assert not (tmp_path / "t.edl").exists()


def test_a_piece_named_as_an_input_is_never_written_over(video: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    """The input-clash check knew only the first piece's name: a later piece named as an
    input of the same run was rewritten (or deleted) while it was read."""
    three = predictions_csv(tmp_path / "v.predictions.csv", "bbaabbaabbaa")
    args = ["--from-predictions", tmp_path, "-t", "b", "-c", "-u", "0", "-g", "0"]
    assert edit(video, *args) == 0
    piece = tmp_path / "v.cut" / "v.cut.2.mp4"
    before = sha(piece)
    predictions_csv(tmp_path / "v.cut.2.predictions.csv", "bb")
    capsys.readouterr()
    assert edit(video, piece, *args, "--remove") == 1
    err = capsys.readouterr().err
    assert f"its output would replace {piece}, an input of this run" in err
    assert sha(piece) == before and three.exists()
