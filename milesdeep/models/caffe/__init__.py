"""Bring your own Caffe model: Miles Deep's files (deploy.prototxt, weights.caffemodel,
mean.binaryproto, labels.txt) converted once into an ONNX bundle."""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path

import onnx

from milesdeep.errors import MilesDeepError
from milesdeep.models.bundle import (
    MANIFEST,
    InputSpec,
    ModelBundle,
    load_bundle,
    read_labels,
    write_bundle,
)
from milesdeep.models.caffe.cache import content_key, models_dir
from milesdeep.models.caffe.reader import read_caffemodel, read_mean, read_prototxt
from milesdeep.models.caffe.to_onnx import convert

ONNX_FILE = "model.onnx"
# Miles Deep's model/ folder, looked up relative to the working directory as the original did.
MODEL_FOLDER = "model"
FOLDER_FILES = ("deploy.prototxt", "weights.caffemodel", "mean.binaryproto", "labels.txt")

__all__ = ["bundle_from_caffe", "find_model_folder", "import_caffe"]


def _check_file(path: Path, flag: str, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise MilesDeepError(f"{what} not found (given with {flag})", path)
    return path


def import_caffe(prototxt: Path, weights: Path, mean: Path | None, labels: Path,
                 out_dir: Path, name: str | None = None,
                 extra: dict[str, str] | None = None) -> ModelBundle:
    """Convert Caffe files into a bundle directory `out_dir` (which must not hold anything).

    The bundle is assembled in a hidden directory beside `out_dir` and renamed into place,
    so a failed import leaves nothing at `out_dir`.
    """
    prototxt = _check_file(prototxt, "-p", "model definition")
    weights = _check_file(weights, "-w", "weights file")
    labels = _check_file(labels, "-l", "labels file")
    if mean is not None:
        mean = _check_file(mean, "-m", "mean file")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise MilesDeepError("is a file; -o names the folder to make the bundle in", out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise MilesDeepError("the bundle directory exists and is not empty; choose a new one",
                             out_dir)
    label_list = read_labels(labels)
    net = read_prototxt(prototxt)
    conv = convert(net, read_caffemodel(weights), prototxt)
    if conv.num_outputs != len(label_list):
        raise MilesDeepError(
            f"the net gives {conv.num_outputs} scores per image but {labels.name} has "
            f"{len(label_list)} labels; they must match one to one", labels)
    spec = InputSpec(
        layout="NCHW",
        channels="BGR",
        size=(conv.input_shape[1], conv.input_shape[2]),
        resize="squash",
        mean=read_mean(mean) if mean is not None else (0.0, 0.0, 0.0),  # type: ignore[arg-type]
        scale=1.0,
        antialias=False,  # Miles Deep resized with OpenCV's plain bilinear cv::resize
    )
    info = {"source": "caffe", "caffe_definition": str(prototxt.resolve()),
            "caffe_weights": str(weights.resolve())}
    info.update(extra or {})
    parent = out_dir.parent
    tmp: Path | None = None
    try:
        try:
            parent.mkdir(parents=True, exist_ok=True)
            while tmp is None:
                # Named before it exists, so that a Ctrl-C just after it is made removes it.
                tmp = parent / f".{out_dir.name}.{secrets.token_hex(4)}.part"
                try:
                    tmp.mkdir()
                except FileExistsError:
                    tmp = None
        except OSError as e:
            tmp = None
            raise MilesDeepError(f"cannot create the bundle directory ({e.strerror})",
                                 out_dir) from None
        onnx.save(conv.model, str(tmp / ONNX_FILE))
        write_bundle(tmp, ONNX_FILE, label_list, spec,
                     name=name or net.name or prototxt.parent.name or prototxt.stem,
                     output_kind="probabilities" if conv.ends_in_softmax else "logits",
                     other_label="other" if "other" in label_list else None, extra=info)
        if out_dir.is_dir():
            out_dir.rmdir()  # empty, checked above
        os.replace(tmp, out_dir)
    except OSError as e:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise MilesDeepError(f"cannot write the bundle ({e.strerror or e})", out_dir) from None
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    return load_bundle(out_dir)


def bundle_from_caffe(prototxt: Path, weights: Path, mean: Path | None,
                      labels: Path) -> ModelBundle:
    """The bundle for these Caffe files, converted once and cached by their content hash."""
    for path, flag, what in ((prototxt, "-p", "model definition"), (weights, "-w", "weights"),
                             (labels, "-l", "labels file"), (mean, "-m", "mean file")):
        if path is not None:
            _check_file(Path(path), flag, what)
    key = content_key(Path(prototxt), Path(weights), None if mean is None else Path(mean),
                      Path(labels))
    target = models_dir() / key
    if (target / MANIFEST).is_file():
        try:
            return load_bundle(target)
        except MilesDeepError:
            shutil.rmtree(target, ignore_errors=True)  # a damaged cache entry: convert again
    elif target.exists():
        shutil.rmtree(target, ignore_errors=True)
    try:
        return import_caffe(Path(prototxt), Path(weights), None if mean is None else Path(mean),
                            Path(labels), target, extra={"content_sha256": key})
    except MilesDeepError as e:
        # Another process may have finished the same conversion first.
        if (target / MANIFEST).is_file() and "not empty" in str(e):
            return load_bundle(target)
        raise


def find_model_folder(cwd: Path) -> tuple[Path, Path, Path | None, Path] | None:
    """Miles Deep's `model/` folder under `cwd`: (prototxt, weights, mean or None, labels).

    None when there is no `model/deploy.prototxt`; an error when the definition is there but
    the weights or labels are not (the original stopped there too).
    """
    folder = Path(cwd) / MODEL_FOLDER
    proto, weights, mean, labels = (folder / f for f in FOLDER_FILES)
    if not proto.is_file():
        return None
    for path in (weights, labels):
        if not path.is_file():
            hint = " (they come with the original release)" if path == weights else ""
            raise MilesDeepError(
                f"the Miles Deep model folder has {proto.name} but no {path.name}; add "
                f"it{hint} or pick a model with --model", folder)
    return proto, weights, (mean if mean.is_file() else None), labels
