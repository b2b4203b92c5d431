"""Decoding on the GPU with NVDEC (PyNvVideoCodec), sampling exactly as the CPU twin does.

Which frame each sample takes is decided on the host, before any decoding, by the same rule and
the same arithmetic as `PyAVSource` (see `milesdeep.pipeline.decode`): the video is *demuxed*
with PyAV (packets only, nothing decoded) to get every frame's presentation timestamp and key
flag; `plan_runs` replays the CPU twin's slot assignment over that list; NVDEC then decodes
only the frames the plan needs, by presentation-order index, in ascending batches with
`SimpleDecoder.get_batch_frames_by_index`. Frames arrive in device memory as NV12 (8-bit) or
P016 (10/12-bit), become `DeviceFrame`s (CuPy arrays in `frames.py`'s layout) and feed the CuPy
preprocessing kernel.

Why not `SimpleDecoder.get_index_from_time_in_seconds`: it converts a time to an index through
the stream's nominal frame rate (PyNvVideoCodec's `SeekUtils::GetIndexFromTimeStamp` uses
`dts_to_frame_number`), which is exact only at constant frame rate; the CPU twin's rule is
timestamp-based, so on variable-frame-rate video only the demuxed pts list gives the same
frame. The GPU test compares both on a constant-rate file.

Codecs and formats NVDEC cannot decode on this GPU (`GetDecoderCaps` says unsupported, e.g.
AV1 on GPUs before it, 4:2:2 or 4:4:4 chroma that is not NV12/P016 output) are reported and the
file is decoded on the CPU by `PyAVSource`, its frames uploaded to the GPU for the same
preprocessing (`UploadingSource`).

PyNvVideoCodec API used (docs and samples read):
- https://docs.nvidia.com/video-technologies/pynvvideocodec/pynvc-api-reference/decoder.html
  `SimpleDecoder(enc_file_path, gpu_id=0, cuda_context=0, cuda_stream=0,
  use_device_memory=True, max_width=0, max_height=0, need_scanned_stream_metadata=False,
  decoder_cache_size=4, output_color_type=OutputColorType.NATIVE, ...)`,
  `get_batch_frames_by_index(indices)` (drops duplicate and out-of-range indices, so the plan
  passes unique ascending ones), `get_stream_metadata()` (`num_frames`, `average_fps`,
  `codec_name`...), `get_scanned_stream_metadata()` (`key_frame_indices`, `pts`),
  `get_index_from_time_in_seconds(t)`.
- `DecodedFrame.cuda()` -> per-plane views with `shape`, `stride`, `data` and
  `__cuda_array_interface__` (NV12: (H, W, 1) then (H/2, W/2, 2), `|u1`; P016: `|u2`),
  `DecodedFrame.format` (`Pixel_Format.NV12`, `Pixel_Format.P016`, ...), `__dlpack__`.
- `GetDecoderCaps(gpuid, codec, chromaformat, bitdepth)` -> dict with `supported`.
- NVIDIA's sample `samples/SimpleDecoder/SubsamplingAndReconfigure.py` (pycuda primary context
  handle and stream passed to SimpleDecoder, batches of indices).
- CuPy: https://docs.cupy.dev/en/stable/reference/generated/cupy.cuda.UnownedMemory.html and
  `cupy.cuda.MemoryPointer` to view a decoder surface without taking ownership.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from milesdeep.errors import MilesDeepError
from milesdeep.pipeline.decode import (
    DecodeStats,
    PyAVSource,
    SamplingMode,
    VideoInfo,
    frame_from_av,
    keyframe_decodable,
    main_video,
    open_video,
    probe,
    sample_count,
)
from milesdeep.pipeline.frames import Colour, Frame, Sample

# --- pure logic ------------------------------------------------------------------------


@dataclass
class StreamIndex:
    """Every frame of the video stream in presentation order, from the demuxer.

    `times[k]` is frame k's presentation time in seconds relative to the stream start,
    `keyframe[k]` its key flag, `end_time` the last frame's end. Frame k is NVDEC's
    presentation-order index k (the decoder outputs frames in display order)."""

    times: list[float]
    keyframe: list[bool]
    end_time: float
    unmappable: int = 0  # packets without a timestamp: their display position is unknown


@dataclass(frozen=True)
class Run:
    """Sample slots [first, stop) all show frame `frame` (an index into StreamIndex)."""

    frame: int
    first: int
    stop: int


def index_from_packets(packets: Sequence[tuple[int | None, int, bool]], time_base: float,
                       start: float, fallback_duration: float) -> StreamIndex:
    """(pts, duration, is_keyframe) per packet, in any order -> a StreamIndex.

    Sorting the pts gives the display order NVDEC numbers frames in."""
    rows = sorted((p, d, k) for p, d, k in packets if p is not None)
    times = [p * time_base - start for p, _, _ in rows]
    keys = [k for _, _, k in rows]
    end = 0.0
    for (_, d, _), t in zip(rows, times):
        end = max(end, t + (d * time_base if d else fallback_duration))
    return StreamIndex(times=times, keyframe=keys, end_time=end,
                       unmappable=sum(1 for p, _, _ in packets if p is None))


def plan_runs(times: Sequence[float], rate: float, duration: float, end_time: float
              ) -> list[Run]:
    """Replay `PyAVSource._samples` over presentation times: which frame fills which sample
    slots, in the order the CPU twin emits them.

    Sample i (time i / rate) takes the last frame whose time is <= i / rate (1e-9 tolerance),
    the first frame before any; frames whose time does not exceed the previous one's are
    skipped (the CPU keeps the first of equal timestamps); slots run to
    `sample_count(duration or end_time, rate)`; the tail after the last frame keeps it."""
    if rate <= 0:
        raise MilesDeepError("--rate must be positive")
    runs: list[Run] = []
    i = 0
    prev: int | None = None
    prev_t = -math.inf
    for k, t in enumerate(times):
        if prev is not None and t <= prev_t:
            continue
        first = i
        while i / rate < t - 1e-9 and (duration <= 0 or i / rate < duration - 1e-9):
            i += 1
        if i > first:
            runs.append(Run(prev if prev is not None else k, first, i))
        prev, prev_t = k, t
    if prev is None:
        return []
    end = duration if duration > 0 else end_time
    n = sample_count(end, rate)
    if i < n:
        runs.append(Run(prev, i, n))
    return runs


def keyframe_subset(index: StreamIndex) -> tuple[list[float], list[int]]:
    """Times and frame indices of the keyframes (keyframe sampling decodes only these)."""
    ks = [k for k, key in enumerate(index.keyframe) if key]
    return [index.times[k] for k in ks], ks


def batches(indices: Sequence[int], size: int) -> list[list[int]]:
    """Unique frame indices in ascending order, cut into decode batches."""
    if size < 1:
        raise ValueError("batch size must be positive")
    uniq = sorted(set(indices))
    return [uniq[s:s + size] for s in range(0, len(uniq), size)]


# FFmpeg codec name -> PyNvVideoCodec `cudaVideoCodec` member name.
NVDEC_CODECS = {
    "h264": "H264", "hevc": "HEVC", "av1": "AV1", "vp9": "VP9", "vp8": "VP8",
    "mpeg2video": "MPEG2", "mpeg1video": "MPEG1", "mpeg4": "MPEG4", "vc1": "VC1",
}
# Pixel formats whose NVDEC output is NV12 or P016, the layouts the kernel reads.
# name -> (chroma, bit depth)
NVDEC_PIX_FMTS = {
    "yuv420p": ("420", 8), "yuvj420p": ("420", 8), "nv12": ("420", 8),
    "yuv420p10le": ("420", 10), "p010le": ("420", 10), "yuv420p12le": ("420", 12),
}


@dataclass(frozen=True)
class NvdecFormat:
    codec: str  # cudaVideoCodec member name
    chroma: str  # cudaVideoChromaFormat member name
    bit_depth: int


def nvdec_format(codec_name: str, pix_fmt: str | None) -> NvdecFormat | str:
    """What to ask NVDEC for, or why this stream goes to the CPU decoder instead."""
    codec = NVDEC_CODECS.get(codec_name)
    if codec is None:
        return f"NVDEC does not decode {codec_name}"
    if pix_fmt is None:
        return "the stream's pixel format is unknown"
    fmt = NVDEC_PIX_FMTS.get(pix_fmt)
    if fmt is None:
        return (f"{codec_name} in {pix_fmt} does not decode to NV12/P016 on NVDEC "
                "(4:2:0 only here)")
    return NvdecFormat(codec=codec, chroma=fmt[0], bit_depth=fmt[1])


# --- PyAV side (CPU, no decoding) ----------------------------------------------------------


def demux_index(path: Path, info: VideoInfo | None = None) -> StreamIndex:
    """Read every packet's pts and key flag (demuxing only: cheap). As in the CPU twin, a
    keyframe that cannot be decoded alone (an intra-refresh recovery point) is no keyframe."""
    info = info or probe(path)
    container = open_video(path)
    try:
        vs = main_video(container)
        tb = float(vs.time_base)
        alone = keyframe_decodable(vs.codec_context.name, vs.codec_context.extradata)
        rows = [(p.pts, int(p.duration or 0),
                 bool(p.is_keyframe) and alone(memoryview(p)) is not False)
                for p in container.demux(vs) if p.size]
    finally:
        container.close()
    return index_from_packets(rows, tb, info.start, 1.0 / info.fps if info.fps else 0.0)


def first_frame_format(path: Path) -> tuple[Colour, int, str | None]:
    """Colour matrix/range and rotation exactly as the CPU twin reads them (from the first
    decoded frame), and the stream's pixel format name."""
    container = open_video(path)
    try:
        vs = main_video(container)
        pix_fmt = vs.codec_context.pix_fmt
        for frame in container.decode(vs):
            f = frame_from_av(frame)
            return f.colour, f.rotation, pix_fmt
    finally:
        container.close()
    raise MilesDeepError("no picture could be decoded from the video stream", path)


# --- GPU side ----------------------------------------------------------------------------


@dataclass
class DeviceFrame(Frame):
    """`frames.Frame` with CuPy device arrays: y (H, W), uv (ceil(H/2), ceil(W/2), 2)."""


def _view(cupy: Any, owner: Any, plane: Any, dtype: Any) -> Any:
    """A CuPy array over a decoder surface plane (no copy, no ownership); a trailing axis of
    one (the luma plane's (H, W, 1)) is dropped.

    The planes are packed (PyNvVideoCodec lays them out so: `DecoderCommon.hpp`), and the
    strides are made here from the shape: the library's own count elements, not bytes, which
    for P016 (2-byte samples) read the wrong memory."""
    shape = tuple(int(s) for s in plane.shape)
    itemsize = cupy.dtype(dtype).itemsize
    strides = tuple(math.prod(shape[k + 1:]) * itemsize for k in range(len(shape)))
    size = sum((n - 1) * st for n, st in zip(shape, strides)) + itemsize
    mem = cupy.cuda.UnownedMemory(int(plane.data), size, owner)
    arr = cupy.ndarray(shape, dtype=dtype, memptr=cupy.cuda.MemoryPointer(mem, 0),
                       strides=strides)
    if arr.ndim == 3 and shape[2] == 1:
        arr = arr[:, :, 0]
    return arr


class NvdecUnsupported(Exception):
    """This stream cannot be decoded by NVDEC on this GPU (the message says why)."""


@dataclass
class NvdecSource:
    """Yields the CPU twin's samples with `DeviceFrame`s decoded by NVDEC."""

    path: Path
    gpu: Any  # milesdeep.trt_engine.cuda_context.GpuContext
    rate: float = 1.0
    mode: SamplingMode = "exact"
    decode_batch: int = 8
    stats: DecodeStats = field(default_factory=DecodeStats)

    def __post_init__(self) -> None:
        if self.rate <= 0:
            raise MilesDeepError("--rate must be positive")
        self.path = Path(self.path)
        self.info = probe(self.path)
        self.index = demux_index(self.path, self.info)
        if self.index.unmappable:
            raise NvdecUnsupported(f"{self.index.unmappable} packets have no timestamp")
        if self.info.width % 2 or self.info.height % 2:
            # NVDEC's NV12 surface then holds a chroma row/column the library's plane views
            # leave out (and pads the width): the CPU decoder takes such pictures as they are.
            raise NvdecUnsupported(f"odd picture size {self.info.width}x{self.info.height}")
        self.colour, self.rotation, pix_fmt = first_frame_format(self.path)
        fmt = nvdec_format(self.info.codec, pix_fmt)
        if isinstance(fmt, str):
            raise NvdecUnsupported(fmt)
        self.format = fmt
        self._check_caps(fmt)

    def _check_caps(self, fmt: NvdecFormat) -> None:
        import PyNvVideoCodec as nvc

        try:
            caps = nvc.GetDecoderCaps(
                gpuid=self.gpu.device_id,
                codec=nvc.cudaVideoCodec.__members__[fmt.codec],
                chromaformat=nvc.cudaVideoChromaFormat.__members__[fmt.chroma],
                bitdepth=fmt.bit_depth)
        except Exception as e:  # noqa: BLE001  PyNvVideoCodec's own exceptions derive from it
            raise NvdecUnsupported(f"cannot query NVDEC for {fmt.codec} ({e})") from None
        if not caps.get("supported"):
            raise NvdecUnsupported(f"this GPU's NVDEC cannot decode {fmt.codec} "
                                   f"{fmt.chroma} {fmt.bit_depth}-bit")
        w, h = self.info.width, self.info.height
        if w > caps.get("width_max", 1 << 30) or h > caps.get("height_max", 1 << 30):
            raise NvdecUnsupported(f"{w}x{h} is larger than this GPU's NVDEC supports")
        if w < caps.get("width_min", 0) or h < caps.get("height_min", 0):
            raise NvdecUnsupported(f"{w}x{h} is smaller than this GPU's NVDEC supports")
        if ((w + 15) // 16) * ((h + 15) // 16) > caps.get("mb_num_max", 1 << 30):
            raise NvdecUnsupported(f"{w}x{h} has more macroblocks than this GPU's NVDEC takes")

    @property
    def expected_samples(self) -> int:
        return sample_count(self.info.duration, self.rate)

    def plan(self) -> tuple[list[Run], list[int], list[float]]:
        """Runs over frame positions, each position's NVDEC frame index, and its time."""
        if self.mode == "keyframes":
            times, frames = keyframe_subset(self.index)
        else:
            times, frames = self.index.times, list(range(len(self.index.times)))
        runs = plan_runs(times, self.rate, self.info.duration, self.index.end_time)
        return runs, frames, times

    def __iter__(self) -> Iterator[Sample]:
        import cupy
        import PyNvVideoCodec as nvc

        runs, frames, times = self.plan()
        if not runs:
            raise MilesDeepError("no picture could be decoded from the video stream", self.path)
        def nvdec_failed(e: Exception) -> MilesDeepError:
            # PyNvVideoCodec raises its own exception types (Exception subclasses) and bare
            # Exceptions: one line, not a traceback.
            return MilesDeepError(f"NVDEC failed on this file ({type(e).__name__}: "
                                  f"{str(e)[:200]}); try --backend cpu", self.path)

        with self.gpu.activated():
            try:
                decoder = nvc.SimpleDecoder(
                    str(self.path), gpu_id=self.gpu.device_id,
                    cuda_context=self.gpu.context_handle, cuda_stream=self.gpu.stream_ptr,
                    use_device_memory=True, need_scanned_stream_metadata=True,
                    output_color_type=nvc.OutputColorType.NATIVE)
                # Waiting for the scan also hands its key-frame indices to the seeker (mov/mkv).
                decoder.get_scanned_stream_metadata()
            except Exception as e:  # noqa: BLE001
                raise nvdec_failed(e) from None
            wanted = [frames[r.frame] for r in runs]
            decoded: dict[int, DeviceFrame] = {}
            pending = list(runs)
            for chunk in batches(wanted, self.decode_batch):
                try:
                    got = decoder.get_batch_frames_by_index(chunk)
                except Exception as e:  # noqa: BLE001
                    raise nvdec_failed(e) from None
                if len(got) != len(chunk):
                    raise MilesDeepError(f"NVDEC returned {len(got)} of {len(chunk)} frames "
                                         "asked for; try --backend cpu", self.path)
                with self.gpu.stream:
                    for idx, f in zip(chunk, got):
                        decoded[idx] = self._own(cupy, nvc, f)
                self.stats.frames_decoded += len(chunk)
                # Emit every run whose frame is now decoded, in plan order, and free frames
                # no later run needs.
                while pending and frames[pending[0].frame] in decoded:
                    r = pending.pop(0)
                    yield from self._emit(r, decoded[frames[r.frame]], times)
                    # Runs' frames never go backwards: free a frame no later run shows.
                    if not pending or pending[0].frame != r.frame:
                        decoded.pop(frames[r.frame], None)
        self.stats.end_time = self.index.end_time

    def _own(self, cupy: Any, nvc: Any, frame: Any) -> DeviceFrame:
        """Copy a decoder surface into arrays we own: the decoder reuses its surfaces on the
        next `get_batch_frames_by_index` call."""
        fmt = frame.format
        if fmt == nvc.Pixel_Format.NV12:
            dtype = cupy.uint8
        elif fmt == nvc.Pixel_Format.P016:
            dtype = cupy.uint16
        else:
            raise MilesDeepError(f"NVDEC gave {fmt}, not NV12/P016; use --backend cpu",
                                 self.path)
        planes = frame.cuda()
        y = _view(cupy, frame, planes[0], dtype).copy()
        uv = _view(cupy, frame, planes[1], dtype).copy()
        if uv.ndim == 2:
            uv = uv.reshape(uv.shape[0], -1, 2)
        return DeviceFrame(y=y, uv=uv, colour=self.colour, rotation=self.rotation)

    def _emit(self, run: Run, frame: DeviceFrame, times: Sequence[float]
              ) -> Iterator[Sample]:
        pts = times[run.frame]
        if self.mode == "keyframes":
            yield Sample(index=run.first, time=run.first / self.rate, pts=pts,
                         frame=frame, hold=run.stop - run.first)  # type: ignore[arg-type]
            return
        for k in range(run.first, run.stop):
            yield Sample(index=k, time=k / self.rate, pts=pts, frame=frame)  # type: ignore[arg-type]


class UploadingSource:
    """The CPU decoder's samples with their frames copied to the GPU (for streams NVDEC cannot
    decode), so the same CuPy preprocessing and TensorRT engine run on them."""

    def __init__(self, path: Path, gpu: Any, rate: float = 1.0, mode: SamplingMode = "exact",
                 threads: int = 0) -> None:
        self.cpu = PyAVSource(path, rate=rate, mode=mode, threads=threads)
        self.gpu = gpu
        self.info = self.cpu.info
        self.stats = self.cpu.stats

    @property
    def expected_samples(self) -> int:
        return self.cpu.expected_samples

    def __iter__(self) -> Iterator[Sample]:
        import cupy

        last_id, last_dev = None, None
        with self.gpu.activated():
            for s in self.cpu:
                f = s.frame
                if id(f) != last_id:  # consecutive samples share one converted frame
                    with self.gpu.stream:
                        last_dev = DeviceFrame(y=cupy.asarray(f.y), uv=cupy.asarray(f.uv),
                                               colour=f.colour, rotation=f.rotation)
                    last_id = id(f)
                s.frame = last_dev  # type: ignore[assignment]
                yield s


def gpu_source(path: Path, gpu: Any, rate: float = 1.0, mode: SamplingMode = "exact",
               threads: int = 0, say: Any = None) -> NvdecSource | UploadingSource:
    """NVDEC when it can decode this file, else the CPU decoder feeding the GPU (and say so)."""
    try:
        return NvdecSource(Path(path), gpu, rate=rate, mode=mode)
    except NvdecUnsupported as e:
        if say is not None:
            say(f"{Path(path).name}: {e}; decoding this file on the CPU")
        return UploadingSource(Path(path), gpu, rate=rate, mode=mode, threads=threads)
