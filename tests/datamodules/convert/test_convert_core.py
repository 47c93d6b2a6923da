"""Format-neutral pieces: segment tiling, span fitting, relations, row reading, decoding, scene cuts."""
from __future__ import annotations

import itertools
import random
from fractions import Fraction

import pytest

from datamodules.common.video import VideoError, read_video
from datamodules.convert.core import AnnotationError, Segment, fit_segments, fit_spans, read_rows, related_ids
from datamodules.convert.media import decode_clip, detect_cuts

from .helpers import make_video, second_shown, write_jsonl


# --- fit_segments against a per-second reference ------------------------------------------------

def _owner_per_tick(segments, duration, step=0.25):
    """Reference: which output segment covers each tick t (its half-open [start, end))."""
    owners = []
    for k in range(int(duration / step)):
        t = k * step + step / 2
        owners.append(next(i for i, s in enumerate(segments) if s.start <= t < s.end))
    return owners


def test_fit_segments_fills_long_gaps_and_absorbs_short_ones():
    segments = [Segment(2.0, 5.0, "a"), Segment(5.4, 9.0, "b"), Segment(12.0, 14.0, "c")]
    out, old_to_new = fit_segments(segments, duration=16.0, min_gap=1.0)
    # the leading 2 s gap is filled, the 0.4 s gap absorbed by "a", 9-12 and 14-16 filled
    assert [(s.start, s.end, s.caption) for s in out] == [
        (0.0, 2.0, None), (2.0, 5.4, "a"), (5.4, 9.0, "b"), (9.0, 12.0, None), (12.0, 14.0, "c"), (14.0, 16.0, None)]
    assert old_to_new == [1, 2, 4]


def test_fit_segments_clips_trims_overlaps_and_drops_outside():
    segments = [Segment(6.0, 11.0, "late"), Segment(0.3, 6.5, "early"), Segment(20.0, 25.0, "outside")]
    out, old_to_new = fit_segments(segments, duration=10.0, min_gap=1.0)
    assert [(s.start, s.end, s.caption) for s in out] == [(0.0, 6.5, "early"), (6.5, 10.0, "late")]
    assert old_to_new == [1, 0, None]


@pytest.mark.parametrize("seed", range(20))
def test_fit_segments_always_tiles_the_video(seed):
    rng = random.Random(seed)
    duration = rng.uniform(3, 40)
    segments = []
    for _ in range(rng.randint(1, 8)):
        start = rng.uniform(-2, duration + 2)
        segments.append(Segment(start, start + rng.uniform(0, 10), f"c{len(segments)}"))
    out, old_to_new = fit_segments(segments, duration, min_gap=rng.choice([0.0, 1.0, 3.0]))
    if not out:  # everything fell outside the video or vanished
        assert all(new is None for new in old_to_new)
        return
    assert out[0].start == 0.0 and out[-1].end == round(duration, 3)
    assert all(a.end == b.start and a.start < a.end for a, b in zip(out, out[1:]))
    for i, new in enumerate(old_to_new):
        if new is not None:  # a kept segment keeps its caption and overlaps its annotated time
            assert out[new].caption == segments[i].caption
            assert out[new].start < segments[i].end and out[new].end > max(segments[i].start, 0)
    _owner_per_tick(out, round(duration, 3))  # every tick is covered by exactly one segment


def test_fit_spans_clips_merges_and_counts_dropped():
    spans, dropped = fit_spans([(8.0, 12.0), (1.0, 3.0), (2.5, 4.0), (4.0, 5.0), (30.0, 31.0), (-2.0, 0.5)], 10.0)
    assert spans == [[0.0, 0.5], [1.0, 4.0], [4.0, 5.0], [8.0, 10.0]]
    assert dropped == 1


def test_related_ids_follow_both_thresholds():
    sen = [[1.0, 0.9, 0.1], [0.9, 1.0, 0.2], [0.1, 0.2, 1.0]]
    lb = [[0.5, 0.0, 0.3], [0.0, 0.5, 0.0], [0.0, 0.0, 0.5]]
    # captioned segments 0, 2, 3 of 4 (segment 1 is an uncaptioned gap)
    related = related_ids([0, 2, 3], sen, lb, sen_threshold=0.83, lb_threshold=0.21, size=4)
    expected = [[i] for i in range(4)]
    for (a, i), (b, j) in itertools.product(enumerate([0, 2, 3]), repeat=2):
        if i == j or sen[a][b] > 0.83 or lb[a][b] > 0.21:
            expected[i] = sorted(set(expected[i]) | {j})
    assert related == expected == [[0, 2, 3], [1], [0, 2], [3]]


def test_read_rows_names_file_and_line_of_bad_jsonl(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [{"ok": 1}])
    path.write_text(path.read_text() + "\n{broken\n")
    rows = read_rows(path)
    assert next(rows) == (1, {"ok": 1})
    with pytest.raises(AnnotationError, match=r"a\.jsonl: row 3: key '<line>': not valid JSON"):
        next(rows)


# --- decoding at 1 FPS ----------------------------------------------------------------------

def test_decode_clip_resamples_ntsc_rate_to_one_fps(tmp_path):
    path = make_video(tmp_path / "ntsc.mp4", 13, Fraction(30000, 1001))
    clip = decode_clip(path)
    assert clip.source_fps == pytest.approx(29.97, abs=0.01)
    assert clip.frames.shape == (13 if clip.duration >= 13 else 12, 64, 64, 3)
    assert clip.frames.shape[0] == int(clip.duration)
    assert [second_shown(f) for f in clip.frames] == list(range(clip.frames.shape[0]))
    # Same frames as the shared reader picks (both take the middle of each second).
    reference = read_video(path, fps=1.0)[: clip.frames.shape[0]]
    assert [second_shown(f) for f in reference] == [second_shown(f) for f in clip.frames]


@pytest.mark.parametrize("start,end,seconds", [(3.0, 9.5, [3, 4, 5, 6, 7, 8]), (2.5, None, [3, 4, 5, 6, 7, 8, 9, 10]),
                                               (0.0, 4.0, [0, 1, 2, 3]), (6.2, 30.0, [6, 7, 8, 9])])
def test_decode_clip_cuts_clips(tmp_path, start, end, seconds):
    path = make_video(tmp_path / "v.mp4", 11, 30)
    clip = decode_clip(path, start, end)
    assert [second_shown(f) for f in clip.frames] == seconds
    assert clip.duration == pytest.approx(min(end or 11, 11) - start, abs=1e-3)
    assert clip.frames.shape[0] == int(clip.duration + 1e-3)


def test_decode_clip_resizes_to_even_sizes(tmp_path):
    path = make_video(tmp_path / "v.mp4", 3, 10)
    assert decode_clip(path, short_side=33).frames.shape[1:] == (32, 32, 3)


def test_decode_clip_errors_name_the_file(tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video at all")
    with pytest.raises(VideoError, match="broken.mp4"):
        decode_clip(bad)
    short = make_video(tmp_path / "short.mp4", 0.5, 10)
    with pytest.raises(VideoError, match="no whole second"):
        decode_clip(short)


def test_detect_cuts_finds_hard_cuts(videos):
    path = videos / "cuts" / "hard_cuts.mp4"
    assert detect_cuts(path) == pytest.approx([4.0, 8.0], abs=1 / 30 + 1e-3)
    # Within a clip, cuts are relative to its start and the clip's ends are not cuts.
    assert detect_cuts(path, start=2.0, end=10.0) == pytest.approx([2.0, 6.0], abs=1 / 30 + 1e-3)
    assert detect_cuts(path, start=5.0, end=7.5) == []
