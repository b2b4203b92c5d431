"""The bad-input catalogue (`tests/badinputs.py`) through `miles-deep tag`: each file gives a
clear one-line message or a correct result — never a traceback or a hang — the original is
untouched, and nothing partial is left at an output path."""

from __future__ import annotations

import ctypes
import hashlib
import io
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from rich.console import Console

from milesdeep.batch import STATE_NAME, StateDB, run_batch
from milesdeep.batch.tag_job import TagJob
from milesdeep.cli.app import run_app
from milesdeep.models.bundle import load_bundle
from milesdeep.pipeline.predictions import read_predictions_csv
from milesdeep.pipeline.tagfile import read_tag
from tests import badinputs as bi
from tests.testdata import colour_bundle, colour_video

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Err:
    message: str


@dataclass(frozen=True)
class Ok:
    labels: tuple[str, ...]  # the winning label of each second ("*": not checked)
    warning: str | None = None
    # Adaptive sampling decodes keyframes and uncertain stretches only: damaged packets in
    # between are never decoded, so it may have nothing to warn about.
    warn_modes: tuple[str, ...] = ("adaptive", "exact")


P = tuple(bi.PATTERN)
EXPECT: dict[str, Err | Ok] = {
    "zero-byte": Err("the file is empty (0 bytes)"),
    "random-bytes": Err("not a video FFmpeg can read"),
    "truncated-mp4": Err("not a video FFmpeg can read"),
    "truncated-mkv": Ok(("red",) * 3 + ("*",) * 3, "pictures end at 2.9 s"),
    "corrupt-middle": Ok(("red",) * 3 + ("*",) * 3 + ("green",) * 3, "damaged packet",
                         ("exact",)),
    "audio-only": Err("has no video stream"),
    "still-image": Err("is a still image, not a video"),  # was tagged as a 1 s video
    "audio-with-cover": Err("has no video stream (audio only, or only a cover picture?)"),
    "video-with-cover": Ok(P),
    "short": Ok(("blue",)),
    "vfr": Ok(tuple(bi.VFR_LABELS)),
    "rotated": Ok(P),
    "odd-size": Ok(P),
    "tiny": Ok(P),
    "4k": Ok(("green",)),
    "10bit-h264": Ok(P),
    "10bit-hevc": Ok(P),
    "interlaced": Ok(P),
}


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def temporaries(d: Path) -> list[Path]:
    return [p for p in d.rglob(".*") if ".part" in p.name]


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "milesdeep", *args]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return colour_bundle(tmp_path_factory.mktemp("model") / "colours")


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("catalogue")
    made = {}
    for name, maker in bi.MAKERS.items():
        (root / name).mkdir()
        made[name] = maker(root / name)
    return made


@pytest.mark.parametrize("sampling", ["adaptive", "exact"])
@pytest.mark.parametrize("case", list(bi.MAKERS))
def test_catalogue_case(case: str, sampling: str, catalogue: dict[str, Path], model: Path,
                        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    video = catalogue[case]
    before = sha(video)
    beside = sorted(video.parent.iterdir())
    out = tmp_path / "out"
    rc = run_app(["tag", str(video), "--model", str(model), "-o", str(out),
                  "--sampling", sampling])
    err = capsys.readouterr().err
    want = EXPECT[case]
    assert "Traceback" not in err
    assert sha(video) == before and sorted(video.parent.iterdir()) == beside
    assert temporaries(tmp_path) == []
    if isinstance(want, Err):
        assert rc == 1
        assert err.strip().splitlines() == [f"error: {video}: {err.split(': ', 2)[2].strip()}"]
        assert want.message in err
        assert not out.exists() or list(out.iterdir()) == []
        return
    assert rc == 0, err
    preds = read_predictions_csv(out / f"{video.stem}.predictions.csv")
    got = [preds.labels[i] for i in preds.probs.argmax(axis=1)]
    assert len(got) == len(want.labels)
    assert all(w in ("*", g) for g, w in zip(got, want.labels)), got
    assert read_tag(out / f"{video.stem}.tag").total_seconds == len(want.labels)
    if want.warning and sampling in want.warn_modes:
        assert f"warning: {video}: " in err and want.warning in err
    elif want.warning is None:
        assert "warning" not in err
    assert [r["path"] for r in StateDB(out).rows()] == [video]


def test_whole_catalogue_in_one_run(catalogue: dict[str, Path], model: Path,
                                    tmp_path: Path) -> None:
    folder = next(iter(catalogue.values())).parent.parent
    before = {p: sha(p) for p in catalogue.values()}
    r = subprocess.run(cli("tag", str(folder), "--model", str(model), "-o",
                           str(tmp_path / "out")),
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    bad = [c for c, w in EXPECT.items() if isinstance(w, Err)]
    assert len(errors) == len(bad)
    for c in bad:
        mine = [e for e in errors if e.startswith(f"error: {catalogue[c]}: ")]
        assert len(mine) == 1 and EXPECT[c].message in mine[0]  # type: ignore[union-attr]
    good = len(EXPECT) - len(bad)
    assert len(StateDB(tmp_path / "out").rows()) == good
    table = [line for line in r.stderr.splitlines() if "│" in line][-1]
    assert [int(c) for c in table.split("│")[:3]] == [good, 0, len(bad)]
    assert {p: sha(p) for p in catalogue.values()} == before


# --- names ---------------------------------------------------------------------------------


def test_awkward_names_are_only_ever_argv(model: Path, tmp_path: Path) -> None:
    d = tmp_path / "in"
    d.mkdir()
    paths = bi.awkward_names(d)
    broken = d / "broken\n[red]name $(x).mp4"
    broken.write_bytes(b"")
    out = tmp_path / "out"
    # By name (a leading dash after --), and by walking the folder.
    names = [p.name for p in paths]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    r = subprocess.run(cli("tag", "--model", str(model), "-o", str(out), "--", *names),
                       cwd=d, capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    for p in paths:
        tag = read_tag(out / f"{p.stem}.tag")
        assert tag.movie_file_name == p.name.replace("\n", " ")
        assert (out / f"{p.stem}.predictions.csv").is_file()
    assert not (d / "pwned").exists() and not (tmp_path / "pwned").exists()
    r = subprocess.run(cli("tag", str(d), "--model", str(model), "-o", str(out)),
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert f"{len(paths)} of {len(paths) + 1} files were done before" in r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {d}/broken\\n[red]name $(x).mp4: the file is empty (0 bytes)"]


def test_a_fifo_named_like_a_video_does_not_hang(model: Path, tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.mp4"
    os.mkfifo(fifo)
    r = subprocess.run(cli("tag", str(fifo), "--model", str(model)), cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert r.stderr.strip() == f"error: {fifo}: not a regular file (a pipe or a device?)"


# --- permissions and full disks ---------------------------------------------------------------


def _drop_file_capabilities() -> None:
    """preexec_fn: as root, give up the capabilities that bypass file permissions
    (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH) so that permission bits apply."""
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def run_unprivileged(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    probe = tmp_path / "probe"
    probe.write_text("x")
    probe.chmod(0)
    try:
        check = subprocess.run([sys.executable, "-c", f"open({str(probe)!r})"],
                               preexec_fn=_drop_file_capabilities, capture_output=True)
    except (subprocess.SubprocessError, OSError):
        pytest.skip("cannot drop the file-permission capabilities here")
    finally:
        probe.unlink()
    if check.returncode == 0:
        pytest.skip("permission bits are not enforced for this user")
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=120,
                          preexec_fn=_drop_file_capabilities)


def test_unreadable_input(model: Path, tmp_path: Path) -> None:
    video = colour_video(tmp_path / "locked.mp4", ["red"] * 2)
    before = sha(video)
    video.chmod(0)
    try:
        r = run_unprivileged(cli("tag", str(video), "--model", str(model)), tmp_path)
    finally:
        video.chmod(0o644)
    assert r.returncode == 1
    assert r.stderr.strip() == f"error: {video}: cannot read the file: permission denied"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["locked.mp4"]
    assert sha(video) == before


def test_unwritable_output_folder(model: Path, tmp_path: Path) -> None:
    d = tmp_path / "readonly"
    d.mkdir()
    videos = [colour_video(d / f"v{i}.mp4", ["red"] * 2) for i in range(2)]
    d.chmod(0o555)
    try:
        r = run_unprivileged(cli("tag", str(d), "--model", str(model)), tmp_path)
        assert r.returncode == 1 and "Traceback" not in r.stderr
        errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
        assert errors == [f"error: {d}: the output directory is not writable; choose another "
                          "with -o"] * 2
        assert sorted(p.name for p in d.iterdir()) == ["v0.mp4", "v1.mp4"]
        r = run_unprivileged(cli("tag", str(d), "--model", str(model), "-o", str(d / "o")),
                             tmp_path)
        assert r.returncode == 1
        assert r.stderr.strip().startswith(f"error: {d / 'o'}: cannot create the output "
                                           "directory (Permission denied)")
    finally:
        d.chmod(0o755)
    assert all(v.exists() for v in videos)


def test_output_folder_under_a_file(model: Path, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    video = colour_video(tmp_path / "v.mp4", ["red"] * 2)
    (tmp_path / "file").write_text("")
    rc = run_app(["tag", str(video), "--model", str(model), "-o", str(tmp_path / "file" / "o")])
    err = capsys.readouterr().err
    assert rc == 1
    assert err.strip() == (f"error: {tmp_path / 'file' / 'o'}: cannot create the output "
                           "directory (Not a directory)")


def _file_size_limit(limit: int):  # noqa: ANN202
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes fail with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_disk_full_while_writing_outputs(model: Path, tmp_path: Path) -> None:
    video = colour_video(tmp_path / "long.mp4", ["red", "blue"] * 30, fps=2)
    before = sha(video)
    out = tmp_path / "out"
    r = subprocess.run(cli("tag", str(video), "--model", str(model), "-o", str(out)),
                       cwd=REPO, capture_output=True, text=True, timeout=120,
                       preexec_fn=_file_size_limit(1500))
    assert r.returncode == 1, r.stderr
    assert r.stderr.strip() == (f"error: {out / 'long.predictions.csv'}: cannot write the "
                                "output (File too large)")
    assert not out.exists()  # no partial file, no temporary, and the folder made for them gone
    assert sha(video) == before


def test_disk_full_while_recording_state(model: Path, tmp_path: Path) -> None:
    video = colour_video(tmp_path / "short.mp4", ["red", "blue"], fps=2)
    out = tmp_path / "out"
    r = subprocess.run(cli("tag", str(video), "--model", str(model), "-o", str(out)),
                       cwd=REPO, capture_output=True, text=True, timeout=120,
                       preexec_fn=_file_size_limit(3000))
    assert r.returncode == 1, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in r.stderr
    assert lines[0].startswith(f"error: {video}: outputs written, but ")
    assert "cannot use the run's state database" in lines[0]
    # The outputs are complete; the file is simply done again by the next run.
    assert read_tag(out / "short.tag").total_seconds == 2
    assert temporaries(out) == []
    r = subprocess.run(cli("tag", str(video), "--model", str(model), "-o", str(out)),
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "skipped" not in r.stderr


# --- a file that grows while it is read ---------------------------------------------------------


def test_growing_file_is_read_to_its_length_at_open_and_redone_later(
        model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Decided behaviour: a run takes what the file holds when it is opened (reading stops
    at the length known then, so a file being written cannot keep it going); the size and
    time recorded are those from before the read, so the next run redoes a file that grew."""
    (tmp_path / "src").mkdir()
    _, data = bi.growing_ts(tmp_path / "src")
    video = tmp_path / "rec.ts"
    video.write_bytes(data[: len(data) // 2 // 188 * 188])  # a recorder's first half
    out = tmp_path / "out"
    args = ["tag", str(video), "--model", str(model), "-o", str(out)]
    assert run_app(args) == 0
    first = read_tag(out / "rec.tag").total_seconds
    assert 1 <= first < 6
    capsys.readouterr()
    video.write_bytes(data)  # the recording finished
    assert run_app(args) == 0
    assert "skipped" not in capsys.readouterr().err
    assert read_tag(out / "rec.tag").total_seconds == 6

    # Growth *during* the read: warned about, outputs from the length at open, redone next.
    class GrowingJob(TagJob):
        def process(self, path, prefetched, progress):  # type: ignore[no-untyped-def]
            result = super().process(path, prefetched, progress)
            with open(path, "ab") as f:
                f.write(data[len(data) // 2 // 188 * 188:])
            return result

    video.write_bytes(data[: len(data) // 2 // 188 * 188])
    text = io.StringIO()
    s = run_batch(GrowingJob(load_bundle(model), out_dir=out), [video], force=True,
                  console=Console(file=text, width=300))
    assert s.exit_code == 0
    assert "the file changed while it was read" in text.getvalue()
    assert read_tag(out / "rec.tag").total_seconds == first
    assert run_app(args) == 0
    assert "skipped" not in capsys.readouterr().err
    assert read_tag(out / "rec.tag").total_seconds == 6


def test_file_appended_to_during_the_run_does_not_hang(model: Path, tmp_path: Path) -> None:
    _, data = bi.growing_ts(tmp_path)
    video = tmp_path / "live.ts"
    cut = len(data) // 4 // 188 * 188
    video.write_bytes(data[:cut])
    stop = threading.Event()

    def writer() -> None:  # keeps appending the recording, then repeats it, until stopped
        pos = cut
        with open(video, "ab") as f:
            while not stop.is_set():
                f.write(data[pos: pos + 4 * 188] if pos < len(data) else data[:4 * 188])
                f.flush()
                pos += 4 * 188
                time.sleep(0.002)

    t = threading.Thread(target=writer)
    t.start()
    try:
        r = subprocess.run(cli("tag", str(video), "--model", str(model), "-o",
                               str(tmp_path / "out"), "--sampling", "exact"),
                           cwd=REPO, capture_output=True, text=True, timeout=120)
    finally:
        stop.set()
        t.join()
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    assert (tmp_path / "out" / "live.tag").is_file()
    assert not (tmp_path / "out" / STATE_NAME).exists() or StateDB(tmp_path / "out").rows()


def test_sample_does_not_take_what_is_not_a_video(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """`sample` said "exists; using it as it is" (exit 0) for a folder or an empty file at its
    path, and the README's next command failed on it."""
    folder = tmp_path / "d.mp4"
    folder.mkdir()
    empty = tmp_path / "e.mp4"
    empty.write_bytes(b"")
    assert run_app(["sample", str(folder)]) == 1
    assert "is a folder; give the video's file name" in capsys.readouterr().err
    assert run_app(["sample", str(empty)]) == 1
    err = capsys.readouterr().err
    assert "exists but is not a usable video (the file is empty (0 bytes))" in err
    assert len(err.strip().splitlines()) == 1 and empty.read_bytes() == b""


@pytest.mark.parametrize("suffix", [".xyz", ".tag", ".divx", ""])
def test_a_video_named_oddly_is_cut_into_matroska(model: Path, tmp_path: Path,
                                                  suffix: str) -> None:
    """FFmpeg picks the muxer by the output's suffix, the source's: .xyz or .divx failed as an
    internal error ('Could not determine output format')."""
    from tests.testdata import colour_video

    src = colour_video(tmp_path / "v.mp4", ["red"] * 3, fps=5).rename(tmp_path / f"v{suffix}")
    assert run_app(["edit", "--backend", "cpu", str(src), "--model", str(model), "-t", "red",
                    "-u", "1"]) == 0
    assert (tmp_path / "v.cut.mkv").is_file()


def test_a_run_that_writes_nothing_leaves_no_output_folder(model: Path, tmp_path: Path) -> None:
    """-o's folder is made before the work; a run whose every file failed left it empty
    (tag, edit: with the run's state records in it; calibrate)."""
    missing = tmp_path / "missing.mp4"
    for args in (["tag", str(missing), "--model", str(model)],
                 ["edit", "--backend", "cpu", str(missing), "--model", str(model)],
                 ["calibrate", str(missing), "--model", str(model)]):
        out = tmp_path / f"out-{args[0]}"
        assert run_app([*args, "-o", str(out)]) == 1
        assert not out.exists()
    kept = tmp_path / "kept"
    kept.mkdir()  # a folder that was there stays, empty or not
    assert run_app(["tag", str(missing), "--model", str(model), "-o", str(kept)]) == 1
    assert kept.is_dir()


def test_edit_into_an_unwritable_folder_says_so(model: Path, tmp_path: Path) -> None:
    """edit said it could not use its state database (never there) 'or delete it'."""
    d = tmp_path / "readonly"
    d.mkdir()
    video = colour_video(d / "v.mp4", ["gray"] * 2 + ["red"] * 5 + ["gray"] * 2)
    d.chmod(0o555)
    try:
        r = run_unprivileged(cli("edit", str(video), "--model", str(model), "-t", "red",
                                 "-u", "2", "-g", "0", "--backend", "cpu"), tmp_path)
    finally:
        d.chmod(0o755)
    assert r.returncode == 1
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {d}: the output directory is not writable; choose another "
                      "with -o"]
    assert sorted(p.name for p in d.iterdir()) == ["v.mp4"]


@pytest.mark.parametrize(("args", "says"), [
    (["tag", "v.mp4", "--rate", "0"], "error: Invalid value for '--rate': "),
    (["edit", "v.mp4", "--margin", "inf"], "error: Invalid value for '--margin': "),
    (["tag", "--bogus"], "error: No such option: --bogus"),
    (["bogus"], "error: No such command 'bogus'."),
])
def test_a_bad_option_is_one_line(args: list[str], says: str,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    """click's four-line usage block (Usage:, Try ..., blank, Error:) is one line, exit 2."""
    assert run_app(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(says) and err.endswith(" -h)") and len(err.splitlines()) == 1


def test_sigterm_stops_any_command_without_leaving_temporaries(tmp_path: Path) -> None:
    """SIGTERM ended `sample` at once and left its `.part` file; every command now stops as
    on Ctrl-C (exit 130) and removes what it had not finished."""
    p = subprocess.Popen(cli("sample", str(tmp_path / "demo.mp4"), "--seconds", "600"),
                         cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".demo*part*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(tmp_path.glob(".demo*part*")), "sample never started writing"
    time.sleep(0.3)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130 and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_edit_warns_of_a_truncated_file_as_tag_does(catalogue: dict[str, Path], model: Path,
                                                    tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """edit classified the truncated file as tag does, but said nothing of its missing end."""
    video = catalogue["truncated-mkv"]
    assert run_app(["edit", str(video), "--model", str(model), "-t", "red", "-u", "1",
                    "--backend", "cpu", "-o", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert f"warning: {video}: pictures end at 2.9 s" in err
