"""Where converted Caffe models are kept: one bundle per content hash of the source files."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from milesdeep.models.bundle import MANIFEST, file_sha256

# Bump when the converter's output changes, so old conversions are not reused.
CONVERTER_VERSION = "1"


def cache_root() -> Path:
    """MILESDEEP_CACHE if set, else $XDG_CACHE_HOME/milesdeep, else ~/.cache/milesdeep."""
    env = os.environ.get("MILESDEEP_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "milesdeep"


def models_dir() -> Path:
    return cache_root() / "models"


def content_key(prototxt: Path, weights: Path, mean: Path | None, labels: Path) -> str:
    """sha256 over the converter version and the sha256 of each source file, in order."""
    h = hashlib.sha256(f"milesdeep-caffe-{CONVERTER_VERSION}\n".encode())
    for path in (prototxt, weights, mean, labels):
        h.update((file_sha256(Path(path)) if path is not None else "-").encode() + b"\n")
    return h.hexdigest()


def cached_bundles() -> list[Path]:
    """Bundle directories in the cache (complete ones: a manifest is written last)."""
    d = models_dir()
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if p.is_dir() and (p / MANIFEST).is_file()
                  and not p.name.startswith("."))
