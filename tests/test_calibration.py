"""Calibration: frames across videos and time, FP16 / INT8 variants, and the agreement report.

The fast tests use the tiny colour classifier; one end-to-end test runs `miles-deep calibrate`
with the default model (open-nsfw) on short generated videos and recomputes every figure of
the report from the saved held-out set with its own ONNX Runtime sessions.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from milesdeep.calibration.calibrate import FP16_ONNX, INT8_ONNX, calibrate
from milesdeep.calibration.frames import (
    frames_at,
    load_frames,
    plan_samples,
    sample_frames,
    save_frames,
)
from milesdeep.calibration.report import REPORT_FILE, compare, cut_mask, evaluate
from milesdeep.calibration.variants import fp16_variant, make_fp16, make_int8
from milesdeep.cli import run_app
from milesdeep.errors import MilesDeepError
from milesdeep.models.bundle import load_bundle
from milesdeep.pipeline.decode import PyAVSource
from milesdeep.pipeline.planner import PlanParams
from milesdeep.pipeline.preprocess import preprocess_frame
from tests import videos as V
from tests.testdata import colour_bundle, colour_video

# --------------------------------------------------------------------------- helpers


def session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def run_onnx(path: Path, x: np.ndarray) -> np.ndarray:
    s = session(path)
    return np.asarray(s.run(None, {s.get_inputs()[0].name: x.astype(np.float32)})[0])


def io_types(model: onnx.ModelProto) -> list[int]:
    return [v.type.tensor_type.elem_type for v in [*model.graph.input, *model.graph.output]]


def opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


@pytest.fixture(scope="module")
def colours(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    d = tmp_path_factory.mktemp("colours")
    bundle = load_bundle(colour_bundle(d / "bundle"))
    v1 = colour_video(d / "a.mp4", ["red"] * 7 + ["blue"] * 5 + ["gray"] * 6, fps=5)
    v2 = colour_video(d / "b.mp4", ["green"] * 8 + ["red"] * 6, fps=5)
    return bundle, [v1, v2]


# --------------------------------------------------------------------------- planning


def test_plan_shares_the_budget_and_keeps_held_out_runs_contiguous() -> None:
    plan = plan_samples([3000, 1000], 400, run_length=60)
    assert len(plan.calibration) == 200 and plan.held_out_count == 200
    per_video = [sum(r.count for r in plan.runs if r.video == v) for v in (0, 1)]
    assert per_video == [150, 50]  # in proportion to the videos' lengths
    assert all(r.count <= 60 for r in plan.runs)
    assert [r.offset for r in plan.runs] == list(np.cumsum([0] + [r.count for r in plan.runs])[:-1])
    held = {(r.video, r.start + k) for r in plan.runs for k in range(r.count)}
    assert len(held) == 200 and not held & set(plan.calibration)
    # Spread across time: runs and calibration samples reach both ends of each video.
    starts = [r.start for r in plan.runs if r.video == 0]
    assert min(starts) < 750 and max(starts) > 2250
    cal0 = sorted(i for v, i in plan.calibration if v == 0)
    assert cal0[0] < 100 and cal0[-1] > 2900 and len(set(cal0)) == len(cal0)


def test_plan_takes_every_sample_of_short_videos() -> None:
    plan = plan_samples([12, 9], 512)
    assert len(plan.calibration) + plan.held_out_count == 21
    with pytest.raises(MilesDeepError, match="at least 2"):
        plan_samples([10], 1)


# --------------------------------------------------------------------------- decoding


@pytest.mark.parametrize("gop, bframes, ext", [(25, 2, "mp4"), (90, 0, "mp4"), (25, 2, "ts")])
def test_seeking_gives_the_pipelines_frames(tmp_path: Path, gop: int, bframes: int,
                                            ext: str) -> None:
    """frames_at (seek + decode forward) picks the same picture as the pipeline's source for
    every sample time, near (no seek) and far (seek) apart, with B-frames, and with keyframes
    further apart (13 s) than the distance at which it prefers seeking to decoding. MPEG-TS
    has no index: its seeks land near the time, not on the keyframe before it."""
    fps, seconds = 7, 30
    frames = np.full((fps * seconds, 90, 160, 3), 40, np.uint8)
    for i in range(len(frames)):
        V.draw_code(frames[i], i)
    path = V.encode_video(tmp_path / f"code.{ext}", frames, fps, gop=gop, bframes=bframes)
    for rate in (1.0, 2.5):
        ref = {s.index: s.frame.y.copy() for s in PyAVSource(path, rate=rate)}
        wanted = sorted({0, 1, 2, 9, 10, 11, 20, len(ref) - 2, len(ref) - 1, *range(40, 47)}
                        & set(ref))
        got = list(frames_at(path, [i / rate for i in wanted]))
        assert len(got) == len(wanted)
        for i, (t, frame) in zip(wanted, got):
            assert t == pytest.approx(i / rate)
            assert np.array_equal(frame.y, ref[i]), f"sample {i} at rate {rate}"


def test_frame_set_is_preprocessed_as_the_pipeline_does_and_round_trips(
        tmp_path: Path, colours: tuple) -> None:
    bundle, vids = colours
    fs = sample_frames(vids, bundle.input, frames=20)
    assert len(fs.calibration) == 10 and len(fs.held_out) == 10
    ref = {}
    for v, path in enumerate(vids):
        for s in PyAVSource(path, rate=1.0):
            ref[v, s.index] = preprocess_frame(s.frame, bundle.input)
    for row, (v, i) in enumerate(fs.calibration_source):
        assert np.array_equal(fs.calibration[row], ref[int(v), int(i)])
    for run in fs.runs:
        for k in range(run.count):
            assert np.array_equal(fs.held_out[run.offset + k], ref[run.video, run.start + k])
    save_frames(fs, tmp_path)
    back = load_frames(tmp_path)
    assert back.videos == fs.videos and back.runs == fs.runs and back.spec == fs.spec
    assert np.array_equal(back.held_out, fs.held_out)
    assert np.array_equal(back.calibration, fs.calibration)


# --------------------------------------------------------------------------- variants


def test_variants_are_valid_onnx_that_onnx_runtime_runs(tmp_path: Path, colours: tuple) -> None:
    bundle, _ = colours
    x = np.random.default_rng(0).uniform(-2, 2, (24, 3, 16, 16)).astype(np.float32)
    fp16 = make_fp16(bundle.onnx_path, tmp_path / "fp16.onnx")
    int8 = make_int8(bundle.onnx_path, tmp_path / "int8.onnx", x[:16], "entropy", batch=4)
    ref = run_onnx(bundle.onnx_path, x[16:])
    for path in (fp16, int8):
        model = onnx.load(str(path))
        onnx.checker.check_model(model, full_check=True)
        assert opset(model) >= 13
        assert io_types(model) == [onnx.TensorProto.FLOAT] * 2  # float32 in and out
        out = run_onnx(path, x[16:])
        assert out.dtype == np.float32 and out.shape == ref.shape
        assert np.array_equal(out.argmax(1), ref.argmax(1))
    half = onnx.load(str(fp16))
    assert {i.data_type for i in half.graph.initializer} == {onnx.TensorProto.FLOAT16}
    q = onnx.load(str(int8))
    qnodes = [n for n in q.graph.node if n.op_type == "QuantizeLinear"]
    assert qnodes and any(n.op_type == "DequantizeLinear" for n in q.graph.node)
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in q.graph.initializer}
    for n in qnodes:  # symmetric int8: every zero point is an int8 zero (TensorRT's rule)
        zp = inits[n.input[2]]
        assert zp.dtype == np.int8 and not zp.any()


def test_int8_of_a_fixed_batch_model_calibrates_in_its_batches(tmp_path: Path) -> None:
    """A model with a fixed batch of 1 failed in the quantizer (fed batches of 16); one with
    nothing INT8 quantizes failed with 'Histogram has not been collected'."""
    from onnx import TensorProto, helper

    from tests.test_bundles import tiny_onnx

    x = np.random.default_rng(0).uniform(-2, 2, (5, 3, 8, 6)).astype(np.float32)
    fixed = tmp_path / "fixed.onnx"
    tiny_onnx(fixed, [1, 3, 8, 6])
    int8 = make_int8(fixed, tmp_path / "int8.onnx", x, "entropy")
    assert run_onnx(int8, x[:1]).shape == (1, 3)
    plain = tmp_path / "plain.onnx"
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["x"], ["p"]),
         helper.make_node("Flatten", ["p"], ["y"], axis=1)], "plain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(plain))
    with pytest.raises(MilesDeepError, match="no layer INT8 quantizes .* use --precision fp16"):
        make_int8(plain, tmp_path / "plain8.onnx", x)


def test_fp16_variant_is_made_once_for_build_engine(tmp_path: Path, colours: tuple) -> None:
    from milesdeep.trt_engine.build import onnx_for_precision

    bundle, _ = colours
    first = onnx_for_precision(bundle, "fp16", None, scratch_dir=tmp_path)
    assert first == fp16_variant(bundle, tmp_path) and first.parent == tmp_path
    mtime = first.stat().st_mtime_ns
    assert onnx_for_precision(bundle, "fp16", None, scratch_dir=tmp_path) == first
    assert first.stat().st_mtime_ns == mtime  # reused, not made again


def test_bad_calibration_input_is_refused(tmp_path: Path, colours: tuple) -> None:
    bundle, _ = colours
    with pytest.raises(MilesDeepError, match="unknown calibration method"):
        make_int8(bundle.onnx_path, tmp_path / "x.onnx", np.zeros((2, 3, 16, 16)), "kl")
    with pytest.raises(MilesDeepError, match="calibration frames are"):
        make_int8(bundle.onnx_path, tmp_path / "x.onnx", np.zeros((2, 3, 8, 8)), "minmax")
    assert not (tmp_path / "x.onnx").exists()


# --------------------------------------------------------------------------- figures


def test_compare_counts_agreement_and_cut_decisions_as_documented() -> None:
    from milesdeep.calibration.frames import Run

    labels = ["a", "b"]
    # FP32: a 10-sample run where "a" wins throughout -> one cut of "a" over all 10 samples.
    p32 = np.tile([0.9, 0.1], (10, 1)).astype(np.float32)
    pv = p32.copy()
    pv[4:7] = [0.2, 0.8]  # the variant flips three samples to "b", breaking the cut in two
    pv[0, 0] = 0.95
    runs = [Run(video=0, start=0, count=10, offset=0)]
    params = PlanParams()
    fig = compare(p32, pv, runs, labels, params)
    assert fig["top1_agreement"] == pytest.approx(0.7)
    assert fig["max_abs_dp"] == pytest.approx(0.7)
    assert fig["mean_abs_dp"] == pytest.approx((0.05 + 3 * 0.7) / 10)
    a, b = cut_mask(p32, labels, params), cut_mask(pv, labels, params)
    assert a[0].all() and not a[1].any()
    # Variant: samples 0-3 start a cut of "a" that the 3-sample gap (> max_gap 2) closes at
    # 0..3, which is too short (min_cut 4) -> dropped; 7-9 also too short; "b" 4-6 too short.
    assert not b.any()
    assert fig["cut_decisions"] == 20 and fig["cut_disagreements"] == 10
    assert fig["cut_agreement"] == pytest.approx(0.5)
    assert fig["per_label"] == {"a": 0.0, "b": 1.0}


def test_a_disagreeing_variant_gets_a_loud_warning(tmp_path: Path, colours: tuple,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """A 'variant' that swaps red and blue (a BGR model given RGB input) must be flagged."""
    bundle, vids = colours
    fs = sample_frames(vids, bundle.input, frames=32)
    swapped = load_bundle(colour_bundle(tmp_path / "bgr", channels="BGR")).onnx_path
    report, probs = evaluate(bundle, {"int8": swapped}, fs)
    fig = report.variants["int8"]
    assert fig.top1_agreement < 0.98 and fig.warning and "INT8" in fig.warning
    assert fig.top1_agreement == pytest.approx(
        float((probs["int8"].argmax(1) == probs["fp32"].argmax(1)).mean()))
    assert fig.cut_agreement < 1.0


# --------------------------------------------------------------------------- the command


def test_calibrate_reuses_its_frames_and_feeds_build_engine(tmp_path: Path, colours: tuple,
                                                           capsys: pytest.CaptureFixture[str]
                                                           ) -> None:
    from milesdeep.trt_engine.build import onnx_for_precision

    bundle, vids = colours
    out = tmp_path / "cal"
    first = calibrate(bundle, vids, out, precision="both", frames=16, method="minmax")
    assert not first.reused_frames and set(first.variants) == {"fp16", "int8"}
    second = calibrate(bundle, vids, out, precision="int8", frames=16, method="percentile")
    assert second.reused_frames
    assert np.array_equal(second.frames.held_out, first.frames.held_out)
    assert calibrate(bundle, vids, out, precision="int8", frames=12).reused_frames is False
    assert onnx_for_precision(bundle, "int8", out) == out / INT8_ONNX
    # The folder holds what its report describes: an FP16-only run on other frames left the
    # earlier INT8 model where build-engine --calibration takes it from.
    fp16 = calibrate(bundle, vids[:1], out, precision="fp16", frames=12)
    assert set(fp16.variants) == {"fp16"} and not (out / INT8_ONNX).exists()
    assert set(fp16.report.variants) == {"fp16"}
    # The same frames again, INT8 only: the FP16 model of the earlier run goes too.
    int8 = calibrate(bundle, vids[:1], out, precision="int8", frames=12)
    assert int8.reused_frames and not (out / FP16_ONNX).exists()


def test_calibrate_command_refuses_bad_input_in_one_line(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    assert run_app(["calibrate", "-o", str(tmp_path / "c")]) == 2  # usage errors: 2
    assert "no video given" in capsys.readouterr().err
    assert run_app(["calibrate", str(tmp_path / "missing.mp4"), "-o", str(tmp_path / "c")]) == 1
    err = capsys.readouterr().err
    assert "no such file" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1  # not "sampling 512 frames" first
    video = colour_video(tmp_path / "v.mp4", ["red"] * 3, fps=5)
    assert run_app(["calibrate", str(video), "--method", "kl", "-o", str(tmp_path / "c")]) == 2
    assert "--method" in capsys.readouterr().err
    assert not (tmp_path / "c" / INT8_ONNX).exists()
    named = tmp_path / "calibration.npz"  # a video named like an output, in the output folder
    named.write_bytes(video.read_bytes())
    assert run_app(["calibrate", str(named), "--frames", "2", "-o", str(tmp_path)]) == 1
    assert "has the name of one of calibrate's outputs" in capsys.readouterr().err
    assert named.read_bytes() == video.read_bytes()


def test_calibrate_default_model_report_recomputes_from_held_out_set(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`miles-deep calibrate` with the default model on two short generated videos; every
    figure of the report is recomputed here from held_out.npz with fresh ORT sessions."""
    v1 = V.two_class_video(tmp_path / "a.mp4", "AABBBAABBAAB", seed=1)
    v2 = V.two_class_video(tmp_path / "b.mp4", "BBAAABBBAAAB", seed=2, colour=(30, 160, 60))
    out = tmp_path / "cal"
    assert run_app(["calibrate", str(v1), str(v2), "--frames", "16", "--method", "minmax",
                    "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert "top-1 agreement" in err and "cut decisions" in err
    report = json.loads((out / REPORT_FILE).read_text())
    assert report["model"] == "open-nsfw" and set(report["variants"]) == {"fp16", "int8"}

    with np.load(out / "held_out.npz") as z:
        held, runs = z["tensors"], z["runs"]
    assert held.shape == (8, 224, 224, 3) and runs[:, 2].sum() == 8
    from milesdeep.models.builtin import open_nsfw

    p32 = run_onnx(open_nsfw().onnx_path, held)
    win = p32.argmax(1)
    params = PlanParams()
    for name, file in (("fp16", FP16_ONNX), ("int8", INT8_ONNX)):
        onnx.checker.check_model(onnx.load(str(out / file)))
        pv = run_onnx(out / file, held)
        fig = report["variants"][name]
        assert fig["samples"] == 8
        assert fig["top1_agreement"] == pytest.approx(float((pv.argmax(1) == win).mean()))
        dp = np.abs(pv[np.arange(8), win] - p32[np.arange(8), win])
        assert fig["mean_abs_dp"] == pytest.approx(float(dp.mean()), abs=1e-6)
        assert fig["max_abs_dp"] == pytest.approx(float(dp.max()), abs=1e-6)
        same = total = 0
        for _video, _start, count, offset in runs:
            sl = slice(offset, offset + count)
            a = cut_mask(p32[sl], ["sfw", "nsfw"], params)
            b = cut_mask(pv[sl], ["sfw", "nsfw"], params)
            same += int((a == b).sum())
            total += a.size
        assert fig["cut_decisions"] == total == 16
        assert fig["cut_agreement"] == pytest.approx(same / total)
    check_default_model_variants(out / FP16_ONNX, out / INT8_ONNX)


def check_default_model_variants(fp16: Path, int8: Path) -> None:
    """The default model is opset 9; its variants are opset 13 with float32 I/O, FP16 keeps
    Softmax float32, and INT8 quantizes every convolution's weights per output channel."""
    from milesdeep.models.builtin import open_nsfw

    assert opset(onnx.load(str(open_nsfw().onnx_path))) == 9
    half = onnx.load(str(fp16))
    assert opset(half) == 13 and io_types(half) == [onnx.TensorProto.FLOAT] * 2
    soft = next(n for n in half.graph.node if n.op_type == "Softmax")
    producer = {o: n for n in half.graph.node for o in n.output}[soft.input[0]]
    assert producer.op_type == "Cast" and producer.attribute[0].i == onnx.TensorProto.FLOAT
    assert soft.output[0] == half.graph.output[0].name  # float32 straight to the output
    q = onnx.load(str(int8))
    assert opset(q) == 13 and io_types(q) == [onnx.TensorProto.FLOAT] * 2
    assert {n.domain for n in q.graph.node} <= {"", "ai.onnx"}  # standard ops only (TensorRT)
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in q.graph.initializer}
    conv_w = {n.input[1] for n in q.graph.node if n.op_type == "Conv"}
    dq = [n for n in q.graph.node if n.op_type == "DequantizeLinear" and n.output[0] in conv_w]
    assert len(dq) == 53  # every convolution's weights
    assert all(inits[n.input[1]].size > 1 for n in dq)  # one scale per output channel
