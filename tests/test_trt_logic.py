"""The GPU twin's plain logic, on the CPU: sample planning against the CPU decoder on real
videos, engine profiles, sidecars and staleness, the engine cache, the FP16 variant."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from milesdeep.errors import MilesDeepError
from milesdeep.models.bundle import load_bundle
from milesdeep.pipeline.decode import PyAVSource
from milesdeep.pipeline.decode_nvdec import (
    NvdecFormat,
    batches,
    demux_index,
    index_from_packets,
    keyframe_subset,
    nvdec_format,
    plan_runs,
)
from milesdeep.trt_engine import cache
from milesdeep.trt_engine.compat import (
    make_progress_monitor,
    network_flags,
    profile_shapes,
    split_batches,
    version_tuple,
)
from milesdeep.trt_engine.sidecar import (
    BatchProfile,
    EngineSidecar,
    Environment,
    TensorInfo,
    check_not_stale,
    load_sidecar,
    save_sidecar,
    stale_reasons,
)
from tests.testdata import colour_bundle, encode_frames, solid

VFR_PTS = [0, 100, 150, 700, 1000, 1900, 2050, 2990, 3000, 3500]


def expand(runs) -> list[int]:
    out: list[int] = []
    for r in runs:
        assert r.first == len(out)
        out += [r.frame] * (r.stop - r.first)
    return out


# --- sample time -> frame index ---------------------------------------------------------


def test_plan_takes_the_frame_on_screen_at_each_sample_time() -> None:
    times = [p / 1000 for p in VFR_PTS]
    frames = expand(plan_runs(times, rate=1.0, duration=4.0, end_time=4.0))
    # t=0 -> 0 ms frame; t=1 -> 1000 ms; t=2 -> 1900 ms (2050 is later); t=3 -> 3000 ms.
    assert frames == [0, 4, 5, 8]
    frames = expand(plan_runs(times, rate=4.0, duration=4.0, end_time=4.0))
    for i, k in enumerate(frames):
        t = i / 4.0
        assert times[k] <= t + 1e-9
        assert k == len(times) - 1 or times[k + 1] > t + 1e-9


def test_plan_before_the_first_frame_uses_the_first_frame() -> None:
    times = [0.4, 0.9, 1.7]
    assert expand(plan_runs(times, rate=2.0, duration=2.0, end_time=2.0)) == [0, 0, 1, 1]


def test_plan_skips_repeated_timestamps_and_holds_the_last_frame() -> None:
    times = [0.0, 0.5, 0.5, 1.2]
    frames = expand(plan_runs(times, rate=2.0, duration=3.0, end_time=3.0))
    assert 2 not in frames  # the second frame at 0.5 s never shows, as on the CPU
    assert frames == [0, 1, 1, 3, 3, 3]


def test_plan_length_follows_duration_or_end_time() -> None:
    times = [0.0, 1.0]
    assert len(expand(plan_runs(times, 1.0, duration=5.5, end_time=2.0))) == 6
    assert len(expand(plan_runs(times, 1.0, duration=0.0, end_time=2.0))) == 2
    assert plan_runs([], 1.0, 3.0, 3.0) == []
    with pytest.raises(MilesDeepError):
        plan_runs(times, 0.0, 3.0, 3.0)


def test_packets_in_decode_order_become_presentation_order() -> None:
    # B-frames: decode order I P B B, presentation I B B P.
    packets = [(0, 40, True), (120, 40, False), (40, 40, False), (80, 40, False),
               (None, 0, False)]
    idx = index_from_packets(packets, time_base=1 / 1000, start=0.0, fallback_duration=0.04)
    assert idx.times == pytest.approx([0.0, 0.04, 0.08, 0.12])
    assert idx.keyframe == [True, False, False, False]
    assert idx.end_time == pytest.approx(0.16)
    assert idx.unmappable == 1
    assert keyframe_subset(idx) == ([0.0], [0])


@pytest.fixture(scope="module")
def vfr_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("vfr") / "vfr.mp4"
    frames = [solid((16 + 20 * k,) * 3) for k in range(len(VFR_PTS))]
    return encode_frames(path, frames, VFR_PTS, gop=3)


@pytest.mark.parametrize("rate", [1.0, 2.5, 7.0])
def test_plan_matches_the_cpu_decoder_on_vfr_video(vfr_video: Path, rate: float) -> None:
    cpu = PyAVSource(vfr_video, rate=rate)
    cpu_samples = [(s.index, s.pts) for s in cpu]
    idx = demux_index(vfr_video, cpu.info)
    runs = plan_runs(idx.times, rate, cpu.info.duration, idx.end_time)
    planned = [(i, idx.times[k]) for i, k in enumerate(expand(runs))]
    assert [i for i, _ in planned] == [i for i, _ in cpu_samples]
    assert [t for _, t in planned] == pytest.approx([t for _, t in cpu_samples], abs=1e-9)


@pytest.mark.parametrize("refresh", [False, True], ids=["gops", "intra-refresh"])
def test_keyframe_plan_matches_the_cpu_decoder(tmp_path: Path, refresh: bool) -> None:
    n = 47
    frames = [solid(((7 * k) % 256,) * 3) for k in range(n)]
    pts = [k * 90 + (k % 3) * 10 for k in range(n)]  # irregular spacing
    # intra-refresh: recovery points marked as keyframes, which the CPU twin does not use.
    options = {"x264-params": "intra-refresh=1:keyint=9", "sc_threshold": "0"} if refresh else None
    path = encode_frames(tmp_path / "gop.mp4", frames, pts, gop=9, options=options)
    cpu = PyAVSource(path, rate=1.0, mode="keyframes")
    cpu_samples = [(s.index, s.hold, s.pts) for s in cpu]
    idx = demux_index(path, cpu.info)
    times, positions = keyframe_subset(idx)
    assert len(positions) == 1 if refresh else len(positions) >= 4
    runs = plan_runs(times, 1.0, cpu.info.duration, idx.end_time)
    assert [(r.first, r.stop - r.first, times[r.frame]) for r in runs] == [
        (i, h, pytest.approx(t, abs=1e-9)) for i, h, t in cpu_samples]


def test_decode_batches_are_unique_and_ascending() -> None:
    assert batches([5, 0, 0, 3, 9, 3, 1], 2) == [[0, 1], [3, 5], [9]]
    assert batches([], 4) == []
    with pytest.raises(ValueError):
        batches([1], 0)


def test_nvdec_formats() -> None:
    assert nvdec_format("h264", "yuv420p") == NvdecFormat("H264", "420", 8)
    assert nvdec_format("hevc", "yuv420p10le") == NvdecFormat("HEVC", "420", 10)
    assert "4:2:0 only" in str(nvdec_format("h264", "yuv422p"))
    assert "does not decode" in str(nvdec_format("prores", "yuv422p10le"))
    assert isinstance(nvdec_format("av1", None), str)


# --- engine build logic ------------------------------------------------------------------


def test_profile_shapes_dynamic_batch() -> None:
    lo, opt, hi = profile_shapes([-1, 224, 224, 3], 16)
    assert lo == (1, 224, 224, 3) and opt == (16, 224, 224, 3) and hi == (16, 224, 224, 3)
    assert profile_shapes([None, 3, 8, 8], 1) == ((1, 3, 8, 8),) * 3


def test_profile_shapes_refuses_what_cannot_be_built() -> None:
    with pytest.raises(MilesDeepError, match="fixed batch of 1"):
        profile_shapes([1, 3, 8, 8], 8)
    assert profile_shapes([4, 3, 8, 8], 4) == ((4, 3, 8, 8),) * 3
    with pytest.raises(MilesDeepError, match="dynamic dimension"):
        profile_shapes([-1, 3, -1, -1], 8)
    with pytest.raises(MilesDeepError):
        profile_shapes([-1, 3, 8, 8], 0)


def test_network_flags_branch_on_the_major_version() -> None:
    assert network_flags("10.13.0.35", 1) == 2
    assert network_flags("11.4.0.106", 1) == 0
    assert network_flags("11.0.0", None) == 0
    with pytest.raises(MilesDeepError, match="10.12 or newer"):
        network_flags("10.3.0", None)
    with pytest.raises(MilesDeepError, match="not supported"):
        network_flags("8.6.1", 1)
    assert version_tuple("10.13.0.35") == (10, 13, 0, 35)
    assert version_tuple("11.1.0rc2") == (11, 1, 0)


def test_split_batches_covers_everything_once() -> None:
    assert split_batches(70, 32) == [(0, 32), (32, 64), (64, 70)]
    assert split_batches(0, 8) == []


def test_progress_monitor_reports_phase_steps() -> None:
    class Base:  # the shape of trt.IProgressMonitor: a base class whose __init__ must run
        def __init__(self) -> None:
            self.inited = True

    class FakeTrt:
        IProgressMonitor = Base

    events = []
    m = make_progress_monitor(FakeTrt, lambda *e: events.append(e))
    assert m.inited
    m.phase_start("Building", None, 3)
    assert m.step_complete("Building", 0) is True
    m.phase_start("Tactics", "Building", 2)
    m.phase_finish("Tactics")
    m.phase_finish("Building")
    assert events == [("Building", None, 0, 3), ("Building", None, 1, 3),
                      ("Tactics", "Building", 0, 2), ("Tactics", None, 2, 2),
                      ("Building", None, 3, 3)]

    def interrupted(*_: object) -> None:
        raise KeyboardInterrupt

    # An exception in the display must not unwind through TensorRT's threads: it cancels.
    m = make_progress_monitor(FakeTrt, interrupted)
    m.phase_start("Building", None, 3)
    assert m.step_complete("Building", 0) is False


# --- sidecar and staleness -----------------------------------------------------------------


def make_sidecar(**kw) -> EngineSidecar:
    d = dict(
        model_name="colours", model_sha256="a" * 64, onnx_sha256="b" * 64, precision="fp16",
        batch_profile=BatchProfile(1, 32, 32),
        inputs=[TensorInfo("input", (-1, 3, 16, 16), "float32", "input")],
        outputs=[TensorInfo("prob", (-1, 4), "float32", "output")],
        layout="NCHW", tensorrt_version="10.13.0.35", gpu_name="NVIDIA L4",
        compute_capability=(8, 9),
    )
    d.update(kw)
    return EngineSidecar(**d)  # type: ignore[arg-type]


ENV = Environment("10.13.0.35", "NVIDIA L4", (8, 9))


def test_sidecar_round_trips_with_every_key(tmp_path: Path) -> None:
    sc = make_sidecar()
    engine = tmp_path / "m.engine"
    save_sidecar(engine, sc)
    data = json.loads((tmp_path / "m.engine.json").read_text())
    for key in ("model_sha256", "precision", "batch_profile", "inputs", "outputs", "layout",
                "tensorrt_version", "gpu_name", "compute_capability"):
        assert key in data
    assert data["inputs"][0] == {"name": "input", "shape": [-1, 3, 16, 16],
                                 "dtype": "float32", "mode": "input"}
    assert load_sidecar(engine) == sc


def test_bad_sidecars_are_user_errors(tmp_path: Path) -> None:
    engine = tmp_path / "m.engine"
    with pytest.raises(MilesDeepError, match="no sidecar"):
        load_sidecar(engine)
    (tmp_path / "m.engine.json").write_text("{not json")
    with pytest.raises(MilesDeepError, match="not valid JSON"):
        load_sidecar(engine)
    d = json.loads(make_sidecar().to_json())
    del d["gpu_name"]
    (tmp_path / "m.engine.json").write_text(json.dumps(d))
    with pytest.raises(MilesDeepError, match="lacks gpu_name"):
        load_sidecar(engine)


def test_staleness_rules() -> None:
    sc = make_sidecar()
    assert stale_reasons(sc, "a" * 64, ENV) == []
    assert "another model" in stale_reasons(sc, "c" * 64, ENV)[0]
    assert "TensorRT 10.13.0.35" in stale_reasons(
        sc, "a" * 64, Environment("10.14.1.48", "NVIDIA L4", (8, 9)))[0]
    cc = stale_reasons(sc, "a" * 64, Environment("10.13.0.35", "NVIDIA H100", (9, 0)))
    assert len(cc) == 1 and "compute capability 8.9" in cc[0]
    name = stale_reasons(sc, "a" * 64, Environment("10.13.0.35", "NVIDIA RTX 4090", (8, 9)))
    assert len(name) == 1 and "NVIDIA RTX 4090" in name[0]
    three = stale_reasons(sc, "c" * 64, Environment("11.0.0", "NVIDIA H100", (9, 0)))
    assert len(three) == 3


def test_a_stale_engine_is_refused_with_the_rebuild_command(tmp_path: Path) -> None:
    cmd = cache.rebuild_command("colours", "fp16", 32)
    with pytest.raises(MilesDeepError) as e:
        check_not_stale(make_sidecar(), "a" * 64, Environment("11.4.0.106", "NVIDIA L4", (8, 9)),
                        tmp_path / "m.engine", cmd)
    msg = str(e.value)
    assert "rebuild with: miles-deep build-engine --model colours --precision fp16 --batch 32" \
        in msg
    assert "\n" not in msg


# --- engine cache ------------------------------------------------------------------------


def test_engine_dir_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MILESDEEP_ENGINE_DIR", str(tmp_path / "e"))
    assert cache.engine_dir() == tmp_path / "e"
    monkeypatch.delenv("MILESDEEP_ENGINE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert cache.engine_dir() == tmp_path / "x" / "milesdeep" / "engines"


def test_engine_key_and_lookup(tmp_path: Path) -> None:
    sha = "0123456789abcdef" * 4
    assert cache.engine_key("open nsfw/1", sha, "fp16") == "open-nsfw-1-0123456789abcdef-fp16"
    with pytest.raises(ValueError):
        cache.engine_key("m", sha, "fp8")
    assert cache.find_engines("m", sha, tmp_path) == []
    for p in ("fp32", "int8"):
        cache.engine_path("m", sha, p, tmp_path).write_bytes(b"x")
    found = cache.find_engines("m", sha, tmp_path)
    assert [f.name for f in found] == [f"m-{sha[:16]}-int8.engine", f"m-{sha[:16]}-fp32.engine"]
    assert cache.find_engines("m", sha, tmp_path, "fp16") == []
    assert cache.find_engines("other", sha, tmp_path) == []
    tc = cache.timing_cache_path(tmp_path, "10.13.0.35", (8, 9))
    assert tc.parent == tmp_path and "sm89" in tc.name and "10.13.0.35" in tc.name


def test_locate_engine_uses_a_fresh_engine_and_refuses_a_stale_one(tmp_path: Path) -> None:
    from milesdeep.trt_engine.runner import engine_problem, locate_engine

    bundle = load_bundle(colour_bundle(tmp_path / "b"))
    engines = tmp_path / "engines"
    engines.mkdir()
    env = Environment("10.13.0.35", "NVIDIA L4", (8, 9))
    with pytest.raises(MilesDeepError, match="build one with: miles-deep build-engine"):
        locate_engine(bundle, env, directory=engines)
    path = cache.engine_path(bundle.name, bundle.sha256, "fp16", engines)
    path.write_bytes(b"engine")
    save_sidecar(path, make_sidecar(model_sha256=bundle.sha256))
    assert locate_engine(bundle, env, directory=engines)[0] == path
    newer = Environment("11.4.0.106", "NVIDIA L4", (8, 9))
    with pytest.raises(MilesDeepError, match="stale TensorRT engine.*rebuild with"):
        locate_engine(bundle, newer, directory=engines)
    assert engine_problem(bundle, newer, engine_path=path) is not None
    assert engine_problem(bundle, env, engine_path=path) is None


# --- precision variants ------------------------------------------------------------------


def test_fp16_variant_keeps_float32_io_and_the_scores(tmp_path: Path) -> None:
    import onnx
    import onnxruntime as ort

    from milesdeep.calibration.variants import fp16_variant
    from milesdeep.trt_engine.build import onnx_for_precision

    bundle = load_bundle(colour_bundle(tmp_path / "b"))
    half = onnx_for_precision(bundle, "fp16", None)
    assert half == fp16_variant(bundle)  # made once, then reused
    model = onnx.load(str(half))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)
    x = np.random.default_rng(0).normal(0, 1, (5, 3, 16, 16)).astype(np.float32)
    run = lambda p: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(  # noqa: E731
        None, {"input": x})[0]
    np.testing.assert_allclose(run(half), run(bundle.onnx_path), atol=5e-3)


def test_precision_needs_the_right_onnx(tmp_path: Path) -> None:
    from milesdeep.trt_engine.build import onnx_for_precision

    bundle = load_bundle(colour_bundle(tmp_path / "b"))
    assert onnx_for_precision(bundle, "fp32", None) == bundle.onnx_path
    with pytest.raises(MilesDeepError, match="needs --calibration"):
        onnx_for_precision(bundle, "int8", None)
    with pytest.raises(MilesDeepError, match="no model.int8.onnx"):
        onnx_for_precision(bundle, "int8", tmp_path)
    (tmp_path / "model.int8.onnx").write_bytes(b"q")
    assert onnx_for_precision(bundle, "int8", tmp_path) == tmp_path / "model.int8.onnx"
    with pytest.raises(MilesDeepError, match="only used with --precision int8"):
        onnx_for_precision(bundle, "fp16", tmp_path)
    with pytest.raises(MilesDeepError, match="unknown precision"):
        onnx_for_precision(bundle, "bf16", None)


def test_timing_caches_are_per_gpu_model(tmp_path: Path) -> None:
    """Two GPUs of one compute capability time tactics differently: a shared cache was
    refused by TensorRT (set_timing_cache False), and the build failed after writing."""
    from milesdeep.trt_engine import cache

    a = cache.timing_cache_path(tmp_path, "10.13.0.35", (8, 6), "NVIDIA GeForce RTX 3090")
    b = cache.timing_cache_path(tmp_path, "10.13.0.35", (8, 6), "NVIDIA A40")
    assert a != b and "RTX-3090" in a.name and "sm86" in a.name


def test_nvdec_planes_are_viewed_with_byte_strides() -> None:
    """PyNvVideoCodec's plane strides count elements: for P016 (2-byte samples) the views
    read the wrong memory. They are made from the (packed) shape, in bytes."""
    from types import SimpleNamespace

    from milesdeep.pipeline.decode_nvdec import _view

    made: dict = {}

    class FakeArray:
        def __init__(self, shape, dtype, memptr, strides):  # noqa: ANN001
            made.update(shape=shape, strides=strides, size=memptr.mem.size)
            self.ndim, self.shape = len(shape), shape

        def __getitem__(self, key):  # noqa: ANN001
            return ("squeezed", self.shape[:2])

    fake = SimpleNamespace(
        dtype=np.dtype, ndarray=FakeArray,
        cuda=SimpleNamespace(UnownedMemory=lambda ptr, size, owner: SimpleNamespace(size=size),
                             MemoryPointer=lambda mem, off: SimpleNamespace(mem=mem)))
    luma = SimpleNamespace(shape=[4, 6, 1], stride=[6, 1, 1], data=1000)
    chroma = SimpleNamespace(shape=[2, 3, 2], stride=[6, 2, 1], data=2000)
    assert _view(fake, None, luma, np.uint16) == ("squeezed", (4, 6))
    assert made["strides"] == (12, 2, 2) and made["size"] == 4 * 6 * 2
    _view(fake, None, chroma, np.uint16)
    assert made["strides"] == (12, 4, 2) and made["size"] == 2 * 3 * 2 * 2
    _view(fake, None, chroma, np.uint8)  # NV12: what the library's strides said
    assert made["strides"] == (6, 2, 1)
