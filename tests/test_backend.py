"""Choosing the backend: probe parsing, the choice rules, and what this GPU-less machine says."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from milesdeep.errors import MilesDeepError
from milesdeep.pipeline.backend import (
    GPU_MODULES,
    GpuInfo,
    ProbeResult,
    choose_backend,
    missing_line,
    parse_probe,
    probe_gpu,
)

REPO = Path(__file__).resolve().parents[1]


def probe_line(gpu: dict | None, ok: set[str], error: str | None = None) -> str:
    mods = {n: ({"ok": True, "version": "1.0"} if n in ok else
                {"ok": False, "error": f"ModuleNotFoundError: No module named '{n}'"})
            for n in GPU_MODULES}
    return "noise\nMILESDEEP_PROBE " + json.dumps({"modules": mods, "gpu": gpu,
                                                    "error": error}) + "\n"


GPU = {"name": "NVIDIA L4", "count": 1, "cc": [8, 9]}


def test_parse_a_full_probe() -> None:
    r = parse_probe(probe_line(GPU, set(GPU_MODULES)), 0)
    assert r.usable
    assert r.gpu == GpuInfo("NVIDIA L4", (8, 9), 1)
    assert r.versions["tensorrt"] == "1.0"


def test_parse_a_probe_without_device_or_packages() -> None:
    r = parse_probe(probe_line(None, {"cupy"}, "no usable CUDA device (cudaErrorNoDevice)"), 0)
    assert not r.usable
    assert r.problems["gpu"] == "no usable CUDA device (cudaErrorNoDevice)"
    assert set(r.missing) == {"gpu", "tensorrt", "PyNvVideoCodec", "pycuda"}


def test_a_probe_killed_by_a_module_is_not_usable() -> None:
    # PyNvVideoCodec can end the process without a word: no JSON line at all.
    r = parse_probe("", -11, "Segmentation fault\n")
    assert not r.usable and "exited with status -11: Segmentation fault" in r.problems["gpu"]
    r = parse_probe("", None)
    assert "timed out" in r.problems["gpu"]
    assert "unreadable" in parse_probe("MILESDEEP_PROBE {oops", 0).problems["gpu"]


def test_choice_rules() -> None:
    good = parse_probe(probe_line(GPU, set(GPU_MODULES)), 0)
    bad = parse_probe(probe_line(None, set(), "no usable CUDA device (x)"), 0)
    assert choose_backend("cpu", None).name == "cpu"
    c = choose_backend("auto", good)
    assert c.name == "gpu" and "NVIDIA L4" in c.reason and "sm_89" in c.reason
    assert choose_backend("gpu", good).name == "gpu"
    c = choose_backend("auto", bad)
    assert c.name == "cpu" and c.reason == "no usable NVIDIA GPU" and "gpu" in c.missing
    with pytest.raises(MilesDeepError) as e:
        choose_backend("gpu", bad)
    assert str(e.value).startswith("--backend gpu: missing an NVIDIA GPU")
    assert "\n" not in str(e.value)
    # A usable GPU but no engine: auto falls back and says why; gpu refuses.
    c = choose_backend("auto", good, engine_problem="no TensorRT engine for model 'm'")
    assert c.name == "cpu" and "no TensorRT engine" in c.reason and c.missing == ["engine"]
    with pytest.raises(MilesDeepError, match="no TensorRT engine"):
        choose_backend("gpu", good, engine_problem="no TensorRT engine for model 'm'")
    with pytest.raises(MilesDeepError, match="unknown backend"):
        choose_backend("tpu", good)


def test_missing_line_groups_what_is_absent() -> None:
    r = ProbeResult(gpu=None, problems={"gpu": "no usable CUDA device (cudaErrorNoDevice)",
                                        "tensorrt": "ModuleNotFoundError: No module named x",
                                        "cupy": "ImportError: libcudart.so.13 missing"})
    line = missing_line(r)
    assert line.startswith("missing an NVIDIA GPU: no usable CUDA device")
    assert "not installed: tensorrt" in line
    assert "cupy unusable: ImportError: libcudart.so.13 missing" in line
    assert "pip install 'milesdeep[gpu]'" in line


def test_probe_on_this_machine_reports_no_gpu() -> None:
    r = probe_gpu(refresh=True)
    assert not r.usable  # no development or CI machine has a GPU
    assert "gpu" in r.problems
    assert choose_backend("auto", r).name == "cpu"


def run_cli(*args: str) -> subprocess.CompletedProcess:
    code = ("import sys; from milesdeep.cli import main; "
            "sys.argv = ['miles-deep', *sys.argv[1:]]; main()")
    return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def test_build_engine_here_says_what_is_missing_in_one_line() -> None:
    p = run_cli("build-engine", "--precision", "fp16")
    assert p.returncode == 1
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("error: build-engine needs a GPU with TensorRT: missing")
    assert "Traceback" not in p.stderr
    assert p.stdout == ""


def test_build_engine_rejects_an_unknown_precision() -> None:
    p = run_cli("build-engine", "--precision", "fp8")
    assert p.returncode == 2  # a value the option does not take: a usage error
    assert "--precision 'fp8' is not one of: fp32, fp16, int8" in p.stderr


def test_build_engine_refuses_bad_options_and_outputs_before_looking_for_a_gpu(
        tmp_path: Path) -> None:
    """Each was hidden behind "needs a GPU" until the user reached a GPU machine; a video
    given as -o would then have been replaced by the engine."""
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"not an engine")
    cases = [(["--precision", "int8"], 2, "--precision int8 needs --calibration"),
             (["--calibration", str(tmp_path)], 2, "--calibration is only used with"),
             (["--precision", "int8", "--calibration", str(tmp_path)], 1,
              "no model.int8.onnx in the calibration directory"),
             (["--model", str(tmp_path / "nope")], 1, "nope"),
             (["-o", str(video)], 1, "exists and is not an engine file"),
             (["-o", str(tmp_path)], 1, "is a folder; give the engine file's path")]
    for args, rc, says in cases:
        p = run_cli("build-engine", *args)
        lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
        assert p.returncode == rc and len(lines) == 1 and says in lines[0], (args, p.stderr)
        assert "needs a GPU" not in p.stderr
    assert video.read_bytes() == b"not an engine"


def test_resolve_backend_on_this_machine(tmp_path: Path) -> None:
    from milesdeep.models.bundle import load_bundle
    from milesdeep.pipeline.backend import resolve_backend
    from tests.testdata import colour_bundle

    bundle = load_bundle(colour_bundle(tmp_path / "b"))
    assert resolve_backend("cpu", bundle).reason == "requested with --backend cpu"
    auto = resolve_backend("auto", bundle)
    assert auto.name == "cpu" and auto.reason == "no usable NVIDIA GPU"
    with pytest.raises(MilesDeepError, match=r"^--backend gpu: missing an NVIDIA GPU"):
        resolve_backend("gpu", bundle)
    with pytest.raises(MilesDeepError, match="unknown backend"):
        resolve_backend("npu", bundle)


def test_the_probe_imports_what_the_pipeline_imports(tmp_path: Path) -> None:
    """A pycuda whose compiled driver cannot load (built for another CUDA, no libcuda) must
    count as missing: the GPU path imports `pycuda.driver`, not just the package."""
    from milesdeep.pipeline.backend import PROBE_SCRIPT

    fake = tmp_path / "pycuda"
    fake.mkdir()
    (fake / "__init__.py").write_text("")
    (fake / "driver.py").write_text("raise ImportError('libcuda.so.1: cannot open shared "
                                    "object file')\n")
    proc = subprocess.run([sys.executable, "-c", PROBE_SCRIPT], capture_output=True,
                          text=True, timeout=120, env={"PYTHONPATH": str(tmp_path)})
    r = parse_probe(proc.stdout, proc.returncode, proc.stderr)
    assert "libcuda.so.1" in r.problems["pycuda"]
