"""Metrics against hand-computed cases (the arithmetic is written beside each), plus state merging and DDP sync."""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torchmetrics.retrieval import RetrievalMAP, RetrievalRecall

from lightning_modules.common.metrics import (
    DenseCaptioningTemporalF1,
    FrameActivationF1,
    MultipleChoiceAccuracy,
    ProactiveTimeAccuracy,
    SegmentRetrieval,
    TemporalActionF1,
    TemporalGroundingF1,
    TimeDiff,
    retrieval_inputs,
    temporal_iou,
)


def values(out):
    return {k: float(v) for k, v in out.items()} if isinstance(out, dict) else float(out)


# --------------------------------------------------------------------------------------------------- IoU
def test_temporal_iou():
    a = torch.tensor([[0.0, 10.0], [0.0, 2.0], [3.0, 3.0]], dtype=torch.float64)
    b = torch.tensor([[5.0, 15.0], [1.0, 2.0], [3.0, 3.0]], dtype=torch.float64)
    iou = temporal_iou(a, b)
    # [0,10]v[5,15]: 5 / 15; [0,10]v[1,2]: 1 / 10; [0,2]v[1,2]: 1 / 2; a point has no union: 0.
    assert iou[0, 0] == pytest.approx(1 / 3) and iou[0, 1] == pytest.approx(0.1) and iou[1, 1] == 0.5
    assert iou[2, 2] == 0 and iou[0, 2] == 0 and iou[1, 0] == 0


# --------------------------------------------------------------------------------------------------- ET-Bench
TVG_PREDS = [[(0, 10), (50, 60)], [(20, 30)], [], [(0, 2)]]
TVG_TARGET = [[(5, 15)], [(20, 30), (40, 50)], [(0, 4)], [(1, 2)]]


def test_temporal_grounding_f1():
    metric = TemporalGroundingF1()
    metric.update(TVG_PREDS, TVG_TARGET)
    # IoU of first pred with first target: 5/15 = 1/3; 1 (the second target is ignored); none (miss); 1/2.
    # hits: θ=0.1 -> 3, 0.3 -> 3, 0.5 -> 2 (0.5 >= 0.5), 0.7 -> 1; each / 4 samples.
    out = values(metric.compute())
    assert out["f1@0.1"] == 0.75 and out["f1@0.3"] == 0.75 and out["f1@0.5"] == 0.5 and out["f1@0.7"] == 0.25
    assert out["f1"] == pytest.approx((0.75 + 0.75 + 0.5 + 0.25) / 4)  # 0.5625
    assert out["miou"] == pytest.approx((1 / 3 + 1 + 0 + 0.5) / 4)
    assert int(metric.no_prediction) == 1


def test_temporal_grounding_uses_only_the_first_predicted_span():
    metric = TemporalGroundingF1(thresholds=(0.5,))
    metric.update([[(100, 110), (0, 10)]], [[(0, 10)]])  # the second pred is perfect but only the first counts
    assert values(metric.compute()) == {"f1@0.5": 0.0, "f1": 0.0, "miou": 0.0}


TAL_PREDS = [[(0, 10), (22, 30), (50, 60)], [(5, 15)], []]
TAL_TARGET = [[(0, 10), (20, 30)], [(0, 10)], [(0, 4)]]


def test_temporal_action_f1():
    metric = TemporalActionF1()
    metric.update(TAL_PREDS, TAL_TARGET)
    # s0: IoU gt x pred = [[1, 0, 0], [0, 8/10, 0]]; for every θ <= 0.7: R = (1 + 1) / 2 = 1, P = (1 + 1 + 0) / 3
    #     = 2/3, F1 = 2 * 2/3 * 1 / (5/3) = 0.8.
    # s1: IoU 5/15 = 1/3: θ 0.1, 0.3 -> P = R = F1 = 1; θ 0.5, 0.7 -> max IoU < θ -> 0.
    # s2: no prediction -> 0.
    out = values(metric.compute())
    assert out["f1@0.1"] == pytest.approx(1.8 / 3) and out["f1@0.3"] == pytest.approx(1.8 / 3)
    assert out["f1@0.5"] == pytest.approx(0.8 / 3) and out["f1@0.7"] == pytest.approx(0.8 / 3)
    assert out["f1"] == pytest.approx((0.6 + 0.6 + 0.8 / 3 + 0.8 / 3) / 4)


DVC_PREDS = [[(0, 10), (22, 30), (50, 60)], [(1, 2)], []]
DVC_TARGET = [[(0, 10), (20, 30)], [(0, 2)], [(0, 4)]]


def test_dense_captioning_temporal_f1():
    metric = DenseCaptioningTemporalF1()
    metric.update(DVC_PREDS, DVC_TARGET)
    # v0: IoU pred x ref = [[1, 0], [0, 0.8], [0, 0]]: for θ <= 0.7 P = 2/3, R = 2/2 = 1.
    # v1: IoU exactly 0.5: covered only when 0.5 > θ: θ 0.1, 0.3 -> P = R = 1; θ 0.5, 0.7 -> 0 (strict >).
    # v2: no prediction: P = R = 0.
    # θ 0.1/0.3: P = (2/3 + 1 + 0) / 3 = 5/9, R = (1 + 1 + 0) / 3 = 2/3, F1 = 2PR/(P+R) = (20/27) / (11/9) = 20/33.
    # θ 0.5/0.7: P = (2/3) / 3 = 2/9, R = 1/3, F1 = (4/27) / (5/9) = 4/15.
    out = values(metric.compute())
    assert out["f1@0.1"] == pytest.approx(20 / 33) and out["f1@0.3"] == pytest.approx(20 / 33)
    assert out["f1@0.5"] == pytest.approx(4 / 15) and out["f1@0.7"] == pytest.approx(4 / 15)
    assert out["f1"] == pytest.approx((20 / 33 + 4 / 15) / 2)
    assert out["precision"] == pytest.approx((5 / 9 + 5 / 9 + 2 / 9 + 2 / 9) / 4)
    assert out["recall"] == pytest.approx((2 / 3 + 2 / 3 + 1 / 3 + 1 / 3) / 4)


def test_grounding_counts_iou_equal_to_theta_but_captioning_does_not():
    # ET-Bench: tvg_eval uses `iou >= thr`, DVCEval.evaluate_detection uses `iou > tiou`.
    preds, target = [[(0, 2)]], [[(1, 2)]]  # IoU exactly 0.5
    grounding, captioning = TemporalGroundingF1(thresholds=(0.5,)), DenseCaptioningTemporalF1(thresholds=(0.5,))
    grounding.update(preds, target)
    captioning.update(preds, target)
    assert float(grounding.compute()["f1"]) == 1.0 and float(captioning.compute()["f1"]) == 0.0


@pytest.mark.parametrize("cls", [TemporalGroundingF1, TemporalActionF1, DenseCaptioningTemporalF1])
def test_span_metrics_reject_bad_input(cls):
    metric = cls()
    with pytest.raises(ValueError, match="empty batch"):
        metric.update([], [])
    with pytest.raises(ValueError, match="no samples were seen"):
        metric.compute()
    with pytest.raises(ValueError, match="preds has 1 samples but target has 2"):
        metric.update([[(0, 1)]], [[(0, 1)], [(0, 1)]])
    with pytest.raises(ValueError, match=r"preds\[0\]: a span ends before it starts"):
        metric.update([[(5, 1)]], [[(0, 1)]])
    with pytest.raises(ValueError, match=r"target\[1\]"):
        metric.update([[(0, 1)], [(0, 1)]], [[(0, 1)], []])
    with pytest.raises(ValueError, match="thresholds"):
        cls(thresholds=(1.5,))


def test_span_metrics_accept_tensors():
    metric = TemporalActionF1()
    metric.update([torch.tensor(p, dtype=torch.float32).reshape(-1, 2) for p in TAL_PREDS],
                  [torch.tensor(t) for t in TAL_TARGET])
    reference = TemporalActionF1()
    reference.update(TAL_PREDS, TAL_TARGET)
    assert values(metric.compute()) == pytest.approx(values(reference.compute()))


# --------------------------------------------------------------------------------------------------- timing
@pytest.mark.filterwarnings("ignore:The ``compute`` method of metric")
def test_proactive_time_accuracy():
    metric = ProactiveTimeAccuracy(tolerance=2.0)
    # |Δt| = 2 (correct, on the boundary), no response (wrong), 3 (wrong), 0.5 (correct) -> 2 / 4.
    metric.update([10.0, None, 13.0, 30.5], [12.0, 5.0, 10.0, 30.0])
    assert float(metric.compute()) == 0.5
    with pytest.raises(ValueError, match="empty batch"):
        metric.update([], [])
    with pytest.raises(ValueError, match=r"target_times\[0\]"):
        metric.update([1.0], [None])
    with pytest.raises(ValueError, match="no samples"):
        ProactiveTimeAccuracy().compute()


def test_time_diff():
    capped = TimeDiff(max_delay=5.0)
    # video 0: 2 s early -> 2; 8 s late -> capped at 5; mean 3.5.  video 1: no response -> 5.  mean (3.5 + 5) / 2.
    capped.update([[8.0, 20.0], [None]], [[10.0, 12.0], [4.0]])
    assert float(capped.compute()) == 4.25
    uncapped = TimeDiff()
    uncapped.update([[8.0, 20.0]], [[10.0, 12.0]])  # (2 + 8) / 2
    assert float(uncapped.compute()) == 5.0
    with pytest.raises(ValueError, match=r"pred_times\[0\]\[0\]"):
        uncapped.update([[None]], [[4.0]])  # a missing response has no delay without max_delay
    with pytest.raises(ValueError, match="sample 0: needs one response time"):
        capped.update([[1.0, 2.0]], [[1.0]])
    with pytest.raises(ValueError, match="empty batch"):
        capped.update([], [])


# --------------------------------------------------------------------------------------------------- frames
def test_frame_activation_f1():
    preds = torch.tensor([0.9, 0.2, 0.6, 0.4, 0.8])
    target = torch.tensor([1, 0, 0, 1, 1])
    metric = FrameActivationF1()
    metric.update(preds, target)
    # active = [1, 0, 1, 0, 1]: tp 2 (0, 4), fp 1 (2), fn 1 (3): P = R = F1 = 2/3.
    assert values(metric.compute()) == pytest.approx({"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3})
    masked = FrameActivationF1()
    masked.update(preds > 0.5, target, mask=torch.tensor([1, 1, 0, 1, 1]).bool())
    # frame 2 dropped: tp 2, fp 0, fn 1: P = 1, R = 2/3, F1 = 2 * 2/3 / (5/3) = 0.8.
    assert values(masked.compute()) == pytest.approx({"precision": 1.0, "recall": 2 / 3, "f1": 0.8})
    silent = FrameActivationF1()
    silent.update(torch.zeros(4), torch.tensor([0, 1, 0, 0]))  # never active: P undefined -> 0
    assert values(silent.compute()) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    with pytest.raises(ValueError, match="empty batch"):
        metric.update(torch.zeros(0), torch.zeros(0))
    with pytest.raises(ValueError, match="one shape"):
        metric.update(torch.zeros(3), torch.zeros(4))


# --------------------------------------------------------------------------------------------------- QA
def test_multiple_choice_accuracy():
    metric = MultipleChoiceAccuracy()
    inf = float("inf")
    scores = torch.tensor([[0.1, 0.7, 0.2, 0.0], [2.0, 1.0, -inf, -inf], [0.0, 0.0, 1.0, 3.0]])
    metric.update(scores, torch.tensor([1, 1, 3]))  # argmax 1 (right), 0 (wrong), 3 (right) -> 2/3
    assert float(metric.compute()) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match=r"target\[0\] = -1"):
        metric.update(scores[:1], torch.tensor([-1]))
    with pytest.raises(ValueError, match="empty batch"):
        metric.update(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))


# --------------------------------------------------------------------------------------------------- retrieval
def retrieval_case():
    scores = torch.tensor([[-0.5, 0.3, -0.1, 0.9], [0.2, 0.1, 0.4, 9.0], [0.1, 0.2, 0.3, 0.4]])
    relevant = torch.tensor([[0, 0, 1, 1], [1, 0, 0, 1], [0, 0, 0, 0]]).bool()
    valid = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 1, 1]]).bool()
    return scores, relevant, valid


def test_segment_retrieval():
    metric = SegmentRetrieval(top_k=(1, 3))
    metric.update(*retrieval_case())
    # q0 ranking 3, 1, 2, 0: relevant at ranks 1 and 3: R@1 = 1/2, hit@1 = 1, R@3 = 1, AP = (1/1 + 2/3) / 2 = 5/6.
    # q1 (segment 3 is padding) ranking 2, 0, 1: relevant at rank 2: R@1 = hit@1 = 0, R@3 = 1, AP = 1/2.
    # q2 has no relevant segment: skipped.
    out = values(metric.compute())
    assert out == pytest.approx({"recall@1": 0.25, "hit@1": 0.5, "recall@3": 1.0, "hit@3": 1.0, "map": 2 / 3})
    neg = SegmentRetrieval(top_k=(1,), empty_target_action="neg")
    neg.update(*retrieval_case())  # q2 counts, scoring 0: map = (5/6 + 1/2 + 0) / 3
    assert float(neg.compute()["map"]) == pytest.approx(4 / 9)
    with pytest.raises(ValueError, match="query 2"):
        SegmentRetrieval(empty_target_action="error").update(*retrieval_case())
    with pytest.raises(ValueError, match="empty batch"):
        metric.update(torch.zeros(0, 4), torch.zeros(0, 4).bool())


def test_negative_scores_are_ranked_not_dropped():
    """torchmetrics' recall treats a score <= 0 as never retrieved; raw negative cosines would lose q0's rank-3 hit."""
    from torchmetrics.functional.retrieval import retrieval_recall
    scores, relevant, _ = retrieval_case()
    assert float(retrieval_recall(scores[0], relevant[0], top_k=3)) == 0.5  # the pitfall
    metric = SegmentRetrieval(top_k=(3,))
    metric.update(scores[:1], relevant[:1])
    assert float(metric.compute()["recall@3"]) == 1.0


def test_segment_retrieval_matches_torchmetrics_modules_on_the_documented_layout():
    g = torch.Generator().manual_seed(0)
    ours, recall, average_precision = SegmentRetrieval(top_k=(2,)), RetrievalRecall(top_k=2), RetrievalMAP()
    for batch in range(3):
        scores = torch.randn(5, 7, generator=g)
        relevant = torch.rand(5, 7, generator=g) < 0.3
        relevant[:, 0] = True  # every query has a relevant segment
        valid = torch.rand(5, 7, generator=g) < 0.8
        valid[:, 0] = True
        ours.update(scores, relevant, valid)
        preds, target, indexes = retrieval_inputs(scores, relevant, valid, first_query=5 * batch)
        assert indexes.tolist() == sorted(indexes.tolist()) and len(set(indexes.tolist())) == 5
        recall.update(preds, target, indexes=indexes)
        average_precision.update(preds, target, indexes=indexes)
    out = ours.compute()
    torch.testing.assert_close(out["recall@2"].float(), recall.compute())
    torch.testing.assert_close(out["map"].float(), average_precision.compute())


# --------------------------------------------------------------------------------------------------- distribution
def split_runs():
    """Each metric with the updates that two ranks would see (uneven counts on purpose)."""
    scores, relevant, valid = retrieval_case()
    return [
        (TemporalGroundingF1, [(TVG_PREDS[:1], TVG_TARGET[:1])], [(TVG_PREDS[1:], TVG_TARGET[1:])]),
        (TemporalActionF1, [(TAL_PREDS[:2], TAL_TARGET[:2])], [(TAL_PREDS[2:], TAL_TARGET[2:])]),
        (DenseCaptioningTemporalF1, [(DVC_PREDS[2:], DVC_TARGET[2:])], [(DVC_PREDS[:2], DVC_TARGET[:2])]),
        (ProactiveTimeAccuracy, [([10.0], [12.0])], [([None, 13.0, 30.5], [5.0, 10.0, 30.0])]),
        (lambda: TimeDiff(max_delay=5.0), [([[8.0, 20.0]], [[10.0, 12.0]])], [([[None]], [[4.0]])]),
        (FrameActivationF1, [(torch.tensor([0.9, 0.2]), torch.tensor([1, 0]))],
         [(torch.tensor([0.6, 0.4, 0.8]), torch.tensor([0, 1, 1]))]),
        (lambda: SegmentRetrieval(top_k=(1, 3)), [(scores[:1], relevant[:1], valid[:1])],
         [(scores[1:], relevant[1:], valid[1:])]),
    ]


@pytest.mark.parametrize("case", range(7))
def test_states_merge_like_one_pass(case):
    make, rank0, rank1 = split_runs()[case]
    whole, a, b = make(), make(), make()
    for args in rank0 + rank1:
        whole.update(*args)
    for args in rank0:
        a.update(*args)
    for args in rank1:
        b.update(*args)
    a.merge_state(b)
    assert values(a.compute()) == pytest.approx(values(whole.compute()))


def _ddp_worker(rank: int, world_size: int, init_file: str, results) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        for case, (make, rank0, rank1) in enumerate(split_runs()):
            metric = make()
            for args in (rank0, rank1)[rank]:
                metric.update(*args)
            results[(rank, case)] = values(metric.compute())  # compute() syncs the states of both ranks
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_states_sync_across_two_gloo_ranks(tmp_path):
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), results), nprocs=2, join=True)
        results = dict(results)
    for case, (make, rank0, rank1) in enumerate(split_runs()):
        whole = make()
        for args in rank0 + rank1:
            whole.update(*args)
        want = values(whole.compute())
        assert results[(0, case)] == pytest.approx(want) and results[(1, case)] == pytest.approx(want)
