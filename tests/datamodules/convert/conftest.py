"""The session's folder of tiny source videos shared by the converter tests."""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import pytest

from .helpers import make_video


@pytest.fixture(scope="session")
def videos(tmp_path_factory) -> Path:
    """The folder of source videos every format's fixture points at."""
    root = tmp_path_factory.mktemp("videos")
    make_video(root / "scenewalk" / "walk1.mp4", 15, 25, cuts=[5, 10])
    make_video(root / "scenewalk" / "walk2.mp4", 9, 1, cuts=[3, 6])             # already 1 FPS
    make_video(root / "etbench" / "qvhighlights" / "eta.mp4", 10, 30)
    make_video(root / "stride" / "str1.mp4", 20, Fraction(30000, 1001), cuts=[8, 14])
    make_video(root / "youcook2" / "training" / "101" / "cookA.mp4", 12, Fraction(30000, 1001), cuts=[4, 8])
    make_video(root / "llava" / "ytb_llv1.mp4", 8, 24)
    make_video(root / "cuts" / "hard_cuts.mp4", 12, 30, cuts=[4, 8])
    return root
