"""Library-scale runs: input expansion, the state database, resume after SIGKILL and SIGINT,
per-file isolation, worker processes, and the summary."""

from __future__ import annotations

import hashlib
import io
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from milesdeep.batch import STATE_NAME, StateDB, expand_inputs, run_batch
from milesdeep.batch.runner import remove_stale_temporaries
from milesdeep.batch.state import FileKey
from milesdeep.batch.tag_job import TagJob
from milesdeep.cli.app import run_app
from milesdeep.errors import MilesDeepError
from milesdeep.models.bundle import load_bundle
from milesdeep.pipeline.atomic import atomic_path
from milesdeep.pipeline.tagfile import read_tag
from tests import badinputs
from tests.testdata import colour_bundle, colour_video

REPO = Path(__file__).resolve().parents[1]
COLOURS = ["red", "green", "blue", "gray"]
N_GOOD, N_BAD = 36, 4


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def pattern(i: int, seconds: int = 6) -> list[str]:
    return [COLOURS[(i + k // 2) % 4] for k in range(seconds)]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return colour_bundle(tmp_path_factory.mktemp("model") / "colours")


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path], list[Path]]:
    """40 files, 10% of them broken, in two folders (and a hidden folder to be ignored)."""
    root = tmp_path_factory.mktemp("library")
    good = []
    for i in range(N_GOOD):
        sub = root / ("a" if i % 2 else "b b")
        sub.mkdir(exist_ok=True)
        good.append(colour_video(sub / f"clip {i:02d}.mp4", pattern(i), fps=5))
    bad_dir = root / "b b"
    bad = [badinputs.zero_byte(bad_dir), badinputs.random_bytes(bad_dir),
           badinputs.truncated_mp4(bad_dir), badinputs.audio_only(bad_dir)]
    (root / ".hidden").mkdir()
    colour_video(root / ".hidden" / "skip.mp4", ["red"] * 2)
    (root / "a" / "notes.txt").write_text("not a video")
    return root, good, bad


def output_files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())
            if not p.name.startswith(STATE_NAME)}


def temporaries(d: Path) -> list[Path]:
    return [p for p in d.rglob(".*") if ".part" in p.name]


def done_rows(out: Path) -> int:
    db = out / STATE_NAME
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as conn:
            return conn.execute("SELECT count(*) FROM done").fetchone()[0]
    except sqlite3.OperationalError:  # not created yet
        return 0


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "milesdeep", *args]


# --- inputs ------------------------------------------------------------------------------


def test_expand_inputs_walks_folders_lists_and_dedupes(
        library: tuple[Path, list[Path], list[Path]], tmp_path: Path) -> None:
    root, good, bad = library
    found = expand_inputs([root])
    assert sorted(found) == sorted(good + bad)  # no hidden folder, no .txt
    assert found == sorted(found)
    lst = tmp_path / "list.txt"
    lst.write_text(f"{good[0]}\n\n{good[1]}\r\n{root / 'a'}\n")
    listed = expand_inputs([good[1]], from_list=lst)
    assert listed[:2] == [good[1], good[0]]  # order kept, good[1] once
    assert len(listed) == len(set(listed)) == 1 + len(list((root / "a").glob("*.mp4")))
    # NUL-separated lists carry any name, line breaks included.
    odd = tmp_path / "two\nlines.mp4"
    odd.write_bytes(good[0].read_bytes())
    nul = tmp_path / "list0"
    nul.write_bytes(bytes(odd) + b"\0" + bytes(good[2]) + b"\0")
    assert expand_inputs(from_list=nul) == [odd, good[2]]
    # A file named outright is kept even if missing, so that the run reports it.
    assert expand_inputs([tmp_path / "missing.mp4"]) == [tmp_path / "missing.mp4"]
    # A video given as the list split at its NUL bytes into junk, "." and "/" among it,
    # and the run walked the whole disk: a list holding binary data is refused.
    with pytest.raises(MilesDeepError, match="is not a list of paths") as e:
        expand_inputs(from_list=good[0])
    assert e.value.path == good[0]


def test_state_db_keys_on_size_mtime_model_options_and_outputs(tmp_path: Path) -> None:
    video = tmp_path / "v\udcff\n.mp4"  # not UTF-8, with a line break
    video.write_bytes(b"x" * 10)
    out = tmp_path / "v.tag"
    out.write_text("t")
    db = StateDB(tmp_path)
    key = FileKey.of(video, video.stat(), "model", "opts")
    assert db.lookup(key) is None and not db.path.exists()  # a lookup creates nothing
    db.record(key, "tag", [out], 10.0)
    assert db.lookup(key) == [out]
    assert db.rows()[0]["path"] == video
    assert db.lookup(FileKey.of(video, video.stat(), "other model", "opts")) is None
    assert db.lookup(FileKey.of(video, video.stat(), "model", "other")) is None
    os.utime(video, ns=(0, video.stat().st_mtime_ns + 1))
    assert db.lookup(FileKey.of(video, video.stat(), "model", "opts")) is None
    out.unlink()
    assert db.lookup(key) is None  # an output deleted since: do it again
    db.close()


def test_stale_temporaries_are_recognised(tmp_path: Path) -> None:
    final = tmp_path / "clip one.predictions.csv"
    with pytest.raises(KeyboardInterrupt), atomic_path(final) as tmp:
        kept = tmp.with_name(tmp.name + ".copy")
        os.link(tmp, kept)  # what a SIGKILL would leave behind
        raise KeyboardInterrupt
    stale = tmp_path / tmp.name
    os.rename(kept, stale)
    other = tmp_path / ".clip one.predictions.abcdefgh.part.txt"  # another suffix
    other.write_text("")
    assert remove_stale_temporaries([final, tmp_path / "clip one.tag"]) == [stale]
    assert other.exists() and not stale.exists()


# --- a run over a library -----------------------------------------------------------------


def test_batch_isolates_failures_resumes_and_redoes_changes(
        library: tuple[Path, list[Path], list[Path]], model: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    root, good, bad = library
    sub = [good[0], good[1], bad[0], bad[1], good[2]]
    before = {p: sha(p) for p in sub}
    out = tmp_path / "out"
    args = ["tag", *map(str, sub), "--model", str(model), "-o", str(out)]
    assert run_app(args) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for b in bad[:2]:
        assert sum(str(b) in line and "error:" in line for line in err.splitlines()) == 1
    assert "done" in err and "skipped" in err and "× real time" in err
    assert {p.name for p in out.iterdir()} >= {"clip 00.tag", "clip 01.tag", "clip 02.tag"}
    assert not any(p.name.startswith(("empty", "random")) for p in out.iterdir())
    tag = read_tag(out / "clip 01.tag")
    assert tag.movie_file_name == "clip 01.mp4"
    first = output_files(out)

    # Rerun: the three good files are skipped, the two bad ones fail again.
    assert run_app(args) == 1
    err = capsys.readouterr().err
    assert "3 of 5 files were done before" in err
    assert output_files(out) == first
    # A changed input is done again; so is everything with --force or other options.
    os.utime(good[1], ns=(0, good[1].stat().st_mtime_ns + 1000))
    assert run_app(args) == 1
    err = capsys.readouterr().err
    assert "2 of 5 files were done before" in err and "clip 01.mp4: " in err
    assert run_app([*args, "--force"]) == 1
    assert "were done before" not in capsys.readouterr().err
    assert run_app([*args, "-u", "2"]) == 1
    assert "were done before" not in capsys.readouterr().err
    assert all(sha(p) == h for p, h in before.items())
    assert StateDB(out).rows() and len({r["path"] for r in StateDB(out).rows()}) == 3
    # Only good files: exit status 0.
    assert run_app(["tag", str(good[0]), "--model", str(model), "-o", str(out)]) == 0
    assert temporaries(tmp_path) == []


def test_outputs_that_would_collide_fail_before_any_work(
        library: tuple[Path, list[Path], list[Path]], model: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    _, good, _ = library
    twin = tmp_path / "x" / good[0].name
    twin.parent.mkdir()
    twin.write_bytes(good[0].read_bytes())
    out = tmp_path / "out"
    assert run_app(["tag", str(good[0]), str(twin), "--model", str(model), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"{twin}: its outputs would overwrite those of {good[0]}" in err
    assert sorted(output_files(out)) == ["clip 00.predictions.csv", "clip 00.tag"]


def test_kill_part_way_then_resume_gives_the_uninterrupted_outputs(
        library: tuple[Path, list[Path], list[Path]], model: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    root, good, bad = library
    assert len(good) + len(bad) == 40
    before = {p: sha(p) for p in good + bad}
    ref, out = tmp_path / "reference", tmp_path / "resumed"
    assert run_app(["tag", str(root), "--model", str(model), "-o", str(ref)]) == 1
    capsys.readouterr()
    assert done_rows(ref) == N_GOOD

    proc = subprocess.Popen(cli("tag", str(root), "--model", str(model), "-o", str(out)),
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while done_rows(out) < 8 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    proc.stderr.close()  # type: ignore[union-attr]
    killed_at = done_rows(out)
    assert 8 <= killed_at < N_GOOD
    finished = {r["path"]: r for r in StateDB(out).rows()}
    stamps = {o: (o.stat().st_ino, o.stat().st_mtime_ns)
              for r in finished.values() for o in r["outputs"]}

    assert run_app(["tag", str(root), "--model", str(model), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"{killed_at} of 40 files were done before" in err
    assert sum("error:" in line for line in err.splitlines()) == N_BAD
    assert "Traceback" not in err
    # Every good file done exactly once: one row each, and what was finished before the kill
    # was not written again.
    rows = StateDB(out).rows()
    assert sorted(r["path"] for r in rows) == sorted(Path(os.path.abspath(p)) for p in good)
    assert {o: (o.stat().st_ino, o.stat().st_mtime_ns) for o in stamps} == stamps
    # Same outputs as the uninterrupted run, nothing partial, originals untouched.
    assert output_files(out) == output_files(ref)
    assert len(output_files(out)) == 2 * N_GOOD
    assert temporaries(out) == [] and temporaries(root) == []
    assert {p: sha(p) for p in good + bad} == before


def test_sigint_stops_cleanly_and_the_rerun_finishes(
        library: tuple[Path, list[Path], list[Path]], model: Path, tmp_path: Path) -> None:
    root, good, _ = library
    out = tmp_path / "out"
    proc = subprocess.Popen(cli("tag", str(root / "a"), "--model", str(model), "-o", str(out),
                                "--sampling", "exact"),
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 60
    while done_rows(out) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert "run the same command again to resume" in err
    stopped_at = done_rows(out)
    assert stopped_at < len(list((root / "a").glob("*.mp4")))
    assert temporaries(out) == []
    assert all(len(r["outputs"]) == 2 and all(o.exists() for o in r["outputs"])
               for r in StateDB(out).rows())
    n = len(list((root / "a").glob("*.mp4")))
    r = subprocess.run(cli("tag", str(root / "a"), "--model", str(model), "-o", str(out),
                           "--sampling", "exact"),
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert f"{stopped_at} of {n} files were done before" in r.stderr
    assert done_rows(out) == n


# --- worker processes ---------------------------------------------------------------------


class CrashingTagJob(TagJob):
    """A tag job whose worker process dies on files named crash*, and which has a bug on
    files named bug*."""

    def process(self, path, prefetched, progress):  # type: ignore[no-untyped-def]
        if path.name.startswith("crash"):
            os._exit(3)
        if path.name.startswith("bug"):
            raise TypeError("a bug")
        return super().process(path, prefetched, progress)


def test_jobs_give_the_same_outputs_and_survive_a_dying_worker(
        library: tuple[Path, list[Path], list[Path]], model: Path, tmp_path: Path) -> None:
    _, good, bad = library
    files = good[:4] + [bad[1]]
    for name in ("crash.mp4", "bug.mp4"):
        (tmp_path / name).write_bytes(good[0].read_bytes())
    files += [tmp_path / "crash.mp4", tmp_path / "bug.mp4"]
    bundle = load_bundle(model)
    text = io.StringIO()
    console = Console(file=text, width=200)
    one = run_batch(TagJob(bundle, out_dir=tmp_path / "one"), good[:4], console=None)
    assert one.exit_code == 0 and one.count("done") == 4
    many = run_batch(CrashingTagJob(bundle, out_dir=tmp_path / "many"), files, jobs=2,
                     console=console)
    status = {o.path.name: o.status for o in many.outcomes}
    assert status == {**{p.name: "done" for p in good[:4]}, bad[1].name: "failed",
                      "crash.mp4": "failed", "bug.mp4": "failed"}
    log = text.getvalue()
    assert "crash.mp4: the worker process died" in log
    assert "bug.mp4: internal error (TypeError: a bug)" in log
    assert many.exit_code == 1
    assert output_files(tmp_path / "many") == output_files(tmp_path / "one")


def _open_and_claim(directory: str, k: int, go, errors) -> None:
    from milesdeep.batch.state import StateDB

    try:
        go.wait()
        for j in range(3):
            db = StateDB(Path(directory))
            out = Path(f"/nowhere/out{k}_{j}.mp4")
            db.claimed_by(out)
            db.claim(Path(f"/nowhere/in{k}.mp4"), [out])
            db.close()
    except Exception as e:  # noqa: BLE001  reported to the test
        errors.put(repr(e))


def test_worker_processes_opening_a_new_state_db_at_once(tmp_path: Path) -> None:
    # `-j` workers open the same new database together; switching it to WAL answered
    # "database is locked" at once (the busy timeout does not apply), failing a file.
    import multiprocessing as mp

    ctx = mp.get_context("fork")  # (spawn would import everything again, 36 times)
    errors = ctx.Queue()
    for rep in range(12):
        go = ctx.Event()
        procs = [ctx.Process(target=_open_and_claim, args=(str(tmp_path / f"r{rep}"), k, go,
                                                           errors)) for k in range(3)]
        (tmp_path / f"r{rep}").mkdir()
        for p in procs:
            p.start()
        go.set()
        for p in procs:
            p.join(60)
    found = []
    while not errors.empty():
        found.append(errors.get())
    assert found == []


def test_a_rerun_redoes_a_file_whose_outputs_another_run_rewrote(
        model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Run A, then B (other options, the same output files), then A again: A's row still
    counted as done (its outputs existed), and B's outputs stayed. A damaged output too."""
    video = colour_video(tmp_path / "v.mp4", pattern(0, 6), fps=5)
    out = tmp_path / "out"
    csv = out / "v.predictions.csv"

    def tag(*extra: str) -> str:
        assert run_app(["tag", str(video), "--model", str(model), "-o", str(out), *extra]) == 0
        return capsys.readouterr().err

    tag()
    rows_a = csv.read_text().count("\n")
    tag("--rate", "2")
    assert csv.read_text().count("\n") > rows_a
    assert "skipped" not in tag() and csv.read_text().count("\n") == rows_a
    assert "skipped" in tag()  # unchanged since: done
    (out / "v.tag").write_text("garbage")
    assert "skipped" not in tag() and (out / "v.tag").read_text() != "garbage"


def test_tag_keeps_another_videos_results_of_the_same_name(
        model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two folders' clip.mp4 tagged into one -o, in two runs: the second used to replace the
    first one's .tag and CSV without a word. It fails, naming the file, and they stay; the
    first video's own rerun still replaces its results."""
    a = colour_video((tmp_path / "a").mkdir() or tmp_path / "a" / "clip.mp4", ["red"] * 4, fps=5)
    b = colour_video((tmp_path / "b").mkdir() or tmp_path / "b" / "clip.mp4", ["blue"] * 4,
                     fps=5)
    out = tmp_path / "out"

    def tag(video: Path, *extra: str) -> tuple[int, str]:
        rc = run_app(["tag", str(video), "--model", str(model), "-o", str(out), *extra])
        return rc, capsys.readouterr().err

    assert tag(a)[0] == 0
    before = {p.name: sha(p) for p in out.glob("clip.*")}
    rc, err = tag(b)
    assert rc == 1 and "holds the results of" in err and str(a) in err
    assert "Traceback" not in err and {p.name: sha(p) for p in out.glob("clip.*")} == before
    rows = (out / "clip.predictions.csv").read_text().splitlines()
    assert rows[0].startswith("time,red,") and float(rows[1].split(",")[1]) > 0.9  # a's: red
    assert tag(a, "--rate", "2")[0] == 0  # its own: replaced
    assert {p.name: sha(p) for p in out.glob("clip.*")} != before


def test_tag_without_plot_removes_its_own_earlier_timeline(
        model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A rerun without --plot left the earlier run's timeline, showing the scores it had
    just replaced. This video's own one goes (and is reported); a PNG someone put at the
    name, or changed since, stays."""
    video = colour_video(tmp_path / "v.mp4", ["red", "blue"] * 2, fps=5)
    out = tmp_path / "out"
    png = out / "v.timeline.png"

    def tag(*extra: str) -> str:
        assert run_app(["tag", str(video), "--model", str(model), "-o", str(out), *extra]) == 0
        return capsys.readouterr().err

    tag("--plot")
    assert png.is_file()
    err = tag()
    assert not png.exists() and "removed the earlier run's v.timeline.png" in err
    tag("--plot", "--rate", "2")
    png.write_bytes(png.read_bytes() + b"\0")  # changed since the run wrote it
    tag("--rate", "2")
    assert png.exists()
    assert (out / "v.tag").is_file()


def test_sigterm_with_an_idle_worker_stops_the_run(model: Path, tmp_path: Path) -> None:
    """SIGTERM made an idle worker exit holding the work queue's lock; the busy one, done
    with its interrupted file, then waited on that lock for ever, and so did the parent."""
    short = colour_video(tmp_path / "short.mp4", ["red"] * 2, fps=5)
    long = colour_video(tmp_path / "long.mp4", ["red", "gray"] * 200, fps=25)
    out = tmp_path / "out"
    p = subprocess.Popen([sys.executable, "-m", "milesdeep", "tag", str(short), str(long),
                          "--model", str(model), "-j", "2", "--sampling", "exact",
                          "--rate", "25", "-o", str(out)], cwd=REPO,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 90
    while not (out / "short.tag").exists() and time.monotonic() < deadline:
        time.sleep(0.05)  # short's worker is idle from here on; long's is busy
    assert (out / "short.tag").exists() and p.poll() is None
    time.sleep(0.2)
    p.send_signal(signal.SIGTERM)
    try:
        _, err = p.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        p.kill()
        pytest.fail("the run did not stop")
    assert p.returncode == 130 and "interrupted" in err
    assert not (out / "long.tag").exists()
