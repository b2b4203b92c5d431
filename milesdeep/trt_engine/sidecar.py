"""The JSON sidecar written beside every engine, and the rules that make an engine stale.

A serialized TensorRT engine only runs on the TensorRT version that built it and is tuned for
one GPU (its compute capability, and in practice its exact model), so the sidecar records what
the engine was built from and for. A later run compares that with the present model, TensorRT
and GPU and refuses an engine that does not match, with the command that rebuilds it: a stale
engine is never used silently.

Pure logic, no TensorRT import: tested on the CPU.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from milesdeep.errors import MilesDeepError

SIDECAR_VERSION = 1
Precision = Literal["fp32", "fp16", "int8"]
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8")

REQUIRED_KEYS = (
    "sidecar_version", "model_name", "model_sha256", "onnx_sha256", "precision",
    "batch_profile", "inputs", "outputs", "layout", "tensorrt_version", "gpu_name",
    "compute_capability",
)


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # -1 for a dynamic dimension
    dtype: str  # numpy dtype name: float32, float16, int8...
    mode: Literal["input", "output"]


@dataclass(frozen=True)
class BatchProfile:
    min: int
    opt: int
    max: int


@dataclass(frozen=True)
class Environment:
    """What the present machine offers: compared with a sidecar to detect staleness."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: tuple[int, int]


@dataclass
class EngineSidecar:
    model_name: str
    model_sha256: str  # the bundle's own (FP32) ONNX: the key users know the model by
    onnx_sha256: str  # the ONNX variant actually parsed (FP16 / Q/DQ INT8 / the same)
    precision: str
    batch_profile: BatchProfile
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    layout: str  # the model input's layout, NCHW or NHWC
    tensorrt_version: str
    gpu_name: str
    compute_capability: tuple[int, int]
    workspace_bytes: int = 0
    built_at: str = ""
    sidecar_version: int = SIDECAR_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        d = asdict(self)
        d["compute_capability"] = list(self.compute_capability)
        for k in ("inputs", "outputs"):
            for t in d[k]:
                t["shape"] = list(t["shape"])
        return json.dumps(d, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, where: Path | None = None) -> EngineSidecar:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise MilesDeepError(f"engine sidecar is not valid JSON ({e.msg}); rebuild the "
                                 "engine", where) from None
        if not isinstance(d, dict):
            raise MilesDeepError("engine sidecar is not a JSON object; rebuild the engine", where)
        missing = [k for k in REQUIRED_KEYS if k not in d]
        if missing:
            raise MilesDeepError(f"engine sidecar lacks {', '.join(missing)}; rebuild the "
                                 "engine", where)
        if d["sidecar_version"] != SIDECAR_VERSION:
            raise MilesDeepError(f"engine sidecar version {d['sidecar_version']} is not "
                                 f"{SIDECAR_VERSION}; rebuild the engine", where)
        try:
            bp = d["batch_profile"]
            return cls(
                model_name=str(d["model_name"]),
                model_sha256=str(d["model_sha256"]),
                onnx_sha256=str(d["onnx_sha256"]),
                precision=str(d["precision"]),
                batch_profile=BatchProfile(int(bp["min"]), int(bp["opt"]), int(bp["max"])),
                inputs=[_tensor(t) for t in d["inputs"]],
                outputs=[_tensor(t) for t in d["outputs"]],
                layout=str(d["layout"]),
                tensorrt_version=str(d["tensorrt_version"]),
                gpu_name=str(d["gpu_name"]),
                compute_capability=(int(d["compute_capability"][0]),
                                    int(d["compute_capability"][1])),
                workspace_bytes=int(d.get("workspace_bytes", 0)),
                built_at=str(d.get("built_at", "")),
                extra=dict(d.get("extra", {})),
            )
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise MilesDeepError(f"engine sidecar is malformed ({type(e).__name__}: {e}); "
                                 "rebuild the engine", where) from None


def _tensor(t: dict[str, Any]) -> TensorInfo:
    mode = t["mode"]
    if mode not in ("input", "output"):
        raise ValueError(f"tensor mode {mode!r}")
    return TensorInfo(name=str(t["name"]), shape=tuple(int(x) for x in t["shape"]),
                      dtype=str(t["dtype"]), mode=mode)


def sidecar_path(engine_path: Path) -> Path:
    return Path(str(engine_path) + ".json")


def save_sidecar(engine_path: Path, sidecar: EngineSidecar) -> Path:
    from milesdeep.pipeline.atomic import write_text_atomic

    return write_text_atomic(sidecar_path(engine_path), sidecar.to_json())


def load_sidecar(engine_path: Path) -> EngineSidecar:
    p = sidecar_path(engine_path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MilesDeepError("the engine has no sidecar (.json beside it); rebuild it",
                             engine_path) from None
    except OSError as e:
        raise MilesDeepError(f"cannot read the engine sidecar ({e.strerror})", p) from None
    return EngineSidecar.from_json(text, p)


def stale_reasons(sidecar: EngineSidecar, model_sha256: str, env: Environment) -> list[str]:
    """Why an engine cannot be used here (empty: it can).

    - another model: the bundle's ONNX changed since the build;
    - another TensorRT: engines are not portable across TensorRT versions (full version
      string compared; a patch release can change the serialization format);
    - another GPU: a different compute capability cannot run the engine's kernels, and a
      different GPU model with the same capability would run it with tactics timed elsewhere.
    """
    reasons = []
    if sidecar.model_sha256 != model_sha256:
        reasons.append(f"it was built from another model (sha256 {sidecar.model_sha256[:12]}, "
                       f"now {model_sha256[:12]})")
    if sidecar.tensorrt_version != env.tensorrt_version:
        reasons.append(f"it was built with TensorRT {sidecar.tensorrt_version}, this is "
                       f"TensorRT {env.tensorrt_version}")
    if tuple(sidecar.compute_capability) != tuple(env.compute_capability):
        cc_then = "{}.{}".format(*sidecar.compute_capability)
        cc_now = "{}.{}".format(*env.compute_capability)
        reasons.append(f"it was built for compute capability {cc_then} ({sidecar.gpu_name}), "
                       f"this GPU is {cc_now} ({env.gpu_name})")
    elif sidecar.gpu_name != env.gpu_name:
        reasons.append(f"it was built on a {sidecar.gpu_name}, this GPU is a {env.gpu_name}")
    return reasons


def check_not_stale(sidecar: EngineSidecar, model_sha256: str, env: Environment,
                    engine_path: Path, rebuild_command: str) -> None:
    reasons = stale_reasons(sidecar, model_sha256, env)
    if reasons:
        raise MilesDeepError(f"stale TensorRT engine: {'; '.join(reasons)}; rebuild with: "
                             f"{rebuild_command}", engine_path)
