"""FP16 and INT8 agreement with FP32 for a model on varied frames (the issue's closing figures).

    python benchmarks/calibration_figures.py [--frames 512] [--methods entropy,minmax,percentile]
                                             [--model open-nsfw] [--workdir DIR]

Makes four videos at one picture per second of content change (480x360, 5 fps, H.264):
- patterns: colour bars, gradients, checkerboards, rings, stripes, solid colours, each held for
  3-6 seconds with a small shift every second;
- natural: scikit-image's bundled photographs (astronaut, coffee, chelsea, rocket, ...), each
  held for 4-8 seconds with a slow pan and zoom (skipped, with a note, without scikit-image);
- noise: uniform, coloured, blurred (several scales) and salt-and-pepper noise, new each second.
- skin-shapes: shaded skin-coloured ellipses on plain backgrounds, which the default model
  scores across the nsfw range, so that cut decisions near its threshold are exercised.
Then runs the library exactly as `miles-deep calibrate` does (frames sampled across the videos
and time, half calibration / half held out, variants, report) and prints the report per kind
of content. With --emulate-fp16 it also measures an FP16 *storage* emulation (FP32 graph with
FP16-rounded weights and every Conv/Add/MatMul output rounded to FP16), because ONNX
Runtime's CPU provider runs most of the FP16 variant in float32 and so understates FP16's
effect on activations.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from milesdeep.calibration.frames import FrameSet, Run, sample_frames, save_frames  # noqa: E402
from milesdeep.calibration.report import classify, compare  # noqa: E402
from milesdeep.calibration.variants import make_fp16, make_int8  # noqa: E402
from milesdeep.models.bundle import resolve_model  # noqa: E402
from milesdeep.pipeline.planner import PlanParams  # noqa: E402

W, H, FPS = 480, 360, 5


def encode(path: Path, frames: list[np.ndarray]) -> Path:
    import av

    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=FPS)
        vs.width, vs.height, vs.pix_fmt = W, H, "yuv420p"
        vs.options = {"crf": "20", "preset": "veryfast"}
        for i, rgb in enumerate(frames):
            f = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            f.pts = i
            for p in vs.encode(f):
                out.mux(p)
        for p in vs.encode():
            out.mux(p)
    return path


def fit(img: np.ndarray, zoom: float = 1.0, dx: float = 0.0, dy: float = 0.0) -> np.ndarray:
    """Crop (zoom >= 1, offset in [-1, 1]) and resize a picture to the video size."""
    import cv2

    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    img = img[..., :3]
    if img.dtype != np.uint8:
        img = (img.astype(np.float64) * (255.0 / max(1, img.max()))).astype(np.uint8)
    h, w = img.shape[:2]
    ch, cw = int(h / zoom), int(w / zoom)
    y0 = int((h - ch) * (0.5 + 0.5 * dy))
    x0 = int((w - cw) * (0.5 + 0.5 * dx))
    return cv2.resize(img[y0:y0 + ch, x0:x0 + cw], (W, H), interpolation=cv2.INTER_AREA)


def patterns(rng: np.random.Generator) -> list[np.ndarray]:
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    bars = np.array([[192, 192, 192], [192, 192, 0], [0, 192, 192], [0, 192, 0],
                     [192, 0, 192], [192, 0, 0], [0, 0, 192]], np.uint8)
    pics = [bars[(xx * 7 // W).astype(int)]]
    for colour in ([255, 255, 255], [0, 0, 0], [230, 180, 150], [40, 90, 200], [200, 40, 40],
                   [20, 160, 60], [128, 128, 128], [250, 220, 60]):
        pics.append(np.broadcast_to(np.array(colour, np.uint8), (H, W, 3)).copy())
    for a, b in (([0, 0, 0], [255, 255, 255]), ([255, 0, 0], [0, 0, 255]),
                 ([250, 200, 170], [90, 50, 30])):
        t = (xx / W)[..., None]
        pics.append((np.array(a) * (1 - t) + np.array(b) * t).astype(np.uint8))
        t = (yy / H)[..., None]
        pics.append((np.array(b) * (1 - t) + np.array(a) * t).astype(np.uint8))
    for cell in (4, 16, 48):
        c = (((xx // cell) + (yy // cell)) % 2).astype(np.uint8)[..., None]
        pics.append(np.repeat(c * 255, 3, axis=2))
    r = np.hypot(xx - W / 2, yy - H / 2)
    for period in (12, 40):
        v = (127.5 + 127.5 * np.sin(r * 2 * np.pi / period)).astype(np.uint8)[..., None]
        pics.append(np.concatenate([v, 255 - v, v // 2], axis=2))
    for period in (6, 30):
        v = (((xx + yy) // period) % 2 * 255).astype(np.uint8)[..., None]
        pics.append(np.concatenate([v, v // 3, 255 - v], axis=2))
    frames = []
    for pic in pics:
        for _ in range(int(rng.integers(5, 9))):
            shifted = np.roll(pic, (int(rng.integers(-8, 9)), int(rng.integers(-8, 9))), (0, 1))
            frames += [shifted] * FPS
    return frames


def natural(rng: np.random.Generator) -> tuple[list[np.ndarray], list[str]]:
    try:
        import skimage.data as data
    except ImportError:
        print("scikit-image is not installed: no natural images (pip install scikit-image)")
        return [], []
    names = ["astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "hubble_deep_field",
             "immunohistochemistry", "retina", "colorwheel", "moon", "brick", "grass", "gravel",
             "page", "text", "logo", "horse", "cat"]
    frames, used = [], []
    for name in names:
        try:
            img = getattr(data, name)()
        except Exception as e:  # a data file that is not bundled and cannot be fetched
            print(f"  skipping {name}: {type(e).__name__}")
            continue
        used.append(name)
        secs = int(rng.integers(8, 14))
        dx0, dy0 = rng.uniform(-1, 1, 2)
        for k in range(secs * FPS):
            t = k / (secs * FPS)
            frames.append(fit(img, zoom=1.0 + 0.3 * t, dx=dx0 * (1 - t), dy=dy0 * t))
    return frames, used


def noise(rng: np.random.Generator, seconds: int = 150) -> list[np.ndarray]:
    import cv2

    frames = []
    for s in range(seconds):
        kind = s % 5
        if kind == 0:
            img = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
        elif kind == 1:
            img = np.repeat(rng.integers(0, 256, (H, W, 1), dtype=np.uint8), 3, axis=2)
        elif kind == 2:
            base = rng.normal(0, 1, (H, W, 3)).astype(np.float32)
            sigma = float(rng.choice([2, 6, 20]))
            b = cv2.GaussianBlur(base, (0, 0), sigma)
            img = np.clip(128 + b / (b.std() + 1e-6) * 50, 0, 255).astype(np.uint8)
        elif kind == 3:
            img = np.full((H, W, 3), rng.integers(0, 256, 3), np.uint8)
            mask = rng.random((H, W)) < 0.1
            img[mask] = rng.choice([0, 255], size=(int(mask.sum()), 1))
        else:
            tint = rng.uniform(0.3, 1.0, 3)
            img = (rng.integers(0, 256, (H, W, 3)) * tint).astype(np.uint8)
        frames += [img] * FPS
    return frames


def skin_shapes(rng: np.random.Generator, pictures: int = 60) -> list[np.ndarray]:
    """Shaded skin-coloured ellipses on plain backgrounds: innocuous pictures that the default
    model scores across the whole nsfw range (0.01-0.7 measured), so cut decisions near the
    threshold are exercised. Each held for 3-6 seconds with a small shift every second."""
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    frames = []
    for _ in range(pictures):
        img = np.zeros((H, W, 3), np.float32) + rng.integers(0, 256, 3)
        for _ in range(int(rng.integers(1, 5))):
            cx, cy = rng.uniform(0, W), rng.uniform(0, H)
            ax, ay = rng.uniform(40, 200, 2)
            d = ((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2
            skin = np.array([rng.uniform(180, 240), rng.uniform(120, 180), rng.uniform(90, 150)])
            shade = np.clip(1.1 - 0.4 * d, 0, 1)[..., None]
            img = np.where((d < 1)[..., None], skin * shade + (1 - shade) * 40, img)
        pic = np.clip(img, 0, 255).astype(np.uint8)
        for _ in range(int(rng.integers(3, 7))):
            shifted = np.roll(pic, (int(rng.integers(-6, 7)), int(rng.integers(-6, 7))), (0, 1))
            frames += [shifted] * FPS
    return frames


def emulate_fp16_storage(onnx_in: Path, onnx_out: Path) -> Path:
    """Measurement aid only (not a variant): FP32 graph, FP16-rounded weights, every Conv/Add/
    MatMul/Gemm output rounded to FP16 through an explicit Cast pair (which ORT keeps)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from milesdeep.calibration.variants import upgraded

    m = upgraded(onnx.load(str(onnx_in)))
    for init in m.graph.initializer:
        a = numpy_helper.to_array(init)
        if a.dtype == np.float32:
            init.CopyFrom(numpy_helper.from_array(a.astype(np.float16).astype(np.float32),
                                                  init.name))
    outputs = {o.name for o in m.graph.output}
    nodes = []
    for n in m.graph.node:
        nodes.append(n)
        if n.op_type in ("Conv", "Add", "MatMul", "Gemm") and n.output[0] not in outputs:
            name = n.output[0]
            n.output[0] = name + "__fp32"
            nodes += [helper.make_node("Cast", [name + "__fp32"], [name + "__fp16"],
                                       to=TensorProto.FLOAT16),
                      helper.make_node("Cast", [name + "__fp16"], [name], to=TensorProto.FLOAT)]
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    onnx.save(m, str(onnx_out))
    return onnx_out


def subset(fs: FrameSet, video: int) -> tuple[np.ndarray, list[Run]]:
    """Row indices and re-based runs of one video's held-out runs."""
    rows, runs, offset = [], [], 0
    for r in fs.runs:
        if r.video == video:
            rows += list(range(r.offset, r.offset + r.count))
            runs.append(Run(r.video, r.start, r.count, offset))
            offset += r.count
    return np.asarray(rows, np.int64), runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=512)
    ap.add_argument("--methods", default="entropy,minmax,percentile")
    ap.add_argument("--model", default=None)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--emulate-fp16", action="store_true")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="milesdeep-calfig-"))
    work.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(2024)
    bundle = resolve_model(args.model)
    t0 = time.perf_counter()

    kinds: list[tuple[str, Path]] = []
    pat = patterns(rng)
    kinds.append(("patterns", encode(work / "patterns.mp4", pat)))
    nat, used = natural(rng)
    if nat:
        kinds.append(("natural", encode(work / "natural.mp4", nat)))
    kinds.append(("noise", encode(work / "noise.mp4", noise(rng))))
    kinds.append(("skin-shapes", encode(work / "skin.mp4", skin_shapes(rng))))
    print(f"videos: {', '.join(k for k, _ in kinds)} in {work} "
          f"({time.perf_counter() - t0:.0f} s); natural images: {', '.join(used)}")

    fs = sample_frames([p for _, p in kinds], bundle.input, frames=args.frames)
    save_frames(fs, work)
    print(f"frames: {len(fs.calibration)} calibration, {len(fs.held_out)} held out in "
          f"{len(fs.runs)} runs ({time.perf_counter() - t0:.0f} s)")

    variants: dict[str, Path] = {"fp16": make_fp16(bundle.onnx_path, work / "model.fp16.onnx")}
    if args.emulate_fp16:
        variants["fp16-storage-emulated"] = emulate_fp16_storage(bundle.onnx_path,
                                                                 work / "fp16emu.onnx")
    for method in [m for m in args.methods.split(",") if m]:
        t1 = time.perf_counter()
        variants[f"int8-{method}"] = make_int8(bundle.onnx_path, work / f"int8.{method}.onnx",
                                               fs.calibration, method)
        print(f"int8 {method}: calibrated in {time.perf_counter() - t1:.0f} s")

    labels = list(bundle.labels)
    params = PlanParams().for_rate(fs.rate)
    p32 = classify(bundle, fs.held_out)
    results: dict = {"model": bundle.name, "frames": {"calibration": len(fs.calibration),
                                                      "held_out": len(fs.held_out),
                                                      "runs": len(fs.runs)},
                     "natural_images": used, "fp32_winner_share": {}, "variants": {}}
    for k, (kind, _) in enumerate(kinds):
        rows, _ = subset(fs, k)
        share = np.bincount(p32[rows].argmax(1), minlength=len(labels)) / max(1, len(rows))
        results["fp32_winner_share"][kind] = dict(zip(labels, share.round(4).tolist()))
    for name, path in variants.items():
        pv = classify(bundle.with_onnx(path), fs.held_out)
        entry = {"all": compare(p32, pv, fs.runs, labels, params)}
        for k, (kind, _) in enumerate(kinds):
            rows, runs = subset(fs, k)
            entry[kind] = compare(p32[rows], pv[rows], runs, labels, params)
        results["variants"][name] = entry

    print(f"\n{bundle.name}: agreement with FP32 on held-out frames "
          f"(FP32 winner shares: {results['fp32_winner_share']})")
    head = f"{'variant':24} {'frames':>12} {'n':>5} {'top-1':>8} {'mean|dp|':>9} " \
           f"{'max|dp|':>8} {'cuts agree':>11}"
    print(head)
    print("-" * len(head))
    for name, entry in results["variants"].items():
        for kind, f in entry.items():
            print(f"{name:24} {kind:>12} {f['samples']:5d} {f['top1_agreement']:8.2%} "
                  f"{f['mean_abs_dp']:9.5f} {f['max_abs_dp']:8.4f} "
                  f"{f['cut_agreement']:10.2%} ({f['cut_decisions'] - f['cut_disagreements']}"
                  f"/{f['cut_decisions']})")
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
