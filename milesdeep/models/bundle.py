"""Model bundles: ONNX file + labels + preprocessing manifest (`model.toml`).

A bundle directory holds the ONNX file, `labels.txt` (one label a line, in output
order) and `model.toml`:

    name = "colours"
    onnx = "model.onnx"            # relative to the bundle directory
    labels = "labels.txt"
    other_label = "gray"           # optional: what -x leaves out
    [input]
    layout = "NCHW"                # or "NHWC"
    channels = "RGB"               # or "BGR"
    size = [64, 64]                # height, width
    resize = "squash"              # or "resize-crop", with resize_to = [256, 256]
    antialias = true               # optional (default true): filter support grows when shrinking
    mean = [0.0, 0.0, 0.0]         # per channel in the input's channel order, 0-255 units
    scale = 1.0                    # multiplied after the mean is subtracted
    [output]
    kind = "probabilities"         # or "logits" (softmax applied by us)
"""

from __future__ import annotations

import hashlib
import math
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from milesdeep.errors import MilesDeepError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

MANIFEST = "model.toml"
Layout = Literal["NCHW", "NHWC"]
Channels = Literal["RGB", "BGR"]
ResizeMode = Literal["squash", "resize-crop"]
OutputKind = Literal["probabilities", "logits"]


@dataclass(frozen=True)
class InputSpec:
    """How a decoded frame becomes one input tensor of the network."""

    layout: Layout = "NCHW"
    channels: Channels = "RGB"
    size: tuple[int, int] = (224, 224)  # height, width
    resize: ResizeMode = "squash"
    resize_to: tuple[int, int] | None = None  # (h, w) before the centre crop, resize-crop only
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)  # in `channels` order, 0-255 units
    scale: float = 1.0
    antialias: bool = True

    def __post_init__(self) -> None:
        if self.resize == "resize-crop" and self.resize_to is None:
            object.__setattr__(self, "resize_to", (256, 256))

    @property
    def shape(self) -> tuple[int, int, int]:
        """The per-sample tensor shape in this spec's layout."""
        h, w = self.size
        return (3, h, w) if self.layout == "NCHW" else (h, w, 3)

    def to_toml(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "layout": self.layout,
            "channels": self.channels,
            "size": list(self.size),
            "resize": self.resize,
            "antialias": self.antialias,
            "mean": [float(m) for m in self.mean],
            "scale": float(self.scale),
        }
        if self.resize == "resize-crop":
            d["resize_to"] = list(self.resize_to or (256, 256))
        return d


@dataclass(frozen=True)
class ModelBundle:
    """Everything the pipeline needs to know about a classifier."""

    name: str
    onnx_path: Path
    labels: tuple[str, ...]
    input: InputSpec
    output_kind: OutputKind = "probabilities"
    other_label: str | None = None
    directory: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def sha256(self) -> str:
        return file_sha256(self.onnx_path)

    def label_index(self, label: str) -> int:
        try:
            return self.labels.index(label)
        except ValueError:
            raise MilesDeepError(
                f"unknown label {label!r}; this model's labels are: {', '.join(self.labels)}"
            ) from None

    def with_onnx(self, onnx_path: Path, name: str | None = None) -> ModelBundle:
        """The same bundle with another ONNX file (an FP16 or INT8 variant, say)."""
        return replace(self, onnx_path=Path(onnx_path), name=name or self.name)


_sha_cache: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _sha_cache:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _sha_cache[key] = h.hexdigest()
    return _sha_cache[key]


def _number(value: Any) -> bool:
    """A finite TOML number (TOML's true and false are not numbers here, nor nan and inf)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value)


def _pair(value: Any, key: str, where: Path) -> tuple[int, int]:
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    ):
        raise MilesDeepError(f"{key} must be [height, width] in positive integers", where)
    return (value[0], value[1])


def _choice(table: dict[str, Any], key: str, allowed: tuple[str, ...], default: str | None,
            where: Path, prefix: str) -> str:
    value = table.get(key, default)
    if value not in allowed:
        raise MilesDeepError(
            f"{prefix}{key} = {value!r} is not one of: {', '.join(allowed)}", where
        )
    return value


def parse_input_spec(table: dict[str, Any], where: Path) -> InputSpec:
    """Validate the `[input]` table of a manifest."""
    if not isinstance(table, dict):
        raise MilesDeepError("[input] table is missing", where)
    unknown = set(table) - {
        "layout", "channels", "size", "resize", "resize_to", "mean", "scale", "antialias", "name"
    }
    if unknown:
        raise MilesDeepError(f"unknown key(s) in [input]: {', '.join(sorted(unknown))}", where)
    layout = _choice(table, "layout", ("NCHW", "NHWC"), None, where, "input.")
    channels = _choice(table, "channels", ("RGB", "BGR"), None, where, "input.")
    if "size" not in table:
        raise MilesDeepError("input.size is missing (write size = [height, width])", where)
    size = _pair(table["size"], "input.size", where)
    resize = _choice(table, "resize", ("squash", "resize-crop"), "squash", where, "input.")
    resize_to = None
    if resize != "resize-crop" and "resize_to" in table:
        raise MilesDeepError('input.resize_to is only used with resize = "resize-crop"', where)
    if resize == "resize-crop":
        resize_to = _pair(table.get("resize_to", [256, 256]), "input.resize_to", where)
        if resize_to[0] < size[0] or resize_to[1] < size[1]:
            raise MilesDeepError("input.resize_to must be at least input.size", where)
    mean = table.get("mean", [0.0, 0.0, 0.0])
    if (
        not isinstance(mean, list)
        or len(mean) != 3
        or not all(_number(m) for m in mean)
    ):
        raise MilesDeepError("input.mean must be three finite numbers (0-255 units)", where)
    scale = table.get("scale", 1.0)
    if not _number(scale) or scale == 0:
        raise MilesDeepError("input.scale must be a finite non-zero number", where)
    antialias = table.get("antialias", True)
    if not isinstance(antialias, bool):
        raise MilesDeepError("input.antialias must be true or false", where)
    return InputSpec(
        layout=layout,  # type: ignore[arg-type]
        channels=channels,  # type: ignore[arg-type]
        size=size,
        resize=resize,  # type: ignore[arg-type]
        resize_to=resize_to,
        mean=(float(mean[0]), float(mean[1]), float(mean[2])),
        scale=float(scale),
        antialias=antialias,
    )


def read_labels(path: Path) -> tuple[str, ...]:
    try:
        # utf-8-sig: a byte-order mark (Windows Notepad writes one) is not part of a label.
        text = path.read_text(encoding="utf-8-sig")
    except OSError as e:
        raise MilesDeepError(f"cannot read labels file ({e.strerror})", path) from None
    except UnicodeDecodeError:
        raise MilesDeepError("labels file is not UTF-8 text: save it as UTF-8, one label a "
                             "line", path) from None
    labels = tuple(line.strip() for line in text.splitlines() if line.strip())
    if not labels:
        raise MilesDeepError("labels file is empty: write one label a line", path)
    if len(set(labels)) != len(labels):
        raise MilesDeepError("labels file has duplicate labels", path)
    bad = [lb for lb in labels if "," in lb]
    if bad:
        raise MilesDeepError(f"labels may not contain commas: {bad[0]!r}", path)
    return labels


def check_onnx_io(onnx_path: Path, spec: InputSpec, n_labels: int, where: Path) -> None:
    """Refuse a model whose input or output shape does not fit the manifest and labels."""
    import onnx

    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as e:  # onnx raises several types for a bad file
        raise MilesDeepError(f"not a readable ONNX model ({type(e).__name__})", onnx_path) from None
    if not model.graph.node:  # an empty file parses as an empty model
        raise MilesDeepError("not a readable ONNX model (it holds no graph)", onnx_path)
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise MilesDeepError(f"the model must have exactly one input, it has {len(inputs)}",
                             onnx_path)

    def dims(value_info: Any) -> list[int | None]:
        shape = value_info.type.tensor_type.shape
        return [d.dim_value if d.HasField("dim_value") else None for d in shape.dim]

    elem = inputs[0].type.tensor_type.elem_type
    if elem not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16):
        kind = onnx.TensorProto.DataType.Name(elem).lower()
        raise MilesDeepError(f"the model input is {kind}, but images are fed as float32 or "
                             "float16; export the model with a float input", onnx_path)
    in_dims = dims(inputs[0])
    if len(in_dims) != 4:
        raise MilesDeepError(
            f"model input has rank {len(in_dims)}, a 4-D image batch is needed", onnx_path
        )
    want = spec.shape
    for got, exp, axis in zip(in_dims[1:], want, range(1, 4)):
        if got is not None and got != exp:
            raise MilesDeepError(
                f"model input is {in_dims[1:]} but the manifest's input.size/layout give "
                f"{list(want)} (axis {axis}); fix input.size or input.layout in {MANIFEST}",
                where,
            )
    if model.graph.output:
        out_elem = model.graph.output[0].type.tensor_type.elem_type
        if out_elem not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16,
                            onnx.TensorProto.DOUBLE):
            kind = onnx.TensorProto.DataType.Name(out_elem).lower()
            raise MilesDeepError(f"the model's output is {kind}, not scores; export it with "
                                 "the float scores (one per label) as its first output",
                                 onnx_path)
    # Scores per image: everything after the batch axis ((N, C) or a conv head's (N, C, 1, 1)).
    per_image = dims(model.graph.output[0])[1:] if model.graph.output else []
    if per_image and None not in per_image and math.prod(per_image) != n_labels:  # type: ignore[arg-type]
        raise MilesDeepError(
            f"the model gives {math.prod(per_image)} scores per image (output "  # type: ignore[arg-type]
            f"{per_image}) but the labels file has {n_labels} labels",
            where,
        )


def load_bundle(directory: str | Path, check: bool = True) -> ModelBundle:
    """Read and validate a bundle directory."""
    d = Path(directory)
    manifest = d / MANIFEST
    if not manifest.is_file():
        raise MilesDeepError(f"not a model bundle: no {MANIFEST} in it", d)
    try:
        data = tomllib.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise MilesDeepError(f"cannot read the manifest: {e}", manifest) from None
    for key in ("onnx", "labels"):
        if not isinstance(data.get(key), str):
            raise MilesDeepError(f"key {key!r} is missing or not a string", manifest)
    onnx_path = d / data["onnx"]
    if not onnx_path.is_file():
        raise MilesDeepError(f"onnx = {data['onnx']!r}: no such file in the bundle", manifest)
    labels = read_labels(d / data["labels"])
    spec = parse_input_spec(data.get("input"), manifest)  # type: ignore[arg-type]
    out = data.get("output", {})
    if not isinstance(out, dict) or set(out) - {"kind"}:
        bad = ", ".join(sorted(set(out) - {"kind"})) if isinstance(out, dict) else "output"
        raise MilesDeepError(f"unknown key(s) in [output]: {bad} (only kind is read)", manifest)
    kind = _choice(out, "kind", ("probabilities", "logits"), "probabilities", manifest, "output.")
    if kind == "logits" and len(labels) == 1:
        # Softmax over one score is 1 for every picture: every second would be that label.
        raise MilesDeepError("kind = \"logits\" needs two labels or more (the softmax of one "
                             "score is always 1); give each class its own score", manifest)
    other = data.get("other_label")
    if other is not None and other not in labels:
        raise MilesDeepError(
            f"other_label = {other!r} is not among the labels ({', '.join(labels)})", manifest
        )
    if check:
        check_onnx_io(onnx_path, spec, len(labels), manifest)
    known = {"name", "onnx", "labels", "other_label", "input", "output"}
    return ModelBundle(
        name=str(data.get("name", d.name)),
        onnx_path=onnx_path,
        labels=labels,
        input=spec,
        output_kind=kind,  # type: ignore[arg-type]
        other_label=other,
        directory=d,
        extra={k: v for k, v in data.items() if k not in known},
    )


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return repr(v)


def write_bundle(
    directory: str | Path,
    onnx_file: str,
    labels: tuple[str, ...] | list[str],
    spec: InputSpec,
    *,
    name: str,
    output_kind: OutputKind = "probabilities",
    other_label: str | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write labels.txt and model.toml beside an ONNX file already in `directory`."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    (d / "labels.txt").write_text("".join(f"{lb}\n" for lb in labels), encoding="utf-8")
    lines = [f"name = {_toml_value(name)}", f"onnx = {_toml_value(onnx_file)}",
             'labels = "labels.txt"']
    if other_label is not None:
        lines.append(f"other_label = {_toml_value(other_label)}")
    for k, v in (extra or {}).items():
        lines.append(f"{k} = {_toml_value(v)}")
    lines.append("\n[input]")
    lines += [f"{k} = {_toml_value(v)}" for k, v in spec.to_toml().items()]
    lines += ["\n[output]", f"kind = {_toml_value(output_kind)}", ""]
    (d / MANIFEST).write_text("\n".join(lines), encoding="utf-8")
    return d


def resolve_model(model: str | Path | None) -> ModelBundle:
    """A built-in name, or a bundle directory; None means the default model."""
    from milesdeep.models.builtin import BUILTINS, DEFAULT_MODEL

    if model is None:
        model = DEFAULT_MODEL
    key = str(model)
    if key in BUILTINS:
        return BUILTINS[key]()
    p = Path(key)
    if p.is_dir():
        return load_bundle(p)
    raise MilesDeepError(
        f"unknown model {key!r}: give a built-in name ({', '.join(sorted(BUILTINS))}) "
        "or a bundle directory holding model.toml"
    )
