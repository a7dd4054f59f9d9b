"""Test clips are real, playable, moving videos; the probe decodes and judges videos."""

from __future__ import annotations

import io
import time
from fractions import Fraction
from pathlib import Path

import av
import pytest
from av.video.frame import VideoFrame

from aiprod.adapters.media import (
    InvalidVideo,
    frame_dimensions,
    frame_stats,
    probe_video,
    render_test_video,
)


def _encode(frames: list[VideoFrame], fps: int = 24) -> bytes:
    """Encode frames as an H.264 MP4, the way a provider's output would arrive."""
    out = io.BytesIO()
    with av.open(out, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps, options={"preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = frames[0].width, frames[0].height, "yuv420p"
        for index, frame in enumerate(frames):
            frame = frame.reformat(format="yuv420p")
            frame.pts, frame.time_base = index, Fraction(1, fps)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return out.getvalue()


def _source_frames(name: str, args: str, count: int) -> list[VideoFrame]:
    graph = av.filter.Graph()
    source, sink = graph.add(name, args), graph.add("buffersink")
    source.link_to(sink)
    graph.configure()
    frames = [sink.pull() for _ in range(count)]
    assert all(isinstance(f, VideoFrame) for f in frames)
    return frames  # type: ignore[return-value]


@pytest.mark.parametrize(("ratio", "size"), [
    ("16:9", (256, 144)), ("9:16", (144, 256)), ("1:1", (144, 144))])
def test_rendered_clip_decodes_with_exact_frames_duration_and_shape(
        ratio: str, size: tuple[int, int]) -> None:
    info = probe_video(render_test_video(5, ratio))
    assert info.codec == "h264"
    assert (info.width, info.height) == size
    assert info.frames == 120
    assert info.fps == 24
    assert info.duration_s == pytest.approx(5.0, abs=0.05)


def test_rendered_clip_moves_and_is_not_blank() -> None:
    info = probe_video(render_test_video(2, "16:9"))
    assert info.blank_fraction == 0
    assert info.frozen_fraction == 0


def test_other_frame_rates_and_sizes_are_honoured(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    path.write_bytes(render_test_video(1.5, "16:9", fps=30, height=360))
    info = probe_video(path)
    assert (info.width, info.height, info.frames) == (640, 360, 45)
    assert info.fps == 30


def test_rendering_a_five_second_clip_is_fast() -> None:
    started = time.perf_counter()
    render_test_video(5, "16:9")
    assert time.perf_counter() - started < 1.0


def test_label_is_stored_as_the_title() -> None:
    with av.open(io.BytesIO(render_test_video(1, "1:1", label="job-42"))) as container:
        assert container.metadata.get("title") == "job-42"


def test_a_clip_of_no_frames_is_refused() -> None:
    with pytest.raises(ValueError, match="no frames"):
        render_test_video(0.01, "16:9")


def test_frame_dimensions_are_even() -> None:
    assert frame_dimensions("4:3", 145) == (192, 144)
    with pytest.raises(ValueError, match="aspect ratio"):
        frame_dimensions("wide", 144)


def test_a_flat_colour_video_is_blank_and_frozen() -> None:
    stats = frame_stats(_encode(_source_frames("color", "c=navy:size=128x72:rate=24", 24)))
    assert stats.blank_fraction == 1.0
    assert stats.frozen_fraction == 1.0


def test_a_repeated_picture_is_frozen_but_not_blank() -> None:
    still = _source_frames("testsrc2", "size=128x72:rate=24", 1)[0]
    stats = frame_stats(_encode([still] * 24))
    assert stats.blank_fraction == 0.0
    assert stats.frozen_fraction > 0.9


@pytest.mark.parametrize("data", [b"", b"not a video at all" * 100, b"\x00" * 4096])
def test_probe_rejects_garbage(data: bytes) -> None:
    with pytest.raises(InvalidVideo):
        probe_video(data)


def test_probe_rejects_a_truncated_download() -> None:
    with pytest.raises(InvalidVideo):
        probe_video(render_test_video(2, "16:9")[:-5000])


def test_probe_rejects_a_file_without_video(tmp_path: Path) -> None:
    path = tmp_path / "tone.wav"
    with av.open(str(path), mode="w", format="wav") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame(format="s16", layout="mono", samples=800)
        for plane in frame.planes:
            plane.update(bytes(plane.buffer_size))
        frame.sample_rate, frame.pts = 8000, 0
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    with pytest.raises(InvalidVideo, match="no video stream"):
        probe_video(path)


def test_probe_rejects_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidVideo):
        probe_video(tmp_path / "absent.mp4")
