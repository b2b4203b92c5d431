"""Caffe import: parity with OpenCV's independent Caffe reader (cv2.dnn.readNetFromCaffe).

Each test writes a .caffemodel with random weights through our schema, runs the same files in
OpenCV's DNN module and our ONNX under ONNX Runtime, and compares the outputs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from milesdeep.errors import MilesDeepError
from milesdeep.models.caffe import bundle_from_caffe, find_model_folder, import_caffe
from milesdeep.models.caffe.reader import read_mean, read_prototxt
from milesdeep.models.caffe.to_onnx import caffe_pooled_size, convert, param_shapes

SHARED = Path(__file__).resolve().parents[2] / "shared" / "miles_deep_model"
TOL = 1e-4


def fill_weights(net, rng: np.random.Generator, bn_factor: float = 0.999,
                 factor_blob: float | None = None) -> None:
    """Random parameter blobs of the shapes each layer needs, written into `net` in place.

    Convolution and InnerProduct weights are N(0, 1/fan_in) (so activations stay O(1) through
    a deep net), BatchNorm statistics are stored as Caffe does (running sums times the scale
    factor blob; `factor_blob` overrides that blob alone), Scale gammas and betas are far from
    1 and 0.
    """
    shapes = param_shapes(net, Path("net.prototxt"))
    by_name = {layer.name: layer for layer in net.layer}
    for name, wanted in shapes.items():
        layer = by_name[name]
        if layer.type == "BatchNorm":
            c = wanted[0][0]
            arrs = [rng.normal(0, 0.5, c) * bn_factor, rng.uniform(0.5, 2.0, c) * bn_factor,
                    np.array([bn_factor if factor_blob is None else factor_blob])]
        elif layer.type == "Scale":
            arrs = [rng.uniform(0.5, 1.5, wanted[0])]
            arrs += [rng.normal(0, 0.2, s) for s in wanted[1:]]
        else:
            w = wanted[0]
            fan_in = int(np.prod(w[1:]))  # Convolution (O, I, kh, kw); InnerProduct (N, K)
            if layer.type == "InnerProduct" and layer.inner_product_param.transpose:
                fan_in = w[0]  # stored (K, N)
            first = layer.bottom[0] == "data" and layer.type == "Convolution"
            arrs = [rng.normal(0, np.sqrt(1.0 / fan_in) / (100.0 if first else 1.0), w)]
            arrs += [rng.normal(0, 0.1, s) for s in wanted[1:]]
        del layer.blobs[:]
        for a in arrs:
            blob = layer.blobs.add()
            blob.shape.dim.extend(a.shape)
            blob.data.extend(np.asarray(a, np.float32).ravel().tolist())  # fast path


def write_caffemodel(prototxt: Path, out: Path, seed: int, **kw) -> object:
    net = read_prototxt(prototxt)
    fill_weights(net, np.random.default_rng(seed), **kw)
    out.write_bytes(net.SerializeToString())
    return net


def run_opencv(prototxt: Path, caffemodel: Path, x: np.ndarray) -> np.ndarray:
    cv2 = pytest.importorskip("cv2")
    net = cv2.dnn.readNetFromCaffe(str(prototxt), str(caffemodel))
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    if hasattr(net, "enableWinograd"):
        net.enableWinograd(False)  # Winograd convolution trades accuracy for speed
    net.setInput(x)
    return np.asarray(net.forward(), np.float32)


def run_ours(prototxt: Path, caffemodel: Path, x: np.ndarray, vector: bool) -> np.ndarray:
    from milesdeep.models.caffe.reader import read_caffemodel

    conv = convert(read_prototxt(prototxt), read_caffemodel(caffemodel), prototxt,
                   vector_output=vector)
    sess = ort.InferenceSession(conv.model.SerializeToString(),
                                providers=["CPUExecutionProvider"])
    return sess.run(None, {conv.input_name: x})[0]


@pytest.fixture(scope="module")
def miles_deep_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random weights for Miles Deep's own definition (resnet50_1by2), written once."""
    if not SHARED.is_dir():
        pytest.skip("../shared/miles_deep_model is absent")
    path = tmp_path_factory.mktemp("miles_deep") / "weights.caffemodel"
    write_caffemodel(SHARED / "deploy.prototxt", path, seed=1)
    return path


def test_input_shape_dynamic_and_mean(miles_deep_weights: Path) -> None:
    assert read_mean(SHARED / "mean.binaryproto") == pytest.approx((112.71, 123.17, 148.36),
                                                                   abs=0.01)
    proto = SHARED / "deploy.prototxt"
    from milesdeep.models.caffe.reader import read_caffemodel

    conv = convert(read_prototxt(proto), read_caffemodel(miles_deep_weights), proto)
    dims = conv.model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, 224, 224]
    assert conv.ends_in_softmax and conv.num_outputs == 6
    assert conv.model.opset_import[0].version >= 13


def test_miles_deep_net_matches_opencv(miles_deep_weights: Path) -> None:
    """The full resnet50_1by2 with non-trivial BatchNorm statistics, against OpenCV."""
    proto = SHARED / "deploy.prototxt"
    mean = np.array(read_mean(SHARED / "mean.binaryproto"), np.float32).reshape(1, 3, 1, 1)
    yy, xx = np.mgrid[0:224, 0:224].astype(np.float32)
    img1 = np.stack([xx, yy, 255 - xx])  # BGR ramps
    img2 = np.stack([(xx // 16 % 2) * 255, yy * 0 + 40, (yy // 28 % 2) * 220])  # blocks
    x = np.ascontiguousarray(np.stack([img1, img2]) - mean, np.float32)
    ours = run_ours(proto, miles_deep_weights, x, vector=True)
    ref = run_opencv(proto, miles_deep_weights, x)
    assert ours.shape == ref.shape == (2, 6)
    assert np.allclose(ours.sum(axis=1), 1, atol=1e-5)
    assert ours.max() < 0.99 and not np.allclose(ours[0], ours[1], atol=1e-3)  # not trivial
    diff = float(np.abs(ours - ref).max())
    print(f"miles_deep resnet50_1by2: largest probability difference {diff:.3g}")
    assert diff < TOL


INPUT = 'layer {{ name: "data" type: "Input" top: "data" ' \
        'input_param {{ shape {{ dim: 2 dim: 3 dim: {h} dim: {w} }} }} }}\n'


def _conv(name: str, bottom: str, params: str, top: str | None = None) -> str:
    return (f'layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" '
            f'top: "{top or name}" convolution_param {{ {params} }} }}\n')


def _layer(name: str, type_: str, bottoms: list[str], top: str, params: str = "") -> str:
    b = " ".join(f'bottom: "{x}"' for x in bottoms)
    return f'layer {{ name: "{name}" type: "{type_}" {b} top: "{top}" {params} }}\n'


SOFTMAX = 'layer { name: "prob" type: "Softmax" bottom: "%s" top: "prob" }\n'

# name: (layers after the input, the last top, input height and width)
SMALL_NETS: dict[str, tuple[str, str, tuple[int, int]]] = {
    # every spelling of the geometry, groups, dilation, bias off
    "conv_spellings": (
        _conv("c1", "data", "num_output: 8 kernel_h: 3 kernel_w: 5 stride_h: 2 stride_w: 1 "
                            "pad_h: 1 pad_w: 2")
        + _conv("c2", "c1", "num_output: 8 kernel_size: 3 group: 4 dilation: 2 pad: 2 "
                            "bias_term: false")
        + _conv("c3", "c2", "num_output: 6 kernel_size: 3 kernel_size: 1 stride: 2 stride: 1 "
                            "pad: 0 pad: 1 group: 2"), "c3", (17, 19)),
    "batchnorm_scale": (
        _conv("c1", "data", "num_output: 6 kernel_size: 3")
        + _layer("bn1", "BatchNorm", ["c1"], "c1", "batch_norm_param { eps: 0.001 }")
        + _layer("sc1", "Scale", ["c1"], "c1", "scale_param { bias_term: true }")
        + _layer("bn2", "BatchNorm", ["c1"], "c1")
        + _layer("sc2", "Scale", ["c1"], "c1")  # fused, without bias
        + _layer("relu", "ReLU", ["c1"], "c1", "relu_param { negative_slope: 0.1 }")
        + _layer("sc3", "Scale", ["c1"], "s3", "scale_param { bias_term: true }")  # alone
        + _layer("sc4", "Scale", ["s3"], "s4")  # alone, no bias
        + _layer("relu2", "ReLU", ["s4"], "s4")
        + _layer("bn3", "BatchNorm", ["s4"], "b3"), "b3", (9, 11)),  # alone
    # ceil-mode sizes with and without padding (14x15 input: MAX 3/2 pad 1 gives 8x8, not
    # 7x8; AVE 3/2 pad 1 on 8x8 overhangs the padded input), global pooling
    "pooling_ceil": (
        _conv("c1", "data", "num_output: 4 kernel_size: 1")
        + _layer("mp", "Pooling", ["c1"], "mp", "pooling_param { pool: MAX kernel_size: 3 "
                                                "stride: 2 pad: 1 }")
        + _layer("ap", "Pooling", ["mp"], "ap", "pooling_param { pool: AVE kernel_size: 3 "
                                                "stride: 2 pad: 1 }")
        + _layer("ap2", "Pooling", ["c1"], "ap2", "pooling_param { pool: AVE kernel_h: 2 "
                                                  "kernel_w: 3 stride_h: 2 stride_w: 3 }")
        + _layer("ap3", "Pooling", ["c1"], "ap3", "pooling_param { pool: AVE kernel_size: 3 "
                                                  "stride: 3 pad_h: 1 pad_w: 2 }")
        + _layer("mp2", "Pooling", ["c1"], "mp2", "pooling_param { pool: MAX kernel_size: 3 "
                                                  "stride: 2 }")
        + _layer("gap", "Pooling", ["ap"], "gap", "pooling_param { pool: AVE "
                                                  "global_pooling: true }")
        + _layer("gmp", "Pooling", ["ap2"], "gmp", "pooling_param { pool: MAX "
                                                   "global_pooling: true }")
        + "".join(_layer(f"f{t}", "Flatten", [t], f"f{t}")
                  for t in ("mp", "ap", "ap2", "ap3", "mp2", "gap", "gmp"))
        + _layer("cat", "Concat", ["fmp", "fap", "fap2", "fap3", "fmp2", "fgap", "fgmp"], "cat"),
        "cat", (14, 15)),
    "eltwise": (
        _conv("a", "data", "num_output: 5 kernel_size: 3 pad: 1")
        + _conv("b", "data", "num_output: 5 kernel_size: 1")
        + _conv("c", "data", "num_output: 5 kernel_size: 3 pad: 1 dilation: 1")
        + _layer("sum", "Eltwise", ["a", "b", "c"], "sum",
                 "eltwise_param { operation: SUM coeff: 0.5 coeff: -1.5 coeff: 2 }")
        + _layer("prod", "Eltwise", ["a", "b", "c"], "prod", "eltwise_param { operation: PROD }")
        + _layer("max", "Eltwise", ["a", "b"], "max", "eltwise_param { operation: MAX }")
        + _layer("plain", "Eltwise", ["sum", "prod", "max"], "plain"), "plain", (8, 8)),
    "inner_product": (
        _conv("c1", "data", "num_output: 4 kernel_size: 3")
        + _layer("fc1", "InnerProduct", ["c1"], "fc1", "inner_product_param { num_output: 10 }")
        + _layer("drop", "Dropout", ["fc1"], "fc1", "dropout_param { dropout_ratio: 0.3 }")
        + _layer("fc2", "InnerProduct", ["fc1"], "fc2",
                 "inner_product_param { num_output: 7 transpose: true }")
        + _layer("fc3", "InnerProduct", ["fc2"], "fc3",
                 "inner_product_param { num_output: 5 bias_term: false }"), "fc3", (6, 7)),
    "inner_product_axis2": (
        _conv("c1", "data", "num_output: 4 kernel_size: 3")
        + _layer("fc1", "InnerProduct", ["c1"], "fc1",
                 "inner_product_param { num_output: 6 axis: 2 }"), "fc1", (6, 7)),
    "concat_flatten_lrn": (
        _conv("a", "data", "num_output: 4 kernel_size: 3 pad: 1")
        + _conv("b", "data", "num_output: 6 kernel_size: 1")
        + _layer("cat", "Concat", ["a", "b"], "cat", "concat_param { axis: 1 }")
        + _layer("lrn", "LRN", ["cat"], "lrn", "lrn_param { local_size: 3 alpha: 0.5 beta: 0.6 }")
        + _layer("lrn2", "LRN", ["lrn"], "lrn2",
                 "lrn_param { local_size: 3 alpha: 0.8 beta: 0.7 norm_region: WITHIN_CHANNEL }")
        + _layer("flat", "Flatten", ["lrn2"], "flat"), "flat", (5, 6)),
}


def opencv_equivalent(prototxt: Path, caffemodel: Path, out_dir: Path) -> tuple[Path, Path]:
    """The same net for OpenCV, which ignores InnerProduct's `transpose` (it always reads the
    weight as num_output x K): store such weights transposed and drop the flag."""
    from google.protobuf import text_format

    from milesdeep.models.caffe.reader import blob_array, read_caffemodel

    net, weights = read_prototxt(prototxt), read_caffemodel(caffemodel)
    changed = False
    for layer in list(net.layer) + list(weights.layer):
        p = layer.inner_product_param
        if layer.type == "InnerProduct" and p.transpose:
            p.transpose = False
            changed = True
            if len(layer.blobs):
                w = blob_array(layer.blobs[0])
                del layer.blobs[0].shape.dim[:], layer.blobs[0].data[:]
                layer.blobs[0].shape.dim.extend([w.shape[1], w.shape[0]])
                layer.blobs[0].data.extend(np.ascontiguousarray(w.T).ravel())
    if not changed:
        return prototxt, caffemodel
    out_dir.mkdir(exist_ok=True)
    (out_dir / prototxt.name).write_text(text_format.MessageToString(net))
    (out_dir / caffemodel.name).write_bytes(weights.SerializeToString())
    return out_dir / prototxt.name, out_dir / caffemodel.name


@pytest.mark.parametrize("name", sorted(SMALL_NETS))
def test_small_net_matches_opencv(name: str, tmp_path: Path) -> None:
    """Each net twice: its raw last blob (relative to its size), then through a Softmax."""
    body, last, (h, w) = SMALL_NETS[name]
    x = np.random.default_rng(11).uniform(-1, 1, (2, 3, h, w)).astype(np.float32)
    head = f'name: "{name}"\n' + INPUT.format(h=h, w=w)
    for with_softmax in (False, True):
        proto = tmp_path / f"{name}.prototxt"
        proto.write_text(head + body + (SOFTMAX % last if with_softmax else ""))
        model = tmp_path / f"{name}.caffemodel"
        write_caffemodel(proto, model, seed=7)
        ours = run_ours(proto, model, x, vector=False)
        ref = run_opencv(*opencv_equivalent(proto, model, tmp_path / "cv"), x)
        assert ours.size == ref.size
        ref = ref.reshape(ours.shape)
        diff = float(np.abs(ours - ref).max())
        if with_softmax:
            assert ours.max() < 0.999  # not one-hot: the comparison can fail
            print(f"{name}: largest probability difference {diff:.3g}")
            assert diff < TOL
        else:
            scale = max(1.0, float(np.abs(ref).max()))
            print(f"{name}: raw output up to {scale:.3g}, largest difference {diff:.3g}")
            assert diff < TOL * scale


def test_lrn_k_follows_caffe(tmp_path: Path) -> None:
    """Where OpenCV departs from Caffe (it ignores LRN's k), check Caffe's formula in NumPy."""
    body = (_layer("lrn", "LRN", ["data"], "lrn",
                   "lrn_param { local_size: 3 alpha: 0.5 beta: 0.6 k: 2 }"))
    proto = tmp_path / "lrn.prototxt"
    proto.write_text('name: "lrn"\n' + INPUT.format(h=4, w=5) + body)
    x = np.random.default_rng(2).uniform(-3, 3, (2, 3, 4, 5)).astype(np.float32)
    write_caffemodel(proto, tmp_path / "lrn.caffemodel", seed=0)
    ours = run_ours(proto, tmp_path / "lrn.caffemodel", x, vector=False)
    sq = np.pad(x.astype(np.float64) ** 2, ((0, 0), (1, 1), (0, 0), (0, 0)))
    window = sq[:, 0:3] + sq[:, 1:4] + sq[:, 2:5]
    want = x / (2 + 0.5 / 3 * window) ** 0.6
    assert np.abs(ours - want).max() < 1e-5


@pytest.mark.parametrize("size,k,pad,stride", [(112, 3, 0, 2), (14, 3, 1, 2), (7, 7, 0, 1),
                                                (6, 3, 1, 2), (5, 2, 1, 2), (10, 4, 0, 3)])
def test_pooled_size_is_caffes(size: int, k: int, pad: int, stride: int) -> None:
    # Caffe's rule, written out: ceil, then drop a last window starting in the padding.
    out = int(np.ceil((size + 2 * pad - k) / stride)) + 1
    if pad and (out - 1) * stride >= size + pad:
        out -= 1
    assert caffe_pooled_size(size, k, pad, stride, bool(pad)) == out
    assert caffe_pooled_size(112, 3, 0, 2, False) == 56  # Miles Deep's pool1 (floor: 55)


TINY = (_conv("c1", "data", "num_output: 4 kernel_size: 3 stride: 2")
        + _layer("bn", "BatchNorm", ["c1"], "c1") + _layer("sc", "Scale", ["c1"], "c1")
        + _layer("relu", "ReLU", ["c1"], "c1")
        + _layer("fc", "InnerProduct", ["c1"], "fc", "inner_product_param { num_output: 3 }"))


def tiny_files(d: Path, softmax: bool = True, labels: str = "a\nother\nc\n",
               head: str | None = None) -> tuple[Path, Path, Path]:
    d.mkdir(parents=True, exist_ok=True)
    proto = d / "deploy.prototxt"
    proto.write_text((head or 'name: "tiny"\n' + INPUT.format(h=12, w=10)) + TINY
                     + (SOFTMAX % "fc" if softmax else ""))
    write_caffemodel(proto, d / "weights.caffemodel", seed=5)
    (d / "labels.txt").write_text(labels)
    return proto, d / "weights.caffemodel", d / "labels.txt"


def write_mean(path: Path, means: tuple[float, float, float], h: int = 4, w: int = 5) -> None:
    from milesdeep.models.caffe.schema import messages

    blob = messages().BlobProto(num=1, channels=3, height=h, width=w)
    img = np.stack([np.linspace(m - 10, m + 10, h * w) for m in means])
    blob.data.extend(img.astype(np.float32).ravel())
    path.write_bytes(blob.SerializeToString())


def test_legacy_input_fields_give_the_same_net(tmp_path: Path) -> None:
    x = np.random.default_rng(0).uniform(-50, 50, (3, 3, 12, 10)).astype(np.float32)
    outs = []
    for i, head in enumerate([
        None,
        'input: "data" input_shape { dim: 1 dim: 3 dim: 12 dim: 10 }\n',
        'input: "data" input_dim: 1 input_dim: 3 input_dim: 12 input_dim: 10\n',
    ]):
        proto, weights, _ = tiny_files(tmp_path / str(i), head=head)
        outs.append(run_ours(proto, weights, x, vector=True))
    assert outs[0].shape == (3, 3)  # the batch is dynamic: 3 although the file says 1
    assert np.array_equal(outs[0], outs[1]) and np.array_equal(outs[0], outs[2])


def _error(tmp_path: Path, text: str, weights: bool = False) -> str:
    proto = tmp_path / "bad.prototxt"
    proto.write_text(text)
    from milesdeep.models.caffe.reader import read_caffemodel

    with pytest.raises(MilesDeepError) as e:
        net = read_prototxt(proto)
        if weights:
            convert(net, read_caffemodel(tmp_path / "w.caffemodel"), proto)
        else:
            param_shapes(net, proto)
    return str(e.value)


def test_unsupported_layers_and_formats_are_named(tmp_path: Path) -> None:
    head = INPUT.format(h=8, w=8)
    msg = _error(tmp_path, head + _layer("squash", "Sigmoid", ["data"], "s"))
    assert "'squash'" in msg and "'Sigmoid'" in msg
    # a layer whose parameter block is not in our schema is still reported by name
    msg = _error(tmp_path, head + _layer("up", "Deconvolution", ["data"], "u",
                                         "convolution_param { num_output: 2 kernel_size: 2 }")
                 + _layer("th", "Threshold", ["u"], "t", "threshold_param { threshold: 1 }"))
    assert "'up'" in msg and "Deconvolution" in msg
    # layers outside the TEST phase are not part of the deploy net
    train_only = _layer("sig", "Sigmoid", ["data"], "sig", "include { phase: TRAIN }")
    proto = tmp_path / "phases.prototxt"
    proto.write_text(head + train_only + _layer("r", "ReLU", ["data"], "r"))
    assert "sig" not in param_shapes(read_prototxt(proto), proto)
    msg = _error(tmp_path, head + train_only.replace("TRAIN", "TEST"))
    assert "'sig'" in msg and "'Sigmoid'" in msg
    msg = _error(tmp_path, 'layers { name: "conv1" type: CONVOLUTION bottom: "data" }')
    assert "V1" in msg and "'conv1'" in msg
    msg = _error(tmp_path, head + _layer("s", "Softmax", ["data"], "p", "softmax_param { ax: 1 }"))
    assert "ax" in msg and "bad.prototxt" in msg
    msg = _error(tmp_path, head + _layer("bn", "BatchNorm", ["data"], "b",
                                         "batch_norm_param { use_global_stats: false }"))
    assert "'bn'" in msg and "use_global_stats" in msg
    msg = _error(tmp_path, head + _layer("r", "ReLU", ["nothing"], "r"))
    assert "'nothing'" in msg
    msg = _error(tmp_path, head + _layer("r1", "ReLU", ["data"], "r1")
                 + _layer("r2", "ReLU", ["data"], "r2"))
    assert "2 outputs" in msg
    msg = _error(tmp_path, INPUT.format(h=8, w=8).replace("dim: 3", "dim: 1")
                 + _layer("r", "ReLU", ["data"], "r"))
    assert "3 x H x W" in msg


def test_weights_that_do_not_fit_are_refused(tmp_path: Path) -> None:
    proto, weights, _ = tiny_files(tmp_path)
    other = tmp_path / "other.prototxt"
    other.write_text(proto.read_text().replace("num_output: 4", "num_output: 5"))
    from milesdeep.models.caffe.reader import read_caffemodel

    with pytest.raises(MilesDeepError, match="'c1'.*weight blob has shape"):
        convert(read_prototxt(other), read_caffemodel(weights), other)
    with pytest.raises(MilesDeepError, match="not a Caffe .caffemodel"):
        (tmp_path / "junk.caffemodel").write_bytes(b"\xff" * 64)
        read_caffemodel(tmp_path / "junk.caffemodel")


def test_import_writes_a_bundle_with_miles_deeps_preprocessing(tmp_path: Path) -> None:
    proto, weights, labels = tiny_files(tmp_path / "src")
    write_mean(tmp_path / "src" / "mean.binaryproto", (104.0, 117.0, 123.0))
    bundle = import_caffe(proto, weights, tmp_path / "src" / "mean.binaryproto", labels,
                          tmp_path / "bundle")
    assert bundle.labels == ("a", "other", "c") and bundle.other_label == "other"
    assert bundle.output_kind == "probabilities"
    spec = bundle.input
    assert (spec.layout, spec.channels, spec.size, spec.resize) == ("NCHW", "BGR", (12, 10),
                                                                    "squash")
    assert spec.mean == pytest.approx((104.0, 117.0, 123.0), abs=1e-4)
    assert spec.scale == 1.0 and spec.antialias is False
    assert sorted(p.name for p in (tmp_path / "bundle").iterdir()) == [
        "labels.txt", "model.onnx", "model.toml"]
    # without a Softmax the scores are logits; without -m the mean is zero
    proto2, weights2, labels2 = tiny_files(tmp_path / "src2", softmax=False)
    b2 = import_caffe(proto2, weights2, None, labels2, tmp_path / "b2")
    assert b2.output_kind == "logits" and b2.input.mean == (0.0, 0.0, 0.0)


def test_import_refuses_mismatched_labels_and_leaves_nothing(tmp_path: Path) -> None:
    proto, weights, labels = tiny_files(tmp_path / "src", labels="a\nb\n")
    with pytest.raises(MilesDeepError, match="3 scores per image but labels.txt has 2"):
        import_caffe(proto, weights, None, labels, tmp_path / "bundle")
    assert not (tmp_path / "bundle").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["src"]  # no temporary left either


def test_import_into_a_file_says_so(tmp_path: Path) -> None:
    proto, weights, labels = tiny_files(tmp_path / "src")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(MilesDeepError, match="afile: is a file; -o names the folder"):
        import_caffe(proto, weights, None, labels, tmp_path / "afile")
    assert (tmp_path / "afile").read_text() == "x"


def test_a_ctrl_c_as_the_import_folder_is_made_leaves_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    proto, weights, labels = tiny_files(tmp_path / "src")
    real = Path.mkdir

    def interrupted(self: Path, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        real(self, *args, **kwargs)
        if self.name.endswith(".part"):
            raise KeyboardInterrupt  # right after the temporary folder exists

    monkeypatch.setattr(Path, "mkdir", interrupted)
    with pytest.raises(KeyboardInterrupt):
        import_caffe(proto, weights, None, labels, tmp_path / "bundle")
    assert [p.name for p in tmp_path.iterdir()] == ["src"]


def test_bundle_from_caffe_converts_once_per_content(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MILESDEEP_CACHE", str(tmp_path / "cache"))
    proto, weights, labels = tiny_files(tmp_path / "src")
    first = bundle_from_caffe(proto, weights, None, labels)
    assert first.directory is not None
    assert first.directory.parent == tmp_path / "cache" / "models"
    stamp = first.onnx_path.stat().st_mtime_ns
    again = bundle_from_caffe(proto, weights, None, labels)
    assert again.directory == first.directory and again.onnx_path.stat().st_mtime_ns == stamp
    labels.write_text("x\ny\nz\n")
    relabelled = bundle_from_caffe(proto, weights, None, labels)
    assert relabelled.directory != first.directory and relabelled.labels == ("x", "y", "z")


def test_find_model_folder_follows_miles_deep(tmp_path: Path) -> None:
    assert find_model_folder(tmp_path) is None
    tiny_files(tmp_path / "model")
    found = find_model_folder(tmp_path)
    assert found is not None and found[2] is None and found[0].name == "deploy.prototxt"
    write_mean(tmp_path / "model" / "mean.binaryproto", (1.0, 2.0, 3.0))
    assert find_model_folder(tmp_path)[2] == tmp_path / "model" / "mean.binaryproto"
    (tmp_path / "model" / "labels.txt").unlink()
    with pytest.raises(MilesDeepError, match=r"no labels.txt; add it or pick"):
        find_model_folder(tmp_path)  # (not "weights come with the original release")
    (tmp_path / "model" / "weights.caffemodel").unlink()
    with pytest.raises(MilesDeepError, match=r"no weights.caffemodel; add it \(they come"):
        find_model_folder(tmp_path)


def colour_caffe_model(d: Path) -> tuple[Path, Path, Path, Path]:
    """Miles Deep's four files for a hand-weighted colour classifier over BGR input:
    red = (R - B) / 20, blue = (B - R) / 20, other = 2, after a global average pool. Fed RGB
    by mistake, red seconds would come out blue."""
    d.mkdir(parents=True, exist_ok=True)
    proto = d / "deploy.prototxt"
    proto.write_text('name: "colours"\n' + INPUT.format(h=16, w=16)
                     + _layer("pool", "Pooling", ["data"], "pool",
                              "pooling_param { pool: AVE global_pooling: true }")
                     + _layer("fc", "InnerProduct", ["pool"], "fc",
                              "inner_product_param { num_output: 3 }")
                     + SOFTMAX % "fc")
    net = read_prototxt(proto)
    fc = next(x for x in net.layer if x.name == "fc")
    w = np.array([[-1, 0, 1], [0, 0, 0], [1, 0, -1]], np.float32) / 20  # rows: red, other, blue
    for arr in (w, np.array([0, 2, 0], np.float32)):
        blob = fc.blobs.add()
        blob.shape.dim.extend(arr.shape)
        blob.data.extend(arr.ravel())
    (d / "weights.caffemodel").write_bytes(net.SerializeToString())
    write_mean(d / "mean.binaryproto", (10.0, 20.0, 30.0))
    (d / "labels.txt").write_text("red\nother\nblue\n")
    return proto, d / "weights.caffemodel", d / "mean.binaryproto", d / "labels.txt"


def test_tag_with_an_imported_model_uses_its_labels(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from milesdeep.cli.app import run_app
    from milesdeep.pipeline.tagfile import read_tag
    from tests.testdata import colour_video

    monkeypatch.setenv("MILESDEEP_CACHE", str(tmp_path / "cache"))
    files = colour_caffe_model(tmp_path / "caffe")
    video = colour_video(tmp_path / "v.mp4", ["red"] * 7 + ["gray"] * 7 + ["blue"] * 7)
    args = ["-p", str(files[0]), "-w", str(files[1]), "-m", str(files[2]), "-l", str(files[3])]
    assert run_app(["tag", str(video), *args, "-o", str(tmp_path / "out1")]) == 0
    tag = read_tag(tmp_path / "out1" / "v.tag")
    assert list(tag.labels) == ["red", "other", "blue"]
    assert [(c.label, c.start, c.end) for c in tag.cuts if c.label != "other"] == [
        ("red", 0, 6), ("blue", 14, 20)]
    # Miles Deep's model/ folder in the working directory is picked up without options,
    # and the conversion is reused from the cache (one bundle for the same four files).
    for src, name in zip(files, ("deploy.prototxt", "weights.caffemodel", "mean.binaryproto",
                                 "labels.txt")):
        (tmp_path / "model").mkdir(exist_ok=True)
        (tmp_path / "model" / name).write_bytes(src.read_bytes())
    monkeypatch.chdir(tmp_path)
    assert run_app(["tag", str(video), "-o", str(tmp_path / "out2")]) == 0
    assert read_tag(tmp_path / "out2" / "v.tag").cuts == tag.cuts
    assert len(list((tmp_path / "cache" / "models").iterdir())) == 1
    # an import whose labels do not match the net is refused before any work
    (tmp_path / "model" / "labels.txt").write_text("red\nblue\n")
    assert run_app(["tag", str(video), "-o", str(tmp_path / "out3")]) == 1
    assert not (tmp_path / "out3" / "v.tag").exists()


def test_batchnorm_scale_factor_zero_means_no_statistics(tmp_path: Path) -> None:
    """Caffe reads a zero scale-factor blob as "no statistics": mean and variance 0."""
    proto = tmp_path / "bn.prototxt"
    proto.write_text('name: "bn"\n' + INPUT.format(h=5, w=4)
                     + _layer("bn", "BatchNorm", ["data"], "bn", "batch_norm_param { eps: 0.01 }"))
    write_caffemodel(proto, tmp_path / "bn.caffemodel", seed=4, factor_blob=0.0)
    x = np.random.default_rng(1).uniform(-1, 1, (2, 3, 5, 4)).astype(np.float32)
    ours = run_ours(proto, tmp_path / "bn.caffemodel", x, vector=False)
    assert np.allclose(ours, x / np.sqrt(np.float32(0.01)), rtol=1e-5)
    ref = run_opencv(proto, tmp_path / "bn.caffemodel", x)
    assert np.abs(ours - ref.reshape(ours.shape)).max() < TOL


def caffe_ave_pool(x: np.ndarray, k: int, s: int, p: int) -> np.ndarray:
    """Caffe's AVE pooling, line for line: the divisor counts the window up to the padded
    bound (size + pad), the sum only the real input."""
    n, c, h, w = x.shape
    oh = caffe_pooled_size(h, k, p, s, bool(p))
    ow = caffe_pooled_size(w, k, p, s, bool(p))
    out = np.zeros((n, c, oh, ow), np.float64)
    for i in range(oh):
        for j in range(ow):
            hs, ws = i * s - p, j * s - p
            he, we = min(hs + k, h + p), min(ws + k, w + p)
            size = (he - hs) * (we - ws)
            hs, ws, he, we = max(hs, 0), max(ws, 0), min(he, h), min(we, w)
            out[:, :, i, j] = x[:, :, hs:he, ws:we].sum(axis=(2, 3)) / size
    return out


@pytest.mark.parametrize("h,w,k,s,p", [(8, 8, 3, 2, 1), (14, 15, 3, 3, 1), (7, 9, 2, 2, 0),
                                       (6, 6, 3, 2, 0), (9, 7, 4, 3, 2)])
def test_ave_pooling_follows_caffes_divisor(tmp_path: Path, h: int, w: int, k: int, s: int,
                                            p: int) -> None:
    proto = tmp_path / "pool.prototxt"
    proto.write_text('name: "pool"\n' + INPUT.format(h=h, w=w)
                     + _layer("ap", "Pooling", ["data"], "ap", f"pooling_param {{ pool: AVE "
                              f"kernel_size: {k} stride: {s} pad: {p} }}"))
    write_caffemodel(proto, tmp_path / "pool.caffemodel", seed=0)
    x = np.random.default_rng(3).uniform(0, 1, (1, 3, h, w)).astype(np.float32)
    ours = run_ours(proto, tmp_path / "pool.caffemodel", x, vector=False)
    want = caffe_ave_pool(x.astype(np.float64), k, s, p)
    assert ours.shape == want.shape
    assert np.abs(ours - want).max() < 1e-6


def test_an_empty_mean_file_is_one_line(tmp_path: Path) -> None:
    """A 0-byte mean.binaryproto (or a blob of num 0) was an IndexError traceback."""
    from milesdeep.models.caffe.reader import read_mean

    empty = tmp_path / "mean.binaryproto"
    empty.write_bytes(b"")
    with pytest.raises(MilesDeepError, match="the mean image has shape") as e:
        read_mean(empty)
    assert e.value.path == empty
