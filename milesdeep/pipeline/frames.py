"""The data handed from decoding to preprocessing: one picture in NV12 layout, and samples.

Both decoders (PyAV on the CPU, NVDEC on the GPU) hand pictures over in the same layout, so the
NumPy preprocessing and the CUDA kernel compute the same function of the same numbers:

- `y`: luma plane, shape (H, W); uint8, or uint16 for 10/12-bit (P016: value in the high bits,
  i.e. an 8-bit-scaled value is y / 256).
- `uv`: interleaved chroma plane, shape (ceil(H/2), ceil(W/2), 2) holding (U, V), same dtype.
- `colour`: the matrix and range needed to turn YUV into RGB.
- `rotation`: degrees clockwise the stored picture must be turned to be displayed upright
  (0, 90, 180 or 270), from the stream's display matrix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

Matrix = Literal["bt601", "bt709"]


@dataclass(frozen=True)
class Colour:
    matrix: Matrix = "bt601"
    full_range: bool = False


@dataclass
class Frame:
    y: np.ndarray
    uv: np.ndarray
    colour: Colour
    rotation: int = 0

    @property
    def height(self) -> int:
        return int(self.y.shape[0])

    @property
    def width(self) -> int:
        return int(self.y.shape[1])


@dataclass
class Sample:
    """Sample `index` is the picture on screen at `time` = index / rate (`pts`: that picture's
    own presentation time). `hold` > 1 means the sample stands for that many sample slots
    (keyframe sampling holds each keyframe until the next one)."""

    index: int
    time: float
    pts: float
    frame: Frame
    hold: int = 1
