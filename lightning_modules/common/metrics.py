"""torchmetrics `Metric`s with the peers' exact definitions (papers/FACTS.md, "When-to-speak metrics").

Spans are (start, end) pairs in seconds. Span inputs are per-sample sequences: `preds[i]` holds sample i's predicted
spans (possibly none) and `target[i]` its ground-truth spans, each a list of pairs or an (n, 2) tensor.
Every state is a sum over samples (`dist_reduce_fx="sum"`), so the metrics sync across DDP ranks and merge with
`Metric.merge_state`. An empty batch, or `compute()` before any sample, raises ValueError.

Sources followed (ET-Bench `evaluation/compute_metrics.py`, Ye Liu 2024, as published with the benchmark):
- `tvg_eval` (TVG, EPM): IoU of the first predicted span with the ground truth; hit if IoU >= θ; samples without a
  prediction count as misses; F1@θ = hits / samples; F1 = mean over θ; also mIoU.
- `tal_eval` (TAL): per sample the (gt x pred) IoU matrix; 0 if its max < θ, else R = mean over gt of [max IoU >= θ],
  P = mean over preds of [max IoU >= θ], F1 = 2PR/(P+R); summed over samples / all samples.
- `dvc_eval` + `DVCEval.evaluate_detection` (DVC, SLC): per video a prediction (reference) is covered when its IoU
  with some reference (prediction) is > θ (strict); P = covered preds / preds, R = covered refs / refs, averaged over
  videos, where a video without a parsed prediction is dropped and the averages are scaled by the parsed fraction,
  i.e. P = R = 0 for it; F1@θ = 2PR/(P+R) from the averages; F1 = mean over θ.
- VideoLLM-online (LIVE) `models/modeling_live.py::stream_evaluate` + `data/ego4d/narration.py`: per turn the number
  of frames the response came early (+) or late (-), late ones capped by a look-ahead window; |diff| averaged over the
  turns of a video, then over videos, divided by fps: TimeDiff in seconds.
- StreamingBench proactive output: correct iff |t_response - t_gt| <= 2 s.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.functional.retrieval import (
    retrieval_average_precision,
    retrieval_hit_rate,
    retrieval_recall,
)

SpanList = Union[Sequence[Sequence[float]], Tensor]
ET_BENCH_THRESHOLDS = (0.1, 0.3, 0.5, 0.7)


# ---------------------------------------------------------------------------------------------------- span helpers
def as_spans(spans: SpanList, where: str = "spans") -> Tensor:
    """A list of (start, end) pairs or an (n, 2) tensor -> float64 (n, 2); checks finite and start <= end."""
    out = torch.as_tensor(spans, dtype=torch.float64) if not isinstance(spans, Tensor) else spans.double()
    if out.numel() == 0:
        return out.reshape(0, 2)
    if out.dim() != 2 or out.shape[1] != 2:
        raise ValueError(f"{where}: expected a list of (start, end) pairs, got shape {tuple(out.shape)}")
    if not torch.isfinite(out).all():
        raise ValueError(f"{where}: spans must be finite, got {out.tolist()}")
    if (out[:, 1] < out[:, 0]).any():
        raise ValueError(f"{where}: a span ends before it starts: {out.tolist()}")
    return out


def temporal_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of every span of a (n, 2) with every span of b (m, 2) -> (n, m). Zero-length unions give 0."""
    inter = (torch.minimum(a[:, None, 1], b[None, :, 1]) - torch.maximum(a[:, None, 0], b[None, :, 0])).clamp(min=0)
    union = (a[:, None, 1] - a[:, None, 0]) + (b[None, :, 1] - b[None, :, 0]) - inter
    return torch.where(union > 0, inter / union.clamp(min=torch.finfo(union.dtype).tiny), torch.zeros_like(union))


def _check_pairs(name: str, preds: Sequence, target: Sequence) -> None:
    if len(preds) == 0 or len(target) == 0:
        raise ValueError(f"{name}.update: got an empty batch (preds {len(preds)}, target {len(target)} samples)")
    if len(preds) != len(target):
        raise ValueError(f"{name}.update: preds has {len(preds)} samples but target has {len(target)}")


def _check_thresholds(name: str, thresholds: Sequence[float]) -> tuple[float, ...]:
    thresholds = tuple(float(t) for t in thresholds)
    if not thresholds or any(not 0.0 <= t <= 1.0 for t in thresholds):
        raise ValueError(f"{name}: thresholds {thresholds} must be a non-empty list of IoUs in [0, 1]")
    return thresholds


def _key(prefix: str, value: float) -> str:
    return f"{prefix}@{value:g}"


class _SampleMetric(Metric):
    """Sum states over samples; `compute()` refuses to divide by zero samples."""

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def _sum_state(self, name: str, size: Optional[int] = None) -> None:
        shape = () if size is None else (size,)
        self.add_state(name, torch.zeros(shape, dtype=torch.float64), dist_reduce_fx="sum")

    def _require_samples(self) -> None:
        if self.total == 0:
            raise ValueError(f"{type(self).__name__}.compute: no samples were seen (call update first)")


# ---------------------------------------------------------------------------------------------------- ET-Bench
class TemporalGroundingF1(_SampleMetric):
    """ET-Bench TVG / EPM. update(preds, target): per sample, IoU of the first predicted span with the first target
    span; compute() -> {"f1@θ": fraction of samples with IoU >= θ, ..., "f1": mean over θ, "miou": mean IoU}
    (a sample without a prediction has IoU 0)."""

    def __init__(self, thresholds: Sequence[float] = ET_BENCH_THRESHOLDS, **kwargs):
        super().__init__(**kwargs)
        self.thresholds = _check_thresholds(type(self).__name__, thresholds)
        self._sum_state("hits", len(self.thresholds))
        self._sum_state("iou_sum")
        self._sum_state("no_prediction")

    def update(self, preds: Sequence[SpanList], target: Sequence[SpanList]) -> None:
        _check_pairs(type(self).__name__, preds, target)
        thresholds = torch.tensor(self.thresholds, dtype=torch.float64, device=self.hits.device)
        for i, (pred, gt) in enumerate(zip(preds, target)):
            gt = as_spans(gt, f"{type(self).__name__} target[{i}]")
            pred = as_spans(pred, f"{type(self).__name__} preds[{i}]")
            if len(gt) == 0:
                raise ValueError(f"{type(self).__name__} target[{i}]: a grounding sample needs a target span")
            self.total += 1
            if len(pred) == 0:
                self.no_prediction += 1
                continue
            iou = temporal_iou(pred[:1], gt[:1])[0, 0].to(self.hits.device)
            self.iou_sum += iou
            self.hits += (iou >= thresholds).double()

    def compute(self) -> dict[str, Tensor]:
        self._require_samples()
        f1 = self.hits / self.total
        out = {_key("f1", t): f1[k] for k, t in enumerate(self.thresholds)}
        out["f1"] = f1.mean()
        out["miou"] = self.iou_sum / self.total
        return out


class TemporalActionF1(_SampleMetric):
    """ET-Bench TAL. Per sample and θ: 0 if no (gt, pred) pair reaches IoU θ, else R = mean over gt of
    [max IoU >= θ], P = mean over preds of [max IoU >= θ], F1 = 2PR/(P+R). compute() -> {"f1@θ": mean over samples,
    ..., "f1": mean over θ}."""

    def __init__(self, thresholds: Sequence[float] = ET_BENCH_THRESHOLDS, **kwargs):
        super().__init__(**kwargs)
        self.thresholds = _check_thresholds(type(self).__name__, thresholds)
        self._sum_state("f1_sum", len(self.thresholds))

    def update(self, preds: Sequence[SpanList], target: Sequence[SpanList]) -> None:
        _check_pairs(type(self).__name__, preds, target)
        for i, (pred, gt) in enumerate(zip(preds, target)):
            gt = as_spans(gt, f"{type(self).__name__} target[{i}]")
            pred = as_spans(pred, f"{type(self).__name__} preds[{i}]")
            if len(gt) == 0:
                raise ValueError(f"{type(self).__name__} target[{i}]: a localisation sample needs target spans")
            self.total += 1
            if len(pred) == 0:
                continue
            iou = temporal_iou(gt, pred)  # (n_gt, n_pred)
            for k, theta in enumerate(self.thresholds):
                if iou.max() < theta:
                    continue
                recall = (iou.amax(dim=1) >= theta).double().mean()
                precision = (iou.amax(dim=0) >= theta).double().mean()
                self.f1_sum[k] += (2 * precision * recall / (precision + recall)).to(self.f1_sum.device)

    def compute(self) -> dict[str, Tensor]:
        self._require_samples()
        f1 = self.f1_sum / self.total
        out = {_key("f1", t): f1[k] for k, t in enumerate(self.thresholds)}
        out["f1"] = f1.mean()
        return out


class DenseCaptioningTemporalF1(_SampleMetric):
    """ET-Bench DVC / SLC temporal F1. Per video and θ: a prediction (reference) is covered when its IoU with some
    reference (prediction) is > θ; P = covered preds / preds (0 without predictions), R = covered refs / refs.
    compute() -> {"f1@θ": 2PR/(P+R) of the video-averaged P and R, ..., "f1": mean over θ,
    "precision", "recall": video-averaged P and R, each a mean over θ}."""

    def __init__(self, thresholds: Sequence[float] = ET_BENCH_THRESHOLDS, **kwargs):
        super().__init__(**kwargs)
        self.thresholds = _check_thresholds(type(self).__name__, thresholds)
        self._sum_state("precision_sum", len(self.thresholds))
        self._sum_state("recall_sum", len(self.thresholds))

    def update(self, preds: Sequence[SpanList], target: Sequence[SpanList]) -> None:
        _check_pairs(type(self).__name__, preds, target)
        for i, (pred, gt) in enumerate(zip(preds, target)):
            gt = as_spans(gt, f"{type(self).__name__} target[{i}]")
            pred = as_spans(pred, f"{type(self).__name__} preds[{i}]")
            if len(gt) == 0:
                raise ValueError(f"{type(self).__name__} target[{i}]: a captioning sample needs reference spans")
            self.total += 1
            if len(pred) == 0:
                continue
            iou = temporal_iou(pred, gt)  # (n_pred, n_ref)
            for k, theta in enumerate(self.thresholds):
                hit = iou > theta
                self.precision_sum[k] += hit.any(dim=1).double().mean().to(self.precision_sum.device)
                self.recall_sum[k] += hit.any(dim=0).double().mean().to(self.recall_sum.device)

    def compute(self) -> dict[str, Tensor]:
        self._require_samples()
        precision, recall = self.precision_sum / self.total, self.recall_sum / self.total
        denom = precision + recall
        f1 = torch.where(denom > 0, 2 * precision * recall / denom.clamp(min=1e-300), torch.zeros_like(denom))
        out = {_key("f1", t): f1[k] for k, t in enumerate(self.thresholds)}
        out["f1"] = f1.mean()
        out["precision"], out["recall"] = precision.mean(), recall.mean()
        return out


# ---------------------------------------------------------------------------------------------------- response timing
def _check_times(name: str, times: Sequence, where: str, allow_none: bool) -> None:
    for j, t in enumerate(times):
        if t is None and allow_none:
            continue
        if t is None or not math.isfinite(float(t)):
            raise ValueError(f"{name} {where}[{j}]: expected a finite time in seconds, got {t!r}")


class ProactiveTimeAccuracy(_SampleMetric):
    """StreamingBench proactive output timing. update(pred_times, target_times): one response time (or None for no
    response) per target time, flat sequences; a target is correct iff |pred - target| <= tolerance seconds.
    compute() -> accuracy over all targets."""

    def __init__(self, tolerance: float = 2.0, **kwargs):
        super().__init__(**kwargs)
        if not tolerance >= 0:
            raise ValueError(f"ProactiveTimeAccuracy: tolerance {tolerance} must be >= 0 seconds")
        self.tolerance = float(tolerance)
        self._sum_state("correct")

    def update(self, pred_times: Sequence[Optional[float]], target_times: Sequence[float]) -> None:
        name = type(self).__name__
        _check_pairs(name, pred_times, target_times)
        _check_times(name, pred_times, "pred_times", allow_none=True)
        _check_times(name, target_times, "target_times", allow_none=False)
        for pred, gt in zip(pred_times, target_times):
            self.total += 1
            if pred is not None and abs(float(pred) - float(gt)) <= self.tolerance:
                self.correct += 1

    def compute(self) -> Tensor:
        self._require_samples()
        return self.correct / self.total


class TimeDiff(_SampleMetric):
    """LIVE's TimeDiff in seconds (lower is better). update(pred_times, target_times), per sample (video): a list of
    reference response times and, aligned with it, the model's response time for each (None: it never answered).
    Per video the mean of |pred - target|, then the mean over videos.

    LIVE measures lateness only up to a look-ahead window and charges a turn that never gets its response the whole
    window. `max_delay` plays that window: late answers count at most `max_delay` seconds, missing ones exactly that;
    with `max_delay=None` lateness is uncapped and a missing response is an error.
    """

    higher_is_better = False

    def __init__(self, max_delay: Optional[float] = None, **kwargs):
        super().__init__(**kwargs)
        if max_delay is not None and not max_delay >= 0:
            raise ValueError(f"TimeDiff: max_delay {max_delay} must be >= 0 seconds or None")
        self.max_delay = None if max_delay is None else float(max_delay)
        self._sum_state("diff_sum")

    def update(self, pred_times: Sequence[Sequence[Optional[float]]], target_times: Sequence[Sequence[float]]) -> None:
        name = type(self).__name__
        _check_pairs(name, pred_times, target_times)
        for i, (preds, targets) in enumerate(zip(pred_times, target_times)):
            if len(targets) == 0 or len(preds) != len(targets):
                raise ValueError(f"{name} sample {i}: needs one response time (or None) per target time and at least "
                                 f"one target, got {len(preds)} responses for {len(targets)} targets")
            _check_times(name, preds, f"pred_times[{i}]", allow_none=self.max_delay is not None)
            _check_times(name, targets, f"target_times[{i}]", allow_none=False)
            diffs = []
            for pred, gt in zip(preds, targets):
                if pred is None:
                    diffs.append(self.max_delay)
                    continue
                delay = float(pred) - float(gt)
                if self.max_delay is not None and delay > 0:
                    delay = min(delay, self.max_delay)
                diffs.append(abs(delay))
            self.total += 1
            self.diff_sum += sum(diffs) / len(diffs)

    def compute(self) -> Tensor:
        self._require_samples()
        return self.diff_sum / self.total


# ---------------------------------------------------------------------------------------------------- frames
class FrameActivationF1(_SampleMetric):
    """Frame-level (slot-level) precision, recall and F1 of binary activations, pooled over all frames (micro).
    update(preds, target, mask=None): same-shape tensors; preds are bool/int labels or float probabilities
    (active iff >= threshold); target is 0/1; mask (bool) drops padded frames. compute() ->
    {"precision", "recall", "f1"}; each is 0 where its denominator is 0."""

    def __init__(self, threshold: float = 0.5, **kwargs):
        super().__init__(**kwargs)
        self.threshold = float(threshold)
        for name in ("tp", "fp", "fn"):
            self._sum_state(name)

    def update(self, preds: Tensor, target: Tensor, mask: Optional[Tensor] = None) -> None:
        name = type(self).__name__
        preds, target = torch.as_tensor(preds), torch.as_tensor(target)
        if preds.shape != target.shape or (mask is not None and mask.shape != target.shape):
            raise ValueError(f"{name}.update: preds {tuple(preds.shape)}, target {tuple(target.shape)} and mask "
                             f"{None if mask is None else tuple(mask.shape)} must have one shape")
        if target.numel() == 0:
            raise ValueError(f"{name}.update: got an empty batch")
        if ((target != 0) & (target != 1)).any():
            raise ValueError(f"{name}.update: target must be 0/1, got values {target.unique().tolist()}")
        active = preds >= self.threshold if preds.is_floating_point() else preds != 0
        truth = target != 0
        if mask is not None:
            active, truth = active[mask.bool()], truth[mask.bool()]
        self.tp += (active & truth).sum()
        self.fp += (active & ~truth).sum()
        self.fn += (~active & truth).sum()
        self.total += truth.numel()

    def compute(self) -> dict[str, Tensor]:
        self._require_samples()
        zero = torch.zeros((), dtype=torch.float64, device=self.tp.device)
        precision = self.tp / (self.tp + self.fp) if self.tp + self.fp > 0 else zero
        recall = self.tp / (self.tp + self.fn) if self.tp + self.fn > 0 else zero
        f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else zero
        return {"precision": precision, "recall": recall, "f1": f1}


# ---------------------------------------------------------------------------------------------------- QA
class MultipleChoiceAccuracy(_SampleMetric):
    """QA accuracy from option scores. update(scores (B, K), target (B,)): the prediction is the argmax option
    (first one on ties); pad missing options with -inf. compute() -> accuracy."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._sum_state("correct")

    def update(self, scores: Tensor, target: Tensor) -> None:
        name = type(self).__name__
        if scores.dim() != 2 or target.shape != scores.shape[:1]:
            raise ValueError(f"{name}.update: expected scores (B, K) and target (B,), got {tuple(scores.shape)} and "
                             f"{tuple(target.shape)}")
        if scores.shape[0] == 0:
            raise ValueError(f"{name}.update: got an empty batch")
        bad = (target < 0) | (target >= scores.shape[1])
        if bad.any():
            i = int(bad.nonzero()[0, 0])
            raise ValueError(f"{name}.update: target[{i}] = {int(target[i])} is not an option index in "
                             f"[0, {scores.shape[1]}) (open-ended questions have no accuracy)")
        self.total += scores.shape[0]
        self.correct += (scores.argmax(dim=1) == target).sum()

    def compute(self) -> Tensor:
        self._require_samples()
        return self.correct / self.total


# ---------------------------------------------------------------------------------------------------- retrieval
def _positive_scores(scores: Tensor) -> Tensor:
    """Shift scores to >= 1, keeping order and ties: torchmetrics' recall/AP count an item with a score <= 0 as never
    retrieved (`torch.where(preds > 0, target, 0)`), which would break on cosine similarities and logits."""
    scores = scores.double()
    return scores - scores.min() + 1.0


def _check_retrieval_inputs(name: str, scores: Tensor, relevant: Tensor, valid: Optional[Tensor]) -> Tensor:
    if scores.dim() != 2 or relevant.shape != scores.shape or (valid is not None and valid.shape != scores.shape):
        raise ValueError(f"{name}: expected scores, relevant and valid of one shape (Q, S), got {tuple(scores.shape)}, "
                         f"{tuple(relevant.shape)}, {None if valid is None else tuple(valid.shape)}")
    if scores.shape[0] == 0 or scores.shape[1] == 0:
        raise ValueError(f"{name}: got an empty batch of shape {tuple(scores.shape)}")
    return torch.ones_like(relevant, dtype=torch.bool) if valid is None else valid.bool()


def retrieval_inputs(scores: Tensor, relevant: Tensor, valid: Optional[Tensor] = None, first_query: int = 0):
    """(Q, S) segment scores and multi-hot relevance -> (preds, target, indexes) for `torchmetrics.retrieval.*`.

    Layout: the valid segments of query q, in segment order, become consecutive items that all carry
    indexes = first_query + q; preds are the scores shifted per query to >= 1 (see `_positive_scores`).
    torchmetrics groups items by index over everything accumulated, across updates and, under DDP, across ranks, so
    `first_query` must make ids unique globally (e.g. first_query = global batch offset * Q); `SegmentRetrieval`
    needs no ids at all.
    """
    valid = _check_retrieval_inputs("retrieval_inputs", scores, relevant, valid)
    preds, target, indexes = [], [], []
    for q in range(scores.shape[0]):
        keep = valid[q]
        preds.append(_positive_scores(scores[q][keep]))
        target.append(relevant[q][keep].bool())
        indexes.append(torch.full((int(keep.sum()),), first_query + q, dtype=torch.long, device=scores.device))
    return torch.cat(preds), torch.cat(target), torch.cat(indexes)


class SegmentRetrieval(_SampleMetric):
    """Segment retrieval for a query (SALOVA's SR-Router): Recall@k, Hit@k and mAP over queries.

    update(scores (Q, S), relevant (Q, S) multi-hot, valid (Q, S) bool or None for padded segments).
    Per query, through `torchmetrics.functional.retrieval`: recall@k = relevant segments in the top k / relevant
    segments; hit@k = [any relevant segment in the top k]; AP. compute() -> {"recall@k", "hit@k", ..., "map"}.
    Being per-query sums, the states need no query ids and sync across ranks. A query with no relevant segment is
    skipped (empty_target_action="skip"), scored 0 ("neg") or an error ("error").
    """

    def __init__(self, top_k: Sequence[int] = (1, 5), empty_target_action: str = "skip", **kwargs):
        super().__init__(**kwargs)
        self.top_k = tuple(int(k) for k in top_k)
        if not self.top_k or min(self.top_k) < 1:
            raise ValueError(f"SegmentRetrieval: top_k {top_k} must be positive integers")
        if empty_target_action not in ("skip", "neg", "error"):
            raise ValueError(f"SegmentRetrieval: empty_target_action {empty_target_action!r} is not skip|neg|error")
        self.empty_target_action = empty_target_action
        self._sum_state("recall_sum", len(self.top_k))
        self._sum_state("hit_sum", len(self.top_k))
        self._sum_state("ap_sum")

    def update(self, scores: Tensor, relevant: Tensor, valid: Optional[Tensor] = None) -> None:
        valid = _check_retrieval_inputs(type(self).__name__, scores, relevant, valid)
        for q in range(scores.shape[0]):
            preds, target = _positive_scores(scores[q][valid[q]]), relevant[q][valid[q]].bool()
            if not target.any():
                if self.empty_target_action == "error":
                    raise ValueError(f"SegmentRetrieval: query {q} of this batch has no relevant segment")
                if self.empty_target_action == "skip":
                    continue
                self.total += 1  # "neg": counts, scoring 0
                continue
            self.total += 1
            for j, k in enumerate(self.top_k):
                self.recall_sum[j] += retrieval_recall(preds, target, top_k=k).to(self.recall_sum)
                self.hit_sum[j] += retrieval_hit_rate(preds, target, top_k=k).to(self.hit_sum)
            self.ap_sum += retrieval_average_precision(preds, target).to(self.ap_sum)

    def compute(self) -> dict[str, Tensor]:
        self._require_samples()
        out = {}
        for j, k in enumerate(self.top_k):
            out[f"recall@{k}"] = self.recall_sum[j] / self.total
            out[f"hit@{k}"] = self.hit_sum[j] / self.total
        out["map"] = self.ap_sum / self.total
        return out
