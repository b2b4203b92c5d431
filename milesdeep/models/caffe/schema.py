"""The subset of Caffe's `caffe.proto` that milesdeep reads, built at run time.

Field names and numbers are those of BVLC Caffe's `src/caffe/proto/caffe.proto` (they are facts
of the file format). The descriptors are assembled into a `FileDescriptorProto` here instead of
shipping protoc-generated code, so any protobuf runtime from 4.21 on can load them; parsing
itself (text and binary) is left entirely to the protobuf runtime.

Kept: the net, layer and blob messages, and every field of the parameter messages of the layer
types the importer supports (plus the common training-only fields, so ordinary deploy files
parse strictly). Parameter messages of other layer types are absent on purpose: the reader
reports such a layer by name and type instead.
"""

from __future__ import annotations

from functools import cache
from typing import Any, NamedTuple

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

PACKAGE = "caffe"
FILE_NAME = "milesdeep_caffe_subset.proto"

_FD = descriptor_pb2.FieldDescriptorProto
_SCALARS = {
    "double": _FD.TYPE_DOUBLE,
    "float": _FD.TYPE_FLOAT,
    "int64": _FD.TYPE_INT64,
    "uint64": _FD.TYPE_UINT64,
    "int32": _FD.TYPE_INT32,
    "uint32": _FD.TYPE_UINT32,
    "bool": _FD.TYPE_BOOL,
    "string": _FD.TYPE_STRING,
    "bytes": _FD.TYPE_BYTES,
}


class F(NamedTuple):
    """One field: name, number, type (a scalar name, `Msg` or `Msg.Enum`), label, default."""

    name: str
    number: int
    type: str
    repeated: bool = False
    default: str | None = None
    packed: bool = False


def R(name: str, number: int, type_: str, packed: bool = False) -> F:  # noqa: N802
    return F(name, number, type_, repeated=True, packed=packed)


# Enum values, in caffe.proto order: {message: {enum: [(value name, number), ...]}}
_ENUMS: dict[str, dict[str, list[tuple[str, int]]]] = {
    "": {"Phase": [("TRAIN", 0), ("TEST", 1)]},
    "FillerParameter": {"VarianceNorm": [("FAN_IN", 0), ("FAN_OUT", 1), ("AVERAGE", 2)]},
    "ParamSpec": {"DimCheckMode": [("STRICT", 0), ("PERMISSIVE", 1)]},
    "ConvolutionParameter": {"Engine": [("DEFAULT", 0), ("CAFFE", 1), ("CUDNN", 2)]},
    "PoolingParameter": {
        "PoolMethod": [("MAX", 0), ("AVE", 1), ("STOCHASTIC", 2)],
        "Engine": [("DEFAULT", 0), ("CAFFE", 1), ("CUDNN", 2)],
        "RoundMode": [("CEIL", 0), ("FLOOR", 1)],
    },
    "EltwiseParameter": {"EltwiseOp": [("PROD", 0), ("SUM", 1), ("MAX", 2)]},
    "LRNParameter": {
        "NormRegion": [("ACROSS_CHANNELS", 0), ("WITHIN_CHANNEL", 1)],
        "Engine": [("DEFAULT", 0), ("CAFFE", 1), ("CUDNN", 2)],
    },
    "ReLUParameter": {"Engine": [("DEFAULT", 0), ("CAFFE", 1), ("CUDNN", 2)]},
    "SoftmaxParameter": {"Engine": [("DEFAULT", 0), ("CAFFE", 1), ("CUDNN", 2)]},
    "LossParameter": {
        "NormalizationMode": [("FULL", 0), ("VALID", 1), ("BATCH_SIZE", 2), ("NONE", 3)]
    },
}

_MESSAGES: dict[str, list[F]] = {
    "BlobShape": [R("dim", 1, "int64", packed=True)],
    "BlobProto": [
        F("shape", 7, "BlobShape"),
        R("data", 5, "float", packed=True),
        R("diff", 6, "float", packed=True),
        R("double_data", 8, "double", packed=True),
        R("double_diff", 9, "double", packed=True),
        F("num", 1, "int64", default="0"),
        F("channels", 2, "int64", default="0"),
        F("height", 3, "int64", default="0"),
        F("width", 4, "int64", default="0"),
    ],
    "FillerParameter": [
        F("type", 1, "string", default="constant"),
        F("value", 2, "float", default="0"),
        F("min", 3, "float", default="0"),
        F("max", 4, "float", default="1"),
        F("mean", 5, "float", default="0"),
        F("std", 6, "float", default="1"),
        F("sparse", 7, "int32", default="-1"),
        F("variance_norm", 8, "FillerParameter.VarianceNorm", default="FAN_IN"),
    ],
    "NetParameter": [
        F("name", 1, "string"),
        R("input", 3, "string"),
        R("input_shape", 8, "BlobShape"),
        R("input_dim", 4, "int32"),
        F("force_backward", 5, "bool", default="false"),
        F("state", 6, "NetState"),
        F("debug_info", 7, "bool", default="false"),
        R("layer", 100, "LayerParameter"),
        R("layers", 2, "V1LayerParameter"),
    ],
    "NetState": [
        F("phase", 1, "Phase", default="TEST"),
        F("level", 2, "int32", default="0"),
        R("stage", 3, "string"),
    ],
    "NetStateRule": [
        F("phase", 1, "Phase"),
        F("min_level", 2, "int32"),
        F("max_level", 3, "int32"),
        R("stage", 4, "string"),
        R("not_stage", 5, "string"),
    ],
    "ParamSpec": [
        F("name", 1, "string"),
        F("share_mode", 2, "ParamSpec.DimCheckMode"),
        F("lr_mult", 3, "float", default="1"),
        F("decay_mult", 4, "float", default="1"),
    ],
    "LayerParameter": [
        F("name", 1, "string"),
        F("type", 2, "string"),
        R("bottom", 3, "string"),
        R("top", 4, "string"),
        F("phase", 10, "Phase"),
        R("loss_weight", 5, "float"),
        R("param", 6, "ParamSpec"),
        R("blobs", 7, "BlobProto"),
        R("propagate_down", 11, "bool"),
        R("include", 8, "NetStateRule"),
        R("exclude", 9, "NetStateRule"),
        F("loss_param", 101, "LossParameter"),
        F("batch_norm_param", 139, "BatchNormParameter"),
        F("concat_param", 104, "ConcatParameter"),
        F("convolution_param", 106, "ConvolutionParameter"),
        F("dropout_param", 108, "DropoutParameter"),
        F("eltwise_param", 110, "EltwiseParameter"),
        F("flatten_param", 135, "FlattenParameter"),
        F("inner_product_param", 117, "InnerProductParameter"),
        F("input_param", 143, "InputParameter"),
        F("lrn_param", 118, "LRNParameter"),
        F("pooling_param", 121, "PoolingParameter"),
        F("relu_param", 123, "ReLUParameter"),
        F("scale_param", 142, "ScaleParameter"),
        F("softmax_param", 125, "SoftmaxParameter"),
    ],
    # Only enough of the deprecated V1 layer to name it in the error that refuses it.
    "V1LayerParameter": [
        R("bottom", 2, "string"),
        R("top", 3, "string"),
        F("name", 4, "string"),
    ],
    "LossParameter": [
        F("ignore_label", 1, "int32"),
        F("normalization", 3, "LossParameter.NormalizationMode", default="VALID"),
        F("normalize", 2, "bool"),
    ],
    "BatchNormParameter": [
        F("use_global_stats", 1, "bool"),
        F("moving_average_fraction", 2, "float", default="0.999"),
        F("eps", 3, "float", default="1e-05"),
    ],
    "ConcatParameter": [
        F("axis", 2, "int32", default="1"),
        F("concat_dim", 1, "uint32", default="1"),
    ],
    "ConvolutionParameter": [
        F("num_output", 1, "uint32"),
        F("bias_term", 2, "bool", default="true"),
        R("pad", 3, "uint32"),
        R("kernel_size", 4, "uint32"),
        R("stride", 6, "uint32"),
        R("dilation", 18, "uint32"),
        F("pad_h", 9, "uint32", default="0"),
        F("pad_w", 10, "uint32", default="0"),
        F("kernel_h", 11, "uint32"),
        F("kernel_w", 12, "uint32"),
        F("stride_h", 13, "uint32"),
        F("stride_w", 14, "uint32"),
        F("group", 5, "uint32", default="1"),
        F("weight_filler", 7, "FillerParameter"),
        F("bias_filler", 8, "FillerParameter"),
        F("engine", 15, "ConvolutionParameter.Engine", default="DEFAULT"),
        F("axis", 16, "int32", default="1"),
        F("force_nd_im2col", 17, "bool", default="false"),
    ],
    "DropoutParameter": [F("dropout_ratio", 1, "float", default="0.5")],
    "EltwiseParameter": [
        F("operation", 1, "EltwiseParameter.EltwiseOp", default="SUM"),
        R("coeff", 2, "float"),
        F("stable_prod_grad", 3, "bool", default="true"),
    ],
    "FlattenParameter": [
        F("axis", 1, "int32", default="1"),
        F("end_axis", 2, "int32", default="-1"),
    ],
    "InnerProductParameter": [
        F("num_output", 1, "uint32"),
        F("bias_term", 2, "bool", default="true"),
        F("weight_filler", 3, "FillerParameter"),
        F("bias_filler", 4, "FillerParameter"),
        F("axis", 5, "int32", default="1"),
        F("transpose", 6, "bool", default="false"),
    ],
    "InputParameter": [R("shape", 1, "BlobShape")],
    "LRNParameter": [
        F("local_size", 1, "uint32", default="5"),
        F("alpha", 2, "float", default="1"),
        F("beta", 3, "float", default="0.75"),
        F("norm_region", 4, "LRNParameter.NormRegion", default="ACROSS_CHANNELS"),
        F("k", 5, "float", default="1"),
        F("engine", 6, "LRNParameter.Engine", default="DEFAULT"),
    ],
    "PoolingParameter": [
        F("pool", 1, "PoolingParameter.PoolMethod", default="MAX"),
        F("pad", 4, "uint32", default="0"),
        F("pad_h", 9, "uint32", default="0"),
        F("pad_w", 10, "uint32", default="0"),
        F("kernel_size", 2, "uint32"),
        F("kernel_h", 5, "uint32"),
        F("kernel_w", 6, "uint32"),
        F("stride", 3, "uint32", default="1"),
        F("stride_h", 7, "uint32"),
        F("stride_w", 8, "uint32"),
        F("engine", 11, "PoolingParameter.Engine", default="DEFAULT"),
        F("global_pooling", 12, "bool", default="false"),
        F("round_mode", 13, "PoolingParameter.RoundMode", default="CEIL"),
    ],
    "ReLUParameter": [
        F("negative_slope", 1, "float", default="0"),
        F("engine", 2, "ReLUParameter.Engine", default="DEFAULT"),
    ],
    "ScaleParameter": [
        F("axis", 1, "int32", default="1"),
        F("num_axes", 2, "int32", default="1"),
        F("filler", 3, "FillerParameter"),
        F("bias_term", 4, "bool", default="false"),
        F("bias_filler", 5, "FillerParameter"),
    ],
    "SoftmaxParameter": [
        F("engine", 1, "SoftmaxParameter.Engine", default="DEFAULT"),
        F("axis", 2, "int32", default="1"),
    ],
}


def _is_enum(type_name: str) -> bool:
    if "." in type_name:
        msg, enum = type_name.split(".", 1)
        return enum in _ENUMS.get(msg, {})
    return type_name in _ENUMS[""]


def _add_enum(container: Any, name: str, values: list[tuple[str, int]]) -> None:
    enum = container.enum_type.add(name=name)
    for value_name, number in values:
        enum.value.add(name=value_name, number=number)


def file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    """The schema subset as a FileDescriptorProto (proto2, package `caffe`)."""
    fdp = descriptor_pb2.FileDescriptorProto(name=FILE_NAME, package=PACKAGE, syntax="proto2")
    for enum_name, values in _ENUMS[""].items():
        _add_enum(fdp, enum_name, values)
    for msg_name, fields in _MESSAGES.items():
        msg = fdp.message_type.add(name=msg_name)
        for enum_name, values in _ENUMS.get(msg_name, {}).items():
            _add_enum(msg, enum_name, values)
        for f in fields:
            fd = msg.field.add(name=f.name, number=f.number)
            fd.label = _FD.LABEL_REPEATED if f.repeated else _FD.LABEL_OPTIONAL
            if f.type in _SCALARS:
                fd.type = _SCALARS[f.type]
            else:
                fd.type = _FD.TYPE_ENUM if _is_enum(f.type) else _FD.TYPE_MESSAGE
                fd.type_name = f".{PACKAGE}.{f.type}"
            if f.default is not None:
                fd.default_value = f.default
            if f.packed:
                fd.options.packed = True
    return fdp


class Caffe(NamedTuple):
    """The message classes callers use."""

    NetParameter: type
    LayerParameter: type
    BlobProto: type
    BlobShape: type


@cache
def messages() -> Caffe:
    """Build (once) the message classes in a private pool, apart from any other caffe.proto."""
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file_descriptor())

    def cls(name: str) -> type:
        desc = pool.FindMessageTypeByName(f"{PACKAGE}.{name}")
        if hasattr(message_factory, "GetMessageClass"):
            return message_factory.GetMessageClass(desc)
        return message_factory.MessageFactory(pool).GetPrototype(desc)  # protobuf < 4.22

    return Caffe(cls("NetParameter"), cls("LayerParameter"), cls("BlobProto"), cls("BlobShape"))
