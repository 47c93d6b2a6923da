import io

import numpy as np
import pytest

from datamodules.common.video import (VideoError, read_feats_npy, read_frames_npy, read_video,
                                      resample_1fps, write_mp4)


def numbered_frames(count, size=32):
    """Frame i is flat grey at a level that identifies i after lossy coding (steps of 8 levels)."""
    levels = (np.arange(count) * 8) % 256
    return np.broadcast_to(levels[:, None, None, None], (count, size, size, 3)).astype(np.uint8).copy()


def frame_index(frames, step=8):
    return np.round(frames[:, :, :, :].reshape(len(frames), -1).mean(axis=1) / step).astype(int)


def mp4_bytes(frames, fps=1):
    buffer = io.BytesIO()
    write_mp4(buffer, frames, fps=fps)
    return buffer.getvalue()


def test_roundtrip_1fps_keeps_every_frame(tmp_path):
    frames = numbered_frames(17)
    write_mp4(tmp_path / "a.mp4", frames)
    for source in (tmp_path / "a.mp4", str(tmp_path / "a.mp4"), mp4_bytes(frames), io.BytesIO(mp4_bytes(frames))):
        out = read_video(source)
        assert out.shape == (17, 32, 32, 3) and out.dtype == np.uint8
        assert (frame_index(out) == np.arange(17)).all()


def test_write_is_deterministic():
    frames = np.random.default_rng(0).integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)
    assert mp4_bytes(frames) == mp4_bytes(frames)


@pytest.mark.parametrize("fps", [5, 30])
def test_resampling_picks_the_frame_covering_each_second(fps):
    seconds = 4
    source = numbered_frames(fps * seconds)  # source frame j shows level 8 * j (mod 256)
    out = read_video(mp4_bytes(source, fps=fps))
    assert len(out) == seconds
    # Output frame i = the source frame shown at i + 0.5 s = index floor((i + 0.5) * fps).
    expected = [int((i + 0.5) * fps) % 32 for i in range(seconds)]
    assert frame_index(out).tolist() == expected


def test_resampling_to_2fps_and_max_frames():
    out = read_video(mp4_bytes(numbered_frames(20, 16), fps=10), fps=2.0)
    assert frame_index(out).tolist() == [int((i + 0.5) * 5) for i in range(4)]
    assert len(read_video(mp4_bytes(numbered_frames(20, 16), fps=10), fps=2.0, max_frames=3)) == 3
    assert len(read_video(mp4_bytes(numbered_frames(9, 16)), max_frames=4)) == 4


@pytest.mark.parametrize("fps, count", [(1.0, 9), (0.25, 2), (0.5, 4), (2.0, 6)])
def test_resample_1fps_stack_agrees_with_decoding(fps, count):
    """A 1-FPS stack (.frames.npy, .feats.npy) resamples as `read_video` resamples the same frames."""
    frames = numbered_frames(9, 16)
    decoded = read_video(mp4_bytes(frames), fps=fps, max_frames=count)
    assert (frame_index(resample_1fps(frames, fps, count)) == frame_index(decoded)).all()
    assert len(resample_1fps(frames, fps, 0)) == 0


def test_truncated_and_corrupt_videos_raise_naming_the_source():
    data = mp4_bytes(numbered_frames(30))
    with pytest.raises(VideoError, match="shard.tar:k.mp4"):
        read_video(data[: len(data) // 2], name="shard.tar:k.mp4")
    with pytest.raises(VideoError, match="cannot decode|no frames"):
        read_video(b"\x00" * 1000)
    with pytest.raises(VideoError):
        read_video(b"")


def test_write_rejects_bad_frames():
    with pytest.raises(VideoError, match="even"):
        write_mp4(io.BytesIO(), np.zeros((2, 15, 16, 3), np.uint8))
    with pytest.raises(VideoError, match="uint8"):
        write_mp4(io.BytesIO(), np.zeros((2, 16, 16, 3), np.float32))
    with pytest.raises(VideoError, match="no frames"):
        write_mp4(io.BytesIO(), np.zeros((0, 16, 16, 3), np.uint8))


def test_npy_members():
    buffer = io.BytesIO()
    np.save(buffer, numbered_frames(3))
    assert read_frames_npy(buffer.getvalue()).shape == (3, 32, 32, 3)
    with pytest.raises(VideoError, match="k.frames.npy"):
        read_frames_npy(buffer.getvalue()[:50], name="k.frames.npy")
    buffer = io.BytesIO()
    np.save(buffer, np.zeros((3, 4, 4), np.uint8))
    with pytest.raises(VideoError, match=r"\(T, H, W, 3\)"):
        read_frames_npy(buffer.getvalue())
    buffer = io.BytesIO()
    np.save(buffer, np.zeros((5, 8), np.float16))
    assert read_feats_npy(buffer.getvalue()).shape == (5, 8)


def test_frame_count_is_floor_of_a_fractional_duration(tmp_path):
    """599 frames at 29.97 FPS last 19.987 s: 19 whole seconds, not 20."""
    import av
    import numpy as np
    from fractions import Fraction

    from datamodules.common.video import read_video

    path = tmp_path / "ntsc.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(30000, 1001))
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for i in range(599):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), i % 255, np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    assert len(read_video(path)) == 19
