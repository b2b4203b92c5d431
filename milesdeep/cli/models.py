"""`miles-deep import-caffe` and `miles-deep models`: bring your own model, list the models."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from milesdeep.cli import options as o
from milesdeep.cli.app import app, console
from milesdeep.errors import MilesDeepError, UsageError
from milesdeep.models.bundle import InputSpec, ModelBundle, load_bundle


@app.command("import-caffe")
def import_caffe_cmd(
    prototxt: o.ProtoOpt = None,
    weights: o.WeightsOpt = None,
    mean: o.MeanOpt = None,
    labels: o.LabelsOpt = None,
    output: Annotated[Path | None, typer.Option("-o", "--output",
                                                help="Bundle directory to create")] = None,
) -> None:
    """Convert a Caffe model (Miles Deep's files) into an ONNX bundle usable with --model."""
    missing = [flag for flag, v in (("-p", prototxt), ("-w", weights), ("-l", labels),
                                    ("-o", output)) if v is None]
    if missing:
        raise UsageError(f"import-caffe needs {' '.join(missing)} (-p deploy.prototxt "
                             "-w weights.caffemodel [-m mean.binaryproto] -l labels.txt "
                             "-o BUNDLE_DIR)")
    from milesdeep.models.caffe import import_caffe

    bundle = import_caffe(prototxt, weights, mean, labels, output)  # type: ignore[arg-type]
    console.print(f"wrote {bundle.directory} ({len(bundle.labels)} labels, "
                  f"{describe_input(bundle.input)}); use it with --model {bundle.directory}",
                  markup=False, soft_wrap=True)


def describe_input(spec: InputSpec) -> str:
    h, w = spec.size
    if spec.resize == "squash":
        resize = f"squash to {h}x{w}"
    else:
        rh, rw = spec.resize_to or (h, w)
        resize = f"resize to {rh}x{rw}, centre-crop {h}x{w}"
    mean = "/".join(f"{m:g}" for m in spec.mean)
    return (f"{spec.layout} {spec.channels}, {resize}"
            f"{' (antialiased)' if spec.antialias else ''}, mean {mean}, scale {spec.scale:g}")


def describe_bundle(title: str, bundle: ModelBundle) -> list[str]:
    other = f" (other: {bundle.other_label})" if bundle.other_label else ""
    return [title,
            f"  labels: {', '.join(bundle.labels)}{other}",
            f"  input:  {describe_input(bundle.input)}",
            f"  output: {bundle.output_kind}"]


@app.command("models")
def models_cmd() -> None:
    """List the built-in models and the converted Caffe models in the cache."""
    from milesdeep.models.builtin import BUILTINS
    from milesdeep.models.caffe.cache import cached_bundles, models_dir

    lines: list[str] = []
    for name, make in sorted(BUILTINS.items()):
        try:
            lines += describe_bundle(f"{name}  (built-in; --model {name})", make())
        except MilesDeepError as e:
            lines += [f"{name}  (built-in)", f"  unavailable: {e}"]
    for d in cached_bundles():
        try:
            bundle = load_bundle(d)  # the ONNX read too: a listed model is a usable one
        except MilesDeepError as e:
            lines += [f"{d.name[:12]}  (cached, unreadable: {e})"]
            continue
        src = bundle.extra.get("caffe_definition", "?")
        lines += describe_bundle(f"{bundle.name}  (Caffe import of {src}; --model {d})", bundle)
    if not cached_bundles():
        lines.append(f"(no converted Caffe models in {models_dir()})")
    typer.echo("\n".join(lines))
