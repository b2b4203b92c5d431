"""GPU-only checks (`pytest -m gpu`): they skip on machines without an NVIDIA GPU, TensorRT,
CuPy, pycuda and PyNvVideoCodec, and run with one command on a machine that has them:

    pip install -e '.[gpu,dev]' && python -m pytest -m gpu tests/test_gpu.py -v

They compare the GPU twin with the CPU twin on the same inputs: build-engine, the engine against
ONNX Runtime on the same batch, NVDEC frames against PyAV frames, and `tag --backend gpu`
against `--backend cpu`.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from milesdeep.pipeline.backend import probe_gpu

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def gpu_ready() -> None:
    probe = probe_gpu()
    if not probe.usable:
        from milesdeep.pipeline.backend import missing_line

        pytest.skip(f"GPU tests: {missing_line(probe)}")


@pytest.fixture(scope="module")
def engine_dir(tmp_path_factory: pytest.TempPathFactory, gpu_ready: None) -> Path:
    return tmp_path_factory.mktemp("engines")


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory, gpu_ready: None) -> Path:
    from tests.testdata import colour_bundle

    return colour_bundle(tmp_path_factory.mktemp("bundle") / "colours")


def cli(*args: str, env_dir: Path) -> subprocess.CompletedProcess:
    import os

    code = ("import sys; from milesdeep.cli import main; "
            "sys.argv = ['miles-deep', *sys.argv[1:]]; main()")
    env = {**os.environ, "MILESDEEP_ENGINE_DIR": str(env_dir)}
    return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True,
                          text=True, timeout=900, env=env)


@pytest.fixture(scope="module")
def built_engine(bundle_dir: Path, engine_dir: Path) -> Path:
    p = cli("build-engine", "--model", str(bundle_dir), "--precision", "fp32", "--batch", "8",
            env_dir=engine_dir)
    assert p.returncode == 0, p.stderr
    engines = sorted(engine_dir.glob("*.engine"))
    assert len(engines) == 1
    return engines[0]


def test_build_engine_writes_engine_sidecar_and_timing_cache(built_engine: Path,
                                                              bundle_dir: Path) -> None:
    from milesdeep.models.bundle import load_bundle
    from milesdeep.trt_engine.sidecar import load_sidecar

    sc = load_sidecar(built_engine)
    bundle = load_bundle(bundle_dir)
    assert sc.model_sha256 == bundle.sha256
    assert (sc.batch_profile.min, sc.batch_profile.opt, sc.batch_profile.max) == (1, 8, 8)
    assert sc.inputs[0].name == "input" and sc.layout == "NCHW"
    assert list(built_engine.parent.glob("timing-sm*.cache"))


def test_engine_matches_onnx_runtime_on_the_same_batch(built_engine: Path,
                                                        bundle_dir: Path) -> None:
    from milesdeep.models.bundle import load_bundle
    from milesdeep.pipeline.infer import OrtClassifier
    from milesdeep.trt_engine.cuda_context import GpuContext
    from milesdeep.trt_engine.runner import TrtClassifier

    bundle = load_bundle(bundle_dir)
    x = np.random.default_rng(1).normal(0, 1, (19, *bundle.input.shape)).astype(np.float32)
    want = OrtClassifier(bundle, threads=1).infer(x)
    with GpuContext(0) as gpu, TrtClassifier(built_engine, bundle, gpu) as trt_clf:
        got = trt_clf.infer(x)  # 19 > max batch 8: split into 8 + 8 + 3
        import cupy

        got_dev = trt_clf.infer(cupy.asarray(x[:5]))
    np.testing.assert_allclose(got, want, atol=1e-4)
    np.testing.assert_allclose(got_dev, want[:5], atol=1e-4)


def test_nvdec_frames_equal_pyav_frames(tmp_path: Path, gpu_ready: None) -> None:
    import cupy

    from milesdeep.pipeline.decode import PyAVSource
    from milesdeep.pipeline.decode_nvdec import NvdecSource
    from milesdeep.trt_engine.cuda_context import GpuContext
    from tests.testdata import encode_frames

    rng = np.random.default_rng(2)
    frames = [rng.integers(0, 256, (64, 96, 3), dtype=np.uint8) for _ in range(30)]
    pts = [k * 70 + (k % 4) * 9 for k in range(30)]  # variable frame rate
    path = encode_frames(tmp_path / "v.mp4", frames, pts, gop=8)
    cpu = list(PyAVSource(path, rate=3.0))
    with GpuContext(0) as gpu:
        src = NvdecSource(path, gpu, rate=3.0)
        with gpu.activated():
            gpu_samples = [(s.index, s.pts, cupy.asnumpy(s.frame.y), cupy.asnumpy(s.frame.uv))
                           for s in src]
        # The decoder's own time->index agrees with ours at these constant-rate-ish times
        # only where the rate is constant; our pts-based plan must match PyAV everywhere.
    assert [(i, round(t, 6)) for i, t, _, _ in gpu_samples] == \
        [(s.index, round(s.pts, 6)) for s in cpu]
    for (_, _, y, uv), s in zip(gpu_samples, cpu):
        # Same bitstream, same (bit-exact) H.264 decoding.
        np.testing.assert_array_equal(y, s.frame.y)
        np.testing.assert_array_equal(uv, s.frame.uv)


def test_decoder_time_to_index_agrees_at_constant_rate(tmp_path: Path, gpu_ready: None) -> None:
    import PyNvVideoCodec as nvc

    from milesdeep.pipeline.decode_nvdec import demux_index, plan_runs
    from milesdeep.trt_engine.cuda_context import GpuContext
    from tests.testdata import colour_video

    path = colour_video(tmp_path / "c.mp4", ["red", "green", "blue", "gray", "red"], fps=10)
    idx = demux_index(path)
    runs = plan_runs(idx.times, 1.0, 5.0, idx.end_time)
    with GpuContext(0) as gpu, gpu.activated():
        dec = nvc.SimpleDecoder(str(path), gpu_id=0, cuda_context=gpu.context_handle,
                                cuda_stream=gpu.stream_ptr, use_device_memory=True)
        for r in runs:
            for i in range(r.first, r.stop):
                assert dec.get_index_from_time_in_seconds(float(i)) == r.frame


def test_tag_gpu_matches_tag_cpu(tmp_path: Path, bundle_dir: Path, built_engine: Path) -> None:
    from milesdeep.pipeline.predictions import read_predictions_csv
    from tests.testdata import colour_video

    video = colour_video(tmp_path / "v.mp4", ["red", "red", "green", "blue", "gray", "red"])
    outs = {}
    for backend in ("cpu", "gpu"):
        out = tmp_path / backend
        p = cli("tag", str(video), "--model", str(bundle_dir), "--backend", backend,
                "-o", str(out), env_dir=built_engine.parent)
        assert p.returncode == 0, p.stderr
        assert f"backend: {backend}" in p.stderr
        outs[backend] = out
    cpu = read_predictions_csv(outs["cpu"] / "v.predictions.csv")
    gpu = read_predictions_csv(outs["gpu"] / "v.predictions.csv")
    np.testing.assert_allclose(gpu.probs, cpu.probs, atol=2e-3)
    assert (outs["cpu"] / "v.tag").read_text() == (outs["gpu"] / "v.tag").read_text()


def test_build_engine_refuses_a_stale_engine(built_engine: Path, bundle_dir: Path) -> None:
    import json

    sc_path = Path(str(built_engine) + ".json")
    data = json.loads(sc_path.read_text())
    data["tensorrt_version"] = "0.0.0"
    stale = built_engine.parent / "stale"
    stale.mkdir()
    (stale / built_engine.name).write_bytes(built_engine.read_bytes())
    (stale / sc_path.name).write_text(json.dumps(data))
    video_dir = stale / "v"
    from tests.testdata import colour_video

    video = colour_video(video_dir.with_suffix(".mp4"), ["red", "green"])
    p = cli("tag", str(video), "--model", str(bundle_dir), "--backend", "gpu", env_dir=stale)
    assert p.returncode == 1
    assert "rebuild with: miles-deep build-engine" in p.stderr
