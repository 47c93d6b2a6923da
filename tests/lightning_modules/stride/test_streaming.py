"""StreamingRunner on scripted models: the unmasking schedule, expected triggers, stable-or-remask, fixed slots,
single/multi-event, the responder, and the baselines' runners."""
import pytest
import torch
from torch import nn

from lightning_modules.stride.config import StreamingConfig
from lightning_modules.stride.model import MASK, ActivationDenoiser
from lightning_modules.stride.streaming import LiveTokenRunner, StreamingRunner, ThresholdHeadRunner

QUERY_IDS = torch.tensor([5, 6, 7])


class ScriptedDenoiser(nn.Module):
    """Deterministic fake: feature 0 of each slot says active (1) or not (0), feature 1 the confidence.
    Records the tokens and seen masks it was called with. `denoise` is STRIDE's real unmasking loop."""

    denoise = ActivationDenoiser.denoise

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, feats, seen, query_ids, tokens):
        self.calls.append((tokens.clone(), seen.clone()))
        p = torch.where(feats[..., 0] > 0.5, feats[..., 1], 1 - feats[..., 1])  # p(active)
        return torch.stack([torch.log1p(-p.clamp(max=1 - 1e-6)), torch.log(p.clamp(min=1e-6))], dim=-1)


def stream_of(truth, confidence=0.99):
    return torch.stack([torch.tensor(truth, dtype=torch.float), torch.full((len(truth),), confidence)], dim=1)


def truth_with(spans, length):
    truth = [0] * length
    for a, b in spans:
        truth[a:b] = [1] * (b - a)
    return truth


def test_denoise_unmasks_about_n_over_k_confident_slots_per_step():
    model = ScriptedDenoiser()
    feats = stream_of([1, 0, 1, 0, 1, 0, 1, 0])[None]
    tokens = torch.full((1, 8), MASK)
    labels, p, confident = model.denoise(feats, torch.ones(1, 8, dtype=torch.bool), QUERY_IDS[None], tokens,
                                         steps=4, threshold=0.75)
    assert labels[0].tolist() == [1, 0, 1, 0, 1, 0, 1, 0] and confident.all()
    masked_per_call = [int((t == MASK).sum()) for t, _ in model.calls]
    assert masked_per_call == [8, 6, 4, 2]  # ceil(8 / 4) = 2 committed per step
    # below the threshold nothing is committed early: the last step decides everything, not confidently
    model = ScriptedDenoiser()
    labels, p, confident = model.denoise(stream_of([1, 0, 1, 0], 0.6)[None], torch.ones(1, 4, dtype=torch.bool),
                                         QUERY_IDS[None], torch.full((1, 4), MASK), steps=4, threshold=0.75)
    assert [int((t == MASK).sum()) for t, _ in model.calls] == [4, 4, 4, 4]  # steps 1-3 commit nothing, then all
    assert labels[0].tolist() == [1, 0, 1, 0] and not confident.any()
    assert torch.allclose(p[0], torch.tensor([0.6, 0.4, 0.6, 0.4]))


def run(truth, cfg, responder=None, confidence=0.99):
    model = ScriptedDenoiser()
    runner = StreamingRunner(model, cfg, "tell me when", QUERY_IDS, feat_dim=2, responder=responder)
    runner.run(stream_of(truth, confidence))
    return runner, model


def test_runner_triggers_once_each_span_has_closed():
    truth = truth_with([(5, 10), (20, 25)], 40)
    answers = []
    runner, _ = run(truth, StreamingConfig(window=8, steps=2), responder=lambda q, t: answers.append(t) or f"{q}!")
    # span [5, 10) closes when frame 10 (inactive) arrives: clock 11 = end + 1 s
    got = [(t.start, t.end, t.time, t.frame, t.answer) for t in runner.triggers]
    assert got == [(5.0, 10.0, 11.0, 10, "tell me when!"), (20.0, 25.0, 26.0, 25, "tell me when!")]
    assert len(answers) == 2 and answers[0].time == 11.0


def test_span_longer_than_the_window_keeps_its_start():
    truth = truth_with([(3, 20)], 30)
    runner, _ = run(truth, StreamingConfig(window=6, steps=2))
    assert [(t.start, t.end, t.time) for t in runner.triggers] == [(3.0, 20.0, 21.0)]


def test_single_event_stops_after_first_trigger_and_multi_event_caps():
    truth = truth_with([(2, 4), (8, 10), (14, 16), (20, 22)], 30)
    single, _ = run(truth, StreamingConfig(window=8, steps=2, multi_event=False))
    assert [(t.start, t.end) for t in single.triggers] == [(2.0, 4.0)]
    capped, _ = run(truth, StreamingConfig(window=8, steps=2, max_triggers=3))
    assert [(t.start, t.end) for t in capped.triggers] == [(2.0, 4.0), (8.0, 10.0), (14.0, 16.0)]


def test_close_gap_delays_the_trigger():
    runner, _ = run(truth_with([(5, 10)], 20), StreamingConfig(window=8, steps=2, close_gap_s=3.0))
    assert [(t.end, t.time) for t in runner.triggers] == [(10.0, 13.0)]


def test_stable_labels_are_kept_and_unstable_ones_remasked():
    cfg = StreamingConfig(window=4, steps=1, stable_runs=2)
    runner, model = run([0, 0, 0, 0, 0, 0], cfg)
    # run at frame n: the newest slot is new (masked); a slot seen in one run only is re-masked;
    # from its second identical confident prediction on it is given to the model (token 0, not MASK)
    tokens = [t[0].tolist() for t, _ in model.calls]
    assert tokens[0] == [0, 0, 0, MASK]  # frame 0: three unseen slots, fixed inactive
    assert tokens[1] == [0, 0, MASK, MASK]  # frame 1: slot 0 predicted once: re-masked
    assert tokens[2] == [0, 0, MASK, MASK]  # frame 2: slot 0 now stable (kept), slot 1 once, slot 2 new
    assert tokens[3] == [0, 0, MASK, MASK]
    seen = [s[0].tolist() for _, s in model.calls]
    assert seen[2] == [False, True, True, True] and seen[3] == [True] * 4
    # unconfident predictions never become stable: everything seen stays masked
    runner, model = run([0, 0, 0, 0, 0, 0], cfg, confidence=0.6)
    assert model.calls[-1][0][0].tolist() == [MASK] * 4


def test_flipping_predictions_are_remasked():
    class Flipper(ScriptedDenoiser):
        def forward(self, feats, seen, query_ids, tokens):
            flip = len(self.calls) % 2
            self.calls.append((tokens.clone(), seen.clone()))
            p = torch.full(tokens.shape, 0.99 if flip else 0.01)
            return torch.stack([torch.log1p(-p), torch.log(p)], dim=-1)

    model = Flipper()
    runner = StreamingRunner(model, StreamingConfig(window=4, steps=1), "q", QUERY_IDS, feat_dim=2)
    runner.run(stream_of([0] * 8))
    assert all(int((t == MASK).sum()) == int(s.sum()) for t, s in model.calls)  # never stable, always re-masked


def test_slots_before_the_last_completed_span_are_fixed():
    cfg = StreamingConfig(window=8, steps=1)
    truth = truth_with([(2, 4)], 12)
    runner, model = run(truth, cfg)
    assert [(t.start, t.end) for t in runner.triggers] == [(2.0, 4.0)]
    # the trigger came at frame 4; from frame 5 on, slots < 4 are unseen and carry the inactive token
    tokens, seen = model.calls[5]
    slots = torch.arange(8) + 5 - 8 + 1
    assert not seen[0][slots < 4].any() and seen[0][slots >= 4].all()
    assert (tokens[0][slots < 4] == 0).all()


def test_stride_runs_the_denoiser_every_stride_frames():
    truth = truth_with([(5, 10)], 24)
    runner, model = run(truth, StreamingConfig(window=8, steps=1, stride=4))
    assert len(model.calls) == 6  # frames 3, 7, 11, 15, 19, 23
    # span closed at frame 10 but is seen only at the run of frame 11
    assert [(t.start, t.end, t.time) for t in runner.triggers] == [(5.0, 10.0, 12.0)]


class ScriptedCausal(nn.Module):
    """Baseline fake: per slot, logits straight from feature 0 (threshold head) or features 0-2 (LIVE)."""

    def __init__(self, kind):
        super().__init__()
        self.kind = kind

    def forward(self, feats, seen, query_ids):
        if self.kind == "head":
            return torch.where(feats[..., 0] > 0.5, 4.0, -4.0)
        return torch.log(feats[..., :3].clamp(min=1e-6))


def test_threshold_head_runner_fragments_on_a_dip():
    truth = truth_with([(3, 6), (7, 12)], 20)  # one real event with a one-frame dip at 6
    runner = ThresholdHeadRunner(ScriptedCausal("head"), StreamingConfig(window=8), 0.5, "q", QUERY_IDS, 2)
    runner.run(stream_of(truth))
    assert [(t.start, t.end, t.time) for t in runner.triggers] == [(3.0, 6.0, 7.0), (7.0, 12.0, 13.0)]
    assert runner.p_active[3] > 0.9 and runner.p_active[6] < 0.1


def test_live_token_runner_pairs_started_and_over():
    frames = torch.tensor([[0.98, 0.01, 0.01]] * 20)
    frames[4] = torch.tensor([0.1, 0.8, 0.1])  # started at frame 4
    frames[9] = torch.tensor([0.1, 0.1, 0.8])  # over at frame 9 -> span [4, 9), response at clock 10
    frames[15] = torch.tensor([0.5, 0.1, 0.4])  # over without a start (p(silent) 0.5 < 0.725): 1-s span
    runner = LiveTokenRunner(ScriptedCausal("live"), StreamingConfig(window=8), 0.725, "q", QUERY_IDS, 3)
    runner.run(frames)
    assert [(t.start, t.end, t.time) for t in runner.triggers] == [(4.0, 9.0, 10.0), (14.0, 15.0, 16.0)]


def test_close_run_bridges_short_dips_for_both_runners():
    truth = truth_with([(3, 6), (7, 12)], 20)  # one event with a one-frame dip at 6
    cfg = StreamingConfig(window=8, steps=1, close_run=2)
    head = ThresholdHeadRunner(ScriptedCausal("head"), cfg, 0.5, "q", QUERY_IDS, 2)
    head.run(stream_of(truth))
    stride, _ = run(truth, cfg)
    for runner in (head, stride):  # one span; it closes once two inactive slots (12, 13) are in: clock 14
        assert [(t.start, t.end, t.time) for t in runner.triggers] == [(3.0, 12.0, 14.0)]
    # a dip as long as close_run does close the span
    runner, _ = run(truth_with([(3, 6), (8, 12)], 20), cfg)
    assert [(t.start, t.end, t.time) for t in runner.triggers] == [(3.0, 6.0, 8.0), (8.0, 12.0, 14.0)]


def test_close_run_keeps_the_start_of_a_run_that_left_the_window_before_a_dip():
    truth = truth_with([(2, 9), (10, 20)], 30)  # the dip at 9 leaves the 6-slot window long before the end
    runner, _ = run(truth, StreamingConfig(window=6, steps=1, close_run=2))
    assert [(t.start, t.end, t.time) for t in runner.triggers] == [(2.0, 20.0, 22.0)]
    runner, _ = run(truth, StreamingConfig(window=6, steps=1))  # close_run 1: the dip ends the first span
    assert [(t.start, t.end) for t in runner.triggers] == [(2.0, 9.0), (10.0, 20.0)]


def test_min_span_drops_short_blips():
    truth = truth_with([(3, 4), (8, 12)], 20)
    for cfg, want in ((StreamingConfig(window=8, steps=1), [(3.0, 4.0), (8.0, 12.0)]),
                      (StreamingConfig(window=8, steps=1, min_span=2), [(8.0, 12.0)])):
        runner, _ = run(truth, cfg)
        head = ThresholdHeadRunner(ScriptedCausal("head"), cfg, 0.5, "q", QUERY_IDS, 2)
        head.run(stream_of(truth))
        assert [(t.start, t.end) for t in runner.triggers] == want == [(t.start, t.end) for t in head.triggers]


def test_active_threshold_moves_the_decision_like_the_heads_threshold():
    model = ScriptedDenoiser()
    feats = stream_of([1, 1, 0, 0], 0.6)[None]  # p(active) = 0.6, 0.6, 0.4, 0.4
    feats[0, 3, 1] = 0.9  # p(active) 0.1
    seen, masked = torch.ones(1, 4, dtype=torch.bool), torch.full((1, 4), MASK)
    plain, p, _ = model.denoise(feats, seen, QUERY_IDS[None], masked, steps=1, threshold=0.75)
    assert plain[0].tolist() == [1, 1, 0, 0]
    low, p_low, confident = model.denoise(feats, seen, QUERY_IDS[None], masked, steps=1, threshold=0.75,
                                          active_threshold=0.3)
    assert low[0].tolist() == [1, 1, 1, 0]  # active iff p(active) >= 0.3
    assert torch.allclose(p_low, p) and torch.allclose(p[0], torch.tensor([0.6, 0.6, 0.4, 0.1]))
    # confidence is measured after the shift (threshold 0.75): p 0.6 -> 0.78 active, sure; p 0.4 -> 0.61
    # active, unsure; p 0.1 -> 0.79 inactive, sure
    assert confident[0].tolist() == [True, True, False, True]
    high, _, _ = model.denoise(feats, seen, QUERY_IDS[None], masked, steps=1, threshold=0.75,
                               active_threshold=0.7)
    assert high[0].tolist() == [0, 0, 0, 0]
    with pytest.raises(ValueError, match="active_threshold"):
        model.denoise(feats, seen, QUERY_IDS[None], masked, steps=1, threshold=0.75, active_threshold=1.0)


class EdgeGuesser(ScriptedDenoiser):
    """At the two newest window slots it reads feature 2 (a guess), further back feature 0 (the truth)."""

    def forward(self, feats, seen, query_ids, tokens):
        self.calls.append((tokens.clone(), seen.clone()))
        edge = torch.arange(feats.shape[1]) >= feats.shape[1] - 2
        p = torch.where(edge, feats[..., 2], feats[..., 0]).clamp(0.01, 0.99)
        return torch.stack([torch.log1p(-p), torch.log(p)], dim=-1)


def test_confirm_stable_never_triggers_a_blip_that_later_frames_revise():
    truth = torch.tensor(truth_with([(10, 15)], 24), dtype=torch.float)
    guess = truth.clone()
    guess[5] = 1.0  # at the edge slot 5 looks active; two frames later it is seen to be inactive
    stream = torch.stack([truth, torch.full_like(truth, 0.99), guess], dim=1)
    got = {}
    for confirm in (False, True):
        cfg = StreamingConfig(window=8, steps=1, stable_runs=3, confirm_stable=confirm)
        runner = StreamingRunner(EdgeGuesser(), cfg, "q", QUERY_IDS, feat_dim=3)
        runner.run(stream)
        got[confirm] = [(t.start, t.end, t.time) for t in runner.triggers]
    assert got[False] == [(5.0, 6.0, 7.0), (10.0, 15.0, 16.0)]
    # confirmed: slot 14 is stable after its third run (frame 16), the closing slot 15 after frame 17
    assert got[True] == [(10.0, 15.0, 18.0)]


def test_runner_rejects_a_batched_query():
    with pytest.raises(ValueError, match="1-D"):
        StreamingRunner(ScriptedDenoiser(), StreamingConfig(window=4), "q", QUERY_IDS[None], feat_dim=2)


def test_lockstep_batching_equals_streams_run_alone():
    from lightning_modules.stride.config import StrideConfig
    from lightning_modules.stride.model import LiveToken, ThresholdHead
    from lightning_modules.stride.streaming import run_lockstep

    torch.manual_seed(0)
    cfg = StrideConfig(features="feats", feat_dim=6, window=8, d_model=16, n_heads=2, n_layers=1, vocab_size=32,
                       streaming=StreamingConfig(window=8, steps=2, threshold=0.55))
    models = {"stride": ActivationDenoiser(cfg).eval(), "head": ThresholdHead(cfg).eval(),
              "live": LiveToken(cfg).eval()}
    streams = [torch.randn(n, 6) for n in (13, 5, 20)]
    queries = [torch.tensor([3, 4]), torch.tensor([5, 0]), torch.tensor([7, 8])]

    def make(kind, q):
        if kind == "stride":
            return StreamingRunner(models[kind], cfg.streaming, "q", q, 6)
        runner_cls = ThresholdHeadRunner if kind == "head" else LiveTokenRunner
        return runner_cls(models[kind], cfg.streaming, 0.5, "q", q, 6)

    for kind in models:
        alone = [make(kind, q) for q in queries]
        for runner, stream in zip(alone, streams):
            runner.run(stream)
        together = [make(kind, q) for q in queries]
        run_lockstep(together, streams)
        for a, b in zip(alone, together):
            assert [(t.start, t.end, t.time) for t in a.triggers] == [(t.start, t.end, t.time) for t in b.triggers]
            assert torch.allclose(torch.tensor(a.p_active), torch.tensor(b.p_active), atol=1e-5)


def test_close_confident_waits_for_a_sure_end():
    # span [5, 10); the first inactive slot after it (10) is predicted with confidence 0.6 < threshold,
    # slot 11 with 0.99: plain rule closes at frame 10 (a sure end is not needed); close_confident waits
    # for frame 11, whose sure inactive label makes the stretch [10, ...) a sure end, and keeps end = 10
    truth = truth_with([(5, 10)], 20)
    stream = stream_of(truth)
    stream[10, 1] = 0.6
    plain = StreamingRunner(ScriptedDenoiser(), StreamingConfig(window=8, steps=1), "q", QUERY_IDS, feat_dim=2)
    plain.run(stream)
    assert [(t.start, t.end, t.time) for t in plain.triggers] == [(5.0, 10.0, 11.0)]
    sure = StreamingRunner(ScriptedDenoiser(), StreamingConfig(window=8, steps=1, close_confident=True), "q",
                           QUERY_IDS, feat_dim=2)
    sure.run(stream)
    assert [(t.start, t.end, t.time) for t in sure.triggers] == [(5.0, 10.0, 12.0)]


def test_close_confident_never_closes_on_unsure_inactive_labels():
    truth = truth_with([(3, 6)], 12)
    stream = stream_of(truth)
    stream[6:, 1] = 0.55  # every slot after the span is an unsure "inactive"
    runner = StreamingRunner(ScriptedDenoiser(), StreamingConfig(window=8, steps=1, close_confident=True), "q",
                             QUERY_IDS, feat_dim=2)
    runner.run(stream)
    assert runner.triggers == []
