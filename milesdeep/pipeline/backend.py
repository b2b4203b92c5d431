"""Choosing between the CPU twin and the GPU twin (`--backend auto|cpu|gpu`).

The GPU path needs four things at once: an NVIDIA GPU the driver can see, TensorRT, CuPy and
PyNvVideoCodec. Whether they are usable is found out in a *subprocess*: PyNvVideoCodec can
kill the process that imports it when there is no device, and CUDA initialisation can hang on
a broken driver, so neither may happen in the process that runs the user's command. The probe
prints one JSON line; `parse_probe` turns it into a `ProbeResult` and `choose_backend` (pure
logic, unit-tested) turns the request and the probe into a `BackendChoice` that says which
backend runs and why.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Literal

from milesdeep.errors import MilesDeepError, UsageError

BackendName = Literal["cpu", "gpu"]
REQUESTS = ("auto", "cpu", "gpu")

# Import name -> what to install. The import names are the modules' documented names
# (`import tensorrt`, `import cupy`, `import PyNvVideoCodec`, `import pycuda.driver`).
GPU_MODULES: dict[str, str] = {
    "tensorrt": "tensorrt",
    "cupy": "cupy-cuda13x (or cupy-cuda12x)",
    "PyNvVideoCodec": "pynvvideocodec",
    "pycuda": "pycuda",
}
INSTALL_HINT = "pip install 'milesdeep[gpu]'"

# Run with `python -c`: query the device through CuPy *before* importing PyNvVideoCodec, which
# is only imported when a device exists. Every step reports into one JSON line on stdout.
PROBE_SCRIPT = r"""
import json, sys
out = {"modules": {}, "gpu": None, "error": None}
def mod(name, target=None):
    # target: the submodule the pipeline imports (pycuda's compiled driver, not the package)
    try:
        m = __import__(name)
        if target:
            __import__(target)
        out["modules"][name] = {"ok": True, "version": str(getattr(m, "__version__", ""))}
        return m
    except BaseException as e:
        out["modules"][name] = {"ok": False, "error": (type(e).__name__ + ": " + str(e))[:200]}
        return None
try:
    cupy = mod("cupy")
    if cupy is not None:
        try:
            n = cupy.cuda.runtime.getDeviceCount()
            if n > 0:
                props = cupy.cuda.runtime.getDeviceProperties(0)
                name = props["name"]
                name = name.decode() if isinstance(name, bytes) else str(name)
                out["gpu"] = {"name": name, "count": n,
                              "cc": [int(props["major"]), int(props["minor"])]}
        except BaseException as e:
            out["error"] = "no usable CUDA device (" + (str(e).split(":")[0][:80]
                                                        or type(e).__name__) + ")"
    mod("tensorrt")
    mod("pycuda", "pycuda.driver")
    if out["gpu"] is not None:
        mod("PyNvVideoCodec")
    else:
        spec = __import__("importlib.util").util.find_spec("PyNvVideoCodec")
        out["modules"]["PyNvVideoCodec"] = (
            {"ok": False, "error": "not imported: no CUDA device"} if spec is not None
            else {"ok": False, "error": "ModuleNotFoundError: No module named 'PyNvVideoCodec'"})
finally:
    sys.stdout.write("\nMILESDEEP_PROBE " + json.dumps(out) + "\n")
    sys.stdout.flush()
"""


@dataclass(frozen=True)
class GpuInfo:
    name: str
    compute_capability: tuple[int, int]
    count: int = 1


@dataclass
class ProbeResult:
    """What the probe found. `problems` maps a missing piece to why it is missing."""

    gpu: GpuInfo | None
    versions: dict[str, str] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)

    @property
    def usable(self) -> bool:
        return self.gpu is not None and not self.problems

    @property
    def missing(self) -> list[str]:
        return list(self.problems)


@dataclass(frozen=True)
class BackendChoice:
    name: BackendName
    reason: str
    missing: list[str] = field(default_factory=list)

    def describe(self) -> str:
        return f"backend: {self.name} ({self.reason})"


def parse_probe(stdout: str, returncode: int | None, stderr: str = "") -> ProbeResult:
    """Read the probe's JSON line. A probe that died (a module killed the process, a timeout)
    leaves no line, or a partial one: whatever it did report is kept and the rest is missing."""
    line = None
    for text in stdout.splitlines():
        if text.startswith("MILESDEEP_PROBE "):
            line = text[len("MILESDEEP_PROBE "):]
    if line is None:
        how = ("timed out" if returncode is None else f"exited with status {returncode}")
        tail = stderr.strip().splitlines()[-1][:160] if stderr.strip() else ""
        why = f"the GPU probe {how}" + (f": {tail}" if tail else "")
        return ProbeResult(gpu=None, problems={"gpu": why})
    try:
        data = json.loads(line)
    except json.JSONDecodeError:
        return ProbeResult(gpu=None, problems={"gpu": "the GPU probe printed unreadable output"})
    result = ProbeResult(gpu=None)
    g = data.get("gpu")
    if g:
        cc = g.get("cc") or [0, 0]
        result.gpu = GpuInfo(name=str(g.get("name", "?")),
                             compute_capability=(int(cc[0]), int(cc[1])),
                             count=int(g.get("count", 1)))
    else:
        result.problems["gpu"] = data.get("error") or "no NVIDIA GPU visible to CUDA"
    modules = data.get("modules", {})
    for name in GPU_MODULES:
        info = modules.get(name)
        if info is None:
            result.problems[name] = "not checked (the probe stopped before it)"
        elif info.get("ok"):
            result.versions[name] = str(info.get("version", ""))
        else:
            result.problems[name] = str(info.get("error", "unusable"))
    if returncode not in (0, None) and "gpu" not in result.problems and not result.problems:
        result.problems["gpu"] = f"the GPU probe exited with status {returncode}"
    return result


def installed_gpu_modules() -> list[str]:
    """GPU modules that are installed at all (no import: find_spec only reads the path)."""
    found = []
    for name in GPU_MODULES:
        try:
            if importlib.util.find_spec(name) is not None:
                found.append(name)
        except (ImportError, ValueError):
            continue
    return found


_probe_cache: ProbeResult | None = None


def probe_gpu(timeout: float = 60.0, refresh: bool = False) -> ProbeResult:
    """Probe the GPU stack in a subprocess (cached for this process)."""
    global _probe_cache
    if _probe_cache is not None and not refresh:
        return _probe_cache
    if not installed_gpu_modules():
        # Nothing to probe: spare the subprocess.
        result = ProbeResult(gpu=None, problems={"gpu": "not checked (no GPU packages)",
                                                 **{n: "not installed" for n in GPU_MODULES}})
    else:
        try:
            proc = subprocess.run([sys.executable, "-c", PROBE_SCRIPT], capture_output=True,
                                  text=True, timeout=timeout, check=False)
            result = parse_probe(proc.stdout, proc.returncode, proc.stderr)
        except subprocess.TimeoutExpired as e:
            out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (
                e.stdout or "")
            result = parse_probe(out, None)
    _probe_cache = result
    return result


def missing_line(probe: ProbeResult) -> str:
    """One line naming what the GPU path lacks and how to get it."""
    absent = [n for n, why in probe.problems.items()
              if n != "gpu" and why.startswith(("ModuleNotFoundError", "not installed"))]
    parts = []
    if "gpu" in probe.problems:
        parts.append(f"an NVIDIA GPU: {probe.problems['gpu']}")
    if absent:
        parts.append(f"not installed: {', '.join(absent)}")
    for name, why in probe.problems.items():
        if name != "gpu" and name not in absent:
            parts.append(f"{name} unusable: {why}")
    hint = " (pip install 'milesdeep[gpu]' on a machine with an NVIDIA GPU and driver)" \
        if absent else ""
    return "missing " + "; ".join(parts) + hint


def check_request(requested: str) -> None:
    """--backend takes auto, cpu or gpu (a usage error otherwise)."""
    if requested not in REQUESTS:
        raise UsageError(f"unknown backend {requested!r}: use auto, cpu or gpu")


def choose_backend(requested: str, probe: ProbeResult | None,
                   engine_problem: str | None = None) -> BackendChoice:
    """Decide which backend runs.

    - `cpu`: the CPU twin, no probe needed (`probe` may be None).
    - `gpu`: the GPU twin, or a MilesDeepError naming what is missing, in one line.
    - `auto`: the GPU when everything is usable and an engine is ready, else the CPU, with the
      reason.
    `engine_problem` is why no usable TensorRT engine exists for this model (None: one does).
    """
    check_request(requested)
    if requested == "cpu":
        return BackendChoice("cpu", "requested with --backend cpu")
    if probe is None:
        raise ValueError("a probe result is needed for --backend auto|gpu")
    if not probe.usable:
        if requested == "gpu":
            raise MilesDeepError(f"--backend gpu: {missing_line(probe)}")
        # Short on purpose: this prints on every CPU run; --backend gpu gives the full list.
        if "gpu" in probe.problems:
            why = "no usable NVIDIA GPU"
        else:
            why = "GPU packages unusable: " + ", ".join(probe.missing)
        return BackendChoice("cpu", why, missing=probe.missing)
    assert probe.gpu is not None
    gpu = f"{probe.gpu.name}, sm_{probe.gpu.compute_capability[0]}{probe.gpu.compute_capability[1]}"
    if engine_problem is not None:
        if requested == "gpu":
            raise MilesDeepError(f"--backend gpu: {engine_problem}")
        return BackendChoice("cpu", f"{gpu} found but {engine_problem}", missing=["engine"])
    trt = probe.versions.get("tensorrt", "")
    why = "requested with --backend gpu" if requested == "gpu" else "auto: all GPU parts usable"
    return BackendChoice("gpu", f"{why}: {gpu}, TensorRT {trt}")


def resolve_backend(requested: str, bundle: object, precision: str | None = None,
                    engine_path: object = None, model_arg: str | None = None) -> BackendChoice:
    """Probe (unless `cpu`), look for a fresh engine for `bundle` when the GPU is usable, and
    choose. The caller prints `choice.describe()` and, for `gpu`, opens
    `milesdeep.pipeline.run_gpu.open_gpu_backend`."""
    if requested == "cpu":
        return choose_backend("cpu", None)
    if requested not in REQUESTS:
        return choose_backend(requested, None)  # raises the unknown-backend error
    probe = probe_gpu()
    problem = None
    if probe.usable:
        assert probe.gpu is not None
        from milesdeep.trt_engine.runner import engine_problem, import_tensorrt
        from milesdeep.trt_engine.sidecar import Environment

        trt = import_tensorrt()
        env = Environment(str(trt.__version__), probe.gpu.name, probe.gpu.compute_capability)
        problem = engine_problem(bundle, env, precision, engine_path,  # type: ignore[arg-type]
                                 model_arg)
    return choose_backend(requested, probe, problem)
