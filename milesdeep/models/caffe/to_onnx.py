"""Convert a Caffe net (definition + weights) into an ONNX graph, layer by layer.

Every blob of the Caffe net becomes one ONNX tensor per version: Caffe's in-place layers
(top == bottom) write a new version of the same blob, which gets a fresh tensor name here.
Shapes are tracked per layer (all dimensions but the batch are fixed in a Caffe net), which
is what lets pooling reproduce Caffe's ceil-mode output size with explicit padding.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from milesdeep.errors import MilesDeepError
from milesdeep.models.caffe.reader import blob_array, in_test_net

OPSET = 13
IR_VERSION = 8  # what opset 13 shipped with: readable by older ONNX Runtime and TensorRT parsers
BATCH = "N"
# PoolingParameter enums
MAX, AVE = 0, 1
FLOOR = 1
# EltwiseParameter.EltwiseOp
PROD, SUM, EMAX = 0, 1, 2
WITHIN_CHANNEL = 1


Weights = dict[str, list[Any]] | None  # layer name -> its BlobProtos; None: shapes only


@dataclass(frozen=True)
class Converted:
    """The ONNX model and what the bundle manifest needs to know about it."""

    model: onnx.ModelProto
    input_name: str
    input_shape: tuple[int, int, int]  # C, H, W
    output_name: str
    num_outputs: int  # scores per sample
    ends_in_softmax: bool


def _pair(single: Sequence[int], h_set: bool, h: int, w_set: bool, w: int, default: int,
          what: str, layer: str) -> tuple[int, int]:
    """Caffe's spellings of a 2-D parameter: `x` (0, 1 or 2 values) or `x_h` + `x_w`."""
    if h_set or w_set:
        return int(h), int(w)
    vals = [int(v) for v in single]
    if not vals:
        return default, default
    if len(vals) == 1:
        return vals[0], vals[0]
    if len(vals) == 2:
        return vals[0], vals[1]
    raise ValueError(f"layer {layer!r}: {what} has {len(vals)} values; 2-D nets only")


class _Builder:
    def __init__(self, where: Path) -> None:
        self.where = where
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.names: set[str] = set()
        self.shape: dict[str, list[int]] = {}  # tensor -> shape; dim 0 (the batch) is -1
        self.producer: dict[str, str] = {}  # tensor -> Caffe layer type that made it
        self.expected: dict[str, list[tuple[int, ...]]] = {}  # layer -> its blob shapes

    def fresh(self, base: str) -> str:
        name, i = base, 1
        while name in self.names:
            name, i = f"{base}_{i}", i + 1
        self.names.add(name)
        return name

    def const(self, base: str, value: np.ndarray) -> str:
        name = self.fresh(base)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], base: str, shape: list[int], kind: str,
             **attrs: Any) -> str:
        out = self.fresh(base)
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        self.shape[out] = shape
        self.producer[out] = kind
        return out

    def fail(self, layer: Any, message: str) -> MilesDeepError:
        return MilesDeepError(f"layer {layer.name!r} ({layer.type}): {message}", self.where)


def _input_shape(net: Any, where: Path) -> tuple[str, list[int]]:
    """The one input blob, from an Input layer or the legacy input/input_shape/input_dim."""
    found: list[tuple[str, list[int]]] = []
    for i, name in enumerate(net.input):
        if len(net.input_shape) > i:
            dims = [int(d) for d in net.input_shape[i].dim]
        else:
            dims = [int(d) for d in net.input_dim[4 * i: 4 * i + 4]]
        found.append((name, dims))
    for layer in net.layer:
        if layer.type == "Input" and in_test_net(layer):
            shapes = list(layer.input_param.shape)
            for j, top in enumerate(layer.top):
                shp = shapes[j] if len(shapes) > j else (shapes[0] if shapes else None)
                found.append((top, [int(d) for d in shp.dim] if shp is not None else []))
    if len(found) != 1:
        raise MilesDeepError(
            f"the net has {len(found)} inputs ({', '.join(n for n, _ in found) or 'none'}); "
            "milesdeep feeds exactly one image batch", where)
    name, dims = found[0]
    if len(dims) != 4 or dims[1] != 3 or min(dims[1:]) <= 0:
        raise MilesDeepError(
            f"input {name!r} has shape {dims}; a 4-D N x 3 x H x W (BGR) input is needed", where)
    return name, dims


def _params(layer: Any, weights: Weights, b: _Builder,
            wanted: list[tuple[str, tuple[int, ...]]]) -> list[np.ndarray]:
    """The layer's parameter blobs as float32 arrays of the shapes the layer needs.

    Caffe stores some blobs with legacy 4-D shapes: any shape with the right count is taken.
    With `weights` None (shape discovery), zeros of the wanted shapes are returned.
    """
    b.expected[layer.name] = [shape for _, shape in wanted]
    if weights is None:
        return [np.zeros(shape, np.float32) for _, shape in wanted]
    blobs = weights.get(layer.name, list(layer.blobs))
    if len(blobs) < len(wanted):
        raise b.fail(layer, f"the weights file has {len(blobs)} parameter blobs for it, "
                            f"{len(wanted)} are needed (do the weights belong to this "
                            "definition?)")
    out = []
    for blob, (what, shape) in zip(blobs, wanted):
        try:
            arr = blob_array(blob)
        except ValueError as e:
            raise b.fail(layer, f"bad {what} blob: {e}") from None
        if arr.size != int(np.prod(shape)):
            raise b.fail(layer, f"{what} blob has shape {list(arr.shape)}, {list(shape)} "
                                "expected (do the weights belong to this definition?)")
        out.append(arr.reshape(shape).astype(np.float32))
    return out


def _axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def _plan_fusions(layers: list[Any]) -> dict[int, int]:
    """BatchNorm index -> index of the Scale that reads only its output (fused into one node)."""
    version: dict[str, int] = defaultdict(int)
    made: dict[tuple[str, int], int] = {}
    readers: dict[tuple[str, int], list[int]] = defaultdict(list)
    for i, layer in enumerate(layers):
        for name in layer.bottom:
            readers[(name, version[name])].append(i)
        for name in layer.top:
            version[name] += 1
            made[(name, version[name])] = i
    fused: dict[int, int] = {}
    for key, i in made.items():
        r = readers.get(key, [])
        if layers[i].type == "BatchNorm" and len(r) == 1:
            s = layers[r[0]]
            p = s.scale_param
            if (s.type == "Scale" and len(s.bottom) == 1 and _axis(p.axis, 4) == 1
                    and p.num_axes == 1):
                fused[i] = r[0]
    return fused


def convert(net: Any, weights_net: Any | None, where: Path,
            vector_output: bool = True) -> Converted:
    """Build the ONNX model of a parsed deploy net with its trained weights.

    `vector_output`: require one score vector per sample (a classifier; N x C x 1 x 1 is
    flattened); False keeps any output shape (for checking layers on their own).
    """
    return _build(net, weights_net, where, vector_output)[0]


def param_shapes(net: Any, where: Path) -> dict[str, list[tuple[int, ...]]]:
    """The parameter blob shapes each layer of a definition needs, in Caffe's blob order
    (BatchNorm: mean, variance, scale factor; Convolution/InnerProduct: weight, bias)."""
    return _build(net, None, where, vector_output=False)[1].expected


def _build(net: Any, weights_net: Any | None, where: Path,
           vector_output: bool = True) -> tuple[Converted, _Builder]:
    layers = [x for x in net.layer if in_test_net(x) and x.type != "Input"]
    weights: dict[str, list[Any]] | None = None
    if weights_net is not None:
        weights = {x.name: list(x.blobs) for x in weights_net.layer if len(x.blobs)}
    b = _Builder(where)
    in_name, in_dims = _input_shape(net, where)
    graph_input = b.fresh(in_name)
    b.shape[graph_input] = [-1, *in_dims[1:]]
    b.producer[graph_input] = "Input"
    blob: dict[str, str] = {in_name: graph_input}  # Caffe blob -> current ONNX tensor
    consumed: set[str] = set()
    fused = _plan_fusions(layers)
    skip = set(fused.values())

    for i, layer in enumerate(layers):
        if i in skip:
            continue
        missing = [x for x in layer.bottom if x not in blob]
        if missing:
            raise b.fail(layer, f"its input blob {missing[0]!r} is made by no earlier layer")
        ins = [blob[x] for x in layer.bottom]
        consumed.update(ins)
        try:
            outs = _convert_layer(layer, ins, b, weights, layers[fused[i]] if i in fused else None)
        except ValueError as e:
            raise b.fail(layer, str(e)) from None
        tops = list(layers[fused[i]].top) if i in fused else list(layer.top)
        if len(outs) != len(tops):
            raise b.fail(layer, f"it has {len(tops)} tops, {len(outs)} expected")
        for top, out in zip(tops, outs):
            blob[top] = out

    ends = [t for t in dict.fromkeys(blob.values()) if t not in consumed]
    if len(ends) != 1:
        raise MilesDeepError(
            f"the net has {len(ends)} outputs ({', '.join(ends)}); milesdeep needs one "
            "(one score per label)", where)
    out = ends[0]
    shape = b.shape[out]
    if vector_output and len(shape) > 2 and all(d == 1 for d in shape[2:]):
        kind = b.producer[out]
        out = b.node("Flatten", [out], f"{out}_flat", shape[:2], kind, axis=1)
        shape = b.shape[out]
    if vector_output and len(shape) != 2:
        raise MilesDeepError(
            f"the net's output {out!r} has per-sample shape {shape[1:]}; one score per label "
            "(a vector) is needed", where)
    num = shape[1] if len(shape) > 1 else 1
    # Follow Flatten/Dropout back to see whether the scores are already probabilities.
    producer_of: dict[str, str] = {n.output[0]: n.input[0] for n in b.nodes}
    t = out
    while b.producer.get(t) in ("Flatten", "Dropout") and t in producer_of:
        t = producer_of[t]
    softmax = b.producer.get(t) == "Softmax"

    graph = helper.make_graph(
        b.nodes,
        net.name or "caffe_net",
        [helper.make_tensor_value_info(graph_input, TensorProto.FLOAT, [BATCH, *in_dims[1:]])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, [BATCH, *shape[1:]])],
        initializer=b.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="milesdeep-caffe-import")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    c, h, w = in_dims[1:]
    return Converted(model, graph_input, (c, h, w), out, num, softmax), b


def _convert_layer(layer: Any, ins: list[str], b: _Builder, weights: Weights,
                   scale: Any | None) -> list[str]:
    t = layer.type
    if not ins or not len(layer.top):
        raise ValueError("it needs a bottom and a top")
    shp = b.shape[ins[0]]
    name = layer.top[0]
    if t in ("ReLU", "Dropout", "Softmax", "LRN", "BatchNorm", "Scale", "Flatten",
             "Convolution", "Pooling", "InnerProduct") and len(ins) != 1:
        raise ValueError(f"it has {len(ins)} bottoms; one is supported")

    if t == "Convolution":
        return [_conv(layer, ins[0], shp, b, weights, name)]
    if t == "BatchNorm":
        return [_batch_norm(layer, ins[0], shp, b, weights, name, scale)]
    if t == "Scale":
        return [_scale(layer, ins[0], shp, b, weights, name)]
    if t == "ReLU":
        slope = float(layer.relu_param.negative_slope)
        if slope == 0.0:
            return [b.node("Relu", ins, name, shp, t)]
        return [b.node("LeakyRelu", ins, name, shp, t, alpha=slope)]
    if t == "Pooling":
        return [_pool(layer, ins[0], shp, b, name)]
    if t == "Eltwise":
        return [_eltwise(layer, ins, b, name)]
    if t == "InnerProduct":
        return [_inner_product(layer, ins[0], shp, b, weights, name)]
    if t == "Softmax":
        axis = _axis(int(layer.softmax_param.axis), len(shp))
        return [b.node("Softmax", ins, name, shp, t, axis=axis)]
    if t == "Dropout":
        return [b.node("Identity", ins, name, shp, t)]
    if t == "Concat":
        p = layer.concat_param
        axis = _axis(int(p.axis) if p.HasField("axis") else int(p.concat_dim), len(shp))
        shapes = [b.shape[x] for x in ins]
        if any(len(s) != len(shp) for s in shapes):
            raise ValueError("its inputs differ in rank")
        out_shape = list(shp)
        out_shape[axis] = -1 if axis == 0 else sum(s[axis] for s in shapes)
        return [b.node("Concat", ins, name, out_shape, t, axis=axis)]
    if t == "Flatten":
        return [_flatten(layer, ins[0], shp, b, name)]
    if t == "LRN":
        return [_lrn(layer, ins[0], shp, b, name)]
    raise ValueError("this layer type is not supported")


def _conv(layer: Any, x: str, shp: list[int], b: _Builder, weights: Weights,
          name: str) -> str:
    p = layer.convolution_param
    if len(shp) != 4 or _axis(int(p.axis), len(shp)) != 1:
        raise ValueError("only 2-D convolution over axis 1 is supported")
    kh, kw = _pair(p.kernel_size, p.HasField("kernel_h"), p.kernel_h, p.HasField("kernel_w"),
                   p.kernel_w, 0, "kernel_size", layer.name)
    ph, pw = _pair(p.pad, p.HasField("pad_h"), p.pad_h, p.HasField("pad_w"), p.pad_w, 0,
                   "pad", layer.name)
    sh, sw = _pair(p.stride, p.HasField("stride_h"), p.stride_h, p.HasField("stride_w"),
                   p.stride_w, 1, "stride", layer.name)
    dh, dw = _pair(p.dilation, False, 0, False, 0, 1, "dilation", layer.name)
    group, cout, cin = int(p.group), int(p.num_output), shp[1]
    if kh <= 0 or kw <= 0 or cout <= 0 or group <= 0 or cin % group or cout % group:
        raise ValueError(f"bad geometry (kernel {kh}x{kw}, num_output {cout}, group {group}, "
                         f"{cin} input channels)")
    wanted = [("weight", (cout, cin // group, kh, kw))]
    blobs = _params(layer, weights, b, wanted + ([("bias", (cout,))] if p.bias_term else []))
    inputs = [x, b.const(f"{layer.name}_W", blobs[0])]
    if p.bias_term:
        inputs.append(b.const(f"{layer.name}_b", blobs[1]))
    oh = (shp[2] + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1
    ow = (shp[3] + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1
    if oh <= 0 or ow <= 0:
        raise ValueError(f"its output would be {oh}x{ow}")
    return b.node("Conv", inputs, name, [-1, cout, oh, ow], "Convolution",
                  kernel_shape=[kh, kw], pads=[ph, pw, ph, pw], strides=[sh, sw],
                  dilations=[dh, dw], group=group)


def _batch_norm(layer: Any, x: str, shp: list[int], b: _Builder, weights: Weights,
                name: str, scale: Any | None) -> str:
    p = layer.batch_norm_param
    if p.HasField("use_global_stats") and not p.use_global_stats:
        raise ValueError("use_global_stats: false normalises with batch statistics, which a "
                         "deployed classifier cannot do; set it to true")
    c = shp[1]
    mean, var, factor = _params(layer, weights, b,
                                [("mean", (c,)), ("variance", (c,)), ("scale factor", (1,))])
    sf = float(factor[0])
    # Caffe stores running sums: divide by the scale factor blob (0 means "no statistics": 0).
    k = 0.0 if sf == 0 else 1.0 / sf
    mean, var = mean * np.float32(k), var * np.float32(k)
    gamma, beta = np.ones(c, np.float32), np.zeros(c, np.float32)
    if scale is not None:  # a following Scale layer becomes the node's scale and bias
        sp = scale.scale_param
        sb = _params(scale, weights, b, [("scale", (c,))] + ([("bias", (c,))]
                                                             if sp.bias_term else []))
        gamma = sb[0]
        if sp.bias_term:
            beta = sb[1]
        name = scale.top[0] if len(scale.top) else name
    inputs = [x, b.const(f"{layer.name}_scale", gamma), b.const(f"{layer.name}_bias", beta),
              b.const(f"{layer.name}_mean", mean), b.const(f"{layer.name}_var", var)]
    return b.node("BatchNormalization", inputs, name, shp,
                  "Scale" if scale is not None else "BatchNorm", epsilon=float(p.eps))


def _scale(layer: Any, x: str, shp: list[int], b: _Builder, weights: Weights,
           name: str) -> str:
    p = layer.scale_param
    rank = len(shp)
    axis = _axis(int(p.axis), rank)
    n = rank - axis if p.num_axes == -1 else int(p.num_axes)
    if axis < 1 or axis + n > rank or n < 0:
        raise ValueError(f"axis {p.axis} / num_axes {p.num_axes} do not fit a rank-{rank} input")
    pshape = shp[axis: axis + n]
    bshape = [*pshape, *([1] * (rank - axis - n))]
    pshape_t = tuple(pshape)
    blobs = _params(layer, weights, b, [("scale", pshape_t)] + ([("bias", pshape_t)]
                                                               if p.bias_term else []))
    gamma = blobs[0].reshape(bshape)
    y = b.node("Mul", [x, b.const(f"{layer.name}_scale", gamma)],
               name if not p.bias_term else f"{name}_mul", shp, "Scale")
    if p.bias_term:
        beta = blobs[1].reshape(bshape)
        y = b.node("Add", [y, b.const(f"{layer.name}_bias", beta)], name, shp, "Scale")
    return y


def caffe_pooled_size(size: int, k: int, pad: int, stride: int, any_pad: bool,
                      ceil: bool = True) -> int:
    """Caffe's PoolingLayer::Reshape output size: ceil by default, then the last window is
    dropped if it would start in the bottom/right padding (only checked when padded)."""
    span = size + 2 * pad - k
    out = (-(-span // stride) if ceil else span // stride) + 1
    if any_pad and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def _pool(layer: Any, x: str, shp: list[int], b: _Builder, name: str) -> str:
    p = layer.pooling_param
    if len(shp) != 4:
        raise ValueError("only 2-D pooling is supported")
    if p.pool not in (MAX, AVE):
        raise ValueError("only MAX and AVE pooling are supported (STOCHASTIC is not)")
    c, h, w = shp[1:]
    if p.global_pooling:
        op = "GlobalMaxPool" if p.pool == MAX else "GlobalAveragePool"
        return b.node(op, [x], name, [-1, c, 1, 1], "Pooling")
    kh, kw = _pair([p.kernel_size] if p.HasField("kernel_size") else [], p.HasField("kernel_h"),
                   p.kernel_h, p.HasField("kernel_w"), p.kernel_w, 0, "kernel_size", layer.name)
    ph, pw = _pair([p.pad], p.HasField("pad_h"), p.pad_h, p.HasField("pad_w"), p.pad_w, 0,
                   "pad", layer.name)
    sh, sw = _pair([p.stride], p.HasField("stride_h"), p.stride_h, p.HasField("stride_w"),
                   p.stride_w, 1, "stride", layer.name)
    if kh <= 0 or kw <= 0 or sh <= 0 or sw <= 0 or ph >= kh or pw >= kw:
        raise ValueError(f"bad geometry (kernel {kh}x{kw}, stride {sh}x{sw}, pad {ph}x{pw})")
    ceil = p.round_mode != FLOOR
    any_pad = bool(ph or pw)
    oh = caffe_pooled_size(h, kh, ph, sh, any_pad, ceil)
    ow = caffe_pooled_size(w, kw, pw, sw, any_pad, ceil)
    if oh <= 0 or ow <= 0:
        raise ValueError(f"its output would be {oh}x{ow}")
    # Reach Caffe's output size with floor-mode ONNX pooling and extra bottom/right padding,
    # which every ONNX consumer reads the same way (ceil_mode details vary between them).
    eh = max(0, (oh - 1) * sh + kh - (h + 2 * ph))
    ew = max(0, (ow - 1) * sw + kw - (w + 2 * pw))
    out_shape = [-1, c, oh, ow]
    geom = {"kernel_shape": [kh, kw], "strides": [sh, sw]}
    if p.pool == MAX:  # padding never wins a max, in Caffe as in ONNX
        return b.node("MaxPool", [x], name, out_shape, "Pooling",
                      pads=[ph, pw, ph + eh, pw + ew], **geom)
    if eh == 0 and ew == 0:  # every window inside the padded input: divisor kh * kw
        return b.node("AveragePool", [x], name, out_shape, "Pooling",
                      pads=[ph, pw, ph, pw], count_include_pad=1, **geom)
    # Caffe divides by the window clipped to the padded bounds [-pad, size + pad): pad with
    # real zeros first, then let the overhang beyond them fall out of the divisor.
    if ph or pw:
        pads = b.const(f"{layer.name}_pads", np.array([0, 0, ph, pw, 0, 0, ph, pw], np.int64))
        x = b.node("Pad", [x, pads], f"{name}_padded", [-1, c, h + 2 * ph, w + 2 * pw],
                   "Pooling", mode="constant")
    return b.node("AveragePool", [x], name, out_shape, "Pooling",
                  pads=[0, 0, eh, ew], count_include_pad=0, **geom)


def _eltwise(layer: Any, ins: list[str], b: _Builder, name: str) -> str:
    p = layer.eltwise_param
    shp = b.shape[ins[0]]
    if len(ins) < 2:
        raise ValueError("it needs at least two bottoms")
    if any(b.shape[x] != shp for x in ins):
        raise ValueError(f"its inputs differ in shape: {[b.shape[x][1:] for x in ins]}")
    if p.operation == SUM:
        coeffs = [float(v) for v in p.coeff] or [1.0] * len(ins)
        if len(coeffs) != len(ins):
            raise ValueError(f"it has {len(coeffs)} coeff values for {len(ins)} bottoms")
        terms = []
        for j, (x, k) in enumerate(zip(ins, coeffs)):
            if k != 1.0:
                x = b.node("Mul", [x, b.const(f"{layer.name}_coeff{j}", np.float32(k))],
                           f"{name}_term{j}", shp, "Eltwise")
            terms.append(x)
        return b.node("Sum", terms, name, shp, "Eltwise")
    if len(p.coeff):
        raise ValueError("coeff is only allowed with operation SUM")
    if p.operation == EMAX:
        return b.node("Max", ins, name, shp, "Eltwise")
    y = ins[0]  # PROD: a chain of two-input Mul nodes
    for j, x in enumerate(ins[1:], start=1):
        y = b.node("Mul", [y, x], name if j == len(ins) - 1 else f"{name}_prod{j}", shp,
                   "Eltwise")
    return y


def _inner_product(layer: Any, x: str, shp: list[int], b: _Builder,
                   weights: Weights, name: str) -> str:
    p = layer.inner_product_param
    axis = _axis(int(p.axis), len(shp))
    if not 1 <= axis < len(shp):
        raise ValueError(f"axis {p.axis} does not fit a rank-{len(shp)} input")
    k = int(np.prod(shp[axis:]))
    n = int(p.num_output)
    wshape = (k, n) if p.transpose else (n, k)
    blobs = _params(layer, weights, b, [("weight", wshape)] + ([("bias", (n,))]
                                                              if p.bias_term else []))
    wt = blobs[0]
    bias = blobs[1] if p.bias_term else np.zeros(n, np.float32)
    if axis == 1:
        flat = x if len(shp) == 2 else b.node("Flatten", [x], f"{name}_flat", [-1, k],
                                              "InnerProduct", axis=1)
        return b.node("Gemm", [flat, b.const(f"{layer.name}_W", wt),
                               b.const(f"{layer.name}_b", bias)],
                      name, [-1, n], "InnerProduct", transB=0 if p.transpose else 1)
    lead = shp[:axis]
    target = np.array([0, *lead[1:], k], np.int64)
    flat = b.node("Reshape", [x, b.const(f"{layer.name}_shape", target)], f"{name}_flat",
                  [*lead, k], "InnerProduct")
    mat = wt if p.transpose else np.ascontiguousarray(wt.T)
    y = b.node("MatMul", [flat, b.const(f"{layer.name}_W", mat)], f"{name}_mm", [*lead, n],
               "InnerProduct")
    if not p.bias_term:
        return y
    return b.node("Add", [y, b.const(f"{layer.name}_b", bias)], name, [*lead, n],
                  "InnerProduct")


def _flatten(layer: Any, x: str, shp: list[int], b: _Builder, name: str) -> str:
    p = layer.flatten_param
    rank = len(shp)
    start, end = _axis(int(p.axis), rank), _axis(int(p.end_axis), rank)
    if not 0 <= start <= end < rank:
        raise ValueError(f"axis {p.axis} / end_axis {p.end_axis} do not fit a rank-{rank} input")
    if start == 1 and end == rank - 1:
        return b.node("Flatten", [x], name, [-1, int(np.prod(shp[1:]))], "Flatten", axis=1)
    merged = -1 if start == 0 else int(np.prod(shp[start: end + 1]))
    out_shape = [*shp[:start], merged, *shp[end + 1:]]
    target = [0 if j == 0 else d for j, d in enumerate(out_shape)]
    if start == 0:
        target[0] = -1
    shape_const = b.const(f"{layer.name}_shape", np.array(target, np.int64))
    return b.node("Reshape", [x, shape_const], name, out_shape, "Flatten")


def _lrn(layer: Any, x: str, shp: list[int], b: _Builder, name: str) -> str:
    p = layer.lrn_param
    size = int(p.local_size)
    if size % 2 == 0:
        raise ValueError("local_size must be odd (as Caffe requires)")
    alpha, beta = float(p.alpha), float(p.beta)
    if p.norm_region != WITHIN_CHANNEL:
        # Caffe: x / (k + alpha/n * sum over n channels of x^2)^beta, as ONNX LRN.
        return b.node("LRN", [x], name, shp, "LRN", size=size, alpha=alpha, beta=beta,
                      bias=float(p.k))
    if len(shp) != 4:
        raise ValueError("WITHIN_CHANNEL needs a 4-D input")
    # Caffe builds WITHIN_CHANNEL from its own layers: square, AVE pool (size x size, pad
    # (size-1)/2, divisor size^2), power with shift 1 (not k), scale alpha, exponent -beta.
    pre = (size - 1) // 2
    sq = b.node("Mul", [x, x], f"{name}_sq", shp, "LRN")
    avg = b.node("AveragePool", [sq], f"{name}_avg", shp, "LRN", kernel_shape=[size, size],
                 pads=[pre, pre, pre, pre], strides=[1, 1], count_include_pad=1)
    scaled = b.node("Mul", [avg, b.const(f"{layer.name}_alpha", np.float32(alpha))],
                    f"{name}_alpha", shp, "LRN")
    base = b.node("Add", [scaled, b.const(f"{layer.name}_one", np.float32(1.0))],
                  f"{name}_base", shp, "LRN")
    den = b.node("Pow", [base, b.const(f"{layer.name}_beta", np.float32(-beta))],
                 f"{name}_pow", shp, "LRN")
    return b.node("Mul", [x, den], name, shp, "LRN")


