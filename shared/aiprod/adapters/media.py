"""Real video files: make small test clips, and decode videos to check them.

The simulators serve clips made here so the whole pipeline handles genuine
H.264 MP4 files, and the output check decodes every frame of what a provider
returns, so a truncated, blank or frozen video is caught before a job is
marked SUCCEEDED. Frame statistics come from a small grey thumbnail that
libswscale makes, computed with numpy.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction

import av
import av.error
import numpy as np
import numpy.typing as npt
from av.video.frame import VideoFrame

__all__ = [
    "FrameStats",
    "InvalidVideo",
    "VideoInfo",
    "frame_dimensions",
    "frame_stats",
    "probe_video",
    "render_test_video",
]

# The thumbnail the statistics are computed on: small enough to be cheap at
# 1080p, large enough that a moving object changes it.
_THUMB_W, _THUMB_H = 64, 36
# A frame whose thumbnail luma has a standard deviation below this (0-255
# scale) is "blank": one flat colour, maybe with compression noise.
BLANK_STDDEV = 3.0
# Two consecutive frames whose thumbnails differ by less than this on average
# (0-255 scale) are "frozen": the picture did not change.
FROZEN_MEAN_ABS_DIFF = 0.25

# Test clips are drawn at most this tall (shorter side) and scaled up: drawing the
# pattern at 1080p costs more than encoding it.
_SOURCE_SHORT_SIDE = 288

VideoSource = bytes | str | os.PathLike[str]


class InvalidVideo(ValueError):
    """The bytes or file are not a video that decodes."""


@dataclass(frozen=True)
class FrameStats:
    """How much of a video is blank or frozen (each 0..1)."""

    blank_fraction: float
    frozen_fraction: float


@dataclass(frozen=True)
class VideoInfo:
    """What decoding a video found; frames is the count actually decoded."""

    codec: str
    width: int
    height: int
    frames: int
    duration_s: float
    fps: float
    blank_fraction: float = 0.0
    frozen_fraction: float = 0.0


def frame_dimensions(aspect_ratio: str, short_side: int) -> tuple[int, int]:
    """Even (width, height) for a "W:H" ratio whose shorter side is `short_side` pixels.

    "16:9" at 144 gives 256x144, "9:16" gives 144x256. H.264 in 4:2:0 needs even sizes.
    """
    try:
        w_part, h_part = (int(p) for p in aspect_ratio.split(":"))
    except ValueError:
        raise ValueError(f"aspect ratio must look like '16:9', got {aspect_ratio!r}") from None
    if w_part <= 0 or h_part <= 0 or short_side < 2:
        raise ValueError(f"bad aspect ratio or size: {aspect_ratio!r}, {short_side}")
    short = short_side - short_side % 2
    long = round(short * max(w_part, h_part) / min(w_part, h_part))
    long += long % 2
    return (long, short) if w_part >= h_part else (short, long)


def render_test_video(duration_s: float, aspect_ratio: str, *, fps: int = 24,
                      height: int = 144, label: str = "", blank: bool = False) -> bytes:
    """A playable H.264 MP4 of exactly round(duration_s * fps) moving frames.

    `height` is the shorter side: "16:9" gives 256x144 and "9:16" 144x256 at 144.

    Frames come from FFmpeg's `testsrc2` source (colour bars, moving shapes, a
    running clock and frame counter), so every frame differs from the last and
    none is flat; above `_SOURCE_SHORT_SIDE` they are drawn small and scaled up, which
    keeps a 1080p clip cheap to make. `label` is written as the MP4 title. The moov atom is at the
    end: `+faststart` needs FFmpeg to reopen the output by name, which an
    in-memory file cannot do. `blank` makes every frame one flat colour instead
    (a broken render, for testing the output check).
    """
    frames = round(duration_s * fps)
    if frames < 1:
        raise ValueError(f"duration {duration_s}s at {fps} fps makes no frames")
    width, frame_height = frame_dimensions(aspect_ratio, height)

    graph = av.filter.Graph()
    if blank:
        source = graph.add("color", f"c=black:size={width}x{frame_height}:rate={fps}")
    else:
        small_w, small_h = frame_dimensions(aspect_ratio, min(height, _SOURCE_SHORT_SIDE))
        source = graph.add("testsrc2", f"size={small_w}x{small_h}:rate={fps}")
        if (small_w, small_h) != (width, frame_height):
            scaled = graph.add("scale", f"{width}:{frame_height}:flags=neighbor")
            source.link_to(scaled)
            source = scaled
    to_yuv = graph.add("format", "pix_fmts=yuv420p")
    sink = graph.add("buffersink")
    source.link_to(to_yuv)
    to_yuv.link_to(sink)
    graph.configure()

    out = io.BytesIO()
    with av.open(out, mode="w", format="mp4") as container:
        if label:
            container.metadata["title"] = label
        stream = container.add_stream(
            "libx264", rate=fps, options={"preset": "ultrafast", "crf": "32"})
        stream.width = width
        stream.height = frame_height
        stream.pix_fmt = "yuv420p"
        for index in range(frames):
            frame = sink.pull()
            assert isinstance(frame, VideoFrame)
            frame.pts = index
            frame.time_base = Fraction(1, fps)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return out.getvalue()


def _thumbnail(frame: VideoFrame) -> npt.NDArray[np.int16]:
    """About _THUMB_W x _THUMB_H points of the frame's luma.

    For the usual planar YUV the luma plane is sampled in place (no scaling:
    it costs next to nothing at any resolution); anything else is converted
    to grey by libswscale first.
    """
    luma: npt.NDArray[np.generic]
    if frame.format.name.startswith(("yuv", "yuvj", "nv12")):
        plane = frame.planes[0]
        luma = np.frombuffer(memoryview(plane), np.uint8).reshape(
            plane.height, plane.line_size)[:, :plane.width]
    else:
        luma = frame.reformat(format="gray").to_ndarray()
    step_y = max(1, luma.shape[0] // _THUMB_H)
    step_x = max(1, luma.shape[1] // _THUMB_W)
    thumb: npt.NDArray[np.int16] = luma[::step_y, ::step_x].astype(np.int16)
    return thumb


def _is_blank(thumb: npt.NDArray[np.int16]) -> bool:
    return bool(thumb.std() < BLANK_STDDEV)


def _is_frozen(previous: npt.NDArray[np.int16], current: npt.NDArray[np.int16]) -> bool:
    return bool(np.abs(current - previous).mean() < FROZEN_MEAN_ABS_DIFF)


def _open(source: VideoSource) -> av.container.InputContainer:
    try:
        if isinstance(source, bytes):
            return av.open(io.BytesIO(source), mode="r")
        return av.open(os.fspath(source), mode="r")
    except av.error.FFmpegError as exc:
        raise InvalidVideo(f"not a readable video container: {exc}") from exc


def _decoded_frames(container: av.container.InputContainer) -> Iterator[VideoFrame]:
    try:
        yield from container.decode(video=0)
    except av.error.FFmpegError as exc:
        raise InvalidVideo(f"video does not decode: {exc}") from exc


def probe_video(source: VideoSource) -> VideoInfo:
    """Decode every frame of a video (bytes or a path) and describe it.

    Counting decoded frames, rather than trusting the header, is what catches
    a truncated download. Raises InvalidVideo when there is no decodable video.
    """
    with _open(source) as container:
        if not container.streams.video:
            raise InvalidVideo("the file has no video stream")
        stream = container.streams.video[0]
        # Frame-threaded decoding: a 1080p output decodes several times faster on the
        # cores a render function has, and yields the same frames in the same order.
        stream.thread_type = "AUTO"
        frames = blank = frozen = 0
        previous: npt.NDArray[np.int16] | None = None
        for frame in _decoded_frames(container):
            frames += 1
            thumb = _thumbnail(frame)
            blank += _is_blank(thumb)
            if previous is not None:
                frozen += _is_frozen(previous, thumb)
            previous = thumb
        if frames == 0:
            raise InvalidVideo("the video stream has no decodable frames")

        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else 0.0
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        else:
            duration = frames / fps if fps else 0.0
        return VideoInfo(
            codec=stream.codec_context.name,
            width=stream.codec_context.width,
            height=stream.codec_context.height,
            frames=frames,
            duration_s=duration,
            fps=fps,
            blank_fraction=blank / frames,
            frozen_fraction=frozen / (frames - 1) if frames > 1 else 0.0,
        )


def frame_stats(source: VideoSource) -> FrameStats:
    """Blank and frozen fractions of a video (decodes it fully; see probe_video)."""
    info = probe_video(source)
    return FrameStats(blank_fraction=info.blank_fraction, frozen_fraction=info.frozen_fraction)
