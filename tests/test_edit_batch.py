"""`miles-deep edit` over many videos: folders, isolation of a broken file, resume, --force,
--overwrite and claims, a SIGKILL part-way through, saved predictions per video, --jobs,
timelines. Videos are solid colours a second (the toy colour classifier reads them)."""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest

from milesdeep.batch import STATE_NAME, StateDB
from milesdeep.cli.app import run_app
from milesdeep.pipeline.export import read_timeline, timeline_ranges
from milesdeep.pipeline.predictions import read_predictions_csv, write_predictions_csv
from tests import badinputs
from tests.testdata import COLOURS, colour_bundle, colour_video

REPO = Path(__file__).resolve().parents[1]
FPS = 10


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def red_at(start: int, seconds: int = 12, red: int = 4) -> list[str]:
    """Gray seconds with `red` red ones from `start`."""
    pat = ["gray"] * seconds
    pat[start:start + red] = ["red"] * red
    return pat


def colours(path: Path) -> list[str]:
    """The colour of every frame of a video, in display order."""
    names = list(COLOURS)
    ref = np.array([COLOURS[n] for n in names], np.float32)
    out = []
    with av.open(str(path)) as c:
        for frame in c.decode(video=0):
            mean = frame.to_ndarray(format="rgb24").reshape(-1, 3).mean(0)
            out.append(names[int(np.argmin(((ref - mean) ** 2).sum(1)))])
    return out


def stamps(paths: list[Path]) -> dict[Path, tuple[int, int]]:
    return {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in paths}


def outputs(d: Path) -> dict[str, bytes]:
    """Every file under `d` but the state database, by relative path."""
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*"))
            if p.is_file() and not p.name.startswith(STATE_NAME)}


def temporaries(d: Path) -> list[Path]:
    return [p for p in d.rglob(".*") if ".part" in p.name]


def errors(err: str) -> list[str]:
    return [line for line in err.splitlines() if "error:" in line]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return colour_bundle(tmp_path_factory.mktemp("model") / "colours")


def edit(*args: object) -> int:
    # --backend cpu: no GPU probe (a subprocess) per run; the GPU path has its own tests.
    return run_app(["edit", "--backend", "cpu", *map(str, args)])


def test_files_and_folders_cut_a_broken_file_fails_alone_rerun_skips_force_redoes(
        model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lib = tmp_path / "lib"
    (lib / "dir" / "sub").mkdir(parents=True)
    x = colour_video(lib / "x.mp4", red_at(1), fps=FPS)
    a = colour_video(lib / "dir" / "a.mp4", red_at(3), fps=FPS)
    b = colour_video(lib / "dir" / "sub" / "b.mp4", red_at(5), fps=FPS)
    plain = colour_video(lib / "dir" / "plain.mp4", ["gray"] * 6, fps=FPS)  # no red: no cut
    broken = badinputs.random_bytes(lib / "dir")
    sources = {p: sha(p) for p in (x, a, b, plain, broken)}
    args = [x, lib / "dir", "--model", model, "-t", "red", "-u", "2", "-g", "0"]

    assert edit(*args) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert errors(err) == [line for line in err.splitlines() if str(broken) in line
                           and "error:" in line] and len(errors(err)) == 1
    assert "edit: 5 files" in err and "× real time" in err
    assert "plain.mp4: no cuts of red; nothing written" in err
    cuts = [lib / "x.cut.mp4", lib / "dir" / "a.cut.mp4", lib / "dir" / "sub" / "b.cut.mp4"]
    for cut in cuts:
        assert colours(cut) == ["red"] * 4 * FPS, cut  # the red seconds, keyframe-aligned
    assert not list(lib.rglob("random.cut*")) and not list(lib.rglob("plain.cut*"))
    first = stamps(cuts)

    # Rerun: the four finished videos (the one without cuts too) are skipped; the folder's
    # earlier cuts are not taken as new inputs.
    assert edit(*args) == 1
    err = capsys.readouterr().err
    assert "4 of 5 files were done before" in err and len(errors(err)) == 1
    assert "left out 2 file(s) named like edit outputs" in err
    assert stamps(cuts) == first
    assert not list(lib.rglob("*.cut.cut*"))

    # --force redoes them, replacing edit's own outputs without --overwrite (and removing
    # what a killed run left at a temporary name).
    stale = lib / ".x.cut.k1ll_3d0.part.mp4"
    stale.write_bytes(b"partial")
    assert edit(*args, "--force") == 1
    assert not stale.exists()
    err = capsys.readouterr().err
    assert "were done before" not in err and "output exists" not in err
    assert len(errors(err)) == 1
    assert all(stamps([c])[c] != first[c] for c in cuts)
    assert all(colours(c) == ["red"] * 4 * FPS for c in cuts)
    # Other options are another edit: redone too (and its outputs are edit's own).
    assert edit(*args, "--margin", "1") == 1
    err = capsys.readouterr().err
    assert "were done before" not in err and len(errors(err)) == 1
    assert colours(lib / "x.cut.mp4") == ["gray"] * FPS + ["red"] * 4 * FPS + ["gray"] * FPS
    assert {p: sha(p) for p in sources} == sources
    assert temporaries(lib) == []


def test_a_file_edit_did_not_write_needs_overwrite(
        model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = colour_video(tmp_path / "a.mp4", red_at(2), fps=FPS)
    b = colour_video(tmp_path / "b.mp4", red_at(4), fps=FPS)
    mine = tmp_path / "a.cut.mp4"
    mine.write_bytes(b"mine")
    assert edit(a, b, "--model", model, "-t", "red", "-u", "2", "-g", "0") == 1
    err = capsys.readouterr().err
    assert errors(err) == [f"error: {mine}: output exists; pass --overwrite to replace it"]
    assert mine.read_bytes() == b"mine"
    assert colours(tmp_path / "b.cut.mp4") == ["red"] * 4 * FPS
    assert edit(a, b, "--model", model, "-t", "red", "-u", "2", "-g", "0", "--overwrite") == 0
    assert "1 of 2 files were done before" in capsys.readouterr().err
    assert colours(mine) == ["red"] * 4 * FPS


def test_a_named_input_is_never_written_over(
        model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`edit a.mp4 a.cut.mp4 --overwrite` skipped a.cut.mp4 as an output of the run (as a
    folder walk must), then replaced it with a.mp4's cut, exit 0. A file named as an input is
    an input: what would replace it fails; a file named like its own output fails too."""
    a = colour_video(tmp_path / "a.mp4", red_at(2), fps=FPS)
    named = colour_video(tmp_path / "a.cut.mp4", red_at(4), fps=FPS)
    before = sha(named)
    assert edit(a, named, "--model", model, "-t", "red", "-u", "2", "-g", "0",
                "--overwrite") == 1
    err = capsys.readouterr().err
    assert errors(err) == [f"error: {a}: its output would replace {named}, an input of this "
                           "run; process them separately or write the outputs elsewhere with -o"]
    assert sha(named) == before
    assert colours(tmp_path / "a.cut.cut.mp4") == ["red"] * 4 * FPS  # the named one was cut
    alias = tmp_path / "alias.mp4"  # the same input through a symlink
    alias.symlink_to(named)
    assert edit(a, alias, "--model", model, "-t", "red", "-u", "2", "-g", "0",
                "--overwrite") == 1
    assert "its output would replace" in capsys.readouterr().err and sha(named) == before
    alias.unlink()
    tagged = tmp_path / "t"
    tagged.mkdir()
    own = colour_video(tagged / "v.mp4", red_at(2), fps=FPS).rename(tagged / "v.tag")
    assert run_app(["tag", str(own), "--model", str(model)]) == 1
    assert "it has the name of its own output, which would replace it" in capsys.readouterr().err
    assert own.read_bytes() and sorted(p.name for p in tagged.iterdir()) == ["v.tag"]


def test_tag_over_a_library_leaves_out_the_cuts_edit_made(
        model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    colour_video(lib / "v.mp4", red_at(2), fps=FPS)
    assert edit(lib, "--model", model, "-t", "red", "-u", "2", "-g", "0") == 0
    assert edit(lib, "--model", model, "-t", "red", "-u", "2", "-g", "0", "-c") == 0
    capsys.readouterr()
    assert run_app(["tag", str(lib), "--model", str(model)]) == 0
    assert "left out 2 file(s) named like edit outputs" in capsys.readouterr().err
    assert sorted(p.name for p in lib.rglob("*.tag")) == ["v.tag"]


def two_runs_of_red(seconds: int = 14) -> list[str]:
    pat = ["gray"] * seconds
    pat[1:5] = ["red"] * 4
    pat[8:12] = ["red"] * 4
    return pat


@pytest.mark.parametrize("stop", [KeyboardInterrupt, OSError(28, "No space left on device")])
def test_a_videos_pieces_appear_together_or_not_at_all(
        model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        stop: type[BaseException] | BaseException) -> None:
    """edit -c stopped (Ctrl-C, a full disk) on the second piece left the first under its
    final name; a video's outputs now appear together or not at all."""
    from milesdeep.pipeline import remux

    video = colour_video(tmp_path / "v.mp4", two_runs_of_red(), fps=FPS)
    real, seen = remux._mux, set()

    def second_piece_fails(output, packet) -> None:  # type: ignore[no-untyped-def]
        seen.add(output.name)
        if len(seen) == 2:
            raise stop
        real(output, packet)

    monkeypatch.setattr(remux, "_mux", second_piece_fails)
    code = edit(video, "--model", model, "-t", "red", "-u", "2", "-g", "0", "-c")
    assert code == (130 if stop is KeyboardInterrupt else 1)
    assert len(seen) == 2
    pieces = tmp_path / "v.cut"
    assert not pieces.exists() or not [p for p in pieces.iterdir() if p.is_file()]
    monkeypatch.setattr(remux, "_mux", real)
    assert edit(video, "--model", model, "-t", "red", "-u", "2", "-g", "0", "-c") == 0
    assert sorted(p.name for p in pieces.iterdir()) == ["v.cut.1.mp4", "v.cut.2.mp4"]


def test_rerun_replaces_what_a_killed_run_left(
        model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A kill between an output's rename and the file's state row, or between two pieces,
    leaves outputs that no row lists: the rerun replaces them (they are claimed for the
    same video), removes the temporaries and this video's surplus pieces, and gives the
    uninterrupted run's bytes."""
    lib = tmp_path / "lib"
    lib.mkdir()
    v1 = colour_video(lib / "v1.mp4", two_runs_of_red(), fps=FPS)
    colour_video(lib / "v2.mp4", red_at(3), fps=FPS)
    ref, out = tmp_path / "ref", tmp_path / "out"
    args = [lib, "--model", model, "-t", "red", "-u", "2", "-g", "0", "-c"]
    assert edit(*args, "-o", ref) == 0
    assert sorted(outputs(ref)) == ["v1.cut/v1.cut.1.mp4", "v1.cut/v1.cut.2.mp4",
                                    "v2.cut/v2.cut.1.mp4"]
    assert edit(*args, "-o", out) == 0
    capsys.readouterr()
    # What a SIGKILL can leave: no rows, a piece (here: damaged, to see it replaced), the
    # temporaries of pieces being written, and a surplus piece of v1 from an earlier edit.
    with sqlite3.connect(out / STATE_NAME) as conn:
        conn.execute("DELETE FROM done")
    (out / "v1.cut" / "v1.cut.1.mp4").write_bytes(b"half")
    stale = [out / "v1.cut" / ".v1.cut.2.abcd_123.part.mp4",
             out / "v2.cut" / ".v2.cut.1.zzzzzzzz.part.mp4"]
    for t in stale:
        t.write_bytes(b"partial")
    surplus = out / "v1.cut" / "v1.cut.3.mp4"
    surplus.write_bytes(b"old piece")
    db = StateDB(out)
    db.claim(v1, [surplus])
    db.close()
    foreign = out / "v1.cut" / "notes.txt"  # not edit's: left alone
    foreign.write_text("keep")

    assert edit(*args, "-o", out) == 0
    err = capsys.readouterr().err
    assert "were done before" not in err and not errors(err)
    assert not surplus.exists() and foreign.read_text() == "keep"
    foreign.unlink()
    assert outputs(out) == outputs(ref)
    assert temporaries(out) == []


def test_sigkill_part_way_then_rerun_equals_an_uninterrupted_run(
        model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    videos = [colour_video(lib / f"clip {i:02d}.mp4", red_at(1 + i % 5), fps=FPS)
              for i in range(16)]
    sources = {p: sha(p) for p in videos}
    ref, out = tmp_path / "ref", tmp_path / "out"
    args = [str(lib), "--model", str(model), "-t", "red", "-u", "2", "-g", "0", "--backend",
            "cpu"]
    assert edit(*args, "-o", ref) == 0
    capsys.readouterr()

    proc = subprocess.Popen([sys.executable, "-m", "milesdeep", "edit", *args, "-o", str(out)],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while (not out.is_dir() or not list(out.glob("*.cut.mp4"))) and proc.poll() is None \
            and time.monotonic() < deadline:
        time.sleep(0.002)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    finished = list(out.glob("*.cut.mp4"))
    assert 1 <= len(finished) < len(videos)
    for f in finished:  # whatever is at a final path is complete
        assert colours(f) == ["red"] * 4 * FPS

    assert edit(*args, "-o", out) == 0
    err = capsys.readouterr().err
    assert not errors(err) and "Traceback" not in err
    assert outputs(out) == outputs(ref)  # byte for byte: the muxer is deterministic
    assert len(outputs(out)) == len(videos)
    assert temporaries(out) == [] and temporaries(lib) == []
    assert {p: sha(p) for p in videos} == sources


def test_saved_predictions_per_video(model: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    a = colour_video(lib / "a.mp4", red_at(2), fps=FPS)
    b = colour_video(lib / "b.mp4", red_at(5), fps=FPS)
    colour_video(lib / "c.mp4", red_at(1), fps=FPS)  # never tagged
    preds, direct, saved = tmp_path / "preds", tmp_path / "direct", tmp_path / "saved"
    assert run_app(["tag", str(a), str(b), "--model", str(model), "-o", str(preds),
                    "--sampling", "exact"]) == 0
    assert edit(a, b, "--model", model, "-t", "red", "-u", "2", "-g", "0", "-o", direct) == 0
    capsys.readouterr()
    args = [lib, "--from-predictions", preds, "-t", "red", "-u", "2", "-g", "0", "-o", saved]
    # c has no saved predictions: it fails alone.
    assert edit(*args) == 1
    err = capsys.readouterr().err
    assert len(errors(err)) == 1 and "c.mp4" in errors(err)[0] and "no predictions" in err
    assert outputs(saved) == outputs(direct)  # the same cuts as running the network
    # A re-tagged video is edited again; the others are skipped.
    csv = preds / "b.predictions.csv"
    p = read_predictions_csv(csv)
    p.probs[:] = np.array([1, 0, 0, 0], np.float32)  # all red now
    write_predictions_csv(csv, p)
    assert edit(*args) == 1
    err = capsys.readouterr().err
    assert "1 of 3 files were done before" in err
    assert len(colours(saved / "b.cut.mp4")) == 12 * FPS  # every second kept now
    # One CSV is for one video.
    assert edit(a, b, "--from-predictions", csv, "-t", "red") == 1
    assert "for many, give the folder" in capsys.readouterr().err
    assert not (lib / "a.cut.mp4").exists()


def test_jobs_give_the_same_cuts(model: Path, tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    for i in range(4):
        colour_video(lib / f"v{i}.mp4", red_at(1 + i), fps=FPS)
    base = [lib, "--model", model, "-t", "red", "-u", "2", "-g", "0"]
    assert edit(*base, "-o", tmp_path / "one") == 0
    assert edit(*base, "-o", tmp_path / "two", "-j", "2") == 0
    assert outputs(tmp_path / "two") == outputs(tmp_path / "one")
    assert len(outputs(tmp_path / "one")) == 4


def test_timelines_for_many_videos(model: Path, tmp_path: Path) -> None:
    a = colour_video(tmp_path / "a.mp4", red_at(2), fps=FPS)
    b = colour_video(tmp_path / "b.mp4", red_at(5), fps=FPS)
    listing = tmp_path / "list.txt"
    listing.write_text(f"{a}\n{b}\n")
    assert edit("--from-list", listing, "--model", model, "-t", "red", "-u", "2", "-g", "0",
                "--export", "otio", "--remove") == 0
    for video, start in ((a, 2), (b, 5)):
        path = video.with_name(video.stem + ".cut.otio")
        (r0, r1), (r2, r3) = timeline_ranges(read_timeline(path, "otio"))
        # (The index's frame rate is 120 frames over 11.93 s here: one frame of rounding.)
        assert (r0, r1) == (0, start * FPS) and abs(r2 - (start + 4) * FPS) <= 1
        assert r3 == 12 * FPS
        # The same timeline as editing the video alone.
        alone = tmp_path / "alone"
        assert edit(video, "--model", model, "-t", "red", "-u", "2", "-g", "0",
                    "--export", "otio", "--remove", "-o", alone) == 0
        assert (alone / path.name).read_bytes() == path.read_bytes()
    assert not list(tmp_path.glob("*.cut.mp4"))


def test_rows_and_claims_live_beside_the_outputs(model: Path, tmp_path: Path) -> None:
    a = colour_video(tmp_path / "a.mp4", red_at(2), fps=FPS)
    out = tmp_path / "out"
    assert edit(a, "--model", model, "-t", "red", "-u", "2", "-g", "0", "-o", out) == 0
    db = StateDB(out)
    rows = db.rows()
    assert [r["path"] for r in rows] == [Path(os.path.abspath(a))]
    assert rows[0]["outputs"] == [out / "a.cut.mp4"] and rows[0]["command"] == "edit"
    assert db.claimed_by(out / "a.cut.mp4") == Path(os.path.abspath(a))
    db.close()


def test_redo_that_finds_no_cuts_removes_that_videos_earlier_cut(
        model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    colour_video(lib / "x.mp4", red_at(1), fps=FPS)
    colour_video(lib / "y.mp4", red_at(5), fps=FPS)
    out = tmp_path / "out"
    assert edit(lib, "--model", model, "-t", "red", "-u", "2", "-g", "0", "-o", out) == 0
    assert names_in(out) == {"x.cut.mp4", "y.cut.mp4"}
    capsys.readouterr()
    # Other options redo both; no green anywhere: the red cuts must not stay in the folder
    # as if this run had made them.
    assert edit(lib, "--model", model, "-t", "green", "-u", "2", "-g", "0", "-o", out) == 0
    err = capsys.readouterr().err
    assert "x.mp4: no cuts of green; nothing written; removed the earlier run's x.cut.mp4" \
        in err
    assert names_in(out) == set()


def names_in(d: Path) -> set[str]:
    return {p.name for p in d.iterdir() if not p.name.startswith(STATE_NAME)}


def test_a_state_database_that_cannot_be_written_names_each_video(
        model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Each video failed with the same line naming only the database."""
    from milesdeep.batch.state import StateDB as DB
    from milesdeep.errors import MilesDeepError

    lib = tmp_path / "lib"
    lib.mkdir()
    for name in ("x", "y"):
        colour_video(lib / f"{name}.mp4", red_at(1), fps=FPS)
    out = tmp_path / "out"

    def readonly(self, input_path, outputs):  # noqa: ANN001
        raise MilesDeepError("cannot use the run's state database (attempt to write a "
                             "readonly database)", self.path)

    monkeypatch.setattr(DB, "claim", readonly)
    assert edit(lib, "--model", model, "-t", "red", "-u", "2", "-g", "0", "-o", out) == 1
    lines = errors(capsys.readouterr().err)
    assert len(lines) == 2
    assert any(str(lib / "x.mp4") in line for line in lines)
    assert any(str(lib / "y.mp4") in line for line in lines)
