"""The binding probe: its sequences say what they claim, and it sees learning when there is some to see."""
import numpy as np
import pytest

from lightning_modules.ma2mba import binding_probe as bp


def test_videos_hold_the_asked_colour_in_one_scene_and_the_answers_follow():
    rng = np.random.default_rng(0)
    for task in bp.TASKS:
        videos, answers = bp.draw_videos(rng, 20, task, (2, 5))
        for (frames, colour), answer in zip(videos, answers):
            backgrounds = frames[:, :bp.BACKGROUNDS].argmax(1)
            scenes = np.flatnonzero(np.r_[True, backgrounds[1:] != backgrounds[:-1]])  # first frame of each scene
            having = [s for s in scenes if frames[s, bp.BACKGROUNDS + colour] == 1]
            assert len(having) == 1 and 3 <= len(scenes) <= 8
            assert answer == (backgrounds[having[0]] if task == "bind" else backgrounds[-1])


def test_recency_is_learnt_within_a_hundred_steps():
    # Chance is 1/35; the last scene's frames sit right before the query, within the conv's reach.
    curve = bp.train("last", steps=100, scene_frames=(4, 8), evaluate_every=100, held_out=64, log=lambda _: None)
    assert curve[-1][1] > 0.5


def test_unknown_task_and_field_are_errors():
    with pytest.raises(ValueError, match="first"):
        bp.train("first", steps=1)
    with pytest.raises(ValueError, match="d_modle"):
        bp.main(["--steps", "1", "d_modle=64"])


def test_the_peer_lm_answers_the_same_question():
    pytest.importorskip("transformers")
    from lightning_modules.common.mamba2 import Mamba2Config

    videos, _ = bp.draw_videos(np.random.default_rng(0), 3, "bind", (2, 3))
    lm = Mamba2Config(d_model=32, n_layer=1, d_state=8, headdim=16, chunk_size=16, vocab_size=256)
    assert bp.Probe(lm, gap=2, peer=True)(videos).shape == bp.Probe(lm, gap=2)(videos).shape == (3, bp.BACKGROUNDS)
