"""STRIDE labels, cuts, unseen slots and the invariants of each mask mode (checked over many random draws)."""
import numpy as np
import pytest

from datamodules import stride as sd


def test_activation_labels_cover_overlapping_slots():
    labels = sd.activation_labels([[2.0, 4.0], [6.5, 7.2]], 10)
    # slot i covers [i, i+1): [2, 4) -> slots 2, 3; [6.5, 7.2) overlaps slots 6 and 7
    assert labels.tolist() == [0, 0, 1, 1, 0, 0, 1, 1, 0, 0]
    assert sd.activation_labels([[8.0, 30.0]], 10).tolist() == [0] * 8 + [1, 1]  # clipped to the video
    assert sd.label_runs(labels) == [(2, 4), (6, 8)]


def test_bad_span_names_the_sample():
    with pytest.raises(ValueError, match=r"a.tar:k streaming\[0\].*start < end"):
        sd.activation_labels([[5.0, 5.0]], 10, "a.tar:k streaming[0]")


def test_three_cuts_end_before_inside_after_the_span():
    rng = np.random.default_rng(0)
    for _ in range(200):
        cuts = dict(sd.span_cuts(10, 15, 40, reach=6, rng=rng))
        assert 4 <= cuts["before"] <= 10  # clip holds frames [0, c): the span has not started
        assert 11 <= cuts["inside"] <= 15  # started, its end not yet seen
        assert 16 <= cuts["after"] <= 21  # closed: slot 15 (inactive) seen
    # a span at the very start has no "before"; one that runs to the end has no "after"
    assert [c for c, _ in sd.span_cuts(0, 5, 40, 6, rng)] == ["inside", "after"]
    assert [c for c, _ in sd.span_cuts(30, 40, 40, 6, rng)] == ["before", "inside"]


def test_cut_window_fixes_unseen_slots_inactive():
    labels = np.array([1, 1, 0, 0, 1, 1, 1, 0, 0, 0])
    window_labels, seen = sd.cut_window(labels, clip_end=6, clip_start=1, window=8)
    # window covers slots [-2, 6): slots -2, -1 (before the stream) and 0 (before the clip start) are unseen
    assert seen.tolist() == [False, False, False, True, True, True, True, True]
    assert window_labels.tolist() == [0, 0, 0, 1, 0, 0, 1, 1]
    with pytest.raises(ValueError, match="clip"):
        sd.cut_window(labels, clip_end=3, clip_start=3, window=8)


def _random_window(rng, window=24):
    labels = (rng.random(window) < 0.3).astype(np.int64)
    labels = np.repeat(labels[::3], 3)[:window]  # runs of 3
    seen = np.arange(window) >= int(rng.integers(0, window - 1))
    return np.where(seen, labels, 0), seen


@pytest.mark.parametrize("mode", sd.MASK_MODES)
def test_mask_modes_only_mask_seen_slots_and_mask_at_least_one(mode):
    rng = np.random.default_rng(1)
    for _ in range(500):
        labels, seen = _random_window(rng)
        masked = sd.draw_mask(mode, labels, seen, rng, max_reveal=0.3, scatter=0.15)
        assert masked.dtype == bool and masked.any()
        assert not (masked & ~seen).any()


def test_mask_all_masks_every_seen_slot():
    rng = np.random.default_rng(2)
    labels, seen = _random_window(rng)
    assert (sd.mask_all(labels, seen, rng) == seen).all()


def test_mask_spans_reveals_at_most_30_percent_and_keeps_a_boundary_masked():
    rng = np.random.default_rng(3)
    revealed_any = False
    for _ in range(500):
        labels, seen = _random_window(rng)
        masked = sd.mask_spans(labels, seen, rng, max_reveal=0.3)
        revealed = seen & ~masked
        assert revealed.sum() <= 0.3 * seen.sum()
        revealed_any |= bool(revealed.any())
        edges = sd.boundaries(labels, seen)
        if len(edges):
            assert any(masked[j - 1] and masked[j] for j in edges)
    assert revealed_any  # it does reveal something


def test_mask_boundary_block_straddles_a_span_edge():
    rng = np.random.default_rng(4)
    for _ in range(500):
        labels, seen = _random_window(rng)
        edges = sd.boundaries(labels, seen)
        masked = sd.mask_boundary(labels, seen, rng, scatter=0.0)
        if len(edges):
            assert any(masked[j - 1] and masked[j] for j in edges)
        # with no scatter the masked slots form one contiguous block
        at = np.flatnonzero(masked)
        assert (np.diff(at) == 1).all()


def test_mask_edge_masks_the_newest_seen_slots_and_scatters_only_over_seen_ones():
    rng = np.random.default_rng(5)
    lengths = set()
    for _ in range(500):
        labels, seen = _random_window(rng)
        masked = sd.mask_edge(labels, seen, rng, scatter=0.0)
        at = np.flatnonzero(masked)
        # without scatter: one block ending at the newest slot, 1 to W/8 = 3 slots, all seen
        assert at[-1] == len(labels) - 1 and (np.diff(at) == 1).all() and 1 <= len(at) <= 3
        assert seen[at].all()
        lengths.add(len(at))
        scattered = sd.mask_edge(labels, seen, rng, scatter=1.0)
        assert (scattered == seen).all()  # scatter 1 masks every seen slot, never an unseen one
    assert lengths == {1, 2, 3}


def test_live_targets_start_and_over():
    labels = np.array([0, 1, 1, 0, 0, 1, 1, 1])
    targets = sd.live_targets(labels, gap_s=1.0)
    # started at 1 and 5; over at frame 3 (clock 4 = end 3 + 1 s); the second span runs to the end: no "over"
    assert targets.tolist() == [0, 1, 0, 2, 0, 1, 0, 0]


def test_query_windows_cut_every_span_three_ways_and_respect_unseen():
    cfg_fields = dict(window=16, background_windows=2, cut_reach=4, late_start_prob=0.5,
                      mask_modes={"all": 1.0, "spans": 1.0, "boundary": 1.0}, max_reveal=0.3, scatter=0.15,
                      response_gap_s=1.0)

    class Cfg:  # the windowing fields of StrideDataConfig, without the shard settings
        pass

    cfg = Cfg()
    cfg.__dict__.update(cfg_fields)
    labels = sd.activation_labels([[10, 14], [30, 33]], 50)
    out = sd.query_windows(labels, cfg, np.random.default_rng(5))
    assert list(out["cut"]).count("before") == 2 and list(out["cut"]).count("after") == 2
    assert list(out["cut"]).count("inside") == 2 and list(out["cut"]).count("background") == 2
    for end, seen, lab, tokens, loss_mask, live in zip(out["clip_end"], out["seen"], out["labels"], out["tokens"],
                                                       out["loss_mask"], out["live"]):
        slots = np.arange(end - 16, end)
        assert (lab[seen] == labels[slots[seen]]).all()
        assert (lab[~seen] == 0).all() and (tokens[~seen] == 0).all() and not loss_mask[~seen].any()
        assert (live[~seen] == sd.IGNORE).all()
        assert ((tokens == sd.MASK) == loss_mask).all()
        assert (tokens[~loss_mask] == lab[~loss_mask]).all()
        assert not seen[slots < 0].any()  # frames before the stream start are never seen


def test_train_draws_follow_the_stream_draw_seed(tmp_path):
    """Train windows are a pure function of the sample's draw_seed (a resumed run replays them); a new
    draw seed gives new windows; val/test windows never change; a train sample without one is refused."""
    from tokenizers import Tokenizer, models

    Tokenizer(models.WordLevel({"<|pad|>": 0, "[UNK]": 1}, unk_token="[UNK]")).save(str(tmp_path / "tokenizer.json"))
    data = sd.StrideDataModule(sd.StrideDataConfig(root=str(tmp_path), window=8))
    meta = {"duration": 60.0, "streaming": [{"query": "tell me", "spans": [[10.0, 15.0], [30.0, 41.0]]}]}

    def windows(split, draw_seed=None):
        sample = {"json": meta, "key": "train-000001", "frames": np.zeros((60, 4, 4, 3), np.uint8)}
        if draw_seed is not None:
            sample["draw_seed"] = draw_seed
        item = data.map_sample(sample, split)
        return np.concatenate([item["clip_end"].numpy(), item["tokens"].numpy().ravel()])

    assert np.array_equal(windows("train", [0, 1, 0, 5]), windows("train", [0, 1, 0, 5]))
    assert not np.array_equal(windows("train", [0, 1, 0, 5]), windows("train", [0, 2, 0, 5]))
    assert np.array_equal(windows("val"), windows("val"))
    with pytest.raises(ValueError, match="draw_seed"):
        windows("train")
