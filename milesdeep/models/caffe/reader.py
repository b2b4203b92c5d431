"""Read Caffe's three files with the protobuf runtime: the net definition, weights, mean."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf import text_format
from google.protobuf.message import DecodeError

from milesdeep.errors import MilesDeepError
from milesdeep.models.caffe.schema import messages

# Layer types the converter handles (see to_onnx.py); anything else is refused by name.
SUPPORTED_TYPES = frozenset({
    "Input", "Convolution", "BatchNorm", "Scale", "ReLU", "Pooling", "Eltwise", "InnerProduct",
    "Softmax", "Dropout", "Concat", "Flatten", "LRN",
})


def _read_bytes(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise MilesDeepError(f"cannot read the {what} ({e.strerror})", path) from None


def _refuse_v1(net: Any, path: Path) -> None:
    if len(net.layers):
        first = net.layers[0].name or "(unnamed)"
        raise MilesDeepError(
            f"layer {first!r} uses Caffe's deprecated V1 `layers` format; upgrade the file with "
            "Caffe's upgrade_net_proto_text / upgrade_net_proto_binary, then import it again",
            path,
        )


TEST = 1  # caffe.Phase.TEST


def _rule_matches(rule: Any) -> bool:
    """Does a NetStateRule match a deploy net's state (phase TEST, level 0, no stages)?"""
    if rule.HasField("phase") and rule.phase != TEST:
        return False
    if rule.HasField("min_level") and rule.min_level > 0:
        return False
    if rule.HasField("max_level") and rule.max_level < 0:
        return False
    return not len(rule.stage)


def in_test_net(layer: Any) -> bool:
    """Is the layer part of the net Caffe builds for inference (include/exclude rules)?"""
    if len(layer.include):
        return any(_rule_matches(r) for r in layer.include)
    return not any(_rule_matches(r) for r in layer.exclude)


def refuse_unsupported(net: Any, path: Path) -> None:
    """One clear error naming the first layer the converter cannot handle."""
    _refuse_v1(net, path)
    for layer in net.layer:
        if layer.type not in SUPPORTED_TYPES and in_test_net(layer):
            raise MilesDeepError(
                f"layer {layer.name!r} has type {layer.type!r}, which milesdeep cannot import "
                f"(supported: {', '.join(sorted(SUPPORTED_TYPES))})",
                path,
            )


def read_prototxt(path: Path) -> Any:
    """Parse a net definition (protobuf text format) into a NetParameter."""
    text = _read_bytes(path, "model definition").decode("utf-8", errors="replace")
    net = messages().NetParameter()
    try:
        text_format.Parse(text, net)
    except text_format.ParseError as strict_error:
        # An unknown field is usually the parameter block of a layer type we do not support:
        # parse leniently to name that layer; otherwise report the parser's own message.
        lenient = messages().NetParameter()
        try:
            text_format.Parse(text, lenient, allow_unknown_field=True)
        except text_format.ParseError:
            lenient = None
        if lenient is not None:
            refuse_unsupported(lenient, path)
        raise MilesDeepError(f"not a Caffe deploy definition this importer reads (give the "
                             f"deploy.prototxt, not train_val): {strict_error}", path) from None
    refuse_unsupported(net, path)
    return net


def read_caffemodel(path: Path) -> Any:
    """Parse trained weights (binary NetParameter)."""
    net = messages().NetParameter()
    try:
        net.ParseFromString(_read_bytes(path, "weights file"))
    except DecodeError:
        raise MilesDeepError("not a Caffe .caffemodel (binary NetParameter)", path) from None
    _refuse_v1(net, path)
    if not len(net.layer):
        raise MilesDeepError("the weights file holds no layers: is it a .caffemodel?", path)
    return net


def blob_array(blob: Any) -> np.ndarray:
    """A BlobProto as a float32 array of its shape (the legacy 4-D fields when no shape)."""
    if blob.HasField("shape"):
        shape = tuple(int(d) for d in blob.shape.dim)
    else:
        shape = tuple(int(d) for d in (blob.num, blob.channels, blob.height, blob.width))
    data = np.asarray(blob.double_data if len(blob.double_data) else blob.data, np.float32)
    if int(np.prod(shape, dtype=np.int64)) != data.size:
        raise ValueError(f"blob of shape {shape} holds {data.size} values")
    return data.reshape(shape)


def read_mean(path: Path, channels: int = 3) -> tuple[float, ...]:
    """The per-channel mean of a mean image (`mean.binaryproto`), in the blob's channel order.

    Miles Deep subtracted this per-channel mean (cv::mean of the mean image), not the image.
    """
    blob = messages().BlobProto()
    try:
        blob.ParseFromString(_read_bytes(path, "mean file"))
        arr = blob_array(blob)
    except (DecodeError, ValueError):
        raise MilesDeepError("not a Caffe mean file (binary BlobProto)", path) from None
    if arr.ndim == 4 and arr.shape[0] > 0:
        arr = arr[0]
    if arr.ndim != 3 or arr.shape[0] != channels or arr.size == 0:
        raise MilesDeepError(
            f"the mean image has shape {list(arr.shape)}; {channels} planar channels are needed",
            path,
        )
    return tuple(float(m) for m in arr.reshape(channels, -1).astype(np.float64).mean(axis=1))
