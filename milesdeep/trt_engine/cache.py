"""Where engines live and how a run finds the one built for its model.

An engine is keyed by the model (the sha256 of the bundle's own ONNX) and the precision; the
GPU and TensorRT version are *not* in the key, on purpose: a later run on another GPU or
TensorRT finds the old engine, reads its sidecar and refuses it with the command that rebuilds
it, rather than silently building or ignoring one.

The engine directory is `$MILESDEEP_ENGINE_DIR`, else `$XDG_CACHE_HOME/milesdeep/engines`,
else `~/.cache/milesdeep/engines`. The builder's timing cache lives beside the engines, one per
GPU and TensorRT version (a timing cache from another version is ignored by TensorRT anyway).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from milesdeep.trt_engine.sidecar import PRECISIONS

ENGINE_SUFFIX = ".engine"


def engine_dir() -> Path:
    env = os.environ.get("MILESDEEP_ENGINE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "milesdeep" / "engines"


def _slug(name: str) -> str:
    s = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")
    return s[:48] or "model"


def engine_key(model_name: str, model_sha256: str, precision: str) -> str:
    """The file stem of an engine: readable name, model hash, precision."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}")
    return f"{_slug(model_name)}-{model_sha256[:16]}-{precision}"


def engine_path(model_name: str, model_sha256: str, precision: str,
                directory: Path | None = None) -> Path:
    return (directory or engine_dir()) / (engine_key(model_name, model_sha256, precision)
                                          + ENGINE_SUFFIX)


def find_engines(model_name: str, model_sha256: str, directory: Path | None = None,
                 precision: str | None = None) -> list[Path]:
    """Existing engines for this model, in order of preference (the fastest precision first:
    int8, fp16, fp32), or only the requested precision."""
    order = [precision] if precision else ["int8", "fp16", "fp32"]
    found = []
    for p in order:
        path = engine_path(model_name, model_sha256, p, directory)
        if path.is_file():
            found.append(path)
    return found


def timing_cache_path(directory: Path, tensorrt_version: str,
                      compute_capability: tuple[int, int], gpu_name: str | None = None) -> Path:
    """Per TensorRT version, compute capability and GPU model: two GPUs of one compute
    capability (an RTX 3090 and an A40) time tactics differently."""
    cc = f"{compute_capability[0]}{compute_capability[1]}"
    gpu = f"-{_slug(gpu_name)}" if gpu_name else ""
    return directory / f"timing-sm{cc}{gpu}-trt{_slug(tensorrt_version)}.cache"


def rebuild_command(model_arg: str | None, precision: str, batch: int | None = None) -> str:
    """The command a user runs to rebuild (quoted in the stale-engine message)."""
    parts = ["miles-deep", "build-engine"]
    if model_arg:
        parts += ["--model", model_arg if " " not in model_arg else f"'{model_arg}'"]
    parts += ["--precision", precision]
    if batch:
        parts += ["--batch", str(batch)]
    return " ".join(parts)
